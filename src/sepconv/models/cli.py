"""Model arguments shared by ``profile``, ``convert``, ``bench`` and ``optimize``, and ``sepconv optimize``.

A model is named by reference (see :mod:`sepconv.models.reference`): a zoo
name, ``package.module:factory``, ``path/to/file.py:factory``, a sepconv
model file, ``torchvision:NAME`` or ``timm:NAME``; weights come from
``--weights``. Torch is imported inside the functions, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse

MODEL_HELP = ("zoo name (see `sepconv profile --list`), package.module:factory, path/to/file.py:factory, "
              "a sepconv .safetensors model file (sepconv import-keras output too), torchvision:NAME or timm:NAME")


def add_model_arguments(p: argparse.ArgumentParser, *, positional: bool = True, weights: bool = True) -> None:
    """Add MODEL (or --model), --variant, --kwargs, --weights, --num-classes, --input and --channels-last to ``p``."""
    if positional:
        p.add_argument("model", nargs="?", help=f"the model: {MODEL_HELP}")
    else:
        p.add_argument("--model", default=None, help=f"a model whose convolutions to time: {MODEL_HELP}")
    p.add_argument("--variant", default=None, help="zoo model variant (default: the model's first)")
    p.add_argument("--kwargs", default=None, help="keyword arguments of the model's factory as JSON, e.g. "
                                                  "'{\"width\": 0.5}'")
    if weights:
        p.add_argument("--weights", default=None, help="state_dict to load: .safetensors, or .pt/.pth (read with "
                                                       "torch.load(weights_only=True); nothing in it is executed)")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes (zoo models, factories taking "
                                                                 "num_classes)")
    p.add_argument("--input", default=None, help="input size C x H x W, e.g. 3x224x224 (Keras order: hwc:224x224x3 "
                                                 "or --channels-last; default: the model's own)")
    p.add_argument("--channels-last", action="store_true", help="read --input as H x W x C (Keras order)")


def model_spatial_dims(model) -> int:
    """Spatial dimensions of the model's first convolution (2 where it has none)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return len(m.kernel_size)
    return 2


def first_in_channels(model):
    """Input channels of the model's first convolution, or None."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    return None


def resolve_from_args(args: argparse.Namespace, *, input_shape=None, need_input: bool = True, batch: int = 1,
                      what: str = "the model", meta_only: bool = False):
    """Build the model ``args`` name and its input shape, refusing sizes beyond this machine before allocating.

    Returns ``(model, source, input_shape)``: the model with ``--weights`` loaded (on the CPU), its
    :class:`~sepconv.models.reference.ModelSource`, and ``(C, *spatial)`` (None when unknown and not needed).
    ``input_shape`` overrides ``--input`` (a data set's shape). ``meta_only``: return the model on the meta
    device (shapes only; no weights loaded).
    """
    from ..cost.shapes import format_shape, parse_shape
    from .reference import estimate_bytes, load_weights, parse_kwargs, refuse_if_too_big, resolve_model
    from .weights import conversion_of

    if not args.model:
        raise ValueError("give a MODEL (" + MODEL_HELP + ")")
    imported = keras_file(args.model)
    if imported is not None:
        return _from_keras_file(args, imported, input_shape, need_input)
    kwargs = parse_kwargs(args.kwargs)
    num_classes = args.num_classes
    if num_classes is not None and not 1 <= num_classes <= 1 << 40:
        raise ValueError(f"--num-classes must be a positive int, got {num_classes}")
    common = dict(kwargs=kwargs, variant=args.variant, num_classes=num_classes)
    meta, source = resolve_model(args.model, device="meta", **common)
    shape = input_shape
    if shape is None and args.input is not None:
        shape = parse_shape(args.input, "--input", spatial_dims=model_spatial_dims(meta),
                            channels_last=args.channels_last)
    elif args.channels_last and args.input is None:
        raise ValueError("--channels-last applies to --input; give --input too")
    if shape is not None and source.kind == "zoo" and tuple(shape) != tuple(source.default_input):
        # zoo models are built for their input: channels, and the size of a Flatten + Linear head
        meta, source = resolve_model(args.model, device="meta", in_channels=shape[0], image_size=shape[1:], **common)
    if shape is None:
        shape = source.default_input
    if shape is None and need_input:
        raise ValueError(f"{args.model!r}: its input size is not known; give --input C x H x W (e.g. 3x224x224)")
    channels = first_in_channels(meta)
    if shape is not None and channels is not None and shape[0] != channels:
        hint = f"; in C x H x W order that is {format_shape((shape[-1], *shape[:-1]))}" if shape[-1] == channels else ""
        raise ValueError(f"--input {format_shape(shape)} (C x H x W) has {shape[0]} channels, but the model's first "
                         f"convolution takes {channels}{hint}")
    conversion = conversion_of(args.weights) if getattr(args, "weights", None) else None
    if conversion is not None:  # weights written by `sepconv convert`: rebuild the converted architecture
        meta = converted_architecture(meta, conversion)
    refuse_if_too_big(estimate_bytes(meta, shape, batch), what)
    if meta_only:
        return meta, source, (tuple(shape) if shape is not None else None)
    if source.kind == "file":  # built with its weights
        model, source = resolve_model(args.model, **common)
    else:
        extra = {} if shape is None or source.kind != "zoo" else dict(in_channels=shape[0], image_size=shape[1:])
        model, source = resolve_model(args.model, **common, **extra)
    if conversion is not None:
        model = converted_architecture(model, conversion)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
        source.weights = args.weights
    return model.float().cpu(), source, (tuple(shape) if shape is not None else None)


def keras_file(reference):
    """The model in ``reference`` if it is a file written by ``sepconv import-keras``, else None."""
    import os

    if not isinstance(reference, str) or not reference.endswith(".safetensors") or not os.path.isfile(reference):
        return None
    from ..interop.io import KERAS_KEY, load_imported
    from ..utils.io import read_metadata

    try:
        metadata = read_metadata(reference)
    except (ValueError, ImportError):  # not readable as safetensors: resolve_model reports it
        return None

    return load_imported(reference) if KERAS_KEY in metadata else None


def _from_keras_file(args: argparse.Namespace, model, input_shape, need_input: bool):
    """``resolve_from_args`` for a Keras model imported by ``sepconv import-keras`` (weights in the file)."""
    from ..cost.shapes import parse_shape
    from ..interop.io import input_shape_of
    from .reference import ModelSource, load_weights
    from .weights import conversion_of

    for flag, value in (("--kwargs", args.kwargs), ("--variant", args.variant), ("--num-classes", args.num_classes)):
        if value not in (None, ""):
            raise ValueError(f"{flag} does not apply to an imported Keras model ({args.model!r} holds its own config)")
    shape = input_shape
    if shape is None and args.input is not None:
        shape = parse_shape(args.input, "--input", spatial_dims=model_spatial_dims(model),
                            channels_last=args.channels_last)
    shape = shape if shape is not None else input_shape_of(model)
    if shape is None and need_input:
        raise ValueError(f"{args.model!r}: its Keras config leaves the input size open; give --input C x H x W")
    source = ModelSource(args.model, "file", {}, None, shape, weights=args.model)
    conversion = conversion_of(args.weights) if getattr(args, "weights", None) else None
    if conversion is not None:  # weights written by `sepconv convert` from this file
        model = converted_architecture(model, conversion)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
        source.weights = args.weights
    return model.float().cpu(), source, (tuple(shape) if shape is not None else None)


def converted_architecture(model, conversion: dict):
    """``model`` with the structure ``sepconv convert`` gave it (``convert(init='fresh')``; weights to be loaded)."""
    import warnings

    from ..factorize import convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(model, init="fresh", **conversion)[0]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "optimize", help="prepare a model for inference: fold BatchNorm, time engines and layouts, keep the fastest",
        description="Run sepconv.optimize on a model: BatchNorm folded into convolutions, every engine and memory "
                    "layout that can run it timed on a batch of --input, the fastest kept. Prints the timings and, "
                    "per convolution, the form chosen (e.g. a separable layer merged back into one dense "
                    "convolution where that runs faster).",
    )
    add_model_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="batch size of the timed input (default 1)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=run_optimize)


def run_optimize(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..backends.optimize import optimize

    for name, value, top in (("--batch", args.batch, 1 << 16), ("--rounds", args.rounds, 1000),
                             ("--threads", args.threads, 4096)):
        if value is not None and not 1 <= value <= top:
            raise ValueError(f"{name} must be in [1, {top}], got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, source, shape = resolve_from_args(args, batch=args.batch)
    sample = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    print(f"sepconv optimize: measuring engines for {args.model} on {args.batch}x{'x'.join(map(str, shape))} "
          f"(N x C x H x W) ...", file=sys.stderr, flush=True)
    try:
        result = optimize(model.eval(), sample, rounds=args.rounds)
    except RuntimeError as error:
        raise ValueError(f"optimize failed: {str(error).splitlines()[0]}") from None
    print(f"kept: {result.candidate} (backend {result.backend}), BatchNorm folded: {result.folded}")
    for name, ms in sorted(result.timings_ms.items(), key=lambda kv: kv[1]):
        print(f"  {name:40s} {ms:9.3f} ms")
    if result.layer_choices:
        merged = [n for n, c in result.layer_choices.items() if "dense" in c or "merged" in c]
        print("per convolution: " + ", ".join(f"{n}={c}" for n, c in result.layer_choices.items()))
        if merged:
            print(f"merged back into dense convolutions (faster here): {', '.join(merged)}")
    return 0
