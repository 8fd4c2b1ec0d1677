"""A separable layer's training step on the 'fused' engine against its steps on their own engines, per suite shape.

    python benchmarks/bench_fused_training.py [--threads 1] [--rounds 11] [--passes 1] [--suite ...] [--out DIR]

For every suite shape (float32, channels-last input, no biases, a fixed output gradient), side by side in
interleaved rounds (`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread, else
wall time), after `sepconv.keep_freed_memory()`:

* `steps`: the layer after `tune_training` with its own 'fused' choice undone: each convolution on the engine
  tuning chose for it (eager, 'gemm', 'flip', 'dwgrad'), what `tune_training` offered before the layer engine;
* `fused`: the layer on the 'fused' engine (`FusedSeparableStep`), where it applies (every suite shape: any stride);
* `tuned`: the layer as `tune_training` leaves it (the faster of the two, by its own shorter timing);
* `pointwise`: the 1x1 step alone on the depthwise output (input gradient included), the faster of eager and
  the 'gemm' engine: what the step would cost if the depthwise step were free.

`pointwise / <layer>` is the layer's training realized ratio against its training GEMM ceiling (what
`sepconv bench` reports as `train_realized_best / train_gemm_ceiling`, both sides measured here in one process).
`--passes N` runs the whole suite N times over (each layer tuned again): the first pass sits at the top level of
the record, the others under `passes`, and `summary_per_pass` has each pass's medians, so the spread between
passes (on a shared host, several hundredths of the medians) is in the record. Writes `fused_training.json` (with
the machine) into --out (default `benchmarks/results/fused-training-cpu-<threads>thread`).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import torch

import sepconv
from sepconv.backends import native, training
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import SUITES, parse_suite_args, separable_case, suite_parser, training_step
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0])
    p.add_argument("--passes", type=int, default=1, help="run the whole suite this many times: the spread between "
                                                           "passes")
    args, suites = parse_suite_args(p, argv)
    if args.passes < 1:
        p.error(f"--passes must be >= 1, got {args.passes}")
    if not native.available():
        p.exit(2, f"bench_fused_training: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()  # every candidate allocates its activations: no page faults in any of them
    out = Path(args.out) if args.out else HERE / "results" / f"fused-training-cpu-{args.threads}thread"
    passes = []
    for number in range(1, args.passes + 1):
        if args.passes > 1:
            print(f"pass {number}/{args.passes}", flush=True)
        rows = _suite_rows(suites, args.rounds)
        summary = _summary(rows)
        passes.append({"summary": summary, "shapes": rows})
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(), "summary": passes[0]["summary"],
              "shapes": passes[0]["shapes"], "summary_per_pass": [p["summary"] for p in passes]}
    if args.passes > 1:
        record["passes"] = passes[1:]  # the second pass on, each as the first is at the top level
    atomic_write_bytes(out / "fused_training.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'fused_training.json'}")
    return 0


def _suite_rows(suites: list, rounds: int) -> list:
    """One pass over the suites: per shape, the candidates' medians and their ratios to the ceiling."""
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            layer, x = separable_case(case)
            x.requires_grad_(True)  # every candidate is timed with the input's gradient: tuned for that too
            tuned = copy.deepcopy(layer)
            choices = training.tune_training(tuned, x)
            steps = copy.deepcopy(tuned)
            steps.__dict__.pop("_steps_engine", None)
            with torch.no_grad():
                mid = layer.depthwise(layer.pad(x)).contiguous(memory_format=torch.channels_last)
                grad = torch.randn_like(layer(x))
            mid.requires_grad_(True)
            pointwise_gemm = copy.deepcopy(layer.pointwise)
            training.use_engine(pointwise_gemm, "gemm")
            calls = {"steps": training_step(steps, x, grad), "tuned": training_step(tuned, x, grad),
                     "pointwise_eager": training_step(copy.deepcopy(layer.pointwise), mid, grad),
                     "pointwise_gemm": training_step(pointwise_gemm, mid, grad)}
            applies = training.engine_applies(layer, "fused")
            if applies:
                fused = copy.deepcopy(layer)
                training.use_engine(fused, "fused")
                calls["fused"] = training_step(fused, x, grad)
            t = time_candidates(calls, x, rounds=rounds)
            ms = {k: 1e3 * v.median for k, v in t.items()}
            ms.setdefault("fused", ms["steps"])  # where the engine does not apply the layer runs as its steps
            pointwise = min(ms["pointwise_eager"], ms["pointwise_gemm"])
            ratios = {k: pointwise / ms[k] for k in ("steps", "fused", "tuned")}
            rows.append({"shape": case.name, "batch": case.batch, "fused_applies": applies, "tuned_choices": choices,
                         "median_ms": ms, "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()},
                         "pointwise_ms": pointwise, "vs_ceiling": ratios,
                         "fused_vs_steps": ms["fused"] / ms["steps"]})
            print(f"{case.name:>24}: steps {ms['steps']:.2f} fused {ms['fused']:.2f} tuned {ms['tuned']:.2f} ms "
                  f"(layer: {choices.get('', 'eager')}), 1x1 step {pointwise:.2f}; vs ceiling: steps "
                  f"{ratios['steps']:.2f} fused {ratios['fused']:.2f} tuned {ratios['tuned']:.2f}", flush=True)
    return rows


def _summary(rows: list) -> dict:
    """Medians (min, max) over the shapes of each set-up's ratio to the ceiling, and of fused / steps where the
    engine applies; printed as well."""
    summary = {}
    for key in ("steps", "fused", "tuned"):
        values = [r["vs_ceiling"][key] for r in rows]
        summary[f"{key}_vs_ceiling"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    applied = [r["fused_vs_steps"] for r in rows if r["fused_applies"]]
    if applied:
        summary["fused_vs_steps"] = {"median": statistics.median(applied), "min": min(applied), "max": max(applied),
                                     "shapes": len(applied)}
    print("vs the training GEMM ceiling, median over the shapes: " + ", ".join(
        f"{k.split('_')[0]} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in summary.items()
        if k.endswith("_vs_ceiling")))
    if applied:
        print(f"fused / steps where it applies ({len(applied)} shapes): median {summary['fused_vs_steps']['median']:.2f}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
