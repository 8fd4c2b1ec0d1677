"""Factorize trained convolutions into separable ones with optimal weights, and convert whole models.

See :mod:`sepconv.factorize.kernels` for the math (truncated SVDs, exact
errors) and :func:`convert` for whole models.
"""

from .convert import ConversionReport, LayerReport, calibrate, convert
from .kernels import (
    PairwiseSpatial,
    blueprint_error_curve,
    blueprint_factorize,
    cp_factorize,
    depth_multiplier_for,
    depthwise_error_curve,
    depthwise_factorize,
    is_separable,
    low_rank,
    pairwise_spatial,
    separate,
    singular_values,
    spatial_factorize,
)

__all__ = [
    "ConversionReport", "LayerReport", "PairwiseSpatial", "blueprint_error_curve", "blueprint_factorize", "calibrate", "convert",
    "cp_factorize", "depth_multiplier_for", "depthwise_error_curve",
    "depthwise_factorize", "is_separable", "low_rank", "pairwise_spatial", "separate", "singular_values",
    "spatial_factorize",
]
