"""Speed: timing harness, measured roofline, and standard-vs-separable suites (``sepconv bench``)."""

from __future__ import annotations

from ..utils.lazy import lazy_package

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Roofline": ".roofline",
    "measure_bandwidth": ".roofline",
    "measure_roofline": ".roofline",
    "model_bound_s": ".roofline",
    "SUITES": ".suites",
    "Case": ".suites",
    "CaseResult": ".suites",
    "mobilenet_v1_suite": ".suites",
    "run_case": ".suites",
    "vgg_blocks_suite": ".suites",
    "machine_info": "..utils.machine",
    "Timing": "..utils.timing",
    "interleaved": "..utils.timing",
}

__all__ = sorted(_EXPORTS)

lazy_package(__name__, _EXPORTS)
