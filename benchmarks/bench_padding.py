"""Do convolution kernels compute the taps that fall on zero padding? Timed on the suite's standard convolutions.

    python benchmarks/bench_padding.py [--threads 1] [--rounds 7] [--out DIR]     # about a minute
    python benchmarks/bench_padding.py --device cuda [--batch 32] --out DIR       # cuDNN, under 45 s on an H100

`sepconv.cost` counts every tap (`macs`), as the seeds and most tools do, and also the taps that
read the input rather than its zero padding (`in_bounds_macs`). Which of the two a kernel
computes decides what its roofline bound is. For each standard 3x3 convolution of `sepconv
bench`'s suites (float32, channels-last) this times, side by side in interleaved rounds, the
convolution as the network runs it (padding 1 on an HxW map) and the same number of MACs with
no padding at all (padding 0 on an (H+2)x(W+2) map: same output size, same weight, every tap
in bounds), on two engines: oneDNN with the weight packed once (`sepconv.backends.onednn.PackedConv2d`,
what `sepconv.optimize` runs) and eager PyTorch (`nn.Conv2d`, which reorders the weight on every call);
with `--device cuda`, cuDNN (`nn.Conv2d` with `cudnn.benchmark`, TF32 as PyTorch's convolutions
default to), each candidate captured as a CUDA graph of 20 calls and timed by its replay (the
GPU's time, not the launches), every case at `--batch` (default 32). A kernel that computes every tap
takes the same time for both (time ratio 1); one that skips the padding takes the padded one's
in-bounds share of it (`in_bounds_macs / macs`, 0.84 for a 3x3 kernel on an 8x8 map).

Writes `padding.json` (with the machine) into --out (default
`benchmarks/results/padding-cpu-<threads>thread`, or `padding-cuda`).
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

# this directory's script (sys.path[0] when run as a script)
from bench_kernels import cpu_args
from torch import nn

from sepconv.utils.io import atomic_write_bytes
from sepconv.bench import mobilenet_v1_suite, vgg_blocks_suite
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call, interleaved
from sepconv.cost import conv_cost
from sepconv.backends.onednn import PackedConv2d, onednn_available

GRAPH_CALLS = 20  # calls per CUDA graph on --device cuda


def _more_args(p) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=None,
                   help="batch of every case (default: the suite's on CPU, 1 and 32; 32 on CUDA)")


def main(argv=None) -> int:
    args, out = cpu_args(__doc__.split("\n\n")[0], "padding", argv, more=_more_args)
    if args.batch is not None and args.batch < 1:
        print(f"bench_padding.py: error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_padding.py: error: --device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if cuda:
        from sepconv.backends.cuda_graph import capture
        torch.backends.cudnn.benchmark = True
        engines = ["cudnn"]
        out = out if args.out else out.parent / "padding-cuda"
        batch = args.batch or 32
    else:
        engines = ["eager"] + (["onednn"] if onednn_available() else [])
        batch = args.batch
    device = torch.device(args.device)
    rows = []
    for case in (mobilenet_v1_suite(**({"batch": batch} if batch else {}))
                 + vgg_blocks_suite(**({"batch": batch} if batch else {}))):
        spec, (h, w) = case.spec, case.size
        (ph, _), (pw, _) = spec.padding
        cost = conv_cost(spec, case.size, batch=case.batch)
        torch.manual_seed(0)
        conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, (ph, pw), bias=False)
        bare = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, 0, bias=False)
        bare.weight.data.copy_(conv.weight.data)
        x = torch.randn(case.batch, spec.in_channels, h, w).contiguous(memory_format=torch.channels_last)
        xb = torch.randn(case.batch, spec.in_channels, h + 2 * ph, w + 2 * pw).contiguous(
            memory_format=torch.channels_last)
        conv, bare, x, xb = (t.to(device, memory_format=torch.channels_last) for t in (conv, bare, x, xb))
        candidates = {}
        for engine in engines:
            padded, unpadded = (PackedConv2d(conv), PackedConv2d(bare)) if engine == "onednn" else (conv, bare)
            candidates[f"{engine}/padded"] = inference_call(padded, x)
            candidates[f"{engine}/unpadded"] = inference_call(unpadded, xb)
        with torch.no_grad():
            assert conv(x).shape == bare(xb).shape  # same output size, so the same MACs
        calls = 1
        if cuda:  # each candidate's replay runs GRAPH_CALLS calls: the GPU's time, launches paid once
            candidates = {k: capture(fn, repeat=GRAPH_CALLS)[0].replay for k, fn in candidates.items()}
            calls = GRAPH_CALLS
        t = interleaved(candidates, rounds=args.rounds, target_s=0.02, device=device)
        row = {"case": case.name, "batch": case.batch, "in_bounds_share": cost.in_bounds_macs / cost.macs,
               "ms": {k: 1e3 * v.median / calls for k, v in t.items()}}
        for engine in engines:
            row[f"{engine}_time_ratio"] = t[f"{engine}/padded"].median / t[f"{engine}/unpadded"].median
            # per-round ratios: how much of the ratio is noise
            pairs = zip(t[f"{engine}/padded"].samples, t[f"{engine}/unpadded"].samples)
            ratios = sorted(a / b for a, b in pairs)
            row[f"{engine}_ratio_range"] = [ratios[0], ratios[-1]]
            row[f"{engine}_gflops_in_bounds"] = 2 * cost.in_bounds_macs / 1e9 / (t[f"{engine}/padded"].median / calls)
        rows.append(row)
        print(f"{case.name:24s} b{case.batch:<3d} in-bounds share {row['in_bounds_share']:.3f}; padded / unpadded time: "
              + ", ".join(f"{e} {row[f'{e}_time_ratio']:.3f}" for e in engines), flush=True)
    summary = {f"{e}_median_ratio_over_share": statistics.median(r[f"{e}_time_ratio"] / r["in_bounds_share"]
                                                                 for r in rows) for e in engines}
    record = {"machine": machine_info(device), "device": args.device, "threads": args.threads,
              "dtype": "float32 (TF32 convolutions)" if cuda else "float32", "summary": summary, "rows": rows}
    atomic_write_bytes(out / "padding.json", json.dumps(record, indent=1).encode())
    print("median of (time ratio / in-bounds share): "
          + ", ".join(f"{k.split('_')[0]} {v:.3f}" for k, v in summary.items())
          + " (1: the padding is skipped; 1 / share: every tap is computed)")
    print(f"wrote {out / 'padding.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
