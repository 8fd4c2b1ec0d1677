"""Experiments: ``sepconv compare`` (standard vs separable variants of one architecture) and its report."""

from .compare import DEFAULTS
from .config import CompareConfig, RunOptions
from .measure import measure_latency
from .report import format_table, write_report
from .run import run_compare

__all__ = ["CompareConfig", "DEFAULTS", "RunOptions", "format_table", "measure_latency", "run_compare", "write_report"]
