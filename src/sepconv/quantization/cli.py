"""``sepconv quantize``: a trained model to int8 with ONNX Runtime, calibrated and scored on a data set."""

from __future__ import annotations

import argparse

from ..models.cli import add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="quantize a trained model to int8 (ONNX Runtime) and score it against the float model",
        description="Fold BatchNorm, equalize the ranges of consecutive layers (depthwise -> pointwise included), "
                    "absorb high biases and correct the weight rounding's bias, then quantize with ONNX Runtime's "
                    "static QDQ quantization calibrated on training images; print the per-layer report and the "
                    "float and int8 accuracy on the validation split. Needs pip install 'sepconv[onnx]'.",
    )
    add_model_arguments(p)
    p.add_argument("--data", default="digits", choices=("digits", "fashion-mnist", "cifar10", "imagefolder"),
                   help="data set for calibration (training split) and scoring (validation split); default digits")
    p.add_argument("--data-dir", default=None, help="folder of the fashion-mnist, cifar10 or imagefolder data")
    p.add_argument("--image-size", type=int, default=32, help="imagefolder: resize images to this side (default 32)")
    p.add_argument("--calibration", type=int, default=256,
                   help="number of training images used to calibrate activation ranges (default 256)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per output channel)")
    p.add_argument("--no-equalize", action="store_true", help="skip cross-layer equalization and high-bias absorption")
    p.add_argument("--no-bias-correction", action="store_true", help="skip bias correction")
    p.add_argument("--compare", action="store_true",
                   help="also print the float, naive per-tensor, per-channel and equalized per-tensor schemes side "
                        "by side (accuracy, agreement, size, batch-1 latency)")
    p.add_argument("--calibration-method", choices=("minmax", "percentile"), default="minmax",
                   help="activation ranges: the observed min/max, or the 99.999th percentile, which lets rare "
                        "outliers saturate (default minmax)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--output", default=None, help="write the int8 ONNX model here (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace, data):
    """The model MODEL names, built for ``data``'s images and classes, with --weights loaded, in eval mode."""
    from ..models.cli import resolve_from_args

    if args.num_classes is None:
        args.num_classes = data.num_classes
    model, source, _ = resolve_from_args(args, input_shape=tuple(data.input_shape), what="the model to quantize")
    if source.kind != "file" and not args.weights:
        raise ValueError(f"MODEL {args.model!r} is built untrained: pass --weights (its trained state dict), or a "
                         "model file written by sepconv")
    return model.eval()


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..data import load_dataset
    from .engine import compare_schemes, quantize, schemes_table

    if args.calibration < 1:
        raise ValueError(f"--calibration must be a positive number of images, got {args.calibration}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass --overwrite to replace it")
    data = load_dataset(args.data, args.data_dir, image_size=args.image_size)
    model = _load(args, data)
    order = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(0))
    calibration = data.train_x[order[:args.calibration]]
    try:
        with torch.no_grad():
            model(data.val_x[:1])
    except RuntimeError as error:
        raise ValueError(f"the model does not take {args.data} images of shape {data.input_shape}: "
                         f"{str(error).splitlines()[0]}") from None
    options = dict(per_channel=not args.per_tensor, equalize=not args.no_equalize,
                   bias_correction=not args.no_bias_correction)
    qmodel, report = quantize(model, calibration, threads=args.threads, calibration=args.calibration_method,
                              **options)
    print(report.to_table())
    with torch.no_grad():
        ref = torch.cat([model(b) for b in data.val_x.split(256)]).argmax(1)
        got = torch.cat([qmodel(b.contiguous()) for b in data.val_x.split(256)]).argmax(1)
    y = data.val_y
    print(f"\n{data.name} validation ({len(y)} images): float {100 * float((ref == y).float().mean()):.2f} %, "
          f"int8 {100 * float((got == y).float().mean()):.2f} %, agreement {100 * float((got == ref).float().mean()):.2f} %")
    if args.compare:
        rows = compare_schemes(model, calibration, data.val_x, data.val_y, threads=args.threads)
        print("\n" + schemes_table(rows))
    if out is not None:
        qmodel.save(out)
        print(f"wrote {out}")
    return 0
