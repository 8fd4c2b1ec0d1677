"""``sepconv import-keras``: read a Keras ``.keras``/``.h5`` model and write it as a sepconv safetensors file."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-keras", help="import a Keras .keras/.h5 model into PyTorch (sepconv layers), as safetensors",
        description="Read a Keras 3 .keras archive or a legacy .h5 model as data (JSON config and HDF5 weights; "
                    "no Keras, no code from the file), build the equivalent PyTorch model from sepconv layers and "
                    "write its weights and Keras config to OUT (safetensors). Reload it with "
                    "sepconv.interop.load_imported(OUT).",
    )
    p.add_argument("model", metavar="MODEL", help="the Keras model file (.keras or .h5)")
    p.add_argument("out", metavar="OUT", help="the output file (.safetensors); written atomically")
    p.add_argument("--channels-last", action="store_true",
                   help="keep Keras' NHWC layout at the model's inputs and outputs (default: NCHW, like PyTorch)")
    p.add_argument("--max-mb", type=float, default=4096.0,
                   help="refuse a weights file larger than this many MiB uncompressed (default 4096)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .io import save_imported
    from .keras import from_keras

    if not args.max_mb > 0:
        raise ValueError(f"--max-mb must be positive, got {args.max_mb}")
    model = from_keras(args.model, channels_last=args.channels_last, max_bytes=int(args.max_mb * 2**20))
    save_imported(args.out, model)
    params = sum(p.numel() for p in model.parameters())
    shapes = ", ".join("(N, " + ", ".join("?" if n is None else str(n) for n in s) + ")" for s in model.input_shapes)
    layout = "channels-last" if args.channels_last else "channels-first (NCHW)"
    print(f"imported {args.model}: {len(model.layers)} layers, {params:,} parameters, Keras input {shapes}, "
          f"{layout} at the boundary")
    print(f"wrote {args.out}")
    return 0
