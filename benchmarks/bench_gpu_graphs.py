"""GPU-side time of the standard, separable and fused layers: each timed as a CUDA graph of repeated calls.

``sepconv bench --device cuda`` times calls as a PyTorch user makes them; on
a large GPU the suite's layers (batch 1-32) take 20-100 us per call, which
is the host's launch and dispatch cost more than the GPU's work. Here each
candidate's forward is captured ``--repeat`` times into one CUDA graph and
the graph's replay is timed (interleaved rounds, medians), so the launch
cost is paid once per ``--repeat`` calls: what is left is the GPU's time per
call. Forward only (inference), float32 (TF32 as PyTorch's convolutions
default to) or ``--dtype bfloat16``.

    python benchmarks/bench_gpu_graphs.py --suite vgg_blocks --batch 32 --batch 256 --out FILE.json

(records: ``results/gpu-<card>/graphs-vgg-fp32-b32-b256.json`` and ``graphs-mbv1-fp32-b32.json``)
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from sepconv.utils.io import atomic_write_bytes
from sepconv.bench import mobilenet_v1_suite, vgg_blocks_suite
from sepconv.bench.roofline import measure_roofline
from sepconv.bench.suites import _layouts, fused_bound_s
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved
from sepconv.cost import conv_cost, separable_cost
from sepconv.backends.cuda_graph import capture
from triton_fused import TritonFusedSeparableConv2d
from sepconv.layers import SeparableConv2d
from sepconv.layers._common import conv_module


def measure_cases(cases, measure, describe, record: dict, out, budget_s: float = float("inf")) -> list[dict]:
    """``measure(case)`` for each of ``cases`` in turn, each row printed as ``describe(case, row)``; a case that
    raises is reported and skipped, and none starts once ``budget_s`` seconds have passed. With ``out``, ``record``
    with the rows so far as ``"cases"`` is written there atomically after each case: a run stopped early keeps what
    it measured. Returns the rows."""
    rows, start = [], time.monotonic()
    for case in cases:
        if time.monotonic() - start > budget_s:
            print(f"budget of {budget_s:.0f} s spent: {case.name} and later cases left out", flush=True)
            break
        try:
            row = measure(case)
        except Exception:  # one case failing leaves the others' numbers
            traceback.print_exc()
            continue
        rows.append(row)
        print(describe(case, row), flush=True)
        if out:
            atomic_write_bytes(Path(out), json.dumps({**record, "cases": rows}, indent=2).encode())
    return rows


def graphed(fn, repeat: int):
    """``fn`` run ``repeat`` times, captured in one CUDA graph (after warm-up calls); returns the graph's replay."""
    graph, _ = capture(fn, repeat=repeat)
    return graph.replay


def run(case, roof, dtype, repeat, rounds):
    spec = case.spec
    torch.manual_seed(0)
    x = torch.randn(case.batch, spec.in_channels, *case.size, device="cuda", dtype=dtype)
    # the suite's modules: NCHW and channels-last copies with the same weights (sepconv bench builds the same)
    std = _layouts(lambda: conv_module(spec)[0].to("cuda", dtype).eval(), x)
    sep = _layouts(lambda: SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride,
                                           spec.padding, bias=False).to("cuda", dtype).eval(), x)
    fns = {f"{label}/{layout}": (lambda m=m, xi=xi: m(xi))
           for label, pair in (("standard", std), ("separable", sep)) for layout, (m, xi) in pair.items()}
    sep_l, xl = sep["nhwc"]
    fused = TritonFusedSeparableConv2d(sep_l.depthwise, sep_l.pointwise, pad=sep_l.pad)
    fns["separable/fused"] = lambda: fused(xl)
    replays = {name: graphed(fn, repeat) for name, fn in fns.items()}
    t = interleaved(replays, rounds=rounds, target_s=0.02, device=torch.device("cuda"))
    ms = {name: 1e3 * v.median / repeat for name, v in t.items()}
    std_cost = conv_cost(spec, case.size, batch=case.batch, dtype=dtype)
    sep_cost = separable_cost(spec, case.size, batch=case.batch, dtype=dtype)
    mac_ratio = sep_cost.macs / std_cost.macs
    best_std = min(ms["standard/nchw"], ms["standard/nhwc"])
    eager_sep = min(ms["separable/nchw"], ms["separable/nhwc"])
    std_bound = roof.bound_s(std_cost.in_bounds_flops, std_cost.bytes)  # taps on zero padding skipped
    sep_bound = sum(roof.bound_s(s.in_bounds_flops, s.bytes) for s in sep_cost.stages)
    return {"case": case.name, "batch": case.batch, "mac_ratio": mac_ratio, "ms": ms,
            "realized_eager": best_std / eager_sep * mac_ratio,
            "realized_fused": best_std / ms["separable/fused"] * mac_ratio,
            "fused_vs_eager_separable": eager_sep / ms["separable/fused"],
            "roofline_realized_unfused": std_bound / sep_bound * mac_ratio,
            "roofline_realized_fused": std_bound / fused_bound_s(case, roof, dtype) * mac_ratio,
            "fused_config": [list(c) for c in fused.configs.values()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, action="append", help="suite batch sizes (repeatable; default 32)")
    p.add_argument("--suite", choices=("vgg_blocks", "mobilenet_v1", "all"), default="all")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--repeat", type=int, default=20, help="calls per graph (default 20)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    for name, values in (("--batch", args.batch or [32]), ("--repeat", [args.repeat]), ("--rounds", [args.rounds])):
        if min(values) < 1:
            p.error(f"{name} must be >= 1, got {min(values)}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, args.dtype)
    roof = measure_roofline(torch.device("cuda"), matmul_n=8192, copy_mib=1024, rounds=5, dtype=dtype,
                            conv_batch=32)
    info = machine_info("cuda")
    info.update(dtype=args.dtype, repeat=args.repeat)
    cases = [case for batch in args.batch or [32]
             for case in ((vgg_blocks_suite(batch=batch) if args.suite in ("vgg_blocks", "all") else [])
                          + (mobilenet_v1_suite(batch=batch) if args.suite in ("mobilenet_v1", "all") else []))]

    def describe(case, r):
        ms = r["ms"]
        return (f"{case.name:24s} b{case.batch:<4d} std {min(ms['standard/nchw'], ms['standard/nhwc']):8.4f} ms  "
                f"sep {min(ms['separable/nchw'], ms['separable/nhwc']):8.4f}  fused {ms['separable/fused']:8.4f}  "
                f"realized eager {r['realized_eager']:.2f} fused {r['realized_fused']:.2f}  roofline ceiling "
                f"unfused {r['roofline_realized_unfused']:.2f} fused {r['roofline_realized_fused']:.2f}")

    measure_cases(cases, lambda case: run(case, roof, dtype, args.repeat, args.rounds), describe,
                  {"machine": info, "roofline": roof.as_dict()}, args.out)

if __name__ == "__main__":
    main()
