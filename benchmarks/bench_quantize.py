"""int8 against float32 on separable networks that sepconv trains: accuracy, agreement, size, batch-1 latency.

Trains the separable VGG-block network, MobileNetV1 (the paper's block and Sheng et al.'s
quantization-friendly one) and MobileNetV2 (ReLU6, residuals) briefly on the embedded digits, then runs ``sepconv.quantization.compare_schemes``
on each (float32, naive per-tensor, per-channel, per-tensor + equalization + bias correction; all in ONNX
Runtime), calibrating on training images and scoring on the validation split. MobileNetV1 is also timed at
a larger input, where a batch-1 pass is long enough for int8 kernels to show what they gain. Writes
``quantize.json`` (with ``machine_info``) into ``--out``.

    PYTHONPATH=src python benchmarks/bench_quantize.py --threads 1 \
        --out benchmarks/results/quantize-zen4-avx512-1thread

Digits are 8x8; the MobileNets get them upsampled to 32x32 (bilinear), so that its five stride-2 steps leave
a 1x1 map rather than running on nothing. Goals of issue 25: per-channel within 1 accuracy point of float,
equalized per-tensor within 2, int8 latency at most 0.6x of float32 at batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from sepconv.data import load_dataset
from sepconv.models import MobileNetV1, MobileNetV2, VGGBlocks
from sepconv.quantization import compare_schemes, schemes_table
from sepconv.train import TrainConfig, evaluate, fit
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info


def upsampled(data, size: int):
    """A copy of ``data`` with its images resized to ``size`` x ``size`` (bilinear)."""
    import copy

    out = copy.copy(data)
    out.train_x = F.interpolate(data.train_x, size=size, mode="bilinear", align_corners=False).contiguous()
    out.val_x = F.interpolate(data.val_x, size=size, mode="bilinear", align_corners=False).contiguous()
    return out


def networks(data, args):
    """(name, builder, data): each model is built after the seed is set, so every network starts alike."""
    c, h, w = data.input_shape
    yield "vgg_blocks-separable", lambda: VGGBlocks("separable", data.num_classes, c, (h, w), width=args.vgg_width), data
    big = upsampled(data, args.mobilenet_size)
    for friendly in (False, True):
        name = "mobilenet_v1-separable" + ("-quantization-friendly" if friendly else "")
        yield name, lambda f=friendly: MobileNetV1("separable", data.num_classes, c, alpha=args.alpha,
                                                   quantization_friendly=f), big
    if args.mobilenet_v2:
        yield "mobilenet_v2", lambda: MobileNetV2("separable", data.num_classes, c, alpha=args.alpha), big


def goals(rows) -> dict:
    """Issue 25's goals on one network's rows: accuracy points below float and int8/float32 latency ratios."""
    by = {r["scheme"]: r for r in rows}
    out = {}
    if by["float"]["accuracy"] is not None:
        drop = {k: 100 * (by["float"]["accuracy"] - r["accuracy"]) for k, r in by.items() if k != "float"}
        out.update(points_below_float=drop, per_channel_within_1_point=drop["per-channel"] <= 1.0,
                   equalized_per_tensor_within_2_points=drop["per-tensor+equalize+bias-correction"] <= 2.0)
    ratios = {k: r["latency_ratio"] for k, r in by.items() if k != "float"}
    out.update(latency_ratio=ratios, int8_latency_at_most_0_6x=all(v <= 0.6 for v in ratios.values()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per network (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vgg-width", type=float, default=0.5, help="VGG-block width multiplier (default 0.5)")
    parser.add_argument("--alpha", type=float, default=0.5, help="MobileNetV1 width multiplier (default 0.5)")
    parser.add_argument("--mobilenet-size", type=int, default=32, help="side digits are upsampled to for MobileNetV1")
    parser.add_argument("--calibration", type=int, default=256, help="training images used for calibration")
    parser.add_argument("--latency-size", type=int, default=224, help="side of MobileNetV1's latency-only input")
    parser.add_argument("--latency-alpha", type=float, default=1.0, help="width of MobileNetV1's latency-only run")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--no-mobilenet-v2", dest="mobilenet_v2", action="store_false",
                        help="leave out MobileNetV2 (ReLU6, BatchNorm between the steps, residuals)")
    parser.add_argument("--out", default=str(HERE / "results" / "quantize-cpu-1thread"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    record = {"machine": machine_info(), "threads": args.threads, "args": vars(args), "data": data.describe(),
              "engine": {}, "networks": {}}
    import onnxruntime

    record["engine"] = {"onnxruntime": onnxruntime.__version__}
    for name, build, d in networks(data, args):
        torch.manual_seed(args.seed)
        model = build()
        start = time.perf_counter()
        result = fit(model, d, TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-3, seed=args.seed))
        train_s = time.perf_counter() - start
        model = result.model.eval()
        _, val_acc = evaluate(model, d.val_x, d.val_y)
        order = torch.randperm(d.train_x.shape[0], generator=torch.Generator().manual_seed(args.seed))
        calibration = d.train_x[order[:args.calibration]]
        rows = compare_schemes(model, calibration, d.val_x, d.val_y, threads=args.threads, rounds=args.rounds)
        print(f"\n{name}: trained {args.epochs} epochs in {train_s:.0f} s, eager float32 accuracy {100 * val_acc:.2f} %")
        print(schemes_table(rows), flush=True)
        record["networks"][name] = {"input_shape": list(d.input_shape), "train_s": train_s,
                                    "eager_val_accuracy": val_acc, "history": result.history, "rows": rows,
                                    "goals": goals(rows)}
    # latency at a larger input: weights do not change the speed; calibrate on random images
    torch.manual_seed(args.seed)
    for friendly in (False, True):
        name = f"mobilenet_v1-separable{'-quantization-friendly' if friendly else ''}-{args.latency_size}px"
        model = MobileNetV1("separable", 1000, 3, alpha=args.latency_alpha, quantization_friendly=friendly)
        x = torch.randn(8, 3, args.latency_size, args.latency_size)
        # BatchNorm statistics from these images, so that activations keep their scale through the
        # network as in a trained one instead of fading towards zero (and float32 subnormals)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            model.train()(x)
        model.eval()
        rows = compare_schemes(model, x, x[:2], threads=args.threads, rounds=args.rounds)
        print(f"\n{name} (random weights, latency only):")
        print(schemes_table(rows), flush=True)
        for row in rows:
            row["accuracy"] = None
            row.pop("report")
        record["networks"][name] = {"input_shape": [3, args.latency_size, args.latency_size],
                                    "alpha": args.latency_alpha, "latency_only": True, "rows": rows,
                                    "goals": goals(rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "quantize.json", (json.dumps(record, indent=1, default=str) + "\n").encode())
    print(f"wrote {out / 'quantize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
