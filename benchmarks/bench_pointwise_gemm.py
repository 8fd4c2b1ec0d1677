"""The 1x1 training engine's GEMMs: sepconv's C kernel against oneDNN's 1x1 convolution, per suite shape.

    python benchmarks/bench_pointwise_gemm.py [--threads 1] [--rounds 11] [--suite ...] [--out DIR]

For every suite shape with more than 4 input channels (float32, channels-last, the pixels of the depthwise step's
output), side by side in interleaved rounds (`sepconv.backends.clock.time_candidates`: the calling thread's CPU
time with one thread, else wall time), each call allocating its output as in a training step:

* the 1x1 step's forward pass, `mid @ W^T`, and its input gradient, `grad_y @ W`: oneDNN 1x1 convolutions
  (`torch.mkldnn_convolution`, the input gradient's weight transposed into a copy, as the 'gemm' training engine
  ran them before) against sepconv's C kernel (`sepconv_gemm_f32` through
  `sepconv.backends.training.matmul_bt`, which hands forward passes of few pixels to `torch.mm`: that hand-off is
  switched off here), and the forward pass as `torch.mm` of the pixels, in ms, and the kernel's GFLOP/s;
* a whole separable layer's training step (forward, backward of a fixed output gradient; depthwise step on the
  'dwgrad' engine where it applies, else eager), with the 1x1 step on the 'gemm' engine, its forward and input
  gradient on oneDNN (`step_onednn`) or as shipped (`step_kernel`), and on eager PyTorch (`step_eager`: what
  `tune_training` weighs the engine against), in ms.

Writes `pointwise_gemm.json` (with the machine) into --out (default
`benchmarks/results/pointwise-gemm-cpu-<threads>thread`).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import torch

import sepconv
from sepconv import SeparableConv2d
from sepconv.backends import native, training
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import SUITES, parse_suite_args, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent
KERNEL_CONV1X1 = training._conv1x1


def onednn_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias, *, transposed: bool = False) -> torch.Tensor:
    """What the 'gemm' engine ran before the C kernel: a oneDNN 1x1 convolution in channels-last."""
    if transposed:
        cout, cin = weight.shape[:2]
        weight = weight.reshape(cout, cin).t().reshape(cin, cout, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.mkldnn_convolution(x, weight.contiguous(), bias, [0, 0], [1, 1], [1, 1], 1)


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0])
    args, suites = parse_suite_args(p, argv)
    if not native.available() or not torch.backends.mkldnn.is_available():
        p.exit(2, f"bench_pointwise_gemm: needs sepconv's C kernels and oneDNN "
                  f"({native.unavailable_reason() or 'PyTorch without oneDNN'})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()  # every candidate allocates its output: no page faults in any of them
    out = Path(args.out) if args.out else HERE / "results" / f"pointwise-gemm-cpu-{args.threads}thread"
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            spec = case.spec
            cin, cout = spec.in_channels, spec.out_channels
            if cin <= 4:
                continue
            torch.manual_seed(0)
            layer = SeparableConv2d(cin, cout, spec.kernel_size, spec.stride, spec.padding, bias=False)
            for conv, engine in ((layer.depthwise, "dwgrad"), (layer.pointwise, "gemm")):
                if training.engine_applies(conv, engine):
                    training.use_engine(conv, engine)
            x = torch.randn(case.batch, cin, *case.size).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                mid = layer.depthwise(x).contiguous(memory_format=torch.channels_last)
            gy = torch.randn(mid.shape[0], cout, *mid.shape[2:]).contiguous(memory_format=torch.channels_last)
            w = layer.pointwise.weight.detach()
            x.requires_grad_(True)

            def step(conv1x1):
                def run():
                    training._conv1x1 = conv1x1
                    try:
                        layer.zero_grad(set_to_none=True)
                        x.grad = None
                        layer(x).backward(gy)
                    finally:
                        training._conv1x1 = KERNEL_CONV1X1
                return run

            def raw_kernel(*args, **kwargs):
                before, training._TRANSPOSE_MIN_ROWS = training._TRANSPOSE_MIN_ROWS, 0
                try:
                    return KERNEL_CONV1X1(*args, **kwargs)
                finally:
                    training._TRANSPOSE_MIN_ROWS = before

            pixels, w2 = training._pixels(mid), w.reshape(cout, cin)
            eager = copy.deepcopy(layer)
            training.untune_training(eager.pointwise)

            def eager_step():
                eager.zero_grad(set_to_none=True)
                x.grad = None
                eager(x).backward(gy)

            calls = {"forward_onednn": lambda: onednn_conv1x1(mid, w, None),
                     "forward_kernel": lambda: raw_kernel(mid, w, None),
                     "forward_mm": lambda: torch.mm(pixels, w2.t()),
                     "input_grad_onednn": lambda: onednn_conv1x1(gy, w, None, transposed=True),
                     "input_grad_kernel": lambda: KERNEL_CONV1X1(gy, w, None, transposed=True),
                     "step_onednn": step(onednn_conv1x1), "step_kernel": step(KERNEL_CONV1X1), "step_eager": eager_step}
            with torch.no_grad():
                for name in ("forward", "input_grad"):
                    a, b = calls[f"{name}_onednn"](), calls[f"{name}_kernel"]()
                    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)
            t = time_candidates(calls, x, rounds=args.rounds)
            ms = {k: 1e3 * v.median for k, v in t.items()}
            gflop = 2 * mid.shape[0] * mid.shape[2] * mid.shape[3] * cin * cout / 1e9
            ratio = {k: ms[f"{k}_kernel"] / ms[f"{k}_onednn"] for k in ("forward", "input_grad", "step")}
            rows.append({"shape": case.name, "batch": case.batch, "median_ms": ms,
                         "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()}, "kernel_vs_onednn": ratio,
                         "forward_kernel_vs_mm": ms["forward_kernel"] / ms["forward_mm"],
                         "step_kernel_vs_eager": ms["step_kernel"] / ms["step_eager"],
                         "kernel_gflops": {k: gflop / (ms[f"{k}_kernel"] / 1e3) for k in ("forward", "input_grad")}})
            print(f"{case.name:>24}: forward {ms['forward_onednn']:.3f} -> {ms['forward_kernel']:.3f} ms "
                  f"({ratio['forward']:.2f}x), input grad {ms['input_grad_onednn']:.3f} -> "
                  f"{ms['input_grad_kernel']:.3f} ({ratio['input_grad']:.2f}x), step {ms['step_onednn']:.2f} -> "
                  f"{ms['step_kernel']:.2f} ({ratio['step']:.2f}x; eager 1x1 {ms['step_eager']:.2f}), forward "
                  f"torch.mm {ms['forward_mm']:.3f}", flush=True)
    summary = {k: {"median": statistics.median(r["kernel_vs_onednn"][k] for r in rows),
                   "min": min(r["kernel_vs_onednn"][k] for r in rows),
                   "max": max(r["kernel_vs_onednn"][k] for r in rows)} for k in ("forward", "input_grad", "step")}
    for key in ("forward_kernel_vs_mm", "step_kernel_vs_eager"):
        values = [r[key] for r in rows]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    print("kernel / oneDNN: " + ", ".join(f"{k} median {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
                                          for k, v in summary.items() if k in ("forward", "input_grad", "step")))
    print(f"forward kernel / torch.mm median {summary['forward_kernel_vs_mm']['median']:.2f}, step (kernel engine) / "
          f"step (eager 1x1) median {summary['step_kernel_vs_eager']['median']:.2f}")
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(), "summary": summary, "shapes": rows}
    atomic_write_bytes(out / "pointwise_gemm.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'pointwise_gemm.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
