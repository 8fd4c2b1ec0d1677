"""What `OnnxRuntimeModel` costs over a raw `session.run`, per suite shape, on the calling thread's CPU time.

    python benchmarks/bench_ort_wrapper.py [--rounds 21] [--suite mobilenet_v1] [--out DIR]

For every shape (one `SeparableConv2d` without bias, float32, batch and size from the suite, one intra-op thread,
the session from `sepconv.backends.onnxruntime.fastest_session_options`), in the same interleaved rounds:

* `raw`: `session.run(None, feed)` on a prepared feed, the result discarded (what `bench_isa.py` calls ONNX
  Runtime alone); `raw_again`: the same call a second time, the noise floor of the comparison;
* `wrapper`: `OnnxRuntimeModel.__call__` under `torch.no_grad()`, tensor in and tensor out;
* `wrapper_before`: the earlier forward (`x.detach().contiguous().numpy()`, `session.run(None, ...)`,
  `torch.from_numpy`) in an `OnnxRuntimeModel` subclass, called the same way;
* `iobinding_ort_output`: `bind_cpu_input` on a NumPy view, `bind_output` to ONNX Runtime's CPU allocator,
  `run_with_iobinding`, the output OrtValue's array wrapped by `torch.from_numpy`;
* `iobinding_torch_output`: the same with the output bound to a fresh `torch.empty` tensor each call.

A tiny layer (8 -> 8 channels at 4x4) comes first unless `--no-tiny`: ONNX Runtime's own work there is a few
microseconds, so each candidate's median minus `raw`'s is its fixed cost per call (`tiny_added_us_per_call`);
the suite summary leaves it out. Ratios are each candidate's median (and fastest round) over `raw`'s. Then the same candidates again, `--calls`
single calls each in one shuffled order, each call timed on its own (`single_*`): fixed-order rounds put each
candidate at the same place every round, and at 1-5 % differences that place shows. Writes `ort_wrapper.json` (with the
machine and the load average before and after) into --out
(default `benchmarks/results/ort-wrapper-cpu-1thread-cputime`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sepconv import SeparableConv2d
from sepconv.backends.clock import cpu_time_interleaved
from sepconv.backends.onnxruntime import OnnxRuntimeModel, fastest_session_options
from sepconv.bench.suites import SUITES, Case, suite_names
from sepconv.geometry import ConvSpec
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call

HERE = Path(__file__).resolve().parent


class Before(OnnxRuntimeModel):
    """The earlier forward, called through the same module machinery, for a like-for-like comparison."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("inference-only")
        if x.device.type != "cpu":
            raise ValueError(f"runs on the CPU; got an input on {x.device}")
        (out,) = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()})
        return torch.from_numpy(out)


def candidates(runner, x: torch.Tensor, out_shape: tuple[int, ...]) -> dict:
    session, name = runner.session, runner.input_name
    out_name = session.get_outputs()[0].name
    feed = {name: x.numpy()}
    binding = session.io_binding()

    def raw():
        return session.run(None, feed)


    def iobinding_ort_output():
        binding.bind_cpu_input(name, x.numpy())
        binding.bind_output(out_name, "cpu")
        session.run_with_iobinding(binding)
        return torch.from_numpy(binding.get_outputs()[0].numpy())

    def iobinding_torch_output():
        out = torch.empty(out_shape)
        binding.bind_cpu_input(name, x.numpy())
        binding.bind_output(out_name, "cpu", 0, np.float32, out_shape, out.data_ptr())
        session.run_with_iobinding(binding)
        return out

    return {"raw": raw, "raw_again": raw, "wrapper": inference_call(runner, x),
            "wrapper_before": inference_call(Before(session, name, runner.threads), x), "iobinding_ort_output": iobinding_ort_output,
            "iobinding_torch_output": iobinding_torch_output}


def shuffled_calls(calls: dict, per_candidate: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of the calling thread's CPU time of each single call, the candidates' calls in one shuffled order.

    Shuffling call by call spreads drift and each candidate's position in a round over all candidates alike,
    which fixed-order rounds do not; ``per_candidate`` calls each, after ten warm-up calls each.
    """
    for fn in calls.values():
        for _ in range(10):
            fn()
    order = [name for name in calls for _ in range(per_candidate)]
    random.Random(seed).shuffle(order)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.thread_time_ns
    for name in order:
        fn = calls[name]
        start = clock()
        fn()
        samples[name].append((clock() - start) * 1e-9)
    return samples


def run_shape(case, rounds: int, per_call: int) -> dict:
    torch.manual_seed(0)
    spec = case.spec
    x = torch.randn(case.batch, spec.in_channels, *case.size)
    sep = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                          bias=False).eval()
    runner, options = fastest_session_options(sep, x, threads=1)
    with torch.no_grad():
        expected = sep(x)
    calls = candidates(runner, x, tuple(expected.shape))
    for label, fn in calls.items():
        got = fn()
        got = torch.from_numpy(got[0]) if isinstance(got, list) else got
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4, msg=lambda m, label=label: f"{label}: {m}")
    timings = cpu_time_interleaved(calls, rounds=rounds)
    single = shuffled_calls(calls, per_call)
    single_median = {k: statistics.median(v) for k, v in single.items()}
    single_mean = {k: statistics.fmean(v) for k, v in single.items()}
    raw, raw_min = timings["raw"].median, min(timings["raw"].samples)
    return {"shape": case.name, "batch": case.batch, "size": list(case.size), "in": spec.in_channels,
            "out": spec.out_channels, "stride": list(spec.stride), "session_options": options,
            "median_ms": {k: 1e3 * v.median for k, v in timings.items()},
            "iqr_ms": {k: 1e3 * v.iqr for k, v in timings.items()},
            "min_ms": {k: 1e3 * min(v.samples) for k, v in timings.items()},
            "vs_raw": {k: v.median / raw for k, v in timings.items()},
            "vs_raw_min": {k: min(v.samples) / raw_min for k, v in timings.items()},
            "single_calls": per_call, "single_median_ms": {k: 1e3 * v for k, v in single_median.items()},
            "single_mean_ms": {k: 1e3 * v for k, v in single_mean.items()},
            "single_vs_raw": {k: v / single_median["raw"] for k, v in single_median.items()},
            "single_mean_vs_raw": {k: v / single_mean["raw"] for k, v in single_mean.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--suite", default="mobilenet_v1", help=f"comma-separated, of {sorted(SUITES)}")
    p.add_argument("--calls", type=int, default=300, help="single calls per candidate, in one shuffled order")
    p.add_argument("--no-tiny", dest="tiny", action="store_false",
                   help="leave out the tiny layer that measures the fixed cost per call in microseconds")
    p.add_argument("--out")
    args = p.parse_args(argv)
    try:
        suites = suite_names(args.suite)
    except ValueError as error:
        p.error(str(error))
    torch.set_num_threads(1)  # the CPU-time clock counts the calling thread only
    out = Path(args.out) if args.out else HERE / "results" / "ort-wrapper-cpu-1thread-cputime"
    load_before = list(os.getloadavg())
    rows = []
    # a layer so small that ONNX Runtime's own work is a few microseconds: the wrapper's fixed cost per call
    cases = [Case("tiny 8->8 @4 s1", ConvSpec.make(8, 8, 3, 1, 1, bias=False), (4, 4), 1)] if args.tiny else []
    cases += [case for suite in suites for case in SUITES[suite]()]
    for case in cases:
        row = run_shape(case, args.rounds, args.calls)
        rows.append(row)
        print(f"{row['shape']:>24}: raw {row['median_ms']['raw']:.3f} ms | rounds "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["vs_raw"].items() if k != "raw") + " | shuffled "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["single_vs_raw"].items() if k != "raw"), flush=True)
    suite_rows = [r for r in rows if not r["shape"].startswith("tiny")]
    names = [k for k in rows[0]["vs_raw"] if k != "raw"]
    summary = {k: {"shuffled_median_of_ratios": float(np.median([r["single_vs_raw"][k] for r in suite_rows])),
                   "shuffled_max_ratio": max(r["single_vs_raw"][k] for r in suite_rows),
                   "shuffled_mean_median_of_ratios": float(np.median([r["single_mean_vs_raw"][k]
                                                                      for r in suite_rows])),
                   "median_of_ratios": float(np.median([r["vs_raw"][k] for r in suite_rows])),
                   "min_ratio": min(r["vs_raw"][k] for r in suite_rows),
                   "max_ratio": max(r["vs_raw"][k] for r in suite_rows),
                   "median_of_min_ratios": float(np.median([r["vs_raw_min"][k] for r in suite_rows]))} for k in names}
    if args.tiny:
        tiny = rows[0]["median_ms"]
        summary["tiny_added_us_per_call"] = {k: 1e3 * (v - tiny["raw"]) for k, v in tiny.items() if k != "raw"}
        tiny = rows[0]["single_median_ms"]
        summary["tiny_added_us_per_call_shuffled"] = {k: 1e3 * (v - tiny["raw"]) for k, v in tiny.items()
                                                      if k != "raw"}
    record = {"machine": machine_info(), "threads": 1, "clock": "cpu", "rounds": args.rounds, "suite": args.suite,
              "shapes": rows, "summary_vs_raw": summary,
              "machine_before": {"loadavg_1_5_15": load_before},
              "machine_after": {"loadavg_1_5_15": list(os.getloadavg())}}
    atomic_write_bytes(out / "ort_wrapper.json", (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps(summary, indent=1))
    print(f"wrote {out / 'ort_wrapper.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
