"""``sepconv convert``: factorize a model's convolutions into separable ones, calibrate, fine-tune, report.

The model is any reference :mod:`sepconv.models.reference` resolves (zoo
name, sepconv model file, ``package.module:factory``, ``file.py:factory``)
with ``--weights``. The output is a safetensors state_dict that plain
``load_state_dict`` accepts on the converted architecture, with a report
(JSON and HTML) next to it.
"""

from __future__ import annotations

import argparse
import math

#: Calibration samples taken from the training split by default.
CALIBRATION_SAMPLES = 512
#: Default temperature of fine-tuning by distillation (``--distill-temperature``).
DISTILL_TEMPERATURE = 1.0
#: Held-out samples the whole-network figures are computed on, at most.
EVAL_SAMPLES = 2000

CALIBRATION_NOTE = (
    "Per-layer output error: the relative error of each replacement's output against the original layer's, both fed "
    "the original network's activations. After --calibrate each replacement is fitted to reproduce the original "
    "layer's output from the converted network's own activations, which already differ upstream; it corrects the "
    "errors of the layers before it, so its per-layer error measured on the original activations can be larger than "
    "without calibration while the whole network's output gets closer to the original's. Judge a conversion by the "
    "whole-network figures (held-out output error, top-1 agreement, accuracy).")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..models.cli import add_model_arguments

    p = subparsers.add_parser(
        "convert", help="replace a model's convolutions by separable ones with optimal weights; calibrate, fine-tune",
        description="Replace the eligible convolutions of a model (zoo name, sepconv file, package.module:factory or "
                    "path/to/file.py:factory, with --weights) by depthwise separable (or spatially separable, "
                    "pointwise-depthwise or CP) ones initialized from the optimal factorization; optionally "
                    "calibrate them on --data and fine-tune by distillation from the original. Writes OUTPUT "
                    "(safetensors state_dict) and OUTPUT's report as .report.json and .report.html.",
    )
    add_model_arguments(p)
    p.add_argument("output", help="output .safetensors (refused if it exists, unless --overwrite)")
    p.add_argument("--to", choices=("separable", "spatial", "blueprint", "cp"), default="separable",
                   help="replacement kind: depthwise then pointwise (separable, default), k x 1 then 1 x k (spatial), "
                        "pointwise then depthwise (blueprint), or a CP decomposition (cp, needs tensorly)")
    p.add_argument("--depth-multiplier", type=int, default=1, help="depth multiplier M of separable and blueprint "
                                                                    "layers (default 1)")
    p.add_argument("--rank", type=int, default=None, help="rank of spatial layers (default min(C_in, C_out)) or CP "
                                                          "layers (default: no more weights than depthwise separable)")
    p.add_argument("--include", default=None, help="convert only convolutions whose name matches this regex")
    p.add_argument("--exclude", default=None, help="skip convolutions whose name matches this regex")
    p.add_argument("--min-kernel", type=int, default=2, help="skip kernels smaller than this (default 2: skip 1x1)")
    p.add_argument("--data", default=None, help="digits, cifar10, imagefolder (with --data-dir), or a .safetensors "
                                                "file with a tensor 'x' of sample inputs (N x C x H x W; optional "
                                                "int labels 'y'): calibration samples and held-out figures")
    p.add_argument("--data-dir", default=None, help="directory of cifar10 or imagefolder data")
    p.add_argument("--calibrate", action="store_true", help="refit each replacement's last stage on --data "
                                                            "(the converted network's own activations)")
    p.add_argument("--samples", type=int, default=CALIBRATION_SAMPLES,
                   help=f"calibration samples from the training split (default {CALIBRATION_SAMPLES})")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the converted network for N epochs by "
                                                                  "distillation from the original (needs --data)")
    p.add_argument("--finetune-lr", type=float, default=3e-4, help="Adam learning rate of fine-tuning (default 3e-4)")
    p.add_argument("--distill-temperature", type=float, default=DISTILL_TEMPERATURE,
                   help="fine-tune on the original's softmax at this temperature, the converted network's logits "
                        f"divided by it too (Hinton et al. 2015; default {DISTILL_TEMPERATURE:g})")
    p.add_argument("--hard-labels", action="store_true",
                   help="fine-tune on the original's top-1 class instead of its softmax")
    p.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of fine-tuning and of the from-scratch baseline")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline of fine-tuning")
    p.add_argument("--resume", action="store_true", help="continue interrupted fine-tuning from its checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    bounds = (("--depth-multiplier", args.depth_multiplier, 1, 1 << 40), ("--min-kernel", args.min_kernel, 1, 1 << 20),
              ("--samples", args.samples, 1, 1 << 20), ("--finetune-epochs", args.finetune_epochs, 0, 10000),
              ("--batch-size", args.batch_size, 1, 1 << 16), ("--seed", args.seed, 0, (1 << 63) - 1))
    for name, value, low, high in bounds + ((("--rank", args.rank, 1, 1 << 40),) if args.rank is not None else ()):
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    if args.rank is not None and args.to not in ("spatial", "cp"):
        raise ValueError(f"--rank applies to --to spatial or cp; --to {args.to} takes --depth-multiplier")
    if not (math.isfinite(args.finetune_lr) and args.finetune_lr > 0):
        raise ValueError(f"--finetune-lr must be a finite number > 0, got {args.finetune_lr}")
    if not (math.isfinite(args.distill_temperature) and 0 < args.distill_temperature <= 1000):
        raise ValueError(f"--distill-temperature must be a number in (0, 1000], got {args.distill_temperature}")
    distill_options = [name for name, given in (("--hard-labels", args.hard_labels),
                                                ("--distill-temperature",
                                                 args.distill_temperature != DISTILL_TEMPERATURE)) if given]
    if distill_options and not args.finetune_epochs:
        verb = "apply" if len(distill_options) > 1 else "applies"
        raise ValueError(f"{' and '.join(distill_options)} {verb} to fine-tuning: pass --finetune-epochs N")
    if len(distill_options) == 2:
        raise ValueError("--distill-temperature softens the original's outputs; --hard-labels uses its top-1 class "
                         "instead: pass one of them")
    if (args.calibrate or args.finetune_epochs) and not args.data:
        raise ValueError("--calibrate and --finetune-epochs need --data (samples of the model's inputs)")
    if not args.output or Path(args.output).suffix != ".safetensors":
        raise ValueError(f"OUTPUT must be a .safetensors path, got {args.output!r}")
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output!r} exists; pass --overwrite to replace it")
    if not Path(args.output).resolve().parent.is_dir():
        raise FileNotFoundError(f"the directory of OUTPUT {args.output!r} does not exist")


def load_samples(args: argparse.Namespace, image_size: int = 32):
    """The data behind ``--data``: an ImageDataset (train split: calibration and fine-tuning; val: held-out),
    and whether its labels are real (a sample file without ``y`` gets placeholder labels)."""
    import torch

    from ..data import DATASETS, ImageDataset, load_dataset
    from ..models.reference import read_weights

    if args.data in DATASETS:
        return load_dataset(args.data, args.data_dir, image_size=image_size), True
    if not args.data.endswith(".safetensors"):
        raise ValueError(f"--data must be one of {', '.join(DATASETS)} or a .safetensors file, got {args.data!r}")
    tensors = read_weights(args.data)
    x = tensors.get("x", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if x is None or not x.is_floating_point() or x.dim() < 3 or x.shape[0] < 2:
        raise ValueError(f"--data {args.data!r} must hold a float tensor 'x' of at least 2 inputs (N x C x ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"--data {args.data!r}: 'x' holds NaN or inf values")
    y = tensors.get("y")
    if y is not None and (y.dtype.is_floating_point or y.shape != (x.shape[0],) or int(y.min()) < 0):
        raise ValueError(f"--data {args.data!r}: 'y' must be {x.shape[0]} int labels >= 0, got shape {tuple(y.shape)}")
    labels = y if y is not None else torch.zeros(x.shape[0], dtype=torch.long)
    half = x.shape[0] // 2
    classes = [str(i) for i in range(int(labels.max()) + 1)]
    data = ImageDataset("samples", x[:half].float(), labels[:half].long(), x[half:].float(), labels[half:].long(),
                        classes, {"path": args.data})
    return data, y is not None


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings


    from ..cost.shapes import parse_shape
    from ..models.cli import model_spatial_dims, resolve_from_args
    from ..models.weights import conversion_of
    from .convert import convert
    from .evaluate import compare_networks, warnings_for

    _check_args(args)
    if args.weights and conversion_of(args.weights) is not None:
        raise ValueError(f"--weights {args.weights!r} holds an already converted network; convert the original weights")
    data, labelled, shape = None, False, None
    if args.data:
        asked = parse_shape(args.input, spatial_dims=None, channels_last=args.channels_last) if args.input else None
        data, labelled = load_samples(args, asked[-1] if asked else 32)
        shape = tuple(data.val_x.shape[1:])
        if asked is not None and tuple(asked) != shape:
            raise ValueError(f"--input {args.input} does not match the --data inputs, "
                             f"{'x'.join(map(str, shape))} (C x H x W)")
    model, source, shape = resolve_from_args(args, input_shape=shape, need_input=False, what=f"converting {args.model}")
    if source.weights is None:
        print(f"note: no --weights given: converting the initial (untrained) weights of {args.model}", file=sys.stderr)
    if source.recipe and source.recipe.get("conversion") is not None:
        raise ValueError(f"{args.model!r} was already converted ({source.recipe['conversion']}); convert the original")
    options = dict(to=args.to, depth_multiplier=args.depth_multiplier, rank=args.rank, include=args.include,
                   exclude=args.exclude, min_kernel=args.min_kernel)
    _refuse_large_conversion(model, shape, options, args.model)
    sample = _sample(data, shape, model_spatial_dims(model), args.samples, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nothing eligible" is reported below
        new, report = convert(model, sample_input=sample, calibrate=args.calibrate, progress=sys.stderr.isatty(),
                              **options)
    print(report.to_table())
    if not report.layers:
        raise ValueError("nothing to convert (see the skipped layers above); no file written")
    record = {"model": source.describe(), "conversion": dict(options, calibrate=args.calibrate),
              "input_shape": list(shape) if shape else None, "layers": _layers(report),
              "skipped": report.skipped, "note": CALIBRATION_NOTE}
    if data is not None:
        held_x, held_y = data.val_x[:EVAL_SAMPLES], (data.val_y[:EVAL_SAMPLES] if labelled else None)
        record["network"] = compare_networks(model, new, held_x, held_y)
        record["network"]["data"] = args.data
        record["warnings"] = warnings_for(record["network"])
    if args.finetune_epochs:
        new, record["finetune"] = _finetune(args, model, new, data, labelled, options)
        record["network_after_finetune"] = compare_networks(model, new, held_x, held_y)
        record["warnings"] = warnings_for(record["network_after_finetune"])
    _save(args.output, new, source, options, record)
    _print_summary(record, args.output)
    return 0


def _refuse_large_conversion(model, shape, options: dict, name: str) -> None:
    """Estimate the converted model's size on the meta device (sepconv.cost) before building it for real."""
    import copy
    import warnings

    from ..models.reference import estimate_bytes, refuse_if_too_big
    from .convert import convert

    meta = copy.deepcopy(model).to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, _ = convert(meta, init="fresh", **options)
    refuse_if_too_big(estimate_bytes(converted, shape, 8), f"converting {name} with {options}")


def _sample(data, shape, spatial_dims: int, samples: int, seed: int):
    """Calibration / MAC-counting inputs: a seeded subset of the training split, or 8 random inputs of ``shape``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if data is not None:
        idx = torch.randperm(data.train_x.shape[0], generator=generator)[:samples]
        return data.train_x[idx]
    if shape is None:
        return None
    return torch.randn(8, *shape, generator=generator)


def _layers(report) -> list[dict]:
    return [{"name": r.name, "kernel_size": list(r.kernel_size), "params_before": r.params_before,
             "params_after": r.params_after, "macs_before": r.macs_before, "macs_after": r.macs_after,
             "weight_error": r.weight_error, "output_error": r.output_error, "calibrated": r.calibrated,
             "calibration_target": r.calibration_target} for r in report.layers]


def _finetune(args, original, converted, data, labelled: bool, options: dict):
    """Fine-tune ``converted`` by knowledge distillation from ``original`` with :func:`sepconv.train.fit` and
    its checkpoints: the original's softmax at ``--distill-temperature`` as soft targets, the converted network's
    logits divided by the same temperature during fine-tuning (Hinton et al. 2015; :class:`sepconv.train.Tempered`),
    or its top-1 classes with ``--hard-labels``. Trains the converted architecture from
    scratch for the same epochs as a baseline. Returns the fine-tuned model and the figures."""
    import copy
    import sys
    import warnings
    from pathlib import Path

    import torch

    from ..data import ImageDataset
    from ..models.reference import resolve_model
    from ..train import Tempered, TrainConfig, distillation_targets, evaluate, fit
    from .convert import convert
    from .evaluate import outputs

    temperature = 1.0 if args.hard_labels else args.distill_temperature
    teacher = distillation_targets(outputs(original, data.train_x), temperature, hard=args.hard_labels)
    kd = ImageDataset(data.name, data.train_x, teacher, data.val_x, data.val_y, data.classes, dict(data.info))
    config = TrainConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.finetune_lr,
                         seed=args.seed)
    stem = Path(args.output).with_suffix("")
    before = evaluate(converted, data.val_x, data.val_y)[1] if labelled else None
    torch.manual_seed(args.seed)
    # at temperature 1 the student is the network itself, so its checkpoints keep the network's own keys
    student = copy.deepcopy(converted) if temperature == 1 else Tempered(copy.deepcopy(converted), temperature)
    student = fit(student, kd, config, checkpoint_path=f"{stem}.finetune.pt", resume=args.resume,
                  progress=sys.stderr.isatty(), desc="fine-tuning").model
    tuned = (student.model if isinstance(student, Tempered) else student).cpu()
    figures = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "batch_size": args.batch_size,
               "method": ("hard-label knowledge distillation: the original network's top-1 class on each "
                          "training image is the label (sepconv.train.fit, Adam, cross-entropy)" if args.hard_labels
                          else f"knowledge distillation at temperature {temperature:g}: cross-entropy between the "
                               "original's and the converted network's softmax of logits / temperature "
                               "(sepconv.train.fit, Adam)"),
               "temperature": None if args.hard_labels else temperature,
               "accuracy_before": before,
               "accuracy_after": evaluate(tuned, data.val_x, data.val_y)[1] if labelled else None}
    if not args.no_scratch and labelled:
        torch.manual_seed(args.seed)
        fresh, _ = resolve_model(args.model, kwargs=_kwargs(args), variant=args.variant,
                                 num_classes=args.num_classes, **_zoo_shape(args, data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh, _ = convert(fresh, init="fresh", **options)
        scratch = fit(fresh, data, config, checkpoint_path=f"{stem}.scratch.pt", resume=args.resume,
                      progress=sys.stderr.isatty(), desc="from scratch").model
        figures["scratch_accuracy"] = evaluate(scratch, data.val_x, data.val_y)[1]
    return tuned, figures


def _kwargs(args) -> dict:
    from ..models.reference import parse_kwargs

    return parse_kwargs(args.kwargs)


def _zoo_shape(args, data) -> dict:
    from ..models import list_models

    if args.model not in list_models():
        return {}
    c, *spatial = data.val_x.shape[1:]
    return {"in_channels": int(c), "image_size": [int(s) for s in spatial]}


def _save(output: str, model, source, options: dict, record: dict) -> None:
    """OUTPUT: the state_dict as safetensors (a zoo recipe where there is one, so ``load_model`` rebuilds it);
    the report as ``.report.json`` and ``.report.html`` next to it."""
    import json
    from pathlib import Path

    from ..models import save_model
    from ..utils.io import atomic_write_bytes

    out = Path(output)
    if source.recipe is not None:
        save_model(out, model, source.recipe["name"], source.recipe["variant"], conversion=options,
                   **source.recipe["kwargs"])
    else:
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        meta = {"sepconv_source": json.dumps({**source.describe(), "conversion": options})}
        atomic_write_bytes(out, save(tensors, metadata=meta))
    stem = out.with_suffix("")
    atomic_write_bytes(f"{stem}.report.json", json.dumps(record, indent=2).encode())
    atomic_write_bytes(f"{stem}.report.html", render_html(record).encode())


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _print_summary(record: dict, output: str) -> None:
    import sys
    from pathlib import Path

    params = sum(r["params_before"] for r in record["layers"]), sum(r["params_after"] for r in record["layers"])
    print(f"converted layers: parameters {params[0]:,} -> {params[1]:,}")
    for key, title in (("network", "held-out, after conversion"), ("network_after_finetune", "after fine-tuning")):
        if key in record:
            n = record[key]
            print(f"{title}: output error {n['output_error']:.4f}, top-1 agreement {_pct(n['top1_agreement'])}"
                  + (f", accuracy {_pct(n['accuracy_converted'])} (original {_pct(n['accuracy_original'])})"
                     if "accuracy_converted" in n else "") + f" on {n['samples']} inputs")
    if "finetune" in record and record["finetune"].get("scratch_accuracy") is not None:
        f = record["finetune"]
        print(f"fine-tuning {f['epochs']} epoch(s): accuracy {_pct(f['accuracy_before'])} -> "
              f"{_pct(f['accuracy_after'])}; the same architecture from scratch: {_pct(f['scratch_accuracy'])}")
    for warning in record.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    stem = Path(output).with_suffix("")
    print(f"wrote {output}, {stem}.report.json and {stem}.report.html")


def render_html(record: dict) -> str:
    """The conversion report as a self-contained HTML page."""
    from html import escape

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return escape(f"{v:,}" if isinstance(v, int) else str(v))

    keys = ("name", "params_before", "params_after", "macs_before", "macs_after", "weight_error", "output_error")
    rows = "".join("<tr>" + "".join(f"<td>{cell(r[k])}</td>" for k in keys) + "</tr>" for r in record["layers"])
    parts = [f"<h1>Conversion of {escape(str(record['model']['reference']))}</h1>"]
    parts += [f'<p class="warning">Warning: {escape(w)}</p>' for w in record.get("warnings", [])]
    for key, title in (("network", "Whole network on held-out data"), ("network_after_finetune", "After fine-tuning"),
                       ("finetune", "Fine-tuning")):
        if key in record:
            items = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in record[key].items())
            parts.append(f"<h2>{title}</h2><table>{items}</table>")
    parts.append("<h2>Per layer</h2><div class=scroll><table><tr>" + "".join(f"<th>{k}</th>" for k in keys)
                 + f"</tr>{rows}</table></div><p>{escape(record['note'])}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}.scroll{overflow-x:auto}"
             "td,th{padding:2px 8px;text-align:right}.warning{background:#fee;border:1px solid #c00;padding:.5em}")
    return (f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>sepconv convert</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
