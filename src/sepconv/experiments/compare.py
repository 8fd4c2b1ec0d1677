"""``sepconv.experiments.compare``: the public names of ``sepconv compare``, kept importable from here.

The implementation lives in :mod:`~sepconv.experiments.config` (settings),
:mod:`~sepconv.experiments.plan` (checks and size estimates),
:mod:`~sepconv.experiments.outdir` (output directory),
:mod:`~sepconv.experiments.measure` (latency, machine),
:mod:`~sepconv.experiments.run` (the experiment) and
:mod:`~sepconv.experiments.cli` (the command line: ``register``, ``run``, ``config_from_args``).
"""

from __future__ import annotations

from .config import CONVERTED, RESUMABLE_CHANGES, CompareConfig, RunOptions, parse_variants, record_of
from .measure import environment, measure_latency, measure_optimized_latency
from .outdir import RUN_DIRS, RUN_FILES, RUN_MARKER, prepare_out_dir
from .plan import resolve_device, validate_config
from .run import CALIBRATION_SAMPLES, run_compare

#: The defaults of ``sepconv compare``, derived from :class:`CompareConfig` (kept for code that reads them).
DEFAULTS = record_of(CompareConfig())

__all__ = [
    "CALIBRATION_SAMPLES", "CONVERTED", "CompareConfig", "DEFAULTS", "RESUMABLE_CHANGES", "RUN_DIRS", "RUN_FILES", "RUN_MARKER",
    "RunOptions", "environment", "measure_latency", "measure_optimized_latency",
    "parse_variants", "prepare_out_dir", "resolve_device", "run_compare", "validate_config",
]
