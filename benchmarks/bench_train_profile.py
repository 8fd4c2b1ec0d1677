"""Where a separable layer's training step spends its time, per kernel ISA: torch.profiler, grouped by kind of work.

    python benchmarks/bench_train_profile.py [--threads 1] [--steps 10] [--clock wall|cpu] [--shapes NAME,...]
                                             [--out DIR]

For a few suite shapes (`--shapes`: suite shape names, default 128 -> 128 @56 and VGG 64 -> 64 @32 and
128 -> 128 @16), one `SeparableConv2d` (channels-last, float32) after `sepconv.tune_training` takes training
steps (forward, backward of a fixed output gradient); for each kernel variant this CPU runs (`SEPCONV_ISA`: the
native build, and `avx2` where narrower) the profiler's self CPU time per operator is summed into:

* `fused_forward`, `fused_backward`: the 'fused' training engine's two kernels (`sepconv::fused_dwpw`, both steps'
  forward pass; `sepconv::dwpw_backward`, every gradient but, for a large 1x1 weight, the 1x1 weight's);
* `depthwise_forward`, `pointwise_forward`: the forward convolutions (told apart by the weight's shape);
* `depthwise_backward`: sepconv's weight-gradient kernel (`sepconv::depthwise_wgrad`), oneDNN's depthwise
  backward, and the 'flip' engine's input gradient (a convolution run inside the backward pass);
* `pointwise_backward`: the 1x1 step's gradients: sepconv's GEMM (`sepconv::gemm_atb`, weight gradient),
  `aten::mm` or oneDNN's convolution backward;
* `elementwise`: copies, adds, fills, reductions, layout conversions;
* `allocation`: `aten::empty*` (tensor allocation and the page faults it takes);
* `autograd_and_other`: the rest (autograd bookkeeping, Python-side dispatch).

The standard convolution's step (eager, channels-last) is timed beside it for the realized ratio
((t_standard / t_separable) / MAC ratio); `--clock cpu` times the steps on the calling thread's CPU time (one
thread: PyTorch's CPU backward runs on the thread that calls it). The profiler's operator times are wall time. Writes `train_profile.json` (with the machine) into --out (default
`benchmarks/results/trainprofile-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from sepconv import SeparableConv2d, tune_training
from sepconv.backends import native
from sepconv.backends.clock import cpu_time_interleaved
from sepconv.bench.suites import mobilenet_v1_suite, vgg_blocks_suite
from sepconv.cost import conv_cost, separable_cost
from sepconv.layers._common import conv_module
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved

HERE = Path(__file__).resolve().parent
#: The kernel variant the caller asked for (``SEPCONV_ISA``; e.g. ``avx2`` with the other libraries capped at AVX2,
#: benchmarks/README.md): what the candidates other than the per-build ones run, and what is set back after them.
CALLER_ISA = os.environ.get("SEPCONV_ISA") or "native"


ELEMENTWISE = ("copy", "add", "mul", "fill", "zero", "sum", "relu", "contiguous", "clone", "to", "div", "cat",
               "threshold", "as_strided", "view", "reshape", "t", "transpose", "permute")


def _stage(event) -> str:
    """``depthwise`` or ``pointwise`` from a convolution's weight shape (C, 1, kh, kw) / (Cout, Cin, 1, 1)."""
    for shape in event.input_shapes or []:
        if len(shape) == 4 and shape[1] == 1 and shape[2] * shape[3] > 1:
            return "depthwise"
    return "pointwise"


def _in_backward(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if "evaluate_function" in parent.name or "Backward" in parent.name:
            return True
        parent = parent.cpu_parent
    return False


def category(event) -> str:
    """The kind of work an operator event is (see the module docstring)."""
    name = event.name
    if name == "sepconv::fused_dwpw":
        return "fused_forward"
    if name == "sepconv::dwpw_backward":
        return "fused_backward"
    if name == "sepconv::depthwise_wgrad":
        return "depthwise_backward"
    if name == "sepconv::gemm_atb":
        return "pointwise_backward"
    if "conv" in name or "mkldnn" in name:
        return f"{_stage(event)}_{'backward' if _in_backward(event) or 'backward' in name else 'forward'}"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
        return "pointwise_backward" if _in_backward(event) else "pointwise_forward"
    if name.startswith("aten::empty") or name in ("aten::resize_",):
        return "allocation"
    if name.startswith("aten::") and any(name[6:].startswith(k) or name[6:].endswith(k) for k in ELEMENTWISE):
        return "elementwise"
    return "autograd_and_other"


def step_fn(module, x, gy):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(gy)
    return step


def profile_step(step, steps: int) -> dict:
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    per_op: dict[str, float] = {}
    groups: dict[str, float] = {}
    for event in prof.events():
        ms = event.self_cpu_time_total / 1e3 / steps  # ms per step
        per_op[event.name] = per_op.get(event.name, 0.0) + ms
        kind = category(event)
        groups[kind] = groups.get(kind, 0.0) + ms
    top = dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:12])
    return {"ms_per_step_by_kind": groups, "top_ops_ms_per_step": top, "profiled_ms_per_step": sum(per_op.values())}


def run_case(case, variants, steps: int, rounds: int, clock: str = "wall") -> dict:
    torch.manual_seed(0)
    spec = case.spec
    x = torch.randn(case.batch, spec.in_channels, *case.size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    std = conv_module(spec)[0].to(memory_format=torch.channels_last)
    with torch.no_grad():
        gy_shape = std(x).shape
    gy = torch.randn(gy_shape).contiguous(memory_format=torch.channels_last)
    out = {"shape": case.name, "batch": case.batch, "variants": {}}
    fns = {"standard": step_fn(std, x, gy)}
    for request, name in variants:
        os.environ["SEPCONV_ISA"] = request
        sep = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                              bias=False).to(memory_format=torch.channels_last)
        engines = tune_training(sep, x.detach())
        step = step_fn(sep, x, gy)
        out["variants"][name] = {"engines": engines, **profile_step(step, steps)}

        def timed(step=step, request=request):
            os.environ["SEPCONV_ISA"] = request
            step()
        fns[f"separable_{name}"] = timed
    if clock == "cpu":
        timings = cpu_time_interleaved(fns, rounds=rounds, target_s=0.05)
    else:
        timings = interleaved(fns, rounds=rounds, target_s=0.02)
    os.environ["SEPCONV_ISA"] = CALLER_ISA
    ms = {k: 1e3 * v.median for k, v in timings.items()}
    mac_ratio = conv_cost(spec, case.size).macs / separable_cost(spec, case.size).macs
    out["median_ms"] = ms
    out["theoretical_speedup"] = mac_ratio
    out["train_realized"] = {k: (ms["standard"] / v) / mac_ratio for k, v in ms.items() if k != "standard"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the step times on this thread's CPU time (one thread only; see bench_isa.py)")
    p.add_argument("--shapes", help="suite shape names, comma-separated (default: 'mbv1 128->128 @56 s1', "
                                    "'vgg 64->64 @32', 'vgg 128->128 @16')")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error(f"--clock cpu needs --threads 1 (got {args.threads})")
    torch.set_num_threads(args.threads)
    variants = []
    for request in ("native", "avx2"):
        os.environ["SEPCONV_ISA"] = request
        name = native.isa()
        if name is not None and name not in [n for _, n in variants]:
            variants.append((request, name))
    os.environ["SEPCONV_ISA"] = CALLER_ISA
    suite = {case.name: case for case in (*mobilenet_v1_suite(), *vgg_blocks_suite())}
    names = args.shapes.split(",") if args.shapes else ["mbv1 128->128 @56 s1", "vgg 64->64 @32", "vgg 128->128 @16"]
    unknown = [name for name in names if name not in suite]
    if unknown:
        p.error(f"--shapes: unknown shape(s) {', '.join(map(repr, unknown))}; the suite has {', '.join(suite)}")
    cases = [suite[name] for name in names]
    rows = []
    for case in cases:
        row = run_case(case, variants, args.steps, args.rounds, args.clock)
        rows.append(row)
        print(case.name, json.dumps({k: {g: round(v, 3) for g, v in r["ms_per_step_by_kind"].items()}
                                     for k, r in row["variants"].items()}), row["median_ms"], flush=True)
    out = Path(args.out) if args.out else HERE / "results" / f"trainprofile-cpu-{args.threads}thread"
    record = {"machine": machine_info(), "threads": args.threads, "steps": args.steps, "clock": args.clock,
              "kernel_isas": [n for _, n in variants], "shapes": rows,
              "machine_after": {"loadavg_1_5_15": list(os.getloadavg())}}
    atomic_write_bytes(out / "train_profile.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'train_profile.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
