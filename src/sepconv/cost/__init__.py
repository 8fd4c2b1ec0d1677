"""Exact cost accounting: MACs, multiplications, additions, parameters, bytes, arithmetic intensity.

Units are stated everywhere: MACs are multiply-accumulates, FLOPs = 2 x MACs.
"""

from __future__ import annotations

import sys
import types

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "CompositeCost": ".formulas",
    "ConvCost": ".formulas",
    "blueprint_cost": ".formulas",
    "closed_form_ratio": ".formulas",
    "conv_cost": ".formulas",
    "cp_cost": ".formulas",
    "dtype_size": ".formulas",
    "separable_cost": ".formulas",
    "spatial_cost": ".formulas",
    "ModelProfile": ".profile",
    "ProfileRow": ".profile",
    "profile": ".profile",
    "spec_from_conv": ".profile",
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
    """Keeps ``profile`` the function: importing the submodule of the same name would otherwise replace it."""

    def __setattr__(self, key, value):
        if key == "profile" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(key, value)


sys.modules[__name__].__class__ = _Package
