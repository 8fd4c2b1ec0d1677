"""Experiments: ``sepconv compare`` (standard vs separable variants of one architecture) and its report."""

from .compare import CompareConfig, DEFAULTS, measure_latency, run_compare
from .report import format_table, write_report

__all__ = ["CompareConfig", "DEFAULTS", "format_table", "measure_latency", "run_compare", "write_report"]
