"""The fused layer's time by where its output lands: one output tensor rewritten, or a new one per call.

    python benchmarks/bench_output_state.py [--threads 1] [--rounds 9] [--suite ...] [--out DIR]   # about 2 minutes

A layer timed alone (as `bench_isa.py` and `sepconv bench` time it) writes a new output tensor at every call,
usually memory the caches no longer hold: with plain stores each output line is first read from memory (the
store needs the line), then written back, twice the bytes the roofline counts for the output; non-temporal
stores write it once, around the caches. Inside a network the next layer then reads it, from the caches after
plain stores and from memory after streamed ones, which a layer timed alone does not show
(`bench_networks.py` times the trade in whole networks). For every suite shape, side by side in interleaved
rounds, in ms and as a fraction of the fused layer's roofline bound (`sepconv.bench.suites.fused_bound_s`, the
roofline measured first):

* `reused_plain`: the kernel (through its argument array) writing one preallocated output, plain stores: the
  output's lines stay in the caches between calls where they fit;
* `reused_streamed`: the same output, non-temporal stores;
* `new_plain`: the layer's `forward`, a new output per call, plain stores;
* `new_streamed`: the same with non-temporal stores (`STREAM_MIN_BYTES` = 0).

Writes `output_state.json` (with the machine and the roofline) into --out (default
`benchmarks/results/output-state-cpu-<threads>thread`).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from sepconv.backends import fused as fused_module
from sepconv.backends import native
from sepconv.backends.fused import FusedSeparableConv2d, fused_available, fused_unavailable_reason
from sepconv.bench.roofline import measure_roofline
from sepconv.bench.suites import SUITES, fused_bound_s, parse_suite_args, separable_case, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved

HERE = Path(__file__).resolve().parent
NEVER = 2**62  # a STREAM_MIN_BYTES no output reaches


def case_calls(case) -> dict:
    """The four candidates of the module docstring for one suite shape."""
    layer, x = separable_case(case)
    fused = FusedSeparableConv2d(layer.eval().depthwise, layer.pointwise)
    n, _, h, w = x.shape
    ho, wo, plan_args = fused._plan(n, h, w, max(1, torch.get_num_threads()))
    y = torch.empty((n, fused.out_channels, ho, wo)).contiguous(memory_format=torch.channels_last)
    m = fused_module
    lib = native.load()[0]

    def direct(stream: int):
        args = fused._kernel_args(plan_args, x, y)
        args[m._ARG_STREAM] = stream

        def call():
            if lib.sepconv_fused_dwpw_args(args.buffer_info()[0]):
                raise RuntimeError("bench_output_state: the fused kernel failed")
        call.keeps = (x, y)  # passed by address: they must live as long as the call
        return call

    def layer(threshold: int):
        def call():
            m.STREAM_MIN_BYTES = threshold
            return fused(x)
        return call

    with torch.inference_mode():
        expected = fused(x)
        direct(0)()
    if not torch.equal(y, expected):
        raise SystemExit(f"bench_output_state: {case.name}: the direct kernel call does not compute the layer")
    return {"reused_plain": direct(0), "reused_streamed": direct(1), "new_plain": layer(NEVER), "new_streamed": layer(0)}


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=9)
    args, suites = parse_suite_args(p, argv)
    if not fused_available():
        print(f"bench_output_state: the fused kernel is not available: {fused_unavailable_reason()}")
        return 1
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else HERE / "results" / f"output-state-cpu-{args.threads}thread"
    roofline = measure_roofline(rounds=3)
    default = fused_module.STREAM_MIN_BYTES
    rows = []
    try:
        for case in (case for suite in suites for case in SUITES[suite]()):
            bound_ms = 1e3 * fused_bound_s(case, roofline)
            with torch.inference_mode():
                t = interleaved(case_calls(case), rounds=args.rounds, target_s=0.05)
            fused_module.STREAM_MIN_BYTES = default
            ms = {k: 1e3 * v.median for k, v in t.items()}
            row = {"shape": case.name, "batch": case.batch, "bound_ms": bound_ms, "median_ms": ms,
                   "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()},
                   "of_bound": {k: bound_ms / v for k, v in ms.items()}}
            rows.append(row)
            print(f"{case.name:>24}: bound {bound_ms:.3f} ms; " + ", ".join(
                f"{k} {v:.3f} ({row['of_bound'][k]:.2f})" for k, v in ms.items()), flush=True)
    finally:
        fused_module.STREAM_MIN_BYTES = default
    summary = {k: {"median": statistics.median(r["of_bound"][k] for r in rows),
                   "least": min(r["of_bound"][k] for r in rows)} for k in rows[0]["of_bound"]}
    print("of the bound: " + ", ".join(f"{k} median {v['median']:.2f} least {v['least']:.2f}"
                                       for k, v in summary.items()))
    record = {"machine": machine_info(), "kernel_isa": native.isa(), "threads": args.threads, "rounds": args.rounds,
              "clock": "wall", "roofline": {"peak_gflops": roofline.peak_flops / 1e9,
                                            "bandwidth_gbs": roofline.bandwidth / 1e9},
              "of_bound_summary": summary, "shapes": rows}
    atomic_write_bytes(out / "output_state.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'output_state.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
