"""What a spinning ONNX Runtime session costs the PyTorch work that runs after it, per suite shape.

    python benchmarks/bench_ort_spinning.py [--threads 2] [--rounds 9] [--suite ...] [--out DIR]

For every shape (float32, inference, one `SeparableConv2d` without bias), with `--threads` intra-op threads for
both ONNX Runtime and PyTorch (the fused kernel shares PyTorch's OpenMP threads), each of these is timed in
rounds of its own, in this order, so no candidate's idle threads are left over from another's:

* `fused_alone`: `FusedSeparableConv2d` on the channels-last input;
* `ort_sleeping_alone`, `ort_spinning_alone`: the layer exported to ONNX, in a session whose idle intra-op threads
  sleep, or spin-wait for the next run (`sepconv.to_onnxruntime(spinning=...)`);
* `pair_sleeping`, `pair_spinning`: one session run, then one fused-kernel call, per call: a process that runs
  ONNX Runtime and PyTorch work by turns, as `sepconv.optimize` does while it times its candidates and as a model
  with both kinds of layers would.

`fused_after_<variant>` = pair - the session alone: what the fused call took right after a run of each session.
This is the measurement behind `fastest_session_options(alongside=...)`. Writes `ort_spinning.json` (with the
machine) into --out (default `benchmarks/results/ort-spinning-cpu-<threads>thread`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sepconv import SeparableConv2d, to_onnxruntime
from sepconv.backends.fused import FusedSeparableConv2d, fused_available
from sepconv.backends.onnxruntime import onnxruntime_available
from sepconv.bench.suites import SUITES, parse_suite_args, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call, interleaved

HERE = Path(__file__).resolve().parent


def run_shape(case, threads: int, rounds: int) -> dict:
    spec = case.spec
    torch.manual_seed(0)
    layer = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                            bias=False).eval()
    x = torch.randn(case.batch, spec.in_channels, *case.size)
    fused = inference_call(FusedSeparableConv2d(layer.depthwise, layer.pointwise),
                           x.contiguous(memory_format=torch.channels_last))
    sessions = {name: inference_call(to_onnxruntime(layer, x, threads=threads, spinning=spin), x)
                for name, spin in (("sleeping", False), ("spinning", True))}

    def pair(session):
        def run():
            session()
            fused()
        return run

    order = [("fused_alone", fused)]
    for name in ("sleeping", "spinning"):  # sleeping first: no spinning threads left over when it is timed
        order += [(f"ort_{name}_alone", sessions[name]), (f"pair_{name}", pair(sessions[name]))]
    ms = {name: 1e3 * interleaved({name: fn}, rounds=rounds, target_s=0.02)[name].median for name, fn in order}
    for name in ("sleeping", "spinning"):
        ms[f"fused_after_{name}"] = ms[f"pair_{name}"] - ms[f"ort_{name}_alone"]
    return {"shape": case.name, "batch": case.batch, "median_ms": ms,
            "fused_after_spinning_vs_alone": ms["fused_after_spinning"] / ms["fused_alone"],
            "fused_after_sleeping_vs_alone": ms["fused_after_sleeping"] / ms["fused_alone"],
            "pair_spinning_vs_sleeping": ms["pair_spinning"] / ms["pair_sleeping"]}


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], threads=2, rounds=9)
    args, suites = parse_suite_args(p, argv, min_threads=2, why=" (one thread has no idle threads to spin)")
    if not (onnxruntime_available() and fused_available()):
        p.error("needs onnx and onnxruntime (pip install 'sepconv[onnx]') and the fused kernel (a C compiler)")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else HERE / "results" / f"ort-spinning-cpu-{args.threads}thread"
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            row = run_shape(case, args.threads, args.rounds)
            rows.append(row)
            ms = row["median_ms"]
            print(f"{row['shape']:>24}: fused alone {ms['fused_alone']:.3f} ms, after a sleeping run "
                  f"{ms['fused_after_sleeping']:.3f}, after a spinning run {ms['fused_after_spinning']:.3f}; "
                  f"pair spinning / sleeping {row['pair_spinning_vs_sleeping']:.2f}", flush=True)
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds, "shapes": rows}
    atomic_write_bytes(out / "ort_spinning.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'ort_spinning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
