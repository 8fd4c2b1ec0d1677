"""sepconv: separable convolutions for PyTorch, with exact costs, factorization and experiments.

The public names below are imported on first use (PEP 562), so that
``import sepconv`` and ``sepconv --help`` do not pay for torch and the
engines until a name is used. ``from sepconv import X`` works as usual.
"""

from __future__ import annotations

from .utils.lazy import lazy_package
from .version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    # layers
    "DepthwiseConv1d": "sepconv.layers", "DepthwiseConv2d": "sepconv.layers", "DepthwiseConv3d": "sepconv.layers",
    "PointwiseConv1d": "sepconv.layers", "PointwiseConv2d": "sepconv.layers", "PointwiseConv3d": "sepconv.layers",
    "SeparableConv1d": "sepconv.layers", "SeparableConv2d": "sepconv.layers", "SeparableConv3d": "sepconv.layers",
    "SpatiallySeparableConv2d": "sepconv.layers",
    "BlueprintSeparableConv1d": "sepconv.layers", "BlueprintSeparableConv2d": "sepconv.layers",
    "BlueprintSeparableConv3d": "sepconv.layers",
    "CPConv2d": "sepconv.layers", "Pad": "sepconv.layers",
    "ConvSpec": "sepconv.geometry",
    # cost and factorization
    "profile": "sepconv.cost",
    "convert": "sepconv.factorize",
    # engines
    "fold_batchnorm": "sepconv.backends.fold",
    "OnnxRuntimeModel": "sepconv.backends.onnxruntime", "to_onnxruntime": "sepconv.backends.onnxruntime",
    "OptimizedModel": "sepconv.backends.optimize", "optimize": "sepconv.backends.optimize",
    "tune_training": "sepconv.backends.training", "untune_training": "sepconv.backends.training",
    "keep_freed_memory": "sepconv.utils.memory",
    # interop
    "from_keras": "sepconv.interop",
    # int8
    "quantize": "sepconv.quantization",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


lazy_package(__name__, _EXPORTS)
