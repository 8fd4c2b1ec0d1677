"""The settings of ``sepconv compare``, declared once: argparse options, checks and the JSON record derive from them.

Each field of :class:`CompareConfig` (what a run computes, saved in
``run.json`` and ``results.json``) and of :class:`RunOptions` (how this
invocation runs: output directory, timing, logging) carries its help text,
its kind and its bounds in ``dataclasses.field(metadata=...)``.
:func:`add_options` turns them into command-line options, :func:`check_fields`
checks any instance against them (type, finiteness, bounds, choices) and
:func:`config_from_record` rebuilds a config from a saved record, refusing
unknown or missing keys and wrong types. Every refusal is a ``ValueError``
naming the option, the value and what is valid.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Optional

#: Pseudo-variant: the run's trained 'standard' network converted to depthwise separable, then fine-tuned.
CONVERTED = "converted"
#: Options that may differ between a run and its ``--resume`` (the others must match).
RESUMABLE_CHANGES = ("epochs", "device", "download", "data_dir", "threads", "tune_training")
#: Largest seed accepted (``torch.manual_seed`` takes a 64-bit value; JSON and NumPy keep 63 bits exactly).
MAX_SEED = 2**63 - 1
#: Longest path component most file systems accept, in bytes.
MAX_NAME_BYTES = 255
#: Data sets that ignore an option (a non-default value for them is refused instead of silently ignored).
IGNORED_BY = {
    "data_dir": ("digits",),
    "download": ("digits", "fashion-mnist", "imagefolder"),
    "image_size": ("digits", "fashion-mnist", "cifar10"),
    "val_fraction": ("cifar10", "fashion-mnist"),
}


def option(default: Any, help: str, kind: str, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, choices: Optional[tuple[str, ...]] = None, nullable: bool = False,
           metavar: Optional[str] = None, default_text: Optional[str] = None) -> Any:
    """A dataclass field whose metadata says how to parse, check and document it.

    ``kind`` is one of ``int``, ``float``, ``str``, ``path``, ``bool``, ``list``
    (comma-separated names on the command line, a list of strings in JSON).
    ``low``/``high`` bound numbers (``low_open``: strictly above ``low``);
    ``nullable``: ``None`` is valid (it means the documented default).
    """
    meta = {"help": help, "kind": kind, "low": low, "high": high, "low_open": low_open, "choices": choices,
            "nullable": nullable, "metavar": metavar, "default_text": default_text}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CompareConfig:
    """The settings of one comparison; see ``sepconv compare --help`` for each."""

    dataset: str = option("digits", "data set: digits (1797 8x8 images shipped with scikit-learn), fashion-mnist "
                          "(IDX files; Debian package dataset-fashion-mnist), cifar10 or imagefolder", "str")
    data_dir: Optional[str] = option(None, "folder with the CIFAR-10 batches or Fashion-MNIST IDX files, or with "
                                     "one sub-folder of images per class", "path", nullable=True, metavar="DIR", default_text="none")
    download: bool = option(False, "cifar10: download the archive if missing (needs network)", "bool")
    image_size: int = option(32, "imagefolder: resize images to this side in pixels", "int", low=1, high=1024)
    model: str = option("vgg_blocks", "zoo model (see sepconv.models.list_models())", "str")
    variants: Optional[list[str]] = option(
        None, "comma-separated variants, e.g. standard,separable,grouped,spatial; add 'converted' to also factorize "
        "the trained standard network into a separable one and fine-tune it", "list", nullable=True,
        default_text="all of the model's")
    width: Optional[float] = option(1.0, "channel multiplier passed to the model", "float", low=0, high=64,
                                    low_open=True, nullable=True)
    epochs: int = option(15, "epochs per variant", "int", low=1, high=100_000)
    batch_size: int = option(64, "global batch size", "int", low=1, high=65_536)
    lr: float = option(3e-3, "Adam learning rate, constant", "float", low=0, high=100, low_open=True)
    seed: int = option(0, "seed for initialization and data order, same for every variant", "int", low=0,
                       high=MAX_SEED)
    device: str = option("auto", "cpu, cuda, cuda:N or auto (CUDA when available)", "str")
    amp: Optional[bool] = option(None, "mixed precision with torch.autocast", "bool", nullable=True,
                                 default_text="on for CUDA, off on CPU")
    val_fraction: float = option(0.2, "held-out fraction of each class (CIFAR-10 uses its test batch)", "float",
                                 low=0, high=1, low_open=True)
    threads: Optional[int] = option(None, "torch CPU threads; use 1 on a machine shared with other jobs", "int",
                                    low=1, high=4096, nullable=True, default_text="OMP_NUM_THREADS if set, else the physical cores")
    finetune_epochs: int = option(5, "epochs of fine-tuning for the 'converted' variant", "int", low=1, high=100_000)
    finetune_lr: Optional[float] = option(None, "learning rate of the 'converted' variant's fine-tuning", "float",
                                          low=0, high=100, low_open=True, nullable=True, default_text="--lr / 3")
    convert_to: str = option("separable", "what the 'converted' variant turns the standard convolutions into",
                             "str", choices=("separable", "spatial", "blueprint", "cp"))
    tune_training: bool = option(False, "before training each variant, route each convolution through its fastest "
                                 "training engine, timed on a batch (sepconv.tune_training)", "bool")

    def conversion(self) -> dict[str, Any]:
        """The options :func:`sepconv.factorize.convert` gets for the ``converted`` variant (M = 1, default ranks)."""
        return {"to": self.convert_to, "depth_multiplier": 1}

    def epochs_of(self, variant: str) -> int:
        """Epochs ``variant`` trains for (``finetune_epochs`` for ``converted``)."""
        return self.finetune_epochs if variant == CONVERTED else self.epochs

    def lr_of(self, variant: str) -> float:
        """Learning rate of ``variant`` (``finetune_lr``, default ``lr / 3``, for ``converted``)."""
        if variant != CONVERTED:
            return self.lr
        return self.lr / 3 if self.finetune_lr is None else self.finetune_lr


@dataclass
class RunOptions:
    """How one invocation runs a comparison (not part of the results' identity, free to change on ``--resume``)."""

    out: Optional[str] = option(None, "output directory", "path", nullable=True, metavar="DIR",
                                default_text="runs/compare-<UTC time>")
    resume: bool = option(False, "continue the run in --out from its last checkpoints", "bool")
    overwrite: bool = option(False, "replace the run in --out", "bool")
    quiet: bool = option(False, "no progress bars or per-epoch lines", "bool")
    dry_run: bool = option(False, "check every setting, the data and the output directory, print the plan with "
                           "each variant's cost, and stop before training", "bool")
    latency_time: float = option(0.3, "seconds spent timing each latency/throughput measurement", "float",
                                 low=0, high=60, low_open=True)
    optimized_latency: bool = option(True, "also measure batch-1 latency through sepconv.optimize (what a "
                                     "deployment gets) beside eager PyTorch", "bool")
    quantize: bool = option(False, "also quantize each trained network to int8 with sepconv.quantize (ONNX Runtime; "
                            "needs the 'onnx' extra) and report naive per-tensor, per-channel and equalized "
                            "per-tensor int8 beside float: accuracy, agreement, size, batch-1 latency", "bool")
    tensorboard: Optional[str] = option(None, "also write per-epoch scalars for TensorBoard into DIR (needs the "
                                        "'tensorboard' extra)", "path", nullable=True, metavar="DIR",
                                        default_text="off")


# ------------------------------------------------------------------ checks

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(f: Any, value: Any) -> None:
    """Check one field's value against its metadata; ``ValueError`` naming the option otherwise."""
    meta, flag = f.metadata, _flag(f.name)
    kind = meta["kind"]
    if value is None:
        if meta["nullable"]:
            return
        raise ValueError(f"{flag} needs a value, got None")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
        return
    if kind == "list":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{flag} must be a non-empty list of names, got {value!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"{flag} lists a name twice: {','.join(value)}")
        return
    if kind in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{flag} must be a non-empty string, got {value!r}")
        if kind == "path":
            _check_path(flag, value)
        if meta["choices"] and value not in meta["choices"]:
            raise ValueError(f"{flag} must be one of {', '.join(meta['choices'])}; got {value!r}")
        return
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{flag} must be an integer, got {value!r}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or not math.isfinite(value)):
        raise ValueError(f"{flag} must be a finite number, got {value!r}")
    low, high = meta["low"], meta["high"]
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    if too_low or (high is not None and value > high):
        lower = f"> {low:g}" if meta["low_open"] else f">= {low:g}"
        raise ValueError(f"{flag} must be {lower} and <= {high:g}, got {value!r}")


def _check_path(flag: str, value: str) -> None:
    if "\0" in value:
        raise ValueError(f"{flag} must not contain a NUL character, got {value!r}")
    for part in value.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ValueError(f"{flag} has a path component longer than {MAX_NAME_BYTES} bytes: {part[:40]!r}...")


def check_fields(obj: Any) -> None:
    """Check every field of a :class:`CompareConfig` or :class:`RunOptions` against its metadata."""
    for f in fields(obj):
        check_value(f, getattr(obj, f.name))


def check_applies(config: CompareConfig) -> None:
    """Refuse settings the run would ignore: a non-default value of an option its data set or variants do not use."""
    defaults = CompareConfig()
    for name, datasets in IGNORED_BY.items():
        value = getattr(config, name)
        if config.dataset in datasets and value != getattr(defaults, name):
            raise ValueError(f"{_flag(name)} {value!r} does not apply to --dataset {config.dataset}; leave it out")
    if CONVERTED not in (config.variants or []):
        for name in ("finetune_epochs", "finetune_lr", "convert_to"):
            value = getattr(config, name)
            if value != getattr(defaults, name):
                raise ValueError(f"{_flag(name)} {value!r} applies to the '{CONVERTED}' variant only; "
                                 f"add it to --variants (e.g. standard,{CONVERTED}) or leave the option out")


# ------------------------------------------------------------------ records and the command line

def config_from_record(record: Any, source: str) -> CompareConfig:
    """Rebuild a :class:`CompareConfig` from its saved JSON form; ``ValueError`` naming ``source`` when it is not one.

    Every field must be present, no other key may be, and each value must pass :func:`check_fields`.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{source}: 'config' must be a JSON object, got {type(record).__name__}")
    names = [f.name for f in fields(CompareConfig)]
    unknown = sorted(set(record) - set(names), key=str)
    missing = [n for n in names if n not in record]
    if unknown or missing:
        raise ValueError(f"{source}: 'config' has unknown key(s) {unknown} and lacks {missing}; "
                         "it was not written by this version of sepconv compare")
    config = CompareConfig(**record)
    try:
        check_fields(config)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return config


def record_of(config: CompareConfig) -> dict[str, Any]:
    """The JSON form of ``config`` (what ``run.json`` and ``results.json`` hold)."""
    return asdict(config)


def parse_variants(text: Optional[str]) -> Optional[list[str]]:
    """Split a comma-separated ``--variants`` value; ``None`` means all variants."""
    if text is None:
        return None
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--variants must name at least one variant, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--variants lists a variant twice: {text!r}")
    return names


def _default_text(f: Any) -> str:
    meta = f.metadata
    if meta["default_text"] is not None:
        text = meta["default_text"]
    else:
        default = f.default if f.default is not MISSING else f.default_factory()
        text = "on" if default is True else "off" if default is False else str(default)
    if meta["low"] is not None and meta["high"] is not None:
        text += f"; {'above' if meta['low_open'] else 'from'} {meta['low']:g} to {meta['high']:g}"
    return text


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one command-line option per field of ``cls``; every option defaults to ``None`` (not given)."""
    for f in fields(cls):
        meta = f.metadata
        help_text = f"{meta['help']} (default: {_default_text(f)})"
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": f.name}
        if meta["kind"] == "bool":
            # a recorded setting may be switched off on --resume (--no-X); a plain switch only on
            kwargs["action"] = (argparse.BooleanOptionalAction if cls is CompareConfig or f.default is not False
                                else "store_true")
        else:
            kwargs["type"] = {"int": int, "float": float}.get(meta["kind"], str)
            kwargs["metavar"] = meta["metavar"] or {"int": "N", "float": "X"}.get(meta["kind"], "NAME")
            if meta["choices"]:
                kwargs["help"] = help_text.replace(" (default", f": {', '.join(meta['choices'])} (default", 1)
        parser.add_argument(_flag(f.name), **kwargs)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (not ``None``), ``--variants`` split into names."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if cls is CompareConfig and "variants" in given:
        given["variants"] = parse_variants(given["variants"])
    return given


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of a parsed command line, defaults filled in and checked."""
    options = RunOptions(**given_options(args, RunOptions))
    check_fields(options)
    if options.resume and options.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    if options.resume and not options.out:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    return options
