"""The training loop behind ``sepconv compare``: seeded, resumable, interruptible, DDP-ready.

Determinism
-----------
The caller seeds ``torch`` and builds the model (so every variant starts from
the same RNG state). :func:`fit` draws each epoch's sample order from its own
``torch.Generator`` seeded with ``config.seed``: every variant of a comparison
sees the same batches in the same order. A checkpoint written after each epoch
holds the model and optimizer state, the metric history, the global torch RNG
state and the data-order generator state, so ``fit(..., resume=True)`` after
an interruption continues to the *bit-identical* weights and metrics of an
uninterrupted run (on CPU; on CUDA cuDNN is put in deterministic mode, which
removes most but not all run-to-run variation).

Metrics
-------
``train_loss``/``train_acc`` are averages over the epoch's batches in training
mode, as Keras reports them (and as the seed article plots them);
``val_loss``/``val_acc`` are computed after the epoch in eval mode.
``train_time_s`` is the wall time of the epoch's optimization steps only
(no validation, no checkpointing).

Memory layout
-------------
On the CPU, image batches (4D) and the model are put in channels-last memory
(:func:`memory_format_for`): PyTorch's depthwise and 1x1 convolutions run
faster there on CPUs (records under ``benchmarks/results/train-*``). Results
match the NCHW computation to float rounding, not bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils
from .checkpoint import load_checkpoint, save_checkpoint

#: Config fields that must match between a checkpoint and the run resuming it.
RESUME_KEYS = ("batch_size", "lr", "seed", "weight_decay", "amp")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``completed_epochs`` are saved in ``checkpoint``."""

    def __init__(self, completed_epochs: int, checkpoint: Optional[Path]):
        self.completed_epochs = completed_epochs
        self.checkpoint = checkpoint
        super().__init__(f"interrupted after {completed_epochs} completed epoch(s); checkpoint: {checkpoint}")


@dataclass
class TrainConfig:
    """Optimization settings. ``lr`` is Adam's learning rate (constant, no schedule, so a
    run can be extended with ``--resume --epochs N``); ``batch_size`` is the global batch
    (split evenly over DDP ranks); ``amp`` enables ``torch.autocast`` and only acts on CUDA."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    weight_decay: float = 0.0
    device: str = "cpu"
    amp: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass
class TrainResult:
    """What :func:`fit` returns: per-epoch metric dicts, the trained (unwrapped) model,
    the epoch training started from (0, or the checkpoint's epoch when resumed)."""

    history: list[dict[str, float]]
    model: nn.Module
    start_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class _CtrlC:
    """Ctrl-C (SIGINT) during :func:`fit` as a flag checked between steps; a second Ctrl-C stops at once.

    Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the
    interpreter happens to be: inside an optimizer update, a BatchNorm
    statistics update or a ``__del__`` (where it is printed and ignored). With
    a handler that only sets a flag, the loop raises ``KeyboardInterrupt``
    itself at the next step boundary, so the model is never left half-updated.
    Installed only in the main thread and only over Python's default handler:
    a program's own handler is left alone, and so is SIGINT ignored (as POSIX
    shells start background jobs, ``cmd &``: such a run cannot be stopped with
    SIGINT, by design).
    """

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: stop now, wherever the loop is
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        import signal
        import threading

        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def uninstall(self) -> None:
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def memory_format_for(device: torch.device | str, x: torch.Tensor) -> torch.memory_format:
    """The memory layout :func:`fit` trains in: channels-last for 4D batches on the CPU, else contiguous."""
    return torch.channels_last if torch.device(device).type == "cpu" and x.dim() == 4 else torch.contiguous_format


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
    device: torch.device | str = "cpu", amp: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy loss (nats) and accuracy (fraction) of ``model`` on ``(x, y)`` in eval mode."""
    device = torch.device(device)
    amp_dtype = _amp_dtype(device) if amp else None
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device)
        xb = xb.contiguous(memory_format=memory_format_for(device, xb))
        yb = y[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum().item())
    model.train(was_training)
    n = max(int(x.shape[0]), 1)
    return total_loss / n, correct / n


def _check_resume(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = state.get("config", {})
    for key in RESUME_KEYS:
        value = saved.get(key)
        plain = isinstance(value, (bool, int, float, str)) or value is None  # a tensor must not be compared
        if not plain or type(value) is not type(getattr(config, key)) or value != getattr(config, key):
            shown = repr(value) if plain else f"<a {type(value).__name__}>"
            raise ValueError(
                f"cannot resume from {str(path)!r}: it was trained with {key}={shown}, this run has "
                f"{key}={getattr(config, key)!r}; use the same settings, or --overwrite to start over"
            )
    if state["epoch"] > config.epochs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: it already has {state['epoch']} epochs, more than epochs={config.epochs}"
        )


#: Keys of a checkpoint written by :func:`fit`, with their types; ``scaler`` and ``cuda_rng`` are optional.
CHECKPOINT_KEYS: dict[str, type] = {"model": dict, "optimizer": dict, "epoch": int, "history": list,
                                    "torch_rng": torch.Tensor, "order_rng": torch.Tensor, "config": dict}
OPTIONAL_CHECKPOINT_KEYS: dict[str, type] = {"format": int, "scaler": dict, "cuda_rng": torch.Tensor}
#: Entries of each epoch's record in ``history``.
RECORD_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "train_time_s", "val_time_s")


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_state(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose keys or types are not the ones :func:`fit` writes (``ValueError`` naming it)."""
    where = f"cannot resume from {str(path)!r}"
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    unknown = sorted(str(k) for k in state if k not in CHECKPOINT_KEYS and k not in OPTIONAL_CHECKPOINT_KEYS)
    if missing or unknown:
        raise ValueError(f"{where}: it lacks {missing} and has unknown key(s) {unknown}; not a checkpoint of this run")
    for key, kind in {**CHECKPOINT_KEYS, **OPTIONAL_CHECKPOINT_KEYS}.items():
        value = state.get(key)
        if key in state and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ValueError(f"{where}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    epoch, history = state["epoch"], state["history"]
    if epoch < 0 or len(history) != epoch:
        raise ValueError(f"{where}: it records epoch {epoch} but a history of {len(history)} epoch(s)")
    for i, record in enumerate(history):
        good = isinstance(record, dict) and all(
            isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
            and math.isfinite(record[k]) for k in RECORD_KEYS)
        if not good or record["epoch"] != i + 1:
            raise ValueError(f"{where}: history entry {i} is not an epoch record with {', '.join(RECORD_KEYS)}")


def _restore(state: dict[str, Any], path: Path, config: TrainConfig, model: nn.Module,
             optimizer: torch.optim.Optimizer, scaler: Any, order: torch.Generator,
             device: torch.device) -> tuple[list[dict[str, float]], int]:
    """Load a checkpoint's weights, optimizer, RNG states and history into the run; ``(history, epoch)``.

    Every part is checked against this run (keys, types, tensor shapes) and a
    mismatch is a one-line ``ValueError`` naming the file.
    """
    _check_state(state, path)
    _check_resume(state, config, path)
    step = "model weights"
    try:
        model.load_state_dict(state["model"])
        step = "optimizer state"
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            for p in group["params"]:
                for name, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                        raise ValueError(f"{name} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")
        if "scaler" in state:
            step = "gradient scaler state"
            scaler.load_state_dict(state["scaler"])
        step = "random number generator states"
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        order.set_state(state["order_rng"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise ValueError(f"cannot resume from {str(path)!r}: its {step} do not fit this run: "
                         f"{type(error).__name__}: {_one_line(error)}") from None
    return [dict(h) for h in state["history"]], int(state["epoch"])


@dataclass
class _Step:
    """What one epoch of :func:`fit` needs besides the model and data."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    order: torch.Generator
    device: torch.device
    layout: torch.memory_format
    amp_dtype: Optional[torch.dtype]
    per_rank_batch: int
    stop: "_CtrlC"


def _train_epoch(step: _Step, model: nn.Module, data: Any, config: TrainConfig, epoch: int, desc: str,
                 show: bool) -> dict[str, float]:
    """One epoch of optimization steps, then validation; the epoch's record (see the module docstring)."""
    from tqdm.auto import tqdm

    device, world, rank = step.device, dist_utils.world_size(), dist_utils.rank()
    step.net.train()
    perm = torch.randperm(int(data.train_x.shape[0]), generator=step.order)
    if world > 1:
        perm = perm[: perm.numel() - perm.numel() % world][rank::world]
    steps = math.ceil(perm.numel() / step.per_rank_batch)
    sums = [0.0, 0.0, 0.0]  # loss * samples, correct, samples
    bar = tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{config.epochs}".strip(), leave=False,
               disable=not show, unit="batch")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step.stop.check()
        idx = perm[i * step.per_rank_batch:(i + 1) * step.per_rank_batch]
        xb = data.train_x[idx].to(device, non_blocking=True).contiguous(memory_format=step.layout)
        yb = data.train_y[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=step.amp_dtype, enabled=step.amp_dtype is not None):
            logits = step.net(xb)
            loss = F.cross_entropy(logits.float(), yb)
        loss_value = loss.item()
        if not math.isfinite(loss_value) and world == 1:
            raise TrainingDiverged(
                f"{desc or 'training'} diverged: loss is {loss_value} at epoch {epoch + 1}, batch {i + 1}; "
                f"try a smaller learning rate (lr={config.lr:g})"
            )
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        sums[0] += loss_value * idx.numel()
        sums[1] += float((logits.argmax(1) == (yb.argmax(1) if yb.is_floating_point() else yb)).sum().item())
        sums[2] += idx.numel()
        bar.update(1)
        if show:
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    bar.close()
    sums = dist_utils.all_reduce_sum(sums, device if device.type == "cuda" else None)
    train_loss = sums[0] / sums[2]
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"{desc or 'training'} diverged: mean loss is {train_loss} in epoch {epoch + 1}; "
            f"try a smaller learning rate (lr={config.lr:g})"
        )
    t1 = time.perf_counter()
    val_loss, val_acc = evaluate(model, data.val_x, data.val_y, max(step.per_rank_batch, 256), device, config.amp)
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": sums[1] / sums[2], "val_loss": val_loss,
            "val_acc": val_acc, "train_time_s": train_time, "val_time_s": time.perf_counter() - t1}


def _save_state(path: Path, step: _Step, model: nn.Module, config: TrainConfig, epoch: int,
                history: list[dict[str, float]]) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scaler": step.scaler.state_dict(),
        "epoch": epoch,
        "history": history,
        "torch_rng": torch.get_rng_state(),
        "order_rng": step.order.get_state(),
        "config": asdict(config),
    }
    if step.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(step.device)
    save_checkpoint(path, state)


def _check_targets(y: torch.Tensor, n: int) -> None:
    """Refuse training targets that are neither ``n`` class indices nor ``n`` rows of class probabilities."""
    if y.shape[0] != n:
        raise ValueError(f"train_y has {y.shape[0]} targets for {n} training images")
    if not y.is_floating_point():
        if y.dim() != 1:
            raise ValueError(f"class-index targets must be 1-D, got train_y of shape {tuple(y.shape)}")
        return
    if y.dim() != 2 or y.shape[1] < 2:
        raise ValueError(f"soft targets must be (N, num_classes >= 2) probabilities, got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()) or bool((y < 0).any()):
        raise ValueError("soft targets must be finite and non-negative (class probabilities)")
    worst = float((y.double().sum(1) - 1).abs().max()) if n else 0.0
    if worst > 1e-3:
        raise ValueError(f"each row of soft targets must sum to 1; one is off by {worst:.3g}")


def fit(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    *,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    desc: str = "",
    on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
    stop_after_epoch: Optional[int] = None,
    tune_training: bool = False,
) -> TrainResult:
    """Train ``model`` on ``data`` (an :class:`~sepconv.data.ImageDataset`) with Adam and cross-entropy.

    ``data.train_y`` holds class indices (int64, ``(N,)``) or soft targets:
    float rows of class probabilities (``(N, num_classes)``, non-negative,
    each summing to 1), such as a teacher network's softmax for
    distillation. The loss is the cross-entropy against them, and the
    training accuracy counts agreement with each row's most likely class.

    A checkpoint is written atomically to ``checkpoint_path`` after every
    epoch. With ``resume=True`` and an existing checkpoint, training continues
    from it (its settings must match ``config``, except ``epochs`` which may
    grow; a checkpoint whose keys, types or tensor shapes do not fit this run
    is refused with a ``ValueError``). ``stop_after_epoch`` ends the call
    early, as an interruption after that epoch would. Under a
    ``torch.distributed`` process group the model is wrapped in
    ``DistributedDataParallel`` and each rank trains on an equal shard of
    every batch. Raises :class:`TrainingDiverged` on a NaN/inf loss and
    :class:`TrainingInterrupted` on Ctrl-C (after the last completed epoch's
    checkpoint is on disk). ``tune_training=True`` first routes each
    convolution through its fastest training engine
    (:func:`sepconv.tune_training`, timed on a batch of this run's shape and
    layout; the random stream is left as it was); the choices are returned in
    ``TrainResult.extra["training_engines"]``.
    """
    _check_targets(data.train_y, int(data.train_x.shape[0]))
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    amp_dtype = _amp_dtype(device) if config.amp else None
    layout = memory_format_for(device, data.train_x)
    model = model.to(device, memory_format=layout) if layout == torch.channels_last else model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    order = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume and path is not None and path.exists():
        history, start_epoch = _restore(load_checkpoint(path), path, config, model, optimizer, scaler, order, device)

    world = dist_utils.world_size()
    per_rank_batch = config.batch_size // world
    if per_rank_batch < 1:
        raise ValueError(f"batch_size={config.batch_size} is smaller than the {world} distributed processes")
    extra: dict[str, Any] = {}
    if tune_training:
        from ..backends.training import tune_training as tune

        sample = data.train_x[:per_rank_batch].to(device).contiguous(memory_format=layout)
        extra["training_engines"] = tune(model, sample)
    net: nn.Module = model
    if dist_utils.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step = _Step(net, optimizer, scaler, order, device, layout, amp_dtype, per_rank_batch, _CtrlC())
    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    show = progress and dist_utils.is_main_process()
    try:
        step.stop.install()
        for epoch in range(start_epoch, last_epoch):
            record = _train_epoch(step, model, data, config, epoch, desc, show)
            history.append(record)
            if path is not None and dist_utils.is_main_process():
                _save_state(path, step, model, config, epoch + 1, history)
            dist_utils.barrier()
            if on_epoch is not None and dist_utils.is_main_process():
                on_epoch(record)
            step.stop.check()
    except KeyboardInterrupt:
        raise TrainingInterrupted(len(history), path) from None
    finally:
        step.stop.uninstall()
    if step.stop.requested:  # Ctrl-C after the last check: still a stop
        raise TrainingInterrupted(len(history), path)
    return TrainResult(history=history, model=model, start_epoch=start_epoch, extra=extra)
