"""sepconv: separable convolutions for PyTorch, with exact costs, factorization and experiments."""

from .backends.fold import fold_batchnorm
from .backends.onnxruntime import OnnxRuntimeModel, to_onnxruntime
from .backends.optimize import OptimizedModel, optimize
from .backends.training import tune_training, untune_training
from .geometry import ConvSpec
from .layers import (
    BlueprintSeparableConv1d, BlueprintSeparableConv2d, BlueprintSeparableConv3d,
    CPConv2d,
    DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d,
    Pad,
    PointwiseConv1d, PointwiseConv2d, PointwiseConv3d,
    SeparableConv1d, SeparableConv2d, SeparableConv3d,
    SpatiallySeparableConv2d,
)
from .utils.memory import keep_freed_memory
from .version import __version__

__all__ = [
    "__version__",
    "ConvSpec", "OnnxRuntimeModel", "OptimizedModel", "Pad", "fold_batchnorm", "optimize", "to_onnxruntime",
    "keep_freed_memory", "tune_training", "untune_training",
    "DepthwiseConv1d", "DepthwiseConv2d", "DepthwiseConv3d",
    "PointwiseConv1d", "PointwiseConv2d", "PointwiseConv3d",
    "SeparableConv1d", "SeparableConv2d", "SeparableConv3d",
    "SpatiallySeparableConv2d",
    "BlueprintSeparableConv1d", "BlueprintSeparableConv2d", "BlueprintSeparableConv3d", "CPConv2d",
]
