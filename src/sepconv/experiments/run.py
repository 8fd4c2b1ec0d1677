"""``run_compare``: train one architecture in several convolution variants and compare them.

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
  ``torch.no_grad`` in eager PyTorch, and ``latency_optimized_ms`` through
  :func:`sepconv.optimize` (the engine it chose in ``results.json``), both by
  ``torch.utils.benchmark.Timer.blocked_autorange``; ``throughput_img_s`` at
  batch 256 goes into ``results.json`` too;
* ``best_val_acc`` (and its epoch), ``final_val_acc`` and ``train_val_gap`` =
  final train accuracy (epoch average in training mode) - final validation
  accuracy; a larger gap means more overfitting.

The pseudo-variant ``converted`` (opt-in) takes the trained ``standard``
network of the same run, replaces its convolutions by depthwise separable
ones (or ``convert_to``) initialized from the optimal factorization
(:func:`sepconv.factorize.convert`) with the pointwise weights calibrated on
:data:`CALIBRATION_SAMPLES` training images, reports its validation accuracy
right after conversion and fine-tunes it for ``finetune_epochs`` epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..utils.lock import DirectoryLock
from .config import CONVERTED, CompareConfig, record_of
from .measure import contention, default_threads, environment, measure_latency, measure_optimized_latency
from .outdir import RUN_MARKER, prepare_out_dir
from .plan import build_kwargs, estimate, probe_costs, resolve_device, validate_config

#: Training images the ``converted`` variant's pointwise weights are calibrated on (``convert(calibrate=True)``).
CALIBRATION_SAMPLES = 512
#: Batch of the throughput measurement (images per forward pass).
THROUGHPUT_BATCH = 256
#: What each measurement in ``results.json`` means.
MEASUREMENT = {
    "train_s_per_epoch": "median wall time of an epoch's optimization steps, epochs after the first",
    "latency_ms": "median forward time, batch 1, eval mode, no_grad, eager PyTorch "
                  "(torch.utils.benchmark blocked_autorange)",
    "latency_optimized_ms": "the same through sepconv.optimize (BatchNorm folded, engine and layout chosen by timing)",
    "throughput_img_s": f"images per second of an eager forward pass at batch {THROUGHPUT_BATCH}, eval mode",
}


def _convert(model: "torch.nn.Module", options: dict[str, Any], **kwargs: Any) -> Any:  # noqa: F821
    """``sepconv.factorize.convert`` with ``options`` (every standard convolution with a kernel > 1)."""
    import warnings

    from ..factorize import convert

    with warnings.catch_warnings():  # "nothing eligible" is reported by the caller's checks, not as a warning here
        warnings.simplefilter("ignore")
        return convert(model, **options, **kwargs)


def summarize(variant: str, params: int, macs: int, history: list[dict[str, float]],
              entry: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The table row of one variant from its cost, its metric history and its measured entry."""
    entry = entry or {}
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
        "latency_ms": entry.get("latency_ms"),
        "latency_optimized_ms": (entry.get("optimized") or {}).get("latency_ms"),
        "throughput_img_s": entry.get("throughput_img_s"),
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_val_acc": last["val_acc"] if last else None,
        "final_train_acc": last["train_acc"] if last else None,
        "train_val_gap": (last["train_acc"] - last["val_acc"]) if last else None,
        "val_acc_converted": entry.get("conversion", {}).get("val_acc"),
    }


@dataclass
class _Run:
    """What the steps of one comparison share."""

    config: CompareConfig
    out: Path
    variants: list[str]
    device: Any
    amp: bool
    data: Any
    kwargs: dict[str, Any]
    costs: dict[str, tuple[int, int]]
    sizes: dict[str, Any]
    main: bool
    distributed: bool
    log: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)
    trained_standard: Any = None
    writer: Any = None
    quantize: bool = False


def _setup(config: CompareConfig, out: Path, *, resume: bool, overwrite: bool, log: Callable[[str], None]) -> _Run:
    """Check everything, load the data and size every variant, before anything is written."""
    import torch

    from ..data import load_dataset
    from ..train import distributed as dist_utils

    info, variants = validate_config(config)
    device = resolve_device(config.device)
    amp = (device.type == "cuda") if config.amp is None else bool(config.amp)
    if amp and device.type != "cuda":
        raise ValueError("--amp (mixed precision) needs a CUDA device; on CPU leave it off")
    torch.set_num_threads(config.threads if config.threads is not None else default_threads())
    distributed = dist_utils.init_from_env(device)
    main = dist_utils.is_main_process()
    # read-only checks (on every rank, so all ranks fail alike) before the data is loaded
    prepare_out_dir(out, config, resume=resume, overwrite=overwrite, write=False)
    data = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction, split_seed=0,
                        image_size=config.image_size, download=config.download and main)
    kwargs = build_kwargs(config, info, data.input_shape)
    shape = tuple(data.input_shape)
    sizes = estimate(config, variants, shape, data.num_classes, int(data.train_x.shape[0]), kwargs)
    costs = probe_costs(config, variants, shape, data.num_classes, kwargs, sizes,
                        lambda model, **kw: _convert(model, config.conversion(), **kw))
    return _Run(config, out, variants, device, amp, data, kwargs, costs, sizes, main, distributed, log)


def plan_of(run: _Run) -> dict[str, Any]:
    """What a run would do (``--dry-run``): the config, the resolved settings and each variant's size."""
    import torch

    return {"status": "dry-run", "config": record_of(run.config) | {"variants": run.variants},
            "resolved": _resolved(run), "data": run.data.describe(), "torch_threads": torch.get_num_threads(),
            "variants": {v: asdict(s) for v, s in run.sizes.items()},
            "table": [summarize(v, *run.costs[v], []) for v in run.variants]}


def _resolved(run: _Run) -> dict[str, Any]:
    from ..train import distributed as dist_utils

    config = run.config
    conversion = None
    if CONVERTED in run.variants:
        conversion = config.conversion() | {"init": "factorize", "calibrate": True,
                                            "calibration_samples": CALIBRATION_SAMPLES,
                                            "finetune_epochs": config.finetune_epochs,
                                            "finetune_lr": config.lr_of(CONVERTED)}
    return {"device": str(run.device), "amp": run.amp, "world_size": dist_utils.world_size(),
            "build_kwargs": run.kwargs, "optimizer": "Adam, constant lr", "loss": "cross-entropy",
            "conversion": conversion}


def _start(run: _Run, *, resume: bool, overwrite: bool, tensorboard: Optional[str]) -> Optional[DirectoryLock]:
    """Make the output directory ready (rank 0, under its lock, returned), write run.json and open the results."""
    import torch

    from ..train import distributed as dist_utils

    if run.distributed:
        dist_utils.barrier()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    threads = torch.get_num_threads()
    run.results = {
        "status": "running", "started": started, "config": record_of(run.config) | {"variants": run.variants},
        "resolved": _resolved(run), "data": run.data.describe(), "environment": environment(),
        "measurement": dict(MEASUREMENT, torch_threads=threads, device=str(run.device),
                            load_average_before_training=_load()),
        "variants": {}, "table": [],
    }
    if not run.main:
        return None
    warning = contention(threads) if run.device.type == "cpu" else None
    if warning:
        run.log(warning)
    lock = DirectoryLock(run.out, "sepconv compare")
    lock.acquire()  # the caller releases it; prepare_out_dir checks again under it
    try:
        prepare_out_dir(run.out, run.config, resume=resume, overwrite=overwrite, write=True)
        from .report import write_json

        write_json(run.out / RUN_MARKER, {"config": record_of(run.config), "started": started})
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            run.writer = SummaryWriter(log_dir=tensorboard)
    except BaseException:
        lock.release()
        raise
    return lock


def _load() -> Optional[list[float]]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _save(run: _Run, status: str) -> None:
    run.results["status"] = status
    run.results["table"] = [r["summary"] for r in run.results["variants"].values()]
    if run.main:
        from .report import write_report

        write_report(run.out, run.results)


def _model_for(run: _Run, variant: str, entry: dict[str, Any]) -> "torch.nn.Module":  # noqa: F821
    """A fresh model of ``variant`` or, for ``converted``, the trained standard one factorized and calibrated."""
    from ..factorize import calibrate
    from ..models import build_model
    from ..train import evaluate

    config, data, device = run.config, run.data, run.device
    if variant != CONVERTED:
        return build_model(config.model, variant, num_classes=data.num_classes, in_channels=data.input_shape[0],
                           **run.kwargs)
    sample = data.train_x[:CALIBRATION_SAMPLES]  # training images only: validation stays unseen
    # factorize once; evaluate before and after calibrating the same model
    model, report = _convert(copy.deepcopy(run.trained_standard), config.conversion(), init="factorize",
                             sample_input=sample)
    _, plain_acc = evaluate(model.to(device), data.val_x, data.val_y, 256, device, run.amp)
    fitted = calibrate(run.trained_standard, model.cpu(), sample)
    val_loss, val_acc = evaluate(model.to(device), data.val_x, data.val_y, 256, device, run.amp)
    layers = [asdict(dataclasses.replace(layer, calibrated=True, calibration_target=fitted[layer.name]))
              for layer in report.layers]  # weight and output errors are the factorization's
    entry["conversion"] = {"val_loss": val_loss, "val_acc": val_acc, "val_acc_uncalibrated": plain_acc,
                           "calibration_samples": int(sample.shape[0]), "layers": layers, "skipped": report.skipped}
    if run.main:
        errors = [r.weight_error for r in report.layers]
        run.log(f"[{variant}] the trained standard network with {len(errors)} convolution(s) factorized "
                f"(relative weight error {min(errors):.3f} to {max(errors):.3f}): val_acc {plain_acc:.4f}; "
                f"calibrated on {sample.shape[0]} training images: val_acc {val_acc:.4f}, before fine-tuning")
    return model


def _on_epoch(run: _Run, variant: str) -> Callable[[dict[str, float]], None]:
    def report(record: dict[str, float]) -> None:
        run.log(f"[{variant}] epoch {record['epoch']}/{run.config.epochs_of(variant)}  loss {record['train_loss']:.4f}  "
                f"acc {record['train_acc']:.4f}  val_loss {record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  "
                f"{record['train_time_s']:.2f} s")
        if run.writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "train_time_s"):
                run.writer.add_scalar(f"{variant}/{key}", record[key], int(record["epoch"]))
            run.writer.flush()
    return report


def _measure(run: _Run, variant: str, model: Any, entry: dict[str, Any], latency_time: float,
             optimized_latency: bool) -> None:
    """Latency (eager and optimized) and throughput of the trained ``model``; saves its weights (rank 0)."""
    from ..models import save_model

    shape, device = run.data.input_shape, run.device
    entry["load_average_before_latency"] = _load()
    entry["latency_ms"] = measure_latency(model, shape, 1, device, latency_time) * 1e3
    if optimized_latency:
        entry["optimized"] = measure_optimized_latency(model, shape, device, latency_time)
    if run.quantize:
        entry["int8"] = _int8_schemes(run, model)
    entry["throughput_img_s"] = THROUGHPUT_BATCH / measure_latency(model, shape, THROUGHPUT_BATCH, device,
                                                                   latency_time)
    config = run.config
    save_model(run.out / "models" / f"{variant}.safetensors", model.to("cpu"), config.model,
               "standard" if variant == CONVERTED else variant,
               conversion=config.conversion() if variant == CONVERTED else None,
               num_classes=run.data.num_classes, in_channels=shape[0], **run.kwargs)


#: Training images that calibrate the activation ranges of ``--quantize``'s int8 models.
CALIBRATION_IMAGES = 256


def _int8_schemes(run: _Run, model: Any) -> list[dict[str, Any]]:
    """:func:`sepconv.quantization.compare_schemes` rows of the trained ``model`` (float and three int8 schemes),
    calibrated on training images and scored on the validation split; the per-layer reports left out."""
    import torch

    from ..quantization import compare_schemes

    data = run.data
    order = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(run.config.seed))
    calibration = data.train_x[order[:CALIBRATION_IMAGES]].contiguous()
    model = copy.deepcopy(model).to("cpu").float().eval().to(memory_format=torch.contiguous_format)
    rows = compare_schemes(model, calibration, data.val_x.contiguous(), data.val_y, threads=torch.get_num_threads())
    return [{key: value for key, value in row.items() if key != "report"} for row in rows]


def _train_variant(run: _Run, variant: str, *, resume: bool, progress: bool, stop_after_epoch: Optional[int],
                   latency_time: float, optimized_latency: bool) -> None:
    """Build, train, measure and record one variant; on a stop, save the partial results and re-raise."""
    import torch

    from ..train import TrainConfig, TrainingDiverged, TrainingInterrupted, fit, load_checkpoint
    from ..train import distributed as dist_utils

    config = run.config
    torch.manual_seed(config.seed)
    params, macs = run.costs[variant]
    entry: dict[str, Any] = {"params": params, "macs": macs, "history": []}
    run.results["variants"][variant] = entry
    model = _model_for(run, variant, entry)
    entry["summary"] = summarize(variant, params, macs, [], entry)
    if run.main:
        run.log(f"[{variant}] {params:,} params, {macs:,} MACs/sample")
    checkpoint = run.out / "checkpoints" / f"{variant}.pt"
    train_config = TrainConfig(epochs=config.epochs_of(variant), batch_size=config.batch_size,
                               lr=config.lr_of(variant), seed=config.seed, device=str(run.device), amp=run.amp)
    try:
        result = fit(model, run.data, train_config, checkpoint_path=checkpoint, resume=resume, progress=progress,
                     desc=variant, on_epoch=_on_epoch(run, variant), stop_after_epoch=stop_after_epoch,
                     tune_training=config.tune_training)
        entry["history"] = result.history
        _record_engines(run, variant, entry, result.extra)
        if run.distributed:
            entry["ranks_agree"] = dist_utils.weights_agree(result.model)
        if run.main:
            _measure(run, variant, result.model, entry, latency_time, optimized_latency)
    except (TrainingDiverged, TrainingInterrupted, KeyboardInterrupt) as error:
        if not entry["history"] and checkpoint.exists():  # the epochs completed before the stop
            entry["history"] = load_checkpoint(checkpoint)["history"]
            entry["summary"] = summarize(variant, params, macs, entry["history"], entry)
        _save(run, "diverged" if isinstance(error, TrainingDiverged) else "interrupted")
        if isinstance(error, KeyboardInterrupt):
            raise TrainingInterrupted(len(entry["history"]), checkpoint) from None
        raise
    entry["summary"] = summarize(variant, params, macs, result.history, entry)
    entry["resumed_from_epoch"] = result.start_epoch
    if variant == "standard" and CONVERTED in run.variants:
        run.trained_standard = copy.deepcopy(result.model).to("cpu")


def _record_engines(run: _Run, variant: str, entry: dict[str, Any], extra: dict[str, Any]) -> None:
    if "training_engines" not in extra:
        return
    engines = entry["training_engines"] = extra["training_engines"]
    if run.main:
        routed = {e: sum(v == e for v in engines.values()) for e in sorted(set(engines.values()))}
        run.log(f"[{variant}] training engines (sepconv.tune_training) of its {len(engines)} tunable "
                f"convolution(s): " + ", ".join(f"{e} {n}" for e, n in routed.items()))


def _finish(run: _Run) -> None:
    """Record the load the latencies were measured under, warn when it was high, and save the final status."""
    entries = run.results["variants"].values()
    loads = [e["load_average_before_latency"][0] for e in entries if e.get("load_average_before_latency")]
    cores = os.cpu_count() or 1
    busy = bool(loads) and max(loads) > cores + 0.5
    run.results["measurement"]["load_average_1min_max"] = max(loads) if loads else None
    run.results["measurement"]["machine_busy"] = busy
    if busy and run.main:
        run.log(f"warning: the machine was busy (1-minute load average up to {max(loads):.2f} on {cores} CPUs): "
                "times and latencies may be inflated many-fold by thread contention; on a shared machine use "
                "--threads 1")
    complete = all(len(e["history"]) == run.config.epochs_of(v) for v, e in run.results["variants"].items())
    _save(run, "complete" if complete else "stopped")


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
    optimized_latency: bool = True,
    tensorboard: Optional[str | Path] = None,
    dry_run: bool = False,
    quantize: bool = False,
) -> dict[str, Any]:
    """Run the comparison described by ``config`` and write its results into ``out``.

    Returns the results dict that is also saved as ``out/results.json`` (keys
    ``status``, ``config``, ``data``, ``environment``, ``measurement``,
    ``variants`` with each variant's cost and per-epoch history, and ``table``,
    the final rows). Bad settings, data or output directory raise
    ``ValueError``/``FileNotFoundError``/... before anything is written, and
    so does a run whose estimated size is beyond this machine
    (:func:`sepconv.experiments.plan.estimate`). ``dry_run`` stops there and
    returns the plan (status ``dry-run``) without writing. The output
    directory is locked (:class:`sepconv.utils.lock.DirectoryLock`) while the
    run writes; a second run on it fails with a ``ValueError``.
    ``stop_after_epoch`` stops every variant after that epoch, like an
    interruption (used to test ``resume``). ``optimized_latency`` adds the
    batch-1 latency through :func:`sepconv.optimize`; ``quantize`` adds each
    variant's int8 schemes (``variants[v]['int8']``, rows of
    :func:`sepconv.quantization.compare_schemes`); ``tensorboard`` is a
    directory for per-epoch scalars. Raises
    :class:`~sepconv.train.TrainingDiverged` / :class:`~sepconv.train.TrainingInterrupted`
    after saving the partial results. Threads default to
    :func:`~sepconv.experiments.measure.default_threads` (the physical cores); the caller's thread count is
    restored on return.
    """
    import math

    import torch

    if not (isinstance(latency_min_run_time, (int, float)) and math.isfinite(latency_min_run_time)
            and latency_min_run_time > 0):
        raise ValueError(f"--latency-time must be a finite number of seconds > 0, got {latency_min_run_time!r}")
    if tensorboard is not None:
        _require_tensorboard()
    if quantize:
        _require_onnxruntime()
    threads = torch.get_num_threads()
    try:
        return _run(config, Path(out), resume=resume, overwrite=overwrite, progress=progress, log=log,
                    stop_after_epoch=stop_after_epoch, latency_time=latency_min_run_time,
                    optimized_latency=optimized_latency, tensorboard=tensorboard, dry_run=dry_run,
                    quantize=quantize)
    finally:
        torch.set_num_threads(threads)  # the caller's thread count, as it was


def _run(config: CompareConfig, out: Path, *, resume: bool, overwrite: bool, progress: bool,
         log: Callable[[str], None], stop_after_epoch: Optional[int], latency_time: float, optimized_latency: bool,
         tensorboard: Optional[str | Path], dry_run: bool, quantize: bool = False) -> dict[str, Any]:
    from ..train import distributed as dist_utils

    run = _setup(config, out, resume=resume, overwrite=overwrite, log=log)
    run.quantize = quantize
    if dry_run:
        return plan_of(run)
    lock = _start(run, resume=resume, overwrite=overwrite, tensorboard=None if tensorboard is None else str(tensorboard))
    try:
        for variant in run.variants:
            _train_variant(run, variant, resume=resume, progress=progress, stop_after_epoch=stop_after_epoch,
                           latency_time=latency_time, optimized_latency=optimized_latency)
        _finish(run)
    finally:
        if run.writer is not None:
            run.writer.close()
        if lock is not None:
            lock.release()
    if run.distributed:
        dist_utils.barrier()
    return run.results


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install 'sepconv[tensorboard]'") from None


def _require_onnxruntime() -> None:
    from ..backends.onnxruntime import onnxruntime_available

    if not onnxruntime_available():
        raise ImportError("--quantize needs onnx and onnxruntime: pip install 'sepconv[onnx]'")
