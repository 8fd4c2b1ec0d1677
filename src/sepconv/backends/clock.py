"""How sepconv times candidates: on the calling thread's CPU time with one CPU thread, else wall time, and how it
picks the fastest (:func:`fastest_call`)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from ..utils.timing import Timing, calls_for, round_orders

#: With one thread on the CPU, :func:`sepconv.optimize` and
#: :func:`~sepconv.backends.onednn.pack_convolutions` time candidates on the calling thread's CPU time
#: (:func:`cpu_time_interleaved`): time the process spends preempted by other processes then does not count.
CPU_CLOCK_WITH_ONE_THREAD = True
#: When the runner-up is within this factor of the fastest candidate, :func:`fastest_call` times the two again.
CLOSE_CALL = 1.2
#: How long (seconds) the candidates timed after another runtime's run first run untimed (:func:`fastest_call`'s
#: ``apart``): an ONNX Runtime session whose idle threads spin keeps them spinning for tens of milliseconds after
#: its last run, longer beside other work, taking a core from whatever runs next (docs/design-notes.md).
SPIN_WAIT_S = 0.2


def cpu_time_interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 15,
                         target_s: float = 0.02, shuffle_seed: Optional[int] = None) -> dict[str, Timing]:
    """:func:`sepconv.utils.timing.interleaved` on the calling thread's CPU time (``time.thread_time``, user and
    system) instead of wall time: seconds per call, median and quartiles of ``rounds`` interleaved rounds of
    about ``target_s`` CPU seconds each, in the same order every round or (``shuffle_seed``) shuffled anew each.

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
    for order in round_orders(list(candidates), rounds, shuffle_seed):
        for name in order:
            fn, n = candidates[name], numbers[name]
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
                    apart: Sequence[str] = ()) -> dict[str, Timing]:
    """Time ``calls`` in interleaved rounds on the clock :func:`timing_clock` picks for ``sample``.

    With more than one thread, the names in ``apart`` (calls into another runtime whose idle threads may spin, ONNX
    Runtime) are timed first, interleaved among themselves, and the others after running the first of them untimed
    for :data:`SPIN_WAIT_S`: interleaved with the others, such a runtime's spinning threads would take a core from
    every sample that follows one of its own. With one thread there are no idle threads, and all are interleaved."""
    if timing_clock(sample) == "cpu":
        return cpu_time_interleaved(calls, rounds=rounds, target_s=target_s)
    from ..utils.timing import interleaved

    first = [name for name in calls if name in apart] if torch.get_num_threads() > 1 else []
    rest = [name for name in calls if name not in first]
    if not first or not rest:
        return interleaved(calls, rounds=rounds, target_s=target_s, device=sample.device)
    timings = interleaved({name: calls[name] for name in first}, rounds=rounds, target_s=target_s,
                          device=sample.device)
    end = time.perf_counter() + SPIN_WAIT_S
    while time.perf_counter() < end:
        calls[rest[0]]()
    timings.update(interleaved({name: calls[name] for name in rest}, rounds=rounds, target_s=target_s,
                               device=sample.device))
    return timings


def fastest_call(calls: dict[str, Callable[[], object]], sample: torch.Tensor, rounds: int, target_s: float = 0.02,
                 among: Optional[Sequence[str]] = None, apart: Sequence[str] = ()) -> tuple[str, dict[str, float]]:
    """The name of the fastest of ``calls`` and every median in ms, timed by :func:`time_candidates` in ``rounds``
    interleaved rounds of about ``target_s`` seconds per sample, the calls named in ``apart`` (another runtime's)
    in rounds of their own with more than one thread.

    Only the names in ``among`` (default: all) compete; the others are timed beside them for comparison. When the
    runner-up is within :data:`CLOSE_CALL` of the fastest (a close call on a noisy machine), or when another
    candidate than the one with the fastest median has the fastest single sample (the medians disagree with the
    least disturbed samples: something slowed one candidate's rounds), the two are timed again with twice the
    rounds and 2.5 times ``target_s`` before choosing; those medians are added as ``'<name> (confirmation)'``.
    What :func:`sepconv.optimize` chooses its candidate by, and :func:`~sepconv.backends.onednn.pack_convolutions`
    each convolution's engine.
    """
    names = list(calls) if among is None else list(among)
    if not names or any(name not in calls for name in names):
        raise ValueError(f"fastest_call: among must name some of the calls {sorted(calls)}, got {names!r}")
    t = time_candidates(calls, sample, rounds, target_s=target_s, apart=apart)
    timings = {name: v.median * 1e3 for name, v in t.items()}
    ranked = sorted(names, key=lambda name: timings[name])
    choice = ranked[0]
    fastest_sample = min(names, key=lambda name: min(t[name].samples))
    rival = (fastest_sample if fastest_sample != choice
             else ranked[1] if len(ranked) > 1 and timings[ranked[1]] < CLOSE_CALL * timings[choice] else None)
    if rival is not None:
        pair = [choice, rival]
        again = time_candidates({name: calls[name] for name in pair}, sample, 2 * rounds, target_s=2.5 * target_s,
                                apart=apart)
        choice = min(pair, key=lambda name: again[name].median)
        timings.update({f"{name} (confirmation)": again[name].median * 1e3 for name in pair})
    return choice, timings
