"""Whole networks: theoretical vs realized saving of the separable variant, per execution path.

    python benchmarks/bench_networks.py [--threads 1] [--rounds 7] [--out DIR]
    python benchmarks/bench_networks.py --device cuda [--batch N] [--network NAME] [--dtype bfloat16] [--out DIR]

For MobileNetV1 (224x224, batch 1; the paper's "Conv MobileNet" as the standard
variant) and the seed's VGG-block network (32x32x3, batch 32, 10 classes), the
standard and separable variants are timed (inference forward, float32, eval
mode) by `sepconv.optimize(..., backends=("eager", "onnxruntime", "compile"))`,
which measures eager PyTorch in NCHW and channels-last, ONNX Runtime (when
installed) and `torch.compile`, in interleaved rounds. The
record holds every candidate's median, the theoretical speedup (MAC ratio from
`sepconv.cost.profile`) and the realized fraction per path:

* `eager`: best eager layout of each variant;
* `onnxruntime`: both variants in ONNX Runtime;
* `compile`: both variants under `torch.compile` (inductor, BatchNorm folded first);
* `optimize`: each variant on the path `sepconv.optimize` picked for it (its median in the
  first timing round; the picked path can differ from the fastest of that round where the
  two fastest were close and timed again).

With more than one thread, the separable variant's oneDNN/fused model and two ONNX Runtime
sessions (idle threads spinning, ONNX Runtime's default, and sleeping, sepconv's) are also
timed alone and interleaved with each other without pauses (`runtime_interference_ms`):
what one runtime's spinning idle workers cost the next, the reason `optimize` pauses
between samples when timing with several threads.

Where the picked path runs layers on the fused kernel, the picked model is also timed with
the kernel's large outputs on non-temporal stores (`sepconv.backends.fused.STREAM_MIN_BYTES`, the
default) against all outputs on plain stores (`fused_output_stores_ms`).

With `--device cuda` the candidates are eager PyTorch (NCHW, channels-last), the same with
each non-depthwise convolution's ReLU fused into cuDNN's convolution (`cudnn_relu`) and
each of these replayed from a CUDA graph (`cudagraph...`; float32 with cuDNN's algorithm
search on and TF32 as PyTorch's convolutions default to): at these batch sizes a large GPU
finishes each layer faster than the host launches it, so eager time is mostly launch cost
and the graph shows what the separable network's smaller arithmetic buys.
`--batch N` runs every network at batch N instead (the GPU busy for longer per layer),
`--network NAME` (repeatable) only the named networks, `--dtype bfloat16`/`float16` (CUDA
only) the models and input in that precision.

Each network's record also holds its roofline bound (`roofline_bound`, from this machine's
measured peak compute and bandwidth, `sepconv.bench.model_bound_s`): both variants' forward
passes with every layer at its bound, the separable one also with its depthwise -> pointwise
pairs fused perfectly, and the realized ratios these bounds allow.

Writes `networks.json` (with the machine and its roofline) into --out (default
`benchmarks/results/networks-cpu-<threads>thread`, or `networks-cuda`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

# this directory's script (sys.path[0] when run as a script)
from bench_kernels import time_output_stores

import sepconv
import sepconv.backends.fused
from sepconv.utils.io import atomic_write_bytes
from sepconv.bench.roofline import measure_roofline, model_bound_s
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import inference_call, interleaved
from sepconv.cost import profile
from sepconv.models import build_model
from sepconv.backends.onednn import onednn_available

HERE = Path(__file__).resolve().parent
NETWORKS = (
    ("mobilenet_v1", {"num_classes": 1000}, (1, 3, 224, 224)),
    ("vgg_blocks", {"num_classes": 10}, (32, 3, 32, 32)),
)


def roofline_bounds(name: str, kwargs: dict, shape: tuple[int, ...], roof, dtype: torch.dtype = torch.float32) -> dict:
    """Roofline lower bounds (ms) of both variants' forward pass (``sepconv.bench.model_bound_s``), the separable one
    also with each depthwise -> pointwise pair as one perfect fused kernel, and the realized ratios they cap."""
    prof = {v: profile(build_model(name, v, **kwargs).eval(), shape[1:]) for v in ("standard", "separable")}
    size = torch.empty((), dtype=dtype).element_size()
    std, sep, fused = (1e3 * model_bound_s(prof[v], roof, batch=shape[0], dtype_bytes=size, fuse_separable=f)
                       for v, f in (("standard", False), ("separable", False), ("separable", True)))
    theory = prof["standard"].total_macs / prof["separable"].total_macs
    return {"standard_ms": std, "separable_ms": sep, "separable_fused_ms": fused,
            "realized_ceiling_unfused": std / sep / theory, "realized_ceiling_fused": std / fused / theory}


def _stores_ab(fast, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """The picked model with the fused kernel's large outputs streamed (the default) vs all on plain stores."""
    default = sepconv.backends.fused.STREAM_MIN_BYTES
    return time_output_stores(fast, x, {f"streamed_from_{default}_bytes": default, "plain_stores": 2**62}, rounds,
                              0.05)


def _runtime_interference(model, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms of the oneDNN/fused model and of ONNX Runtime sessions whose idle threads spin or sleep, each
    alone and interleaved with the other runtime (no pause between samples): what one runtime's spinning idle
    workers cost the next with several threads."""
    import copy

    fast = sepconv.optimize(model, x, backends=("onednn",))
    folded = copy.deepcopy(model).eval()
    sepconv.fold_batchnorm(folded)
    spinning = sepconv.to_onnxruntime(folded, x, spinning=True)
    sleeping = sepconv.to_onnxruntime(folded, x, spinning=False)
    calls = {"onednn": inference_call(fast, x), "ort_spinning": inference_call(spinning, x),
             "ort_sleeping": inference_call(sleeping, x)}
    out = {}
    for name in calls:
        out[f"{name} alone"] = 1e3 * interleaved({name: calls[name]}, rounds=rounds, target_s=0.05)[name].median
    for other in ("ort_spinning", "ort_sleeping"):
        t = interleaved({"onednn": calls["onednn"], other: calls[other]}, rounds=rounds, target_s=0.05)
        out[f"onednn with {other}"], out[f"{other} with onednn"] = 1e3 * t["onednn"].median, 1e3 * t[other].median
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, help="batch size for every network (default: each network's own)")
    p.add_argument("--network", action="append", choices=[n for n, _, _ in NETWORKS],
                   help="only this network (repeatable; default: all)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="precision of models and input (half precisions on CUDA only)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch: must be at least 1, got {args.batch}")
    if args.dtype != "float32" and args.device != "cuda":
        p.error(f"--dtype {args.dtype}: half precision is timed on CUDA only (use --device cuda)")
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    warnings.simplefilter("ignore")
    on_cuda = args.device == "cuda"
    out = (Path(args.out) if args.out else
           HERE / "results" / ("networks-cuda" if on_cuda else f"networks-cpu-{args.threads}thread"))
    roof = (measure_roofline(torch.device("cuda"), matmul_n=8192, copy_mib=1024, rounds=5, dtype=dtype,
                             conv_batch=32) if on_cuda
            else measure_roofline())
    rows = []
    for name, kwargs, shape in NETWORKS:
        if args.network and name not in args.network:
            continue
        if args.batch is not None:
            shape = (args.batch, *shape[1:])
        torch.manual_seed(0)
        x = torch.randn(*shape, device=args.device, dtype=dtype)
        row = {"network": name, "input": list(shape), "variants": {}}
        for variant in ("standard", "separable"):
            model = build_model(name, variant, **kwargs).eval()
            macs = profile(model, shape[1:]).total_macs
            model = model.to(args.device, dtype)
            backends = (("eager", "cudnn_relu", "cudagraph") if on_cuda else
                        ("eager", "compile") + (("onednn",) if onednn_available() else ())
                        + (("onnxruntime",) if sepconv.backends.onnxruntime.onnxruntime_available() else ()))
            torch._dynamo.reset()
            fast = sepconv.optimize(model, x, rounds=args.rounds, backends=backends)
            row["variants"][variant] = {"macs_per_sample": macs, "median_ms": fast.timings_ms, "picked": fast.candidate,
                                        "layer_choices": fast.layer_choices,
                                        "picked_layout": "channels_last" if fast.memory_format == torch.channels_last
                                        else "contiguous"}
            row["variants"][variant]["picked_ms"] = fast.timings_ms.get(fast.candidate)
            if fast.backend == "onednn" and any("fused" in str(v) for v in fast.layer_choices.values()):
                row["variants"][variant]["fused_output_stores_ms"] = _stores_ab(fast, x, args.rounds)
            if (variant == "separable" and args.threads > 1 and onednn_available()
                    and sepconv.backends.onnxruntime.onnxruntime_available()):
                row["variants"][variant]["runtime_interference_ms"] = _runtime_interference(model, x, args.rounds)
        std, sep = row["variants"]["standard"], row["variants"]["separable"]
        theory = std["macs_per_sample"] / sep["macs_per_sample"]

        def best(t: dict, keys: tuple[str, ...]) -> float:
            return min(t[k] for k in keys if k in t)

        eager = ("nchw", "channels_last")
        paths = {"eager": (best(std["median_ms"], eager), best(sep["median_ms"], eager))}
        if "onnxruntime" in std["median_ms"]:
            paths["onnxruntime"] = (std["median_ms"]["onnxruntime"], sep["median_ms"]["onnxruntime"])
        if "compile" in std["median_ms"]:
            paths["compile"] = (std["median_ms"]["compile"], sep["median_ms"]["compile"])
        for path, keys in (("cudnn_relu", ("cudnn_relu", "cudnn_relu_channels_last")),
                           ("cudagraph", ("cudagraph", "cudagraph_channels_last")),
                           ("cudagraph_cudnn_relu", ("cudagraph_cudnn_relu", "cudagraph_cudnn_relu_channels_last"))):
            if any(k in std["median_ms"] for k in keys) and any(k in sep["median_ms"] for k in keys):
                paths[path] = (best(std["median_ms"], keys), best(sep["median_ms"], keys))
        if "onednn" in std["median_ms"]:
            paths["onednn"] = (std["median_ms"]["onednn"], sep["median_ms"]["onednn"])
        paths["optimize"] = (std["picked_ms"], sep["picked_ms"])  # the candidate optimize kept, as first timed
        row["theoretical_speedup"] = theory
        row["roofline_bound"] = roofline_bounds(name, kwargs, shape, roof, dtype)
        row["paths"] = {k: {"standard_ms": a, "separable_ms": b, "speedup": a / b, "realized": a / b / theory}
                        for k, (a, b) in paths.items()}
        rows.append(row)
        print(f"{name}: theoretical {theory:.2f}x; " + "; ".join(
            f"{k} {v['standard_ms']:.2f} -> {v['separable_ms']:.2f} ms = {v['speedup']:.2f}x (realized {v['realized']:.2f})"
            for k, v in row["paths"].items()), flush=True)
    machine = machine_info(args.device)
    record = {"machine": machine, "roofline": roof.as_dict(), "threads": args.threads, "device": args.device,
              "dtype": args.dtype,
              "mode": "inference forward", "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "networks.json", json.dumps(record, indent=1).encode())
    print(f"wrote {out / 'networks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
