"""Which clock sepconv times candidates on: the calling thread's CPU time with one CPU thread, else wall time."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..utils.timing import Timing, calls_for

#: With one thread on the CPU, :func:`sepconv.optimize` and
#: :func:`~sepconv.backends.onednn.pack_convolutions` time candidates on the calling thread's CPU time
#: (:func:`cpu_time_interleaved`): time the process spends preempted by other processes then does not count.
CPU_CLOCK_WITH_ONE_THREAD = True


def cpu_time_interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 15,
                         target_s: float = 0.02) -> dict[str, Timing]:
    """:func:`sepconv.utils.timing.interleaved` on the calling thread's CPU time (``time.thread_time``, user and
    system) instead of wall time: seconds per call, median and quartiles of ``rounds`` interleaved rounds of
    about ``target_s`` CPU seconds each.

    Only meaningful when all the work runs on the calling thread: one thread on the CPU (PyTorch with
    ``torch.get_num_threads() == 1``, sepconv's kernels with one thread, ONNX Runtime with one intra-op thread
    all do). Then other processes on a busy machine delay a candidate without adding to its time, where a
    wall-clock sample that was preempted can be several times too long.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"cpu_time_interleaved: rounds must be an integer >= 1, got {rounds!r}")
    if not target_s > 0 or target_s == float("inf"):
        raise ValueError(f"cpu_time_interleaved: target_s must be a finite number > 0, got {target_s!r}")
    numbers = {}
    for name, fn in candidates.items():
        calls_for(fn, target_s)  # warm-up
        start = time.thread_time()
        fn()
        numbers[name] = max(1, int(target_s / max(time.thread_time() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            n = numbers[name]
            start = time.thread_time()
            for _ in range(n):
                fn()
            samples[name].append((time.thread_time() - start) / n)
    result = {}
    for name, xs in samples.items():
        qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        result[name] = Timing(statistics.median(xs), qs[0], qs[2], tuple(xs))
    return result


def timing_clock(sample: torch.Tensor) -> str:
    """The clock :func:`sepconv.optimize` times candidates on for ``sample``: ``"cpu"`` (the calling thread's CPU time)
    with one thread on the CPU and :data:`CPU_CLOCK_WITH_ONE_THREAD` set, else ``"wall"``."""
    one_thread = sample.device.type == "cpu" and torch.get_num_threads() == 1
    return "cpu" if one_thread and CPU_CLOCK_WITH_ONE_THREAD else "wall"



def time_candidates(calls: dict[str, Callable[[], object]], sample: torch.Tensor, rounds: int, target_s: float = 0.02,
                    settle_s: float = 0.0) -> dict[str, Timing]:
    """Time ``calls`` in interleaved rounds on the clock :func:`timing_clock` picks for ``sample``."""
    if timing_clock(sample) == "cpu":
        return cpu_time_interleaved(calls, rounds=rounds, target_s=target_s)
    from ..utils.timing import interleaved

    return interleaved(calls, rounds=rounds, target_s=target_s, settle_s=settle_s, device=sample.device)
