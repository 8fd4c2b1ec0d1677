"""Training infrastructure: seeded and resumable loop, atomic safe checkpoints, DDP helpers."""

from .checkpoint import CHECKPOINT_FORMAT, atomic_write_bytes, load_checkpoint, save_checkpoint
from .loop import TrainConfig, TrainResult, TrainingDiverged, TrainingInterrupted, evaluate, fit

__all__ = [
    "CHECKPOINT_FORMAT", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
    "atomic_write_bytes", "evaluate", "fit", "load_checkpoint", "save_checkpoint",
]
