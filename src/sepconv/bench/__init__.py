"""Speed: timing harness, measured roofline, and standard-vs-separable suites (``sepconv bench``)."""

from .roofline import Roofline, measure_roofline, model_bound_s
from .suites import SUITES, Case, CaseResult, mobilenet_v1_suite, run_case, vgg_blocks_suite
from ..utils.machine import machine_info
from ..utils.timing import Timing, interleaved

__all__ = ["SUITES", "Case", "CaseResult", "Roofline", "Timing", "interleaved", "machine_info", "measure_roofline",
           "mobilenet_v1_suite", "model_bound_s", "run_case", "vgg_blocks_suite"]
