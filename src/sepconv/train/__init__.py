"""Training infrastructure: seeded and resumable loop, atomic safe checkpoints, DDP helpers."""

from .checkpoint import CHECKPOINT_FORMAT, atomic_write_bytes, load_checkpoint, save_checkpoint
from .distill import Tempered, distillation_targets
from .loop import TrainConfig, TrainResult, TrainingDiverged, TrainingInterrupted, evaluate, fit

__all__ = [
    "CHECKPOINT_FORMAT", "Tempered", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
    "atomic_write_bytes", "distillation_targets", "evaluate", "fit", "load_checkpoint", "save_checkpoint",
]
