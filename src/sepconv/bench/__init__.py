"""Speed: timing harness, measured roofline, and standard-vs-separable suites (``sepconv bench``)."""

from __future__ import annotations

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Roofline": ".roofline",
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
