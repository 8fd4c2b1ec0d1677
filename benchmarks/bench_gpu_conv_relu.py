"""Whole networks on CUDA: each convolution's ReLU fused into cuDNN's convolution vs PyTorch's separate ReLU.

    python benchmarks/bench_gpu_conv_relu.py [--batch 32 --batch 256] [--out FILE]

On a large GPU the separable networks are bound by memory traffic, not arithmetic
(``bench_networks.py --device cuda``): every convolution writes its output, and a
separate in-place ReLU reads and writes it again. ``torch.cudnn_convolution_relu``
applies the ReLU inside cuDNN's convolution (one write). This measurement replaces
every Conv2d followed by a ReLU (BatchNorm folded first; ``sepconv.backends.cudnn.fuse_conv_relu``)
by that operator, depthwise convolutions included (``conv_relu``) or left alone
(``conv_relu_not_depthwise``, what ``sepconv.optimize``'s ``cudnn_relu`` backend does),
and times MobileNetV1 and the VGG-block network, standard and separable, channels-last,
float32 with TF32, each forward replayed from a CUDA graph
(``sepconv.backends.cuda_graph.CudaGraphModel``), the three versions in interleaved rounds. Prints
and writes (JSON) the medians, their ratios to the separate-ReLU network and the largest
output difference. ``--device cpu`` checks the script (the fused modules run PyTorch's
operators there; no timing meaning).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

# this directory's script (sys.path[0] when run as a script)
from bench_networks import NETWORKS

import sepconv
import sepconv.backends.cuda_graph
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call, interleaved
from sepconv.backends.cudnn import fuse_conv_relu
from sepconv.models import build_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out")
    args = p.parse_args(argv)
    on_cuda = args.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    for flag, values in (("--batch", args.batch or []), ("--rounds", [args.rounds])):
        if any(v < 1 for v in values):
            p.error(f"{flag}: must be at least 1, got {min(values)}")
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch in args.batch or [32, 256]:
        for name, kwargs, shape in NETWORKS:
            for variant in ("standard", "separable"):
                torch.manual_seed(0)
                model = build_model(name, variant, **kwargs).eval()
                sepconv.fold_batchnorm(model)
                fusedm = copy.deepcopy(model)
                n = len(fuse_conv_relu(fusedm, depthwise=True))
                pwm = copy.deepcopy(model)
                fuse_conv_relu(pwm)
                x = torch.randn(batch, *shape[1:], device=args.device).to(
                    memory_format=torch.channels_last)
                models = {}
                try:
                    for key, m in (("separate_relu", model), ("conv_relu", fusedm), ("conv_relu_not_depthwise", pwm)):
                        m = m.to(args.device, memory_format=torch.channels_last)
                        models[key] = sepconv.backends.cuda_graph.CudaGraphModel(m, x) if on_cuda else m
                    with torch.no_grad():
                        ref, out = models["separate_relu"](x), models["conv_relu"](x)
                except Exception as error:  # one failing configuration leaves the others' results
                    print(f"{name} {variant} b{batch}: failed: {type(error).__name__}: {error}", flush=True)
                    rows.append({"network": name, "variant": variant, "batch": batch, "error": str(error)})
                    continue
                diff = (ref - out).abs().max().item() / max(ref.abs().max().item(), 1e-30)
                t = interleaved({k: inference_call(m, x) for k, m in models.items()}, rounds=args.rounds,
                                target_s=0.05, device=x.device)
                ms = {k: 1e3 * v.median for k, v in t.items()}
                rows.append({"network": name, "variant": variant, "batch": batch, "fused_sites": n,
                             "median_ms": ms, "ratio": ms["conv_relu"] / ms["separate_relu"],
                             "ratio_not_depthwise": ms["conv_relu_not_depthwise"] / ms["separate_relu"],
                             "max_rel_diff": diff})
                print(f"{name:13s} {variant:9s} b{batch:<4d} {n:2d} sites  separate ReLU {ms['separate_relu']:.3f} ms"
                      f"  conv+ReLU {ms['conv_relu']:.3f} ms  ratio {rows[-1]['ratio']:.2f}  not depthwise {rows[-1]['ratio_not_depthwise']:.2f}  rel diff {diff:.1e}",
                      flush=True)
    machine = machine_info(args.device)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps({"machine": machine, "rows": rows}, indent=1).encode())
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
