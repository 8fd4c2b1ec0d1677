"""``sepconv compare``: train one architecture in several convolution variants and compare them.

The experiment of the seed article on TensorFlow's ``SeparableConv2D`` (a
VGG-block CNN built with standard and with depthwise separable convolutions,
compared on parameters, time per epoch and train/validation accuracy curves),
made runnable on any data set and zoo model. Every variant is trained with
the same seed (same initial RNG state, same data order, same schedule); the
final table reports, per variant:

* ``params`` and ``macs`` (multiply-accumulates per sample; FLOPs = 2 x MACs),
  from :func:`sepconv.cost.profile`, never counted here;
* ``train_s_per_epoch``: median wall time of an epoch's optimization steps,
  over the epochs after the first (the first is a warm-up; with one epoch, that
  epoch);
* ``latency_ms``: median forward time of one image (batch 1) in eval mode with
  ``torch.no_grad``, measured by ``torch.utils.benchmark.Timer.blocked_autorange``
  (warm-up included) with the number of threads recorded in ``results.json``;
  ``throughput_img_s`` at batch 256 goes into ``results.json`` too;
* ``best_val_acc`` (and its epoch), ``final_val_acc`` and ``train_val_gap`` =
  final train accuracy (epoch average in training mode) - final validation
  accuracy; a larger gap means more overfitting.

The pseudo-variant ``converted`` (opt-in: ``--variants standard,separable,converted``)
takes the trained ``standard`` network of the same run, replaces its
convolutions by depthwise separable ones (or ``convert_to``: spatial,
blueprint, cp) initialized from the optimal
factorization (:func:`sepconv.factorize.convert`) with the pointwise weights
calibrated on 512 training images, reports its validation accuracy right
after conversion (``val_acc_converted``) and fine-tunes it
for ``finetune_epochs`` epochs at ``finetune_lr`` (default ``lr / 3``):
the factorize-then-fine-tune route next to the separable network trained
from scratch.

Default run: scikit-learn's digits (real 8x8 images, no download), the
``vgg_blocks`` model in all its variants; see ``docs/compare.md`` for the
chosen epochs/width/batch size and the measured wall time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import os
import platform
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

#: Defaults of ``sepconv compare`` (chosen so the default run takes about two minutes on a 2-core CPU).
DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_dir": None,
    "download": False,
    "image_size": 32,
    "model": "vgg_blocks",
    "variants": None,  # every variant the model has
    "width": 1.0,
    "epochs": 15,
    "batch_size": 64,
    "lr": 3e-3,
    "seed": 0,
    "device": "auto",
    "amp": None,  # on for CUDA, off otherwise
    "val_fraction": 0.2,
    "threads": None,  # PyTorch's default (one per core)
    "finetune_epochs": 5,  # the 'converted' variant only
    "finetune_lr": None,  # the 'converted' variant only; None: lr / 3 (best of lr, lr/3, lr/10 on digits)
    "convert_to": "separable",  # the 'converted' variant only: sepconv.factorize.convert's target
    "tune_training": False,  # sepconv.tune_training per variant before training (engines chosen by timing)
}
#: Pseudo-variant: the run's trained 'standard' network converted to depthwise separable, then fine-tuned.
CONVERTED = "converted"
#: Options that may differ between a run and its ``--resume`` (the others must match).
RESUMABLE_CHANGES = ("epochs", "device", "download", "data_dir", "threads", "tune_training")
#: File written first into an output directory; marks it as a sepconv run.
RUN_MARKER = "run.json"
#: What ``--overwrite`` removes from a previous run's directory (nothing else is touched).
RUN_FILES = ("run.json", "results.json", "metrics.csv", "report.html", "accuracy.png", "loss.png", "costs.png")
RUN_DIRS = ("checkpoints", "models")


@dataclass
class CompareConfig:
    """The settings of one comparison; see ``sepconv compare --help`` for each."""

    dataset: str = DEFAULTS["dataset"]
    data_dir: Optional[str] = DEFAULTS["data_dir"]
    download: bool = DEFAULTS["download"]
    image_size: int = DEFAULTS["image_size"]
    model: str = DEFAULTS["model"]
    variants: Optional[list[str]] = DEFAULTS["variants"]
    width: Optional[float] = DEFAULTS["width"]
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    lr: float = DEFAULTS["lr"]
    seed: int = DEFAULTS["seed"]
    device: str = DEFAULTS["device"]
    amp: Optional[bool] = DEFAULTS["amp"]
    val_fraction: float = DEFAULTS["val_fraction"]
    threads: Optional[int] = DEFAULTS["threads"]
    finetune_epochs: int = DEFAULTS["finetune_epochs"]
    finetune_lr: Optional[float] = DEFAULTS["finetune_lr"]
    convert_to: str = DEFAULTS["convert_to"]
    tune_training: bool = DEFAULTS["tune_training"]

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


# ------------------------------------------------------------------ helpers

def resolve_device(name: str) -> "torch.device":  # noqa: F821
    """``cpu``, ``cuda`` (error when unavailable) or ``auto`` (CUDA when available)."""
    import torch

    if name not in ("cpu", "cuda", "auto") and not str(name).startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available (use --device cpu or auto)")
    return torch.device(name)


def environment() -> dict[str, Any]:
    """Versions and hardware the run used (goes into results.json)."""
    import numpy
    import torch

    from ..version import __version__
    from ..utils.machine import cpu_fields
    from ..utils.memory import freed_memory_kept

    env = {
        "sepconv": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "freed_memory_kept": freed_memory_kept(),  # sepconv.keep_freed_memory: glibc malloc keeps freed memory
    }
    if "model name" in cpu_fields():
        env["cpu_model"] = cpu_fields()["model name"]
    return env


def measure_latency(model: "torch.nn.Module", input_shape: tuple[int, ...], batch_size: int = 1,  # noqa: F821
                    device: "torch.device | str" = "cpu", min_run_time: float = 0.3) -> float:  # noqa: F821
    """Median seconds of one forward pass of a ``batch_size`` batch in eval mode under ``no_grad``.

    Uses ``torch.utils.benchmark.Timer.blocked_autorange`` (which warms up,
    then times blocks of calls for at least ``min_run_time`` seconds) with the
    current ``torch.get_num_threads()``, on an input in the memory layout
    :func:`sepconv.train.fit` trains in (channels-last for images on the CPU).
    The model's train/eval mode is restored.
    """
    import torch
    from torch.utils import benchmark

    from ..train.loop import memory_format_for

    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    x = x.contiguous(memory_format=memory_format_for(device, x))  # the layout the model was trained in
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            timer = benchmark.Timer(
                stmt="with torch.no_grad(): model(x)", globals={"model": model, "x": x, "torch": torch},
                num_threads=torch.get_num_threads(),
            )
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    return float(measurement.median)


def parse_variants(text: Optional[str]) -> Optional[list[str]]:
    """Split a comma-separated ``--variants`` value; ``None``/empty means all variants."""
    if text is None:
        return None
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--variants must name at least one variant, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--variants lists a variant twice: {text!r}")
    return names


def _model_info(name: str) -> Any:
    from ..models import list_models

    listed = list_models()
    infos = dict(listed) if isinstance(listed, dict) else {info.name: info for info in listed}
    if name not in infos:
        raise ValueError(f"--model must be one of {', '.join(sorted(infos))}; got {name!r}")
    return infos[name]


def _build_kwargs(config: CompareConfig, info: Any, data_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Zoo options from the data and ``--width``: ``image_size`` where the model takes it, and the
    channel multiplier as ``width`` (VGG blocks) or ``alpha`` (the MobileNets)."""
    options = tuple(getattr(info, "options", ("image_size", "width")))
    kwargs: dict[str, Any] = {}
    if "image_size" in options:
        kwargs["image_size"] = data_shape[1] if data_shape[1] == data_shape[2] else [data_shape[1], data_shape[2]]
    if config.width is not None:
        multiplier = next((name for name in ("width", "alpha") if name in options), None)
        if multiplier is None:
            raise ValueError(f"--width: model {config.model!r} has no channel multiplier (its options: {', '.join(options)})")
        kwargs[multiplier] = config.width
    return kwargs


def validate_config(config: CompareConfig) -> tuple[Any, list[str]]:
    """Check the model, variants and numbers before anything is loaded or written.

    Returns the zoo's ``ModelInfo`` and the list of variants to train.
    """
    from ..data import DATASETS
    from ..train import TrainConfig

    if config.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}; got {config.dataset!r}")
    if config.dataset not in ("digits", "fashion-mnist") and not config.data_dir:
        raise ValueError(f"--dataset {config.dataset} needs --data-dir DIR")
    info = _model_info(config.model)
    available = list(info.variants)
    variants = list(config.variants or available)
    convertible = "standard" in available
    valid = available + ([CONVERTED] if convertible else [])
    unknown = [v for v in variants if v not in valid]
    if unknown:
        raise ValueError(
            f"--variants: {', '.join(map(repr, unknown))} not available for model {config.model!r}; "
            f"valid: {', '.join(valid)}"
        )
    if CONVERTED in variants:
        if "standard" not in variants:
            raise ValueError(f"--variants: {CONVERTED!r} converts the run's trained 'standard' network; "
                             f"add 'standard' to --variants (got {','.join(variants)})")
        if variants.index(CONVERTED) < variants.index("standard"):  # it needs the trained standard network
            variants.remove(CONVERTED)
            variants.insert(variants.index("standard") + 1, CONVERTED)
    if isinstance(config.finetune_epochs, bool) or not isinstance(config.finetune_epochs, int) or config.finetune_epochs < 1:
        raise ValueError(f"--finetune-epochs must be a positive int, got {config.finetune_epochs!r}")
    if config.finetune_lr is not None and not (isinstance(config.finetune_lr, (int, float)) and config.finetune_lr > 0):
        raise ValueError(f"--finetune-lr must be a number > 0, got {config.finetune_lr!r}")
    from ..factorize.convert import TARGETS

    if config.convert_to not in TARGETS:
        raise ValueError(f"--convert-to must be one of {', '.join(TARGETS)}; got {config.convert_to!r}")
    if not isinstance(config.tune_training, bool):
        raise ValueError(f"tune_training must be True or False, got {config.tune_training!r}")
    if config.width is not None and (isinstance(config.width, bool) or not config.width > 0):
        raise ValueError(f"--width must be a number > 0 (a channel multiplier), got {config.width!r}")
    if config.threads is not None and (isinstance(config.threads, bool) or not isinstance(config.threads, int)
                                       or config.threads < 1):
        raise ValueError(f"--threads must be a positive int, got {config.threads!r}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"--val-fraction must be strictly between 0 and 1, got {config.val_fraction!r}")
    TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
    return info, variants


def prepare_out_dir(out: Path, config: CompareConfig, *, resume: bool, overwrite: bool, write: bool = True) -> CompareConfig:
    """Check ``out`` and make it ready; return the config to run (the saved one, updated, on resume).

    * a new or empty directory is used as is;
    * a directory holding a previous run (``run.json``) is refused unless
      ``resume`` (continue it: settings other than :data:`RESUMABLE_CHANGES`
      must match) or ``overwrite`` (its run files are removed first);
    * a non-empty directory that is not a sepconv run is always refused, so
      nothing already there is lost.
    """
    import json

    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    marker = out / RUN_MARKER
    contents = [p for p in out.iterdir()] if out.exists() else []
    if resume:
        if not marker.is_file():
            raise ValueError(f"--resume: --out {str(out)!r} holds no sepconv run to resume (no {RUN_MARKER})")
        try:
            saved = json.loads(marker.read_text())["config"]
            previous = CompareConfig(**saved)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"--resume: {str(marker)!r} is not a readable sepconv run file: {error}") from error
        for f in fields(CompareConfig):
            if f.name in RESUMABLE_CHANGES:
                continue
            if getattr(previous, f.name) != getattr(config, f.name):
                raise ValueError(
                    f"--resume: the run in {str(out)!r} used {f.name}={getattr(previous, f.name)!r}, this command asks "
                    f"for {getattr(config, f.name)!r}; resume with the same settings or choose a new --out"
                )
        return config
    if contents:
        if not marker.is_file():
            raise ValueError(
                f"--out {str(out)!r} exists, is not empty and is not a sepconv run; choose a new or empty directory"
            )
        if not overwrite:
            raise ValueError(
                f"--out {str(out)!r} holds a previous sepconv run; pass --resume to continue it or --overwrite to replace it"
            )
        if write:
            for name in RUN_FILES:
                if (out / name).is_file():
                    (out / name).unlink()
            for name in RUN_DIRS:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
    return config


#: Training images the ``converted`` variant's pointwise weights are calibrated on (``convert(calibrate=True)``).
CALIBRATION_SAMPLES = 512


def _convert(model: "torch.nn.Module", options: dict[str, Any], **kwargs: Any) -> Any:  # noqa: F821
    """``sepconv.factorize.convert`` with ``options`` (every standard convolution with a kernel > 1)."""
    import warnings

    from ..factorize import convert

    with warnings.catch_warnings():  # "nothing eligible" is reported by the caller's checks, not as a warning here
        warnings.simplefilter("ignore")
        return convert(model, **options, **kwargs)


def _summarize(variant: str, params: int, macs: int, history: list[dict[str, float]],
               latency_s: Optional[float], entry: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    times = [h["train_time_s"] for h in history]
    timed = times[1:] if len(times) > 1 else times
    best = max(history, key=lambda h: (h["val_acc"], -h["epoch"])) if history else None
    last = history[-1] if history else None
    return {
        "variant": variant,
        "params": params,
        "macs": macs,
        "flops": 2 * macs,
        "epochs": len(history),
        "train_s_per_epoch": statistics.median(timed) if timed else None,
        "latency_ms": latency_s * 1e3 if latency_s is not None else None,
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_val_acc": last["val_acc"] if last else None,
        "final_train_acc": last["train_acc"] if last else None,
        "train_val_gap": (last["train_acc"] - last["val_acc"]) if last else None,
        "val_acc_converted": (entry or {}).get("conversion", {}).get("val_acc"),
    }


# ------------------------------------------------------------------ the experiment

def run_compare(
    config: CompareConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    stop_after_epoch: Optional[int] = None,
    latency_min_run_time: float = 0.3,
) -> dict[str, Any]:
    """Run the comparison described by ``config`` and write its results into ``out``.

    Returns the results dict that is also saved as ``out/results.json`` (keys
    ``status``, ``config``, ``data``, ``environment``, ``measurement``,
    ``variants`` with each variant's cost and per-epoch history, and ``table``,
    the final rows). Bad settings, data or output directory raise
    ``ValueError``/``FileNotFoundError``/... before anything is written.
    ``stop_after_epoch`` stops every variant after that epoch, like an
    interruption (used to test ``resume``). Raises
    :class:`~sepconv.train.TrainingDiverged` / :class:`~sepconv.train.TrainingInterrupted`
    after saving the partial results.
    """
    import torch

    from ..cost import profile
    from ..data import load_dataset
    from ..models import build_model, save_model
    from ..factorize import calibrate
    from ..train import TrainConfig, TrainingDiverged, TrainingInterrupted, evaluate, fit, load_checkpoint
    from ..train import distributed as dist_utils

    out = Path(out)
    info, variants = validate_config(config)
    device = resolve_device(config.device)
    amp = (device.type == "cuda") if config.amp is None else bool(config.amp)
    if amp and device.type != "cuda":
        raise ValueError("--amp (mixed precision) needs a CUDA device; on CPU leave it off")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    distributed = dist_utils.init_from_env(device)
    main = dist_utils.is_main_process()
    # read-only checks (on every rank, so all ranks fail alike) before the data is loaded...
    prepare_out_dir(out, config, resume=resume, overwrite=overwrite, write=False)
    data = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction, split_seed=0,
                        image_size=config.image_size, download=config.download and main)
    build_kwargs = _build_kwargs(config, info, data.input_shape)
    c, h, w = data.input_shape
    costs: dict[str, tuple[int, int]] = {}
    for variant in variants:  # every variant must build and run on this input before anything is written
        with torch.random.fork_rng(devices=[]):
            try:
                probe = build_model(config.model, "standard" if variant == CONVERTED else variant,
                                    num_classes=data.num_classes, in_channels=c, **build_kwargs)
                if variant == CONVERTED:
                    probe = _convert(probe, config.conversion(), init="fresh")[0]
                prof = profile(probe.eval(), (c, h, w))
            except (RuntimeError, TypeError, ValueError) as error:
                raise ValueError(
                    f"--model {config.model} (variant {variant}, {build_kwargs}) cannot be built for "
                    f"{c}x{h}x{w} inputs of --dataset {config.dataset}: {error}"
                ) from error
        costs[variant] = (int(prof.total_params), int(prof.total_macs))
        del probe
    if distributed:
        dist_utils.barrier()
    # ... then the output directory is made ready, by rank 0 only
    if main:
        prepare_out_dir(out, config, resume=resume, overwrite=overwrite, write=True)
        out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    def train_cfg(variant: str) -> TrainConfig:
        return TrainConfig(epochs=config.epochs_of(variant), batch_size=config.batch_size, lr=config.lr_of(variant),
                           seed=config.seed, device=str(device), amp=amp)

    trained_standard: Optional[torch.nn.Module] = None
    results: dict[str, Any] = {
        "status": "running",
        "started": started,
        "config": asdict(config) | {"variants": variants},
        "resolved": {"device": str(device), "amp": amp, "world_size": dist_utils.world_size(),
                     "build_kwargs": build_kwargs, "optimizer": "Adam, constant lr", "loss": "cross-entropy",
                     "conversion": (config.conversion() | {"init": "factorize", "calibrate": True,
                                                  "calibration_samples": CALIBRATION_SAMPLES, "finetune_epochs": config.finetune_epochs,
                                                  "finetune_lr": config.lr_of(CONVERTED)}
                                    if CONVERTED in variants else None)},
        "data": data.describe(),
        "environment": environment(),
        "measurement": {
            "train_s_per_epoch": "median wall time of an epoch's optimization steps, epochs after the first",
            "latency_ms": "median forward time, batch 1, eval mode, no_grad (torch.utils.benchmark blocked_autorange)",
            "throughput_img_s": "images per second of a forward pass at batch 256, eval mode",
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
        },
        "variants": {},
        "table": [],
    }
    if main:
        from .report import write_json

        write_json(out / RUN_MARKER, {"config": asdict(config), "started": started})

    def save(status: str) -> None:
        results["status"] = status
        results["table"] = [r["summary"] for r in results["variants"].values()]
        if main:
            from .report import write_report

            write_report(out, results)

    for variant in variants:
        torch.manual_seed(config.seed)
        params, macs = costs[variant]
        entry: dict[str, Any] = {"params": params, "macs": macs, "history": []}
        results["variants"][variant] = entry
        if variant == CONVERTED:
            assert trained_standard is not None  # validate_config puts 'standard' first
            sample = data.train_x[:CALIBRATION_SAMPLES]  # training images only: validation stays unseen
            # factorize once; evaluate before and after calibrating the same model
            model, report = _convert(copy.deepcopy(trained_standard), config.conversion(), init="factorize",
                                     sample_input=sample)
            _, plain_acc = evaluate(model.to(device), data.val_x, data.val_y, 256, device, amp)
            fitted = calibrate(trained_standard, model.cpu(), sample)
            val_loss, val_acc = evaluate(model.to(device), data.val_x, data.val_y, 256, device, amp)
            layers = [asdict(dataclasses.replace(layer, calibrated=True, calibration_target=fitted[layer.name]))
                      for layer in report.layers]  # weight and output errors are the factorization's
            entry["conversion"] = {"val_loss": val_loss, "val_acc": val_acc, "val_acc_uncalibrated": plain_acc,
                                   "calibration_samples": int(sample.shape[0]), "layers": layers,
                                   "skipped": report.skipped}
            if main:
                errors = [r.weight_error for r in report.layers]
                log(f"[{variant}] the trained standard network with {len(errors)} convolution(s) factorized "
                    f"(relative weight error {min(errors):.3f} to {max(errors):.3f}): val_acc {plain_acc:.4f}; "
                    f"calibrated on {sample.shape[0]} training images: val_acc {val_acc:.4f}, before fine-tuning")
        else:
            model = build_model(config.model, variant, num_classes=data.num_classes, in_channels=c, **build_kwargs)
        entry["summary"] = _summarize(variant, params, macs, [], None, entry)
        if main:
            log(f"[{variant}] {params:,} params, {macs:,} MACs/sample")

        def on_epoch(record: dict[str, float], variant: str = variant) -> None:
            log(f"[{variant}] epoch {record['epoch']}/{config.epochs_of(variant)}  loss {record['train_loss']:.4f}  "
                f"acc {record['train_acc']:.4f}  val_loss {record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  "
                f"{record['train_time_s']:.2f} s")

        checkpoint = out / "checkpoints" / f"{variant}.pt"
        try:
            run = fit(model, data, train_cfg(variant), checkpoint_path=checkpoint, resume=resume,
                      progress=progress, desc=variant, on_epoch=on_epoch, stop_after_epoch=stop_after_epoch,
                      tune_training=config.tune_training)
            entry["history"] = run.history
            if "training_engines" in run.extra:
                engines = run.extra["training_engines"]
                entry["training_engines"] = engines
                if main:
                    routed = {e: sum(v == e for v in engines.values()) for e in sorted(set(engines.values()))}
                    log(f"[{variant}] training engines (sepconv.tune_training) of its {len(engines)} tunable "
                        f"convolution(s): " + ", ".join(f"{e} {n}" for e, n in routed.items()))
            if distributed:
                entry["ranks_agree"] = dist_utils.weights_agree(run.model)
            latency = throughput = None
            if main:
                entry["load_average_before_latency"] = [round(v, 2) for v in os.getloadavg()]
                latency = measure_latency(run.model, data.input_shape, 1, device, latency_min_run_time)
                batch_time = measure_latency(run.model, data.input_shape, 256, device, latency_min_run_time)
                throughput = 256 / batch_time
                save_model(out / "models" / f"{variant}.safetensors", run.model.to("cpu"), config.model,
                           "standard" if variant == CONVERTED else variant,
                           conversion=config.conversion() if variant == CONVERTED else None,
                           num_classes=data.num_classes, in_channels=c, **build_kwargs)
        except (TrainingDiverged, TrainingInterrupted, KeyboardInterrupt) as error:
            if not entry["history"] and checkpoint.exists():  # the epochs completed before the stop
                entry["history"] = load_checkpoint(checkpoint)["history"]
                entry["summary"] = _summarize(variant, params, macs, entry["history"], None, entry)
            save("diverged" if isinstance(error, TrainingDiverged) else "interrupted")
            if isinstance(error, KeyboardInterrupt):
                raise TrainingInterrupted(len(entry["history"]), checkpoint) from None
            raise
        entry["summary"] = _summarize(variant, params, macs, run.history, latency, entry)
        entry["summary"]["throughput_img_s"] = throughput
        entry["resumed_from_epoch"] = run.start_epoch
        if variant == "standard" and CONVERTED in variants:
            trained_standard = copy.deepcopy(run.model).to("cpu")
        del model, run
    loads = [e["load_average_before_latency"][0] for e in results["variants"].values() if "load_average_before_latency" in e]
    cores = os.cpu_count() or 1
    busy = bool(loads) and max(loads) > cores + 0.5
    results["measurement"]["load_average_1min_max"] = max(loads) if loads else None
    results["measurement"]["machine_busy"] = busy
    if busy and main:
        log(f"warning: the machine was busy (1-minute load average up to {max(loads):.2f} on {cores} cores): times "
            "and latencies may be inflated many-fold by thread contention; on a shared machine use --threads 1")
    complete = all(len(e["history"]) == config.epochs_of(v) for v, e in results["variants"].items())
    save("complete" if complete else "stopped")
    if distributed:
        dist_utils.barrier()
    return results


# ------------------------------------------------------------------ command line

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    p = subparsers.add_parser(
        "compare",
        help="train standard vs separable variants of one architecture and compare cost and accuracy",
        description=(
            "Train the same architecture in several convolution variants (standard, depthwise separable, grouped, "
            "spatially separable) with identical seeds, data order and schedule; print and save a table of parameters, "
            "MACs, train time per epoch, inference latency, best/final validation accuracy and train/val gap, with "
            "plots and an HTML report. With no arguments: scikit-learn's digits (no download), about two minutes on "
            "a 2-core CPU."
        ),
    )
    d = DEFAULTS
    p.add_argument("--dataset", choices=("digits", "cifar10", "fashion-mnist", "imagefolder"),
                   help=f"data set (default {d['dataset']}: 1797 8x8 digits shipped with scikit-learn)")
    p.add_argument("--data-dir", help="folder with the CIFAR-10 batches, or with one sub-folder of images per class")
    p.add_argument("--download", action="store_true", default=None, help="cifar10: download the archive if missing (needs network)")
    p.add_argument("--image-size", type=int, help=f"imagefolder: resize images to this side in pixels (default {d['image_size']})")
    p.add_argument("--val-fraction", type=float, help=f"held-out fraction of each class (default {d['val_fraction']}; CIFAR-10 uses its test batch)")
    p.add_argument("--model", help=f"zoo model (default {d['model']}; see sepconv.models.list_models())")
    p.add_argument("--variants", help="comma-separated variants (default: all of the model's, e.g. standard,separable,grouped,spatial); "
                   "add 'converted' to also factorize the trained standard network into a separable one and fine-tune it")
    p.add_argument("--width", type=float, help=f"channel multiplier passed to the model (default {d['width']})")
    p.add_argument("--epochs", type=int, help=f"epochs per variant (default {d['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"global batch size (default {d['batch_size']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate, constant (default {d['lr']})")
    p.add_argument("--finetune-epochs", type=int,
                   help=f"epochs of fine-tuning for the 'converted' variant (default {d['finetune_epochs']})")
    p.add_argument("--finetune-lr", type=float, help="learning rate of the 'converted' variant's fine-tuning (default: --lr / 3)")
    p.add_argument("--convert-to", help="what the 'converted' variant turns the standard convolutions into: separable "
                   "(default), spatial, blueprint or cp (see docs/factorize.md)")
    p.add_argument("--seed", type=int, help=f"seed for initialization and data order, same for every variant (default {d['seed']})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's, one per core; "
                   "use 1 on a machine shared with other jobs, see docs/compare.md)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto: CUDA when available)")
    p.add_argument("--tune-training", action=argparse.BooleanOptionalAction, default=None,
                   help="before training each variant, route each convolution through its fastest training engine, "
                        "timed on a batch (sepconv.tune_training; pays on larger images, e.g. CIFAR-10 size; "
                        "default off)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision with torch.autocast (default: on for CUDA, off on CPU)")
    p.add_argument("--out", help="output directory (default runs/compare-<UTC time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--latency-time", type=float, default=0.3,
                   help="seconds spent timing each latency/throughput measurement (default 0.3)")
    p.set_defaults(func=run)


_ARG_NAMES = {"threads", "data_dir", "download", "image_size", "val_fraction", "model", "variants", "width", "epochs",
              "batch_size", "lr", "seed", "device", "amp", "dataset", "finetune_epochs", "finetune_lr", "convert_to",
              "tune_training"}


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """Merge the options given on the command line with the defaults, or, with ``--resume``,
    with the saved run's settings (so ``--resume --out DIR`` alone continues that run)."""
    import json

    given = {name: getattr(args, name) for name in _ARG_NAMES if getattr(args, name, None) is not None}
    if "variants" in given:
        given["variants"] = parse_variants(given["variants"])
    base = asdict(CompareConfig())
    if getattr(args, "resume", False) and args.out:
        marker = Path(args.out) / RUN_MARKER
        if marker.is_file():
            try:
                base.update(json.loads(marker.read_text())["config"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"--resume: {str(marker)!r} is not a readable sepconv run file: {error}") from error
    base.update(given)
    return CompareConfig(**base)


def run(args: argparse.Namespace) -> int:
    """``sepconv compare``: run, print the table and where the results are; return the exit status."""
    from ..train import TrainingDiverged, TrainingInterrupted
    from ..train import distributed as dist_utils
    from .report import format_table

    config = config_from_args(args)
    if not args.latency_time > 0:
        raise ValueError(f"--latency-time must be > 0 seconds, got {args.latency_time!r}")
    if args.resume and not args.out:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun every process must write to the same place: give --out DIR")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"
    quiet = bool(args.quiet)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from ..utils.memory import keep_freed_memory

    keep_freed_memory()  # this process trains: reuse freed tensor memory instead of page-faulting fresh memory
    try:
        results = run_compare(config, out, resume=args.resume, overwrite=args.overwrite,
                              progress=not quiet and sys.stderr.isatty(), log=log,
                              latency_min_run_time=args.latency_time)
    except TrainingDiverged as error:
        print(f"sepconv compare: error: {error}; partial results in {out}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        print(f"sepconv compare: interrupted after {error.completed_epochs} completed epoch(s) of the current variant; "
              f"checkpoints are in {out / 'checkpoints'}; continue with: sepconv compare --out {out} --resume",
              file=sys.stderr)
        return 130
    finally:
        main_process = dist_utils.is_main_process()
        if dist_utils.world_size() > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if main_process:
        print(format_table(results["table"]))
        print(f"results: {out / 'results.json'}  report: {out / 'report.html'}  plots: {out / 'accuracy.png'}")
    return 0
