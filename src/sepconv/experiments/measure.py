"""What ``sepconv compare`` measures besides training: latency (eager and optimized), throughput, the machine."""

from __future__ import annotations

import os
import platform
import warnings
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so `sepconv --help` stays fast
    import torch


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads not counted); at least 1.

    From ``/proc/cpuinfo`` (``cpu cores`` per package over ``siblings``, the
    logical processors per package) scaled to the CPUs of this process's
    affinity; the logical count where that information is missing.
    """
    from ..utils.machine import cpu_fields

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = cpu_fields()
    try:
        per_package, siblings = int(info["cpu cores"]), int(info["siblings"])
    except (KeyError, ValueError):
        return max(1, logical)
    if per_package < 1 or siblings < per_package:
        return max(1, logical)
    return max(1, logical * per_package // siblings)


def default_threads() -> int:
    """Threads a run uses when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set to a positive int,
    else :func:`physical_cores` (PyTorch's own default counts hyper-threads too)."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return physical_cores()


def contention(threads: int) -> Optional[str]:
    """A warning when the 1-minute load average plus ``threads`` exceeds the cores by more than half a core."""
    if not hasattr(os, "getloadavg") or threads <= 1:
        return None
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load + threads <= cores + 0.5:
        return None
    return (f"warning: the machine is busy (1-minute load average {load:.2f} on {cores} logical CPUs) and this run "
            f"uses {threads} threads: thread contention can inflate times and latencies many-fold; on a shared "
            "machine use --threads 1")


def environment() -> dict[str, Any]:
    """Versions and hardware the run used (goes into results.json)."""
    import numpy
    import torch

    from ..utils.machine import cpu_fields
    from ..utils.memory import freed_memory_kept
    from ..version import __version__

    env = {
        "sepconv": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "freed_memory_kept": freed_memory_kept(),  # sepconv.keep_freed_memory: glibc malloc keeps freed memory
    }
    if "model name" in cpu_fields():
        env["cpu_model"] = cpu_fields()["model name"]
    return env


def measure_latency(model: "torch.nn.Module", input_shape: tuple[int, ...], batch_size: int = 1,
                    device: "torch.device | str" = "cpu", min_run_time: float = 0.3,
                    memory_format: "Optional[torch.memory_format]" = None) -> float:
    """Median seconds of one forward pass of a ``batch_size`` batch in eval mode under ``no_grad``.

    Uses ``torch.utils.benchmark.Timer.blocked_autorange`` (which warms up,
    then times blocks of calls for at least ``min_run_time`` seconds) with the
    current ``torch.get_num_threads()``, on an input in the memory layout
    :func:`sepconv.train.fit` trains in (channels-last for images on the CPU)
    unless ``memory_format`` is given. The model's train/eval mode is restored.
    """
    import math

    import torch
    from torch.utils import benchmark

    from ..train.loop import memory_format_for

    if not (isinstance(min_run_time, (int, float)) and math.isfinite(min_run_time) and min_run_time > 0):
        raise ValueError(f"min_run_time must be a finite number of seconds > 0, got {min_run_time!r}")
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    x = x.contiguous(memory_format=memory_format or memory_format_for(device, x))  # default: the training layout
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            timer = benchmark.Timer(
                stmt="with torch.no_grad(): model(x)", globals={"model": model, "x": x, "torch": torch},
                num_threads=torch.get_num_threads(),
            )
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    return float(measurement.median)


#: Timing rounds :func:`sepconv.optimize` gets when ``compare`` picks an engine per variant (its default is 7).
OPTIMIZE_ROUNDS = 3


def measure_optimized_latency(model: "torch.nn.Module", input_shape: tuple[int, ...],
                              device: "torch.device | str" = "cpu", min_run_time: float = 0.3) -> dict[str, Any]:
    """Batch-1 latency of ``model`` through :func:`sepconv.optimize`: what an inference deployment gets.

    ``optimize`` folds BatchNorm and picks engine and memory layout by timing
    (:data:`OPTIMIZE_ROUNDS` rounds) on a batch-1 input; the kept model is
    then timed as :func:`measure_latency` times the eager one. Returns
    ``latency_ms``, the chosen ``engine`` and ``candidate``, and the engines
    ``optimize`` skipped with their reason (``skipped``). ``model`` is not changed.
    """
    import torch

    from ..backends.optimize import optimize

    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        sample = torch.randn(1, *input_shape, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.random.fork_rng(devices=[]):
            optimized = optimize(model, sample, rounds=OPTIMIZE_ROUNDS)
    seconds = measure_latency(optimized, input_shape, 1, device, min_run_time, optimized.memory_format)
    return {"latency_ms": seconds * 1e3, "engine": optimized.backend, "candidate": optimized.candidate,
            "skipped": [str(w.message) for w in caught if "optimize" in str(w.message)]}
