"""Float transforms that prepare a network for int8: BatchNorm folding, cross-layer equalization, high-bias
absorption and empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV).

All of them rewrite a model in place (in eval mode) and return how many layers or pairs they changed.

Pairs
-----
Equalization and absorption act on *pairs*: a convolution ``conv1`` whose output reaches a convolution
``conv2`` through nothing but layers that commute with a positive per-channel scale: ``nn.Identity`` (a
folded BatchNorm), ``nn.ReLU``, ``nn.ReLU6`` (see ``relu6``), max and average pooling, padding
(``sepconv.layers.Pad``, ``nn.ZeroPad*``, any mode) and dropout (eval mode). Pairs are found inside
``nn.Sequential`` containers and sepconv's separable layers (``depthwise -> [dw_norm, dw_act] ->
pointwise``, and a pointwise step -> the next layer's depthwise step), whose forward passes are a plain
chain, and inside MobileNetV2's inverted residual blocks (expansion -> depthwise -> projection, the
residual added after); any other module is a barrier: its children are searched on their own, since its forward pass may
branch (a residual) or reorder them. ``conv2`` may be grouped, in particular depthwise, which
``torch.ao.quantization``'s equalization refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..backends.fold import fold_batchnorm
from ..layers import Pad
from ..layers.separable import SeparableConvNd
from ..models.mobilenet import InvertedResidual

__all__ = [
    "RELU6_POLICIES",
    "absorb_high_biases",
    "channel_ranges",
    "correct_bias",
    "equalize",
    "fake_quantize_weight",
    "find_pairs",
    "fold_batchnorm",
    "input_channel_ranges",
]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PADS = (Pad, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
         nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
         nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
#: Shift-commuting layers: ``f(x - c) = f(x) - c`` per channel, what high-bias absorption may cross.
_SHIFT_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                  nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)

#: What :func:`equalize` does with a ReLU6 between the two layers of a pair.
RELU6_POLICIES = ("relu", "skip")

# (parent module, attribute name, module): enough to replace the module in its parent
Slot = tuple[nn.Module, str, nn.Module]


class Pair:
    """Two convolutions with only scale-commuting layers between them (see the module docstring)."""

    def __init__(self, first: Slot, between: Sequence[Slot], second: Slot) -> None:
        self.first, self.between, self.second = first, list(between), second

    @property
    def conv1(self) -> nn.Module:
        return self.first[2]

    @property
    def conv2(self) -> nn.Module:
        return self.second[2]

    def has(self, kinds: tuple) -> bool:
        return any(isinstance(m, kinds) for _, _, m in self.between)

    def __repr__(self) -> str:
        inner = ", ".join(type(m).__name__ for _, _, m in self.between)
        return f"Pair({type(self.conv1).__name__} -> [{inner}] -> {type(self.conv2).__name__})"


def _chains(module: nn.Module) -> Iterator[list[Slot]]:
    """The plain chains of layers in ``module``: runs whose forward pass applies them one after another."""
    current: list[Slot] = []

    def visit(parent: nn.Module | None, name: str, m: nn.Module) -> Iterator[list[Slot]]:
        nonlocal current
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            for child_name, child in m.named_children():
                yield from visit(m, child_name, child)
        elif isinstance(m, SeparableConvNd) and type(m).forward is SeparableConvNd.forward:
            for child_name in ("pad", "depthwise", "dw_norm", "dw_act", "pointwise", "pw_norm", "pw_act"):
                yield from visit(m, child_name, getattr(m, child_name))
        elif isinstance(m, InvertedResidual) and type(m).forward is InvertedResidual.forward:
            # expand -> separable is a plain chain; the residual adds the block's input, so it ends here
            if current:
                yield current
            current = []
            for child_name in ("expand", "separable"):
                yield from visit(m, child_name, getattr(m, child_name))
            if current:
                yield current
            current = []
        elif isinstance(m, CONVS + _ACTIVATIONS + _PASS_THROUGH + _PADS) and parent is not None:
            current.append((parent, name, m))
        else:  # a barrier: its children form chains of their own
            if current:
                yield current
            current = []
            for child_name, child in m.named_children():
                yield from visit(m, child_name, child)
                if current:
                    yield current
                current = []

    yield from visit(None, "", module)
    if current:
        yield current


def find_pairs(model: nn.Module) -> list[Pair]:
    """Every (conv1, conv2) pair of ``model`` in forward order, conv2 fed by conv1 alone (module docstring)."""
    pairs = []
    for chain in _chains(model):
        for i, slot in enumerate(chain):
            if not isinstance(slot[2], CONVS):
                continue
            for j in range(i + 1, len(chain)):
                if isinstance(chain[j][2], CONVS):
                    if chain[j][2].in_channels == slot[2].out_channels and chain[j][2] is not slot[2]:
                        pairs.append(Pair(slot, chain[i + 1:j], chain[j]))
                    break
    return pairs


def channel_ranges(weight: torch.Tensor) -> torch.Tensor:
    """Range of each output channel of a convolution or linear weight: ``max |W[o, ...]|``, shape ``(C_out,)``."""
    return weight.detach().flatten(1).abs().amax(1)


def _grouped(conv: nn.Module) -> torch.Tensor:
    """The weight viewed as ``(groups, C_out / groups, C_in / groups, taps)``."""
    w = conv.weight
    g = conv.groups
    return w.view(g, w.shape[0] // g, w.shape[1], -1)


def input_channel_ranges(conv: nn.Module) -> torch.Tensor:
    """Range of each *input* channel of ``conv`` (grouped or not): ``max |W[:, i, ...]|`` over the
    output channels that read input channel ``i``; shape ``(C_in,)``."""
    return _grouped(conv).detach().abs().amax(dim=(1, 3)).reshape(-1)


def _scale_outputs(conv: nn.Module, factor: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.mul_(factor.view(shape))
    if conv.bias is not None:
        conv.bias.mul_(factor)


def _scale_inputs(conv: nn.Module, factor: torch.Tensor) -> None:
    g = conv.groups
    _grouped(conv).mul_(factor.view(g, 1, -1, 1))


@torch.no_grad()
def equalize(model: nn.Module, *, relu6: str = "relu", max_iterations: int = 100, tolerance: float = 1e-6) -> int:
    """Cross-layer equalization (Nagel et al. 2019, section 4.1) of every pair of ``model``, in place.

    For a pair with per-channel ranges ``r1[i]`` (output channel ``i`` of conv1) and ``r2[i]`` (input channel
    ``i`` of conv2), conv1's channel ``i`` (weight and bias) is divided by ``s[i] = sqrt(r1[i] / r2[i])`` and
    conv2's input channel ``i`` multiplied by it; both ranges become ``sqrt(r1[i] r2[i])``, the paper's
    optimum. ReLU commutes with a positive scale, so the function is unchanged. Pairs sharing a layer are
    swept again until no scale moves by more than ``tolerance`` (relative) or ``max_iterations`` sweeps.

    ``relu6``: ReLU6 does not commute with a scale. ``"relu"`` (the paper's choice) replaces every ReLU6
    inside a pair by ReLU, which changes the function only where a pre-activation exceeds 6; ``"skip"``
    leaves such pairs alone. A channel with a zero range is not scaled. Returns the number of pairs equalized.
    """
    if relu6 not in RELU6_POLICIES:
        raise ValueError(f"relu6 must be one of {RELU6_POLICIES}, got {relu6!r}")
    if model.training:
        raise ValueError("equalize needs a model in eval mode (call model.eval())")
    pairs = []
    for pair in find_pairs(model):
        if pair.has((nn.ReLU6,)):
            if relu6 == "skip":
                continue
            for parent, name, m in pair.between:
                if isinstance(m, nn.ReLU6):
                    setattr(parent, name, nn.ReLU(inplace=m.inplace))
        pairs.append(pair)
    for _ in range(max_iterations):
        moved = 0.0
        for pair in pairs:
            r1, r2 = channel_ranges(pair.conv1.weight), input_channel_ranges(pair.conv2)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1)), torch.ones_like(r1))
            _scale_outputs(pair.conv1, 1 / s)
            _scale_inputs(pair.conv2, s)
            moved = max(moved, float((s - 1).abs().max()))
        if moved <= tolerance:
            break
    return len(pairs)


def _run_hooked(model: nn.Module, data: Iterable[torch.Tensor], handles: Sequence[torch.utils.hooks.RemovableHandle]) -> None:
    """Run ``model`` on every batch of ``data``, then remove the hook ``handles`` (also on error)."""
    try:
        for batch in data:
            model(batch)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _output_extremes(model: nn.Module, convs: Sequence[nn.Module],
                     data: Iterable[torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (min, max) of each of ``convs``' outputs over the batches of ``data``."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        flat = out.detach().transpose(0, 1).flatten(1)
        lo, hi = flat.amin(1), flat.amax(1)
        if id(module) in seen:
            lo, hi = torch.minimum(seen[id(module)][0], lo), torch.maximum(seen[id(module)][1], hi)
        seen[id(module)] = (lo, hi)

    _run_hooked(model, data, [c.register_forward_hook(record) for c in convs])
    return seen


@torch.no_grad()
def absorb_high_biases(model: nn.Module, calibration_data: Iterable[torch.Tensor]) -> int:
    """High-bias absorption (Nagel et al. 2019, section 4.2.2), in place; returns the pairs changed.

    For a pair conv1 -> [ReLU] -> conv2, channel ``i`` of conv1's output is shifted down by
    ``c[i] = max(0, min of the channel's pre-activation over calibration_data)`` (conv1's bias minus ``c``)
    and conv2's bias gains ``sum over taps of W2[o, i] c[i]``: since the channel never goes below ``c[i]``,
    ``relu(x - c) = relu(x) - c`` and the function is unchanged on the calibration data (and on any input
    whose pre-activations stay above ``c``). Without an activation between the two the shift is exact for
    any ``c``, and each channel is centred instead (``c`` = the midpoint of its calibration range), which
    narrows the per-tensor range of conv1's output.

    Only pairs where the shift is exact are changed: conv2 without padding (its padded taps would see 0,
    not the shifted value) and only ReLU, identities, pooling and dropout between. conv1 gets a bias if it
    had none.
    """
    if model.training:
        raise ValueError("absorb_high_biases needs a model in eval mode (call model.eval())")
    pairs = [p for p in find_pairs(model)
             if all(isinstance(m, _SHIFT_THROUGH + (nn.ReLU,)) and not _pads_average(m) for _, _, m in p.between)
             and all(n == 0 for n in _padding_amounts(p.conv2))]
    if not pairs:
        return 0
    extremes = _output_extremes(model, [p.conv1 for p in pairs], calibration_data)
    changed = 0
    for pair in pairs:
        if id(pair.conv1) not in extremes:
            continue
        lo, hi = extremes[id(pair.conv1)]
        c = lo.clamp(min=0) if pair.has((nn.ReLU,)) else (lo + hi) / 2
        if not bool((c != 0).any()):
            continue
        conv2 = pair.conv2
        g = conv2.groups
        shift = torch.einsum("goit,gi->go", _grouped(conv2), c.view(g, -1)).reshape(-1)
        _ensure_bias(pair.conv1).sub_(c)
        _ensure_bias(conv2).add_(shift)
        changed += 1
    return changed


def _ensure_bias(layer: nn.Module) -> torch.Tensor:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                              device=layer.weight.device))
    return layer.bias


def _pads_average(m: nn.Module) -> bool:
    """An average pooling that averages zero padding in: it does not commute with a shift."""
    padding = getattr(m, "padding", 0)
    return isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and m.count_include_pad and any(
        n != 0 for n in (padding if isinstance(padding, tuple) else (padding,)))


def _padding_amounts(conv: nn.Module) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0,)
        return tuple(d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation))  # 'same'
    return tuple(conv.padding)


def fake_quantize_weight(weight: torch.Tensor, *, per_channel: bool, bits: int = 8) -> torch.Tensor:
    """``weight`` rounded to symmetric signed ``bits``-bit integers and back to float.

    Scale ``max |W| / (2^(bits-1) - 1)`` per output channel (``per_channel``) or for the whole tensor,
    values clamped to ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``: ONNX Runtime's symmetric int8 weights.
    """
    qmax = 2 ** (bits - 1) - 1
    absmax = channel_ranges(weight) if per_channel else weight.detach().abs().max().reshape(1)
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    scale = scale.view((-1,) + (1,) * (weight.dim() - 1))
    return (weight / scale).round().clamp(-qmax, qmax) * scale


@torch.no_grad()
def correct_bias(model: nn.Module, calibration_data: Iterable[torch.Tensor], *, per_channel: bool,
                 bits: int = 8) -> int:
    """Empirical bias correction (Nagel et al. 2019, section 4.2), in place; returns the layers corrected.

    Rounding a layer's weights to ``bits``-bit integers (:func:`fake_quantize_weight`, the given scheme)
    shifts the mean of each output channel by ``E[(W_q - W) x]``. This is measured for every convolution
    and ``nn.Linear`` of ``model`` from its mean input over ``calibration_data`` (exact, as the layer is
    linear) and subtracted from the layer's bias (a bias is created where there is none), so the
    quantized layer's outputs have the float layer's per-channel means on that data. Unlike the other
    transforms this changes the float function, by design.
    """
    if model.training:
        raise ValueError("correct_bias needs a model in eval mode (call model.eval())")
    layers = [m for m in model.modules() if isinstance(m, CONVS + (nn.Linear,))]
    sums: dict[int, list] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        total = x.sum(0, dtype=torch.float64)
        if id(module) in sums:
            sums[id(module)][0] += total
            sums[id(module)][1] += x.shape[0]
        else:
            sums[id(module)] = [total, x.shape[0]]

    _run_hooked(model, calibration_data, [m.register_forward_pre_hook(record) for m in layers])
    corrected = 0
    for m in layers:
        if id(m) not in sums:
            continue
        total, count = sums[id(m)]
        mean_input = (total / count).to(m.weight.dtype).unsqueeze(0)
        error = fake_quantize_weight(m.weight, per_channel=per_channel, bits=bits) - m.weight
        if isinstance(m, nn.Linear):
            shift = (mean_input @ error.T).reshape(-1, m.out_features).mean(0)
        else:
            out = m._conv_forward(mean_input, error, None)
            shift = out.transpose(0, 1).flatten(1).mean(1)
        _ensure_bias(m).sub_(shift)
        corrected += 1
    return corrected


def weight_range_spread(weight: torch.Tensor) -> float:
    """Largest over smallest non-zero output-channel range of a weight (1 = balanced); inf if all are zero."""
    r = channel_ranges(weight)
    r = r[r > 0]
    return float(r.max() / r.min()) if r.numel() else math.inf
