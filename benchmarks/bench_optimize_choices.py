"""How often `sepconv.optimize` keeps a slower engine than the fused kernel for a separable layer, call after call.

    python benchmarks/bench_optimize_choices.py [--threads 2] [--repeats 12] [--suite ...] [--no-ort-before] [--out DIR]

For every suite shape (one `SeparableConv2d` without bias, float32), `optimize(layer, x)` runs `--repeats` times,
each right after an ONNX Runtime session of the layer was configured and timed
(`sepconv.backends.onnxruntime.fastest_session_options`, as `bench_isa.py` does before it calls `optimize`:
its idle threads may still spin when `optimize` starts; `--no-ort-before` leaves that out). Each call's choice
is its candidate and, for the 'onednn' engine, what runs the separable layer (`fused`, `packed`, `eager`,
`dense`). Then one model per distinct choice and the fused kernel on its own are timed side by side as
`optimize` times its candidates (`sepconv.backends.clock.time_candidates`, ONNX Runtime choices apart); a choice
is *slower* where its median is more than 1.1x the fused kernel's. The record holds
each shape's choices with their counts, medians and ratios, and the summary the share of calls that kept a
slower choice. Writes `optimize_choices.json` (with the machine) into --out (default
`benchmarks/results/optimize-choices-cpu-<threads>thread`).
"""

from __future__ import annotations

import collections
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import sepconv
from sepconv.backends import native
from sepconv.backends.clock import time_candidates
from sepconv.backends.fused import FusedSeparableConv2d
from sepconv.backends.onnxruntime import fastest_session_options, onnxruntime_available
from sepconv.bench.suites import SUITES, parse_suite_args, separable_case, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call

HERE = Path(__file__).resolve().parent
SLOWER = 1.1  # a choice more than this times the fused kernel's median is counted as slower


def choice_name(fast) -> str:
    """``optimize``'s choice as the record names it: the candidate, and for the 'onednn' engine what runs the
    separable layer (``onednn:fused``, ``onednn:packed``, ...)."""
    layer = (fast.layer_choices or {}).get("depthwise")
    return f"{fast.candidate}:{layer.split('+')[0]}" if layer else fast.candidate


def run_shape(case, repeats: int, rounds: int, threads: int, ort_before: bool) -> dict:
    layer, x_nhwc = separable_case(case)
    layer.eval()
    x = x_nhwc.contiguous()
    counts: collections.Counter = collections.Counter()
    models, seconds = {}, []
    for _ in range(repeats):
        if ort_before:
            fastest_session_options(layer, x, threads=threads)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = sepconv.optimize(layer, x)
        seconds.append(time.perf_counter() - start)
        name = choice_name(fast)
        counts[name] += 1
        models.setdefault(name, fast)
    fused = FusedSeparableConv2d(layer.depthwise, layer.pointwise, pad=layer.pad)
    calls = {"fused kernel": inference_call(fused, x_nhwc)}
    for name, fast in models.items():
        calls[name] = inference_call(fast.model, x.contiguous(memory_format=fast.memory_format))
    # as optimize times them: ONNX Runtime choices apart from the others (their idle threads may spin)
    timings = time_candidates(calls, x, rounds, target_s=0.02,
                              apart=[name for name in calls if name.startswith("onnxruntime")])
    ms = {name: 1e3 * t.median for name, t in timings.items()}
    ratios = {name: ms[name] / ms["fused kernel"] for name in models}
    slower = sum(counts[name] for name in models if ratios[name] > SLOWER)
    return {"shape": case.name, "batch": case.batch, "choices": dict(counts), "median_ms": ms,
            "vs_fused_kernel": ratios, "calls_slower": slower, "optimize_s": seconds}


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], threads=2, rounds=11)
    p.add_argument("--repeats", type=int, default=12, help="optimize calls per shape")
    p.add_argument("--no-ort-before", action="store_true",
                   help="do not configure an ONNX Runtime session of the layer before each optimize call")
    args, suites = parse_suite_args(p, argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if not native.available():
        p.exit(2, f"bench_optimize_choices: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    ort_before = not args.no_ort_before
    if ort_before and not onnxruntime_available():
        p.exit(2, "bench_optimize_choices: needs onnx and onnxruntime (pip install 'sepconv[onnx]'), "
                  "or --no-ort-before\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    out = Path(args.out) if args.out else HERE / "results" / f"optimize-choices-cpu-{args.threads}thread"
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            row = run_shape(case, args.repeats, args.rounds, args.threads, ort_before)
            rows.append(row)
            print(f"{case.name:>24}: " + ", ".join(f"{name} x{n} ({row['vs_fused_kernel'][name]:.2f}x)"
                                                 for name, n in row["choices"].items()), flush=True)
    calls = sum(sum(r["choices"].values()) for r in rows)
    slower = sum(r["calls_slower"] for r in rows)
    record = {"machine": machine_info(), "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
              "ort_before": ort_before, "slower_than": SLOWER, "shapes": rows,
              "summary": {"calls": calls, "calls_slower": slower, "share_slower": slower / calls,
                          "optimize_s_median": sorted(s for r in rows for s in r["optimize_s"])[calls // 2]}}
    atomic_write_bytes(out / "optimize_choices.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"{slower} of {calls} optimize calls kept a choice more than {SLOWER}x the fused kernel's time; "
          f"wrote {out / 'optimize_choices.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
