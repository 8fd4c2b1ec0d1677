"""Exact cost accounting: MACs, multiplications, additions, parameters, bytes, arithmetic intensity.

Units are stated everywhere: MACs are multiply-accumulates, FLOPs = 2 x MACs.
"""

from __future__ import annotations

from ..utils.lazy import lazy_package


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

lazy_package(__name__, _EXPORTS)
