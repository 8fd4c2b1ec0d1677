"""Factorize trained convolutions into separable ones with optimal weights, and convert whole models.

See :mod:`sepconv.factorize.kernels` for the math (truncated SVDs, exact
errors) and :func:`convert` for whole models.
"""

from __future__ import annotations

from ..utils.lazy import lazy_package


#: Public name -> the submodule that defines it.
_EXPORTS = {
    "ConversionReport": ".convert",
    "LayerReport": ".convert",
    "calibrate": ".convert",
    "convert": ".convert",
    "PairwiseSpatial": ".kernels",
    "blueprint_error_curve": ".kernels",
    "blueprint_factorize": ".kernels",
    "cp_factorize": ".kernels",
    "depth_multiplier_for": ".kernels",
    "depthwise_error_curve": ".kernels",
    "depthwise_factorize": ".kernels",
    "is_separable": ".kernels",
    "low_rank": ".kernels",
    "pairwise_spatial": ".kernels",
    "separate": ".kernels",
    "singular_values": ".kernels",
    "spatial_factorize": ".kernels",
}

__all__ = sorted(_EXPORTS)

lazy_package(__name__, _EXPORTS)
