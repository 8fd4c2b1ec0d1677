"""Every execution engine sepconv has, in the order :func:`sepconv.optimize` builds and times them.

Inference engines build whole-model candidates; training engines replace one
convolution's forward and backward. To add an engine, implement
:class:`~sepconv.backends.engine.InferenceEngine` or
:class:`~sepconv.backends.engine.TrainingEngine` in its own module and list
it here; ``tests/test_backends.py`` then runs it against eager PyTorch.
"""

from __future__ import annotations

from . import cuda_graph, cudnn, eager, onednn, onnxruntime
from .engine import InferenceEngine, TrainingEngine
from .training import TRAINING_ENGINES

#: Whole-model inference engines. Order matters: ``cudagraph`` wraps the eager and cuDNN candidates built before it.
INFERENCE_ENGINES: tuple[InferenceEngine, ...] = (
    eager.EAGER, onednn.ENGINE, onnxruntime.ENGINE, cudnn.ENGINE, cuda_graph.ENGINE, eager.COMPILE)

__all__ = ["INFERENCE_ENGINES", "TRAINING_ENGINES", "inference_engine", "TrainingEngine"]


def inference_engine(name: str) -> InferenceEngine:
    """The registered inference engine called ``name``; ``ValueError`` naming the valid ones otherwise."""
    for engine in INFERENCE_ENGINES:
        if engine.name == name:
            return engine
    raise ValueError(f"unknown engine {name!r}; registered: {[e.name for e in INFERENCE_ENGINES]}")
