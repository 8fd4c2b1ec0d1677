"""int8 inference through ONNX Runtime's static QDQ quantization, after sepconv's float transforms.

:func:`quantize` folds BatchNorm, optionally equalizes and absorbs high biases and corrects the weight
quantization's bias (``sepconv.quantization.transforms``), exports the float model to ONNX, lets ONNX
Runtime calibrate the activation ranges (min/max over the calibration data) and insert
QuantizeLinear/DequantizeLinear pairs (int8 symmetric weights, per output channel or per tensor; uint8
asymmetric per-tensor activations), and loads the result in an ONNX Runtime session, whose graph
optimizer fuses each QDQ group into an integer kernel.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..backends.onnxruntime import (
    OnnxRuntimeModel,
    export_onnx,
    onnxruntime_available,
    onnxruntime_session,
    to_onnxruntime,
)
from ..utils.io import atomic_write_bytes
from ..utils.timing import inference_call, interleaved
from . import transforms as T

INSTALL_HINT = "pip install 'sepconv[onnx]'"
CalibrationData = Union[torch.Tensor, Iterable[torch.Tensor]]


def _require_engine(what: str) -> None:
    if not onnxruntime_available():
        raise ImportError(f"{what} needs onnx and onnxruntime (ONNX Runtime's quantization): {INSTALL_HINT}")


def calibration_batches(calibration_data: CalibrationData, batch_size: int = 64) -> list[torch.Tensor]:
    """``calibration_data`` as a list of float32 CPU batches ``(n, C, ...)``.

    A tensor is split along its first dimension into ``batch_size`` chunks; an iterable's tensors are taken
    as batches. Raises ``ValueError`` when there is no sample, or a batch is not a floating-point tensor
    with a batch dimension and the same per-sample shape as the first.
    """
    if isinstance(calibration_data, torch.Tensor):
        if calibration_data.dim() < 2:
            raise ValueError(f"calibration_data must have a batch dimension, (N, C, ...); got shape "
                             f"{tuple(calibration_data.shape)}")
        batches = list(calibration_data.split(batch_size)) if calibration_data.shape[0] else []
    else:
        try:
            batches = list(calibration_data)
        except TypeError:
            raise ValueError(f"calibration_data must be a tensor (N, C, ...) or an iterable of such batches, got "
                             f"{type(calibration_data).__name__}") from None
    out = []
    for i, b in enumerate(batches):
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or b.dim() < 2:
            raise ValueError(f"calibration_data batch {i} must be a floating-point tensor (n, C, ...), got "
                             f"{type(b).__name__ if not isinstance(b, torch.Tensor) else f'{b.dtype} {tuple(b.shape)}'}")
        if out and b.shape[1:] != out[0].shape[1:]:
            raise ValueError(f"calibration_data batch {i} has samples of shape {tuple(b.shape[1:])}, batch 0 "
                             f"{tuple(out[0].shape[1:])}")
        if b.shape[0]:
            out.append(b.detach().to("cpu", torch.float32).contiguous())
    if not out:
        raise ValueError("calibration_data is empty: quantization needs sample inputs to calibrate the "
                         "activation ranges (a few hundred representative inputs, e.g. training images)")
    return out


@dataclass
class QuantizationReport:
    """What :func:`quantize` did.

    * ``scheme``: ``per_channel``, ``equalize``, ``high_bias_absorption``, ``bias_correction``, ``relu6``,
      ``weights`` ('int8 symmetric'), ``activations`` ('uint8 asymmetric per-tensor'), ``calibration``
      ('minmax'), ``calibration_samples``, ``format`` ('QDQ').
    * ``transforms``: how many BatchNorms were folded, pairs equalized, pairs with absorbed biases and
      layers bias-corrected.
    * ``float_bytes`` / ``int8_bytes``: sizes of the serialized float32 and quantized ONNX models.
    * ``layers``: one dict per convolution and ``nn.Linear``, by qualified name: ``kind``,
      ``weight_absmax_before`` / ``weight_absmax`` (largest ``|W|`` after BatchNorm folding, before and
      after the other transforms), ``channel_range_min_before`` / ``channel_range_max_before`` and
      ``channel_range_min`` / ``channel_range_max`` (smallest and largest per-output-channel ``max |W|``),
      and ``output_min`` / ``output_max``, the layer's output range on the calibration data (what a
      per-tensor activation quantizer has to cover).
    """

    scheme: dict[str, Any]
    transforms: dict[str, int]
    float_bytes: int
    int8_bytes: int
    layers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"scheme": dict(self.scheme), "transforms": dict(self.transforms), "float_bytes": self.float_bytes,
                "int8_bytes": self.int8_bytes, "layers": [dict(r) for r in self.layers]}

    def to_table(self) -> str:
        """A plain-text summary: the scheme, the transforms, the sizes and a row per layer."""
        s = self.scheme
        lines = [
            f"scheme: int8 weights {'per-channel' if s['per_channel'] else 'per-tensor'}, uint8 activations per-tensor; "
            f"equalize={s['equalize']} high_bias_absorption={s['high_bias_absorption']} "
            f"bias_correction={s['bias_correction']}; {s['calibration']} calibration on {s['calibration_samples']} samples",
            "transforms: " + ", ".join(f"{k}={v}" for k, v in self.transforms.items()),
            f"size: {self.float_bytes} bytes float32 -> {self.int8_bytes} bytes int8 "
            f"({self.int8_bytes / self.float_bytes:.2f}x)",
            "",
            f"{'layer':<28} {'kind':<10} {'ch. range before':>20} {'ch. range after':>20} {'output range':>20}",
        ]
        for r in self.layers:
            lines.append(f"{r['name'][:28]:<28} {r['kind']:<10} "
                         f"{r['channel_range_min_before']:>9.3g}..{r['channel_range_max_before']:<9.3g} "
                         f"{r['channel_range_min']:>9.3g}..{r['channel_range_max']:<9.3g} "
                         f"{r['output_min']:>9.3g}..{r['output_max']:<9.3g}")
        return "\n".join(lines)


class QuantizedModel(OnnxRuntimeModel):
    """An int8 model run by ONNX Runtime on the CPU: float32 tensors in and out, inference only.

    ``onnx`` holds the serialized quantized ONNX model; :meth:`save` writes it.
    """

    def __init__(self, session: Any, input_name: str, threads: int, onnx_bytes: bytes) -> None:
        super().__init__(session, input_name, threads)
        self.onnx = onnx_bytes

    def save(self, path: str | os.PathLike) -> None:
        """Write the quantized ONNX model to ``path`` (atomically)."""
        atomic_write_bytes(path, self.onnx)

    def extra_repr(self) -> str:
        return f"int8 QDQ, {super().extra_repr()}"


def _layer_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    stats = {}
    for name, m in model.named_modules():
        if isinstance(m, T.CONVS + (nn.Linear,)):
            r = T.channel_ranges(m.weight)
            stats[name] = {"kind": type(m).__name__ if not isinstance(m, T.CONVS) or m.groups == 1
                           else ("Depthwise" if m.groups == m.in_channels else "Grouped"),
                           "absmax": float(r.max()), "min": float(r.min()), "max": float(r.max())}
    return stats


@torch.no_grad()
def _output_ranges(model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, tuple[float, float]]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, T.CONVS + (nn.Linear,))}
    extremes = T._output_extremes(model, list(layers.values()), batches)
    return {name: (float(extremes[id(m)][0].min()), float(extremes[id(m)][1].max()))
            for name, m in layers.items() if id(m) in extremes}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._items = iter([{"x": b.numpy()} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators
        pass


def prepare(model: nn.Module, calibration_data: CalibrationData, *, per_channel: bool = True,
            equalize: bool = True, high_bias_absorption: bool | None = None, bias_correction: bool = True,
            relu6: str = "relu") -> tuple[nn.Module, dict[str, int], dict[str, dict], list[torch.Tensor]]:
    """The float half of :func:`quantize`: a transformed copy of ``model`` (the input is left as it is).

    Returns ``(model, transform counts, per-layer weight stats before the transforms, calibration batches)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if relu6 not in T.RELU6_POLICIES:
        raise ValueError(f"relu6 must be one of {T.RELU6_POLICIES}, got {relu6!r}")
    if not any(isinstance(m, T.CONVS) for m in model.modules()):
        raise ValueError(f"model has no convolution ({type(model).__name__} holds no nn.Conv1d/2d/3d): "
                         "sepconv.quantize is for convolutional networks")
    batches = calibration_batches(calibration_data)
    high_bias_absorption = equalize if high_bias_absorption is None else bool(high_bias_absorption)
    work = copy.deepcopy(model).cpu().float().eval()
    counts = {"batchnorms_folded": T.fold_batchnorm(work)}
    before = _layer_stats(work)
    counts["pairs_equalized"] = T.equalize(work, relu6=relu6) if equalize else 0
    counts["high_biases_absorbed"] = T.absorb_high_biases(work, batches) if high_bias_absorption else 0
    counts["biases_corrected"] = T.correct_bias(work, batches, per_channel=per_channel) if bias_correction else 0
    return work, counts, before, batches


#: Activation-range calibrations :func:`quantize` accepts. ONNX Runtime's entropy method is left out:
#: ``quantize_static`` builds it with as many histogram bins as quantized bins, which leaves a single
#: candidate threshold, the min/max range (``docs/design-notes.md``).
CALIBRATION_METHODS = ("minmax", "percentile")


def quantize(model: nn.Module, calibration_data: CalibrationData, *, per_channel: bool = True,
             equalize: bool = True, high_bias_absorption: bool | None = None, bias_correction: bool = True,
             relu6: str = "relu", calibration: str = "minmax",
             threads: int | None = None) -> tuple[QuantizedModel, QuantizationReport]:
    """Quantize ``model`` to int8 with ONNX Runtime; returns ``(int8 model, report)``.

    ``model`` (left unchanged) is copied to the CPU in eval mode and transformed in float
    (``sepconv.quantization.transforms``): BatchNorm folded; with ``equalize``, cross-layer equalization
    (``relu6``: 'relu' replaces a ReLU6 inside an equalized pair by ReLU, as Nagel et al. do; 'skip' leaves
    such pairs alone); with ``high_bias_absorption`` (default: ``equalize``), high biases absorbed into the
    next layer; with ``bias_correction``, the mean shift that rounding the weights causes is subtracted
    from each layer's bias. It is then exported to ONNX and quantized by ONNX Runtime
    (``quantize_static``, QDQ format): int8 symmetric weights per output channel (``per_channel``) or per
    tensor, uint8 asymmetric per-tensor activations whose ranges come from ``calibration_data`` (a float
    tensor ``(N, C, ...)`` or an iterable of such batches) by ``calibration``: ``'minmax'`` (the observed
    minimum and maximum) or ``'percentile'`` (ONNX Runtime's histogram percentile, 99.999 %, which lets
    rare outliers saturate instead of stretching the range).

    The int8 model is an ``nn.Module`` (:class:`QuantizedModel`) taking and returning float32 CPU tensors
    with any batch size, run with ``threads`` intra-op threads (default ``torch.get_num_threads()``).

    Raises ``ValueError`` for empty or malformed calibration data or a model without a convolution, and
    ``ImportError`` naming the pip extra when onnx/onnxruntime are not installed.
    """
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}; got {calibration!r}")
    _require_engine("sepconv.quantize")
    work, counts, before, batches = prepare(model, calibration_data, per_channel=per_channel, equalize=equalize,
                                            high_bias_absorption=high_bias_absorption,
                                            bias_correction=bias_correction, relu6=relu6)
    float_bytes = export_onnx(work, batches[0][:1])
    int8_bytes = _quantize_onnx(float_bytes, batches, per_channel, calibration)
    session, threads = onnxruntime_session(int8_bytes, threads=threads)
    qmodel = QuantizedModel(session, "x", threads, int8_bytes)
    after = _layer_stats(work)
    outputs = _output_ranges(work, batches)
    layers = []
    for name, a in after.items():
        b = before.get(name, a)
        lo, hi = outputs.get(name, (math.nan, math.nan))
        layers.append({"name": name, "kind": a["kind"], "weight_absmax_before": b["absmax"], "weight_absmax": a["absmax"],
                       "channel_range_min_before": b["min"], "channel_range_max_before": b["max"],
                       "channel_range_min": a["min"], "channel_range_max": a["max"],
                       "output_min": lo, "output_max": hi})
    scheme = {"per_channel": bool(per_channel), "equalize": bool(equalize),
              "high_bias_absorption": equalize if high_bias_absorption is None else bool(high_bias_absorption),
              "bias_correction": bool(bias_correction), "relu6": relu6, "weights": "int8 symmetric",
              "activations": "uint8 asymmetric per-tensor", "calibration": calibration,
              "calibration_samples": sum(int(b.shape[0]) for b in batches), "format": "QDQ",
              "engine": "onnxruntime"}
    report = QuantizationReport(scheme, counts, len(float_bytes), len(int8_bytes), layers)
    return qmodel, report


def _inline_shared_initializers(proto: Any) -> Any:
    """``proto`` with each ``Identity`` of an initializer replaced by a copy of the initializer.

    The exporter stores equal constants once and reads the others through ``Identity`` nodes (e.g.
    the zero biases of freshly folded BatchNorms). ONNX Runtime's quantizer sees such a bias as an
    activation, not a constant: it cannot make it int32 and the convolution stays float.
    """
    import onnx

    initializers = {t.name: t for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(initializers[node.input[0]])
            copy_.name = node.output[0]
            proto.graph.initializer.append(copy_)
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto


def _quantize_onnx(float_bytes: bytes, batches: Sequence[torch.Tensor], per_channel: bool,
                   calibration: str = "minmax") -> bytes:
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    proto = _inline_shared_initializers(onnx.load_from_string(float_bytes))
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer logs advice on every call
    try:
        # its histogram calibrators print their progress to stdout
        with tempfile.TemporaryDirectory(prefix="sepconv_quantize_") as tmp, \
                contextlib.redirect_stdout(io.StringIO()):
            path = os.path.join(tmp, "model_int8.onnx")
            quantize_static(proto, path, _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "percentile": CalibrationMethod.Percentile}[calibration],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            with open(path, "rb") as handle:
                return handle.read()
    finally:
        logging.getLogger().setLevel(quiet)


#: The schemes :func:`compare_schemes` measures: (name, quantize() keywords; None for the float model).
SCHEMES = (
    ("float", None),
    ("per-tensor", dict(per_channel=False, equalize=False, bias_correction=False)),
    ("per-channel", dict(per_channel=True, equalize=False, bias_correction=False)),
    ("per-tensor+equalize+bias-correction", dict(per_channel=False, equalize=True, bias_correction=True)),
)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].contiguous()) for i in range(0, x.shape[0], batch_size)])


def compare_schemes(model: nn.Module, calibration: CalibrationData, test_inputs: torch.Tensor,
                    test_labels: torch.Tensor | None = None, *, latency_input: torch.Tensor | None = None,
                    threads: int | None = 1, rounds: int = 15, relu6: str = "relu") -> list[dict[str, Any]]:
    """The float model and three int8 schemes of ``model``, side by side; one dict per scheme.

    Every model runs in ONNX Runtime on the CPU with ``threads`` intra-op threads (default 1), the float
    one as float32 (:func:`sepconv.to_onnxruntime`), so latency compares int8 with float32 in one engine.
    Each int8 model is built by :func:`quantize` from ``calibration``; ``test_inputs`` (float ``(N, C, ...)``)
    are what accuracy and agreement are measured on.

    Row fields:

    * ``scheme``: ``'float'``, ``'per-tensor'`` (naive: BatchNorm folding only, per-tensor weights),
      ``'per-channel'`` (BatchNorm folding, per-output-channel weights) or
      ``'per-tensor+equalize+bias-correction'`` (per-tensor weights after cross-layer equalization,
      high-bias absorption and bias correction).
    * ``per_channel``, ``equalize``, ``bias_correction``: the :func:`quantize` options (None for float).
    * ``accuracy``: fraction (0..1) of ``test_inputs`` whose arg-max output equals ``test_labels``; None
      without labels.
    * ``agreement``: fraction (0..1) of ``test_inputs`` whose arg-max output equals the float model's
      (1.0 for the float row).
    * ``max_abs_error``: largest absolute difference from the float model's outputs (0.0 for float).
    * ``model_bytes``: size in bytes of the serialized ONNX model (float32 weights, or int8 weights with
      their scales and the int32 biases).
    * ``size_ratio``: ``model_bytes`` over the float row's.
    * ``latency_ms``: median milliseconds of one batch-1 forward pass on ``latency_input`` (default: the
      first test input), timed in ``rounds`` interleaved rounds with the other rows
      (``sepconv.utils.timing.interleaved``); ``latency_q1_ms`` / ``latency_q3_ms`` its quartiles.
    * ``latency_ratio``: ``latency_ms`` over the float row's.
    * ``report``: the :class:`QuantizationReport` as a dict (None for float).
    """
    _require_engine("compare_schemes")
    if not isinstance(test_inputs, torch.Tensor) or test_inputs.dim() < 2 or test_inputs.shape[0] == 0:
        raise ValueError(f"test_inputs must be a non-empty float tensor (N, C, ...), got "
                         f"{tuple(test_inputs.shape) if isinstance(test_inputs, torch.Tensor) else type(test_inputs).__name__}")
    if test_labels is not None and (not isinstance(test_labels, torch.Tensor)
                                    or tuple(test_labels.shape) != (test_inputs.shape[0],)):
        raise ValueError(f"test_labels must be a tensor of shape ({test_inputs.shape[0]},) matching test_inputs, got "
                         f"{tuple(test_labels.shape) if isinstance(test_labels, torch.Tensor) else type(test_labels).__name__}")
    test_inputs = test_inputs.detach().to("cpu", torch.float32)
    sample = (test_inputs[:1] if latency_input is None else latency_input).to("cpu", torch.float32).contiguous()
    base = copy.deepcopy(model).cpu().float().eval()
    float_model = to_onnxruntime(base, test_inputs[:1].contiguous(), threads=threads)
    float_bytes = len(export_onnx(base, test_inputs[:1].contiguous()))
    runners: dict[str, nn.Module] = {"float": float_model}
    rows: list[dict[str, Any]] = []
    reference = _predict(float_model, test_inputs)
    for name, options in SCHEMES:
        if options is None:
            runner, report, size = float_model, None, float_bytes
        else:
            runner, report = quantize(base, calibration, relu6=relu6, threads=threads, **options)
            size = report.int8_bytes
            runners[name] = runner
        out = reference if options is None else _predict(runner, test_inputs)
        pred = out.argmax(1)
        rows.append({
            "scheme": name,
            "per_channel": None if options is None else options["per_channel"],
            "equalize": None if options is None else options["equalize"],
            "bias_correction": None if options is None else options["bias_correction"],
            "accuracy": None if test_labels is None else float((pred == test_labels.cpu()).float().mean()),
            "agreement": float((pred == reference.argmax(1)).float().mean()),
            "max_abs_error": float((out - reference).abs().max()),
            "model_bytes": size,
            "size_ratio": size / float_bytes,
            "report": None if report is None else report.as_dict(),
        })
    timings = interleaved({name: inference_call(r, sample) for name, r in runners.items()}, rounds=rounds)
    for row in rows:
        t = timings[row["scheme"]]
        row.update(latency_ms=t.median * 1e3, latency_q1_ms=t.q1 * 1e3, latency_q3_ms=t.q3 * 1e3,
                   latency_ratio=t.median / timings["float"].median)
    return rows


def schemes_table(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`compare_schemes`' rows as a plain-text table."""
    lines = [f"{'scheme':<38} {'accuracy':>8} {'agree':>7} {'bytes':>10} {'latency ms':>11} {'vs float':>8}"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        lines.append(f"{r['scheme']:<38} {acc:>8} {100 * r['agreement']:>7.2f} {r['model_bytes']:>10} "
                     f"{r['latency_ms']:>11.3f} {r['latency_ratio']:>7.2f}x")
    return "\n".join(lines)
