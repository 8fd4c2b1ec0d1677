"""Timing that can be trusted on a shared machine: warm-up, interleaved rounds, medians and spread.

Candidates are timed in interleaved rounds (A B C A B C ...), so a burst of
load from another process hits all of them alike, and the ratio of their
medians is what the benchmark reports. A sample can also depend on the
candidate timed just before it (what it left in the caches); with many
candidates, ``interleaved(..., shuffle_seed=...)`` draws a new order each round
so that no candidate always follows the same one. Each sample is the mean of
``number`` calls, timed with :func:`time.perf_counter` after
``torch.cuda.synchronize`` where CUDA is used.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, first and third quartiles, and the raw samples."""

    median: float
    q1: float
    q3: float
    samples: tuple[float, ...]

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "n": len(self.samples)}


def profiled(name: str) -> ContextManager:
    """A context that names the work inside it ``name`` in a running PyTorch profiler (a C kernel called through
    ctypes is no aten op, so it would show only as its caller's time); a no-op context when no profiler runs, as
    entering ``torch.profiler.record_function`` costs a measurable share of a small layer's step
    (``docs/design-notes.md``)."""
    enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
    if enabled is None or enabled():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_for(fn: Callable[[], object], target_s: float = 0.02, device: torch.device = torch.device("cpu")) -> int:
    """How many calls of ``fn`` take about ``target_s`` (at least 1); also warms ``fn`` up."""
    for _ in range(2):
        fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once))


def round_orders(names: list[str], rounds: int, shuffle_seed: int | None = None) -> Iterator[list[str]]:
    """The order of ``names`` in each of ``rounds`` timing rounds: as given every round (``shuffle_seed`` None), or
    shuffled anew each round by ``random.Random(shuffle_seed)``."""
    order = list(names)
    shuffler = random.Random(shuffle_seed) if shuffle_seed is not None else None
    for _ in range(rounds):
        if shuffler is not None:
            shuffler.shuffle(order)
        yield order


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 15, target_s: float = 0.02,
                device: torch.device = torch.device("cpu"), shuffle_seed: int | None = None) -> dict[str, Timing]:
    """Time every candidate in ``rounds`` interleaved rounds; returns a :class:`Timing` per name.

    ``shuffle_seed``: None times the candidates in the same order every round;
    an integer shuffles the order anew each round (``random.Random(shuffle_seed)``,
    so a run is repeatable), so that a candidate's samples do not all follow the
    same other candidate and what it leaves in the caches.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    numbers = {name: calls_for(fn, target_s, device) for name, fn in candidates.items()}
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for order in round_orders(list(candidates), rounds, shuffle_seed):
        for name in order:
            fn, n = candidates[name], numbers[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / n)
    result = {}
    for name, xs in samples.items():
        qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        result[name] = Timing(statistics.median(xs), qs[0], qs[2], tuple(xs))
    return result


def inference_call(module: Callable[..., object], x: torch.Tensor) -> Callable[[], object]:
    """A zero-argument callable running ``module(x)`` under ``torch.no_grad()``: what timing loops call."""
    def run():
        with torch.no_grad():
            return module(x)
    return run


def first_inputs(model: torch.nn.Module, modules, sample_input: torch.Tensor,
                 keep: Callable[[torch.Tensor], object] = lambda x: x.detach()) -> dict[int, object]:
    """``keep(x)`` of the first input each of ``modules`` sees in one no-grad forward pass of ``sample_input``.

    Keyed by ``id(module)``; modules that do not run are absent. Per-layer
    timing uses it to time each layer on its own input shape.
    """
    seen: dict[int, object] = {}

    def record(module: torch.nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the input
        if id(module) not in seen:
            seen[id(module)] = keep(args[0])

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    try:
        with torch.no_grad():
            model(sample_input)
    finally:
        for h in hooks:
            h.remove()
    return seen
