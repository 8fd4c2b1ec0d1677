"""Exact cost accounting: MACs, multiplications, additions, parameters, bytes, arithmetic intensity.

Units are stated everywhere: MACs are multiply-accumulates, FLOPs = 2 x MACs.
"""

from .formulas import (
    CompositeCost,
    ConvCost,
    blueprint_cost,
    closed_form_ratio,
    conv_cost,
    cp_cost,
    dtype_size,
    separable_cost,
    spatial_cost,
)
from .profile import ModelProfile, ProfileRow, profile, spec_from_conv

__all__ = [
    "CompositeCost", "ConvCost", "ModelProfile", "ProfileRow",
    "blueprint_cost", "closed_form_ratio", "conv_cost", "cp_cost", "dtype_size", "profile", "separable_cost", "spatial_cost", "spec_from_conv",
]
