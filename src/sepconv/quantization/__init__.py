"""int8 deployment of separable networks: float transforms (BatchNorm folding, cross-layer equalization,
high-bias absorption, bias correction) and ONNX Runtime's static QDQ quantization.

``sepconv.quantize(model, calibration_data)`` returns ``(int8 model, report)``;
:func:`compare_schemes` measures the float model against naive per-tensor, per-channel and equalized
per-tensor int8. See ``docs/quantize.md``.
"""

from .engine import (
           QuantizationReport,
           QuantizedModel,
           calibration_batches,
           compare_schemes,
           quantize,
           schemes_table,
)
from .transforms import (
           absorb_high_biases,
           correct_bias,
           equalize,
           find_pairs,
           fold_batchnorm,
)

__all__ = ["QuantizationReport", "QuantizedModel", "absorb_high_biases", "calibration_batches", "compare_schemes",
           "correct_bias", "equalize", "find_pairs", "fold_batchnorm", "quantize", "schemes_table"]
