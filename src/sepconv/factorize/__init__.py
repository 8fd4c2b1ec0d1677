"""Factorize trained convolutions into separable ones with optimal weights, and convert whole models.

See :mod:`sepconv.factorize.kernels` for the math (truncated SVDs, exact
errors) and :func:`convert` for whole models.
"""

from __future__ import annotations

import sys
import types

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


def __getattr__(name: str):
    """Import the public names on first use (PEP 562): ``sepconv --help`` must not import torch."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``convert`` the function: importing the submodule of the same name would otherwise replace it."""

    def __setattr__(self, key, value):
        if key == "convert" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(key, value)


sys.modules[__name__].__class__ = _Package
