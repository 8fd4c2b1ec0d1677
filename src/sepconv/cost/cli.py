"""``sepconv cost`` (one convolution, standard vs separable) and ``sepconv profile`` (a zoo model)."""

from __future__ import annotations

import argparse
import json
import math
import re


def parse_dims(text: str, name: str, *, min_len: int = 1, max_len: int = 4) -> tuple[int, ...]:
    """Parse ``'15x15x3'`` into ``(15, 15, 3)``; ValueError naming ``name`` and the text otherwise."""
    parts = re.split(r"[x×,]", text.strip().lower()) if isinstance(text, str) else []
    if not (min_len <= len(parts) <= max_len) or not all(re.fullmatch(r"\d+", p) for p in parts):
        count = str(min_len) if min_len == max_len else f"{min_len} to {max_len}"
        example = "x".join(["15", "15", "3"][:max_len]) if min_len > 1 else "3 or 3x3"
        raise ValueError(f"{name} must be {count} positive integers joined by 'x' (e.g. {example}), got {text!r}")
    dims = tuple(int(p) for p in parts)
    if any(d < 1 for d in dims):
        raise ValueError(f"{name} must be positive in every dimension, got {text!r}")
    return dims


def _positive_int(text: str) -> int:
    """argparse type: a positive int (argparse turns the ValueError into a usage error, exit 2)."""
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _padding(text: str):
    if text in ("same", "valid"):
        return text
    if re.fullmatch(r"\d+", text):
        return int(text)
    raise ValueError(f"--padding must be 'same', 'valid' or a non-negative int, got {text!r}")


def _fmt(n) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:.4g}"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cost", help="exact cost of a convolution: standard vs depthwise and spatially separable",
        description="Multiplications, additions, MACs, FLOPs (= 2 x MACs), parameters and bytes of one "
                    "convolution and of its depthwise separable and spatially separable replacements.",
    )
    p.add_argument("--input", required=True, help="input size C x H x W, e.g. 3x15x15 (Keras order: hwc:15x15x3 or "
                                                  "--channels-last; 1D and 3D: use sepconv.cost from Python)")
    p.add_argument("--channels-last", action="store_true", help="read --input as H x W x C (Keras order)")
    p.add_argument("--kernel", required=True, help="kernel size: K or KhxKw")
    p.add_argument("--filters", required=True, type=_positive_int, help="number of output channels (filters)")
    p.add_argument("--stride", default="1", help="stride: S or ShxSw (default 1)")
    p.add_argument("--dilation", default="1", help="dilation (default 1)")
    p.add_argument("--padding", default="valid", help="'valid' (default), 'same' (TF semantics) or an int")
    p.add_argument("--depth-multiplier", type=_positive_int, default=1, help="depthwise channel multiplier M (default 1)")
    p.add_argument("--rank", type=_positive_int, default=None, help="spatially separable rank R (default min(C_in, C_out))")
    p.add_argument("--no-bias", action="store_true", help="no bias on the standard conv / the pointwise step")
    p.add_argument("--depthwise-bias", action="store_true", help="add a bias after the depthwise step too")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", default="float32", help="element type for bytes (default float32)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_cost)

    q = subparsers.add_parser(
        "profile", help="per-layer parameters and MACs of a model (zoo, your factory or file)",
        description="Per-layer parameters and MACs (per sample; FLOPs = 2 x MACs) of a model: from sepconv's zoo, "
                    "package.module:factory, path/to/file.py:factory, torchvision:NAME or timm:NAME. Counted from "
                    "shapes on PyTorch's meta device: nothing is allocated, and sizes beyond this machine are refused.",
    )
    from ..models.cli import add_model_arguments

    add_model_arguments(q)
    q.add_argument("--list", action="store_true", help="list the zoo's models and variants")
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")
    q.set_defaults(func=run_profile)


def run_cost(args: argparse.Namespace) -> int:
    from ..geometry import ConvSpec
    from .formulas import closed_form_ratio, conv_cost, separable_cost, spatial_cost

    from .shapes import format_shape, parse_shape

    channels, *spatial = parse_shape(args.input, "--input", spatial_dims=2, channels_last=args.channels_last)
    nd = len(spatial)
    kernel = parse_dims(args.kernel, "--kernel", max_len=nd)
    stride = parse_dims(args.stride, "--stride", max_len=nd)
    dilation = parse_dims(args.dilation, "--dilation", max_len=nd)
    expand = lambda t, n: t * n if len(t) == 1 else t  # noqa: E731
    spec = ConvSpec.make(channels, args.filters, expand(kernel, nd), expand(stride, nd), _padding(args.padding),
                         expand(dilation, nd), bias=not args.no_bias, ndim=nd)
    kw = dict(batch=args.batch, dtype=args.dtype)
    costs = {"standard": conv_cost(spec, spatial, **kw),
             "depthwise separable": separable_cost(spec, spatial, depth_multiplier=args.depth_multiplier,
                                                   depthwise_bias=args.depthwise_bias, **kw)}
    if nd == 2:
        costs[f"spatially separable (rank {args.rank or min(channels, args.filters)})"] = spatial_cost(spec, spatial, rank=args.rank, **kw)
    base = costs["standard"].macs
    closed = closed_form_ratio(args.filters, spec.kernel_size) * args.depth_multiplier
    if args.json:
        out = {name: c.as_dict() for name, c in costs.items()}
        for name, c in costs.items():
            out[name]["mac_ratio_vs_standard"] = c.macs / base
        out["input_shape"] = [args.batch, channels, *spatial]
        out["shape_convention"] = "N x C x H x W (input_shape, output_shape); input_size/output_size are H x W"
        out["closed_form_ratio"] = {"formula": "M * (1/C_out + 1/prod(k))", "value": closed}
        out["units"] = "macs = multiply-accumulates; flops = 2 x macs; bytes = input + weights + output (+ intermediates)"
        print(json.dumps(out, indent=2))
        return 0

    def stages(c, attr):
        total = _fmt(getattr(c, attr))
        parts = getattr(c, "stages", ())
        return total if not parts else f"{total} ({' + '.join(_fmt(getattr(s, attr)) for s in parts)})"

    rows = [("output (C x H x W)",
             *[format_shape((args.filters, *c.output_size)) for c in costs.values()])]
    for label, attr in [("multiplications", "multiplications"), ("additions", "additions"), ("MACs", "macs"),
                        ("FLOPs (2 x MACs)", "flops"), ("MACs off the padding", "in_bounds_macs"),
                        ("weights", "weights"), ("biases", "biases"),
                        ("parameters", "params"), ("bytes moved", "bytes"),
                        ("FLOPs per byte", "arithmetic_intensity")]:
        rows.append((label, *[stages(c, attr) for c in costs.values()]))
    rows.append(("MAC ratio vs standard", *[f"{c.macs / base:.4f}" for c in costs.values()]))
    rows.append(("MAC saving", *[f"{base / c.macs:.2f}x" for c in costs.values()]))
    header = ("", *costs.keys())
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"input {format_shape((channels, *spatial))} (C x H x W), {args.filters} filters of {'x'.join(map(str, spec.kernel_size))}, "
          f"stride {'x'.join(map(str, spec.stride))}, padding {args.padding}, batch {args.batch}, {args.dtype}")
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"closed form for depthwise separable: M x (1/C_out + 1/k^2) = {args.depth_multiplier} x (1/{args.filters} + "
          f"1/{math.prod(spec.kernel_size)}) = {closed:.4f} (exact above: {costs['depthwise separable'].macs / base:.4f})")
    print("MACs off the padding: the taps that read the input, not its zero padding (kernels such as oneDNN's "
          "skip the rest)")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from ..models import list_models
    from ..models.cli import resolve_from_args
    from ..models.reference import estimate_bytes

    if args.list:
        for name, info in list_models().items():
            shape = "x".join(map(str, info.default_input))
            print(f"{name:14s} variants: {', '.join(info.variants):38s} input {shape} (C x H x W)  {info.description}")
        return 0
    # without --weights only shapes matter: the model stays on the meta device, nothing is allocated
    model, _, shape = resolve_from_args(args, what=f"profiling {args.model}", meta_only=not args.weights)
    result = estimate_bytes(model.to("meta"), shape)["profile"]
    print({"table": result.to_table, "json": result.to_json, "csv": result.to_csv}[args.format]())
    return 0
