"""``sepconv convert``: factorize a saved zoo model's convolutions and save the separable model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="replace a saved model's convolutions by separable ones with optimal weights",
        description="Read a model saved by sepconv (safetensors with its recipe, e.g. from `sepconv compare`), "
                    "replace eligible convolutions by depthwise separable (or spatially separable, pointwise-depthwise or "
                    "CP-decomposed) ones initialized from the factorization, print a per-layer report and write the result as safetensors.",
    )
    p.add_argument("model", help="input .safetensors written by sepconv (sepconv compare writes OUT/models/*.safetensors)")
    p.add_argument("output", help="output .safetensors (refused if it exists, unless --overwrite)")
    p.add_argument("--to", choices=("separable", "spatial", "blueprint", "cp"), default="separable",
                   help="replacement kind: depthwise then pointwise (separable, default), k x 1 then 1 x k (spatial), "
                        "pointwise then depthwise (blueprint), or a CP decomposition (cp, needs tensorly)")
    p.add_argument("--depth-multiplier", type=int, default=1,
                   help="depth multiplier M of separable and blueprint layers (default 1)")
    p.add_argument("--rank", type=int, default=None,
                   help="rank of spatial layers (default min(C_in, C_out)) or of CP layers (default: the largest with "
                        "no more weights than a depthwise separable layer)")
    p.add_argument("--include", default=None, help="convert only convolutions whose name matches this regex")
    p.add_argument("--exclude", default=None, help="skip convolutions whose name matches this regex")
    p.add_argument("--min-kernel", type=int, default=2, help="skip kernels smaller than this (default 2: skip 1x1)")
    p.add_argument("--input", default=None, help="sample input HxWxC for MACs and output errors (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import torch

    from ..cost.cli import parse_dims
    from ..models import load_model, save_model
    from .convert import convert

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass --overwrite to replace it")
    model, recipe = load_model(args.model)
    if recipe.get("conversion") is not None:
        raise ValueError(f"{args.model!r} was already converted ({recipe['conversion']}); convert the original model")
    sample = None
    if args.input:
        h, w, c = parse_dims(args.input, "--input", min_len=3, max_len=3)
        sample = torch.randn(8, c, h, w, generator=torch.Generator().manual_seed(0))
    options = dict(to=args.to, depth_multiplier=args.depth_multiplier, rank=args.rank, include=args.include,
                   exclude=args.exclude, min_kernel=args.min_kernel)
    new, report = convert(model, sample_input=sample, progress=sys.stderr.isatty(), **options)
    print(report.to_table())
    if not report.layers:
        raise ValueError("nothing to convert (see the skipped layers above); no file written")
    save_model(out, new, recipe["name"], recipe["variant"], conversion=options, **recipe["kwargs"])
    print(f"wrote {out}")
    return 0
