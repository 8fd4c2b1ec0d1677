"""sepconv layers: depthwise, pointwise, depthwise separable and spatially separable convolutions,
and the pointwise-depthwise (blueprint) and CP-decomposed factorizations."""

from ._common import Pad, conv_module
from .blueprint import BlueprintSeparableConv1d, BlueprintSeparableConv2d, BlueprintSeparableConv3d
from .cp import CPConv2d
from .depthwise import DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d
from .pointwise import PointwiseConv1d, PointwiseConv2d, PointwiseConv3d
from .separable import SeparableConv1d, SeparableConv2d, SeparableConv3d
from .spatial import SpatiallySeparableConv2d

__all__ = [
    "Pad", "conv_module",
    "DepthwiseConv1d", "DepthwiseConv2d", "DepthwiseConv3d",
    "PointwiseConv1d", "PointwiseConv2d", "PointwiseConv3d",
    "SeparableConv1d", "SeparableConv2d", "SeparableConv3d",
    "SpatiallySeparableConv2d",
    "BlueprintSeparableConv1d", "BlueprintSeparableConv2d", "BlueprintSeparableConv3d", "CPConv2d",
]
