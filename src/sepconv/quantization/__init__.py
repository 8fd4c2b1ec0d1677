"""int8 deployment of separable networks: float transforms (BatchNorm folding, cross-layer equalization,
high-bias absorption, bias correction) and ONNX Runtime's static QDQ quantization.

``sepconv.quantize(model, calibration_data)`` returns ``(int8 model, report)``;
:func:`compare_schemes` measures the float model against naive per-tensor, per-channel and equalized
per-tensor int8. See ``docs/quantize.md``.

The names are imported on first use, so ``sepconv quantize --help`` does not load torch.
"""

from __future__ import annotations

from ..utils.lazy import lazy_package

#: Public name -> the module that defines it.
_EXPORTS = {
    "QuantizationReport": "sepconv.quantization.engine",
    "QuantizedModel": "sepconv.quantization.engine",
    "calibration_batches": "sepconv.quantization.engine",
    "compare_schemes": "sepconv.quantization.engine",
    "quantize": "sepconv.quantization.engine",
    "schemes_table": "sepconv.quantization.engine",
    "absorb_high_biases": "sepconv.quantization.transforms",
    "correct_bias": "sepconv.quantization.transforms",
    "equalize": "sepconv.quantization.transforms",
    "find_pairs": "sepconv.quantization.transforms",
    "fold_batchnorm": "sepconv.quantization.transforms",
}

__all__ = sorted(_EXPORTS)

lazy_package(__name__, _EXPORTS)
