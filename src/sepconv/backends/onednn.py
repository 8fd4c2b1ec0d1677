"""Inference convolutions through oneDNN with prepacked weights: the engine behind ``optimize``'s ``onednn`` backend.

Why it exists: eager PyTorch on the CPU can leave much of a separable
layer's saving on the table in two ways (``docs/design-notes.md``).

* On one thread and small batches it may run a 1x1 convolution as a
  oneMKL GEMM, whose code path depends on the CPU vendor, where oneDNN's
  convolution kernels use the widest vector ISA the CPU has.
* Every call reorders the weight into oneDNN's blocked layout; for a large
  standard convolution that reorder can cost more than the convolution.

:class:`PackedConv2d` calls oneDNN directly (PyTorch's ``mkldnn``
operators, the ones ``torch.compile``'s CPU freezing pass uses) with the
weight reordered once, in channels-last, optionally with the following ReLU
or ReLU6 fused into the convolution. It is inference-only: the packed weight
is a snapshot, so training the original module does not update it.
:func:`pack_convolutions` swaps a model's 2D convolutions for packed ones,
layer by layer where a measurement says it pays.

These operators are internal to PyTorch (``torch.ops.mkldnn``): where they
are missing or fail, :func:`onednn_available` says so and nothing here is
used.
"""

from __future__ import annotations

import copy
import functools
from typing import Optional

import torch
from torch import nn

from ..layers.separable import SeparableConvNd
from ..utils.timing import first_inputs, inference_call
from .clock import fastest_call
from .engine import BuildContext, Candidate, InferenceEngine
from .fused import FusedSeparableConv2d, fusable, fused_available
from .sites import FUSABLE_ACTIVATIONS, conv_sites, is_identity, plain_conv2d

#: How many input shapes a PackedConv2d keeps a reordered weight for (least recently used dropped first).
_PACKED_SHAPES = 4

#: Activations oneDNN applies to a convolution's output in the same pass: class -> (attr, scalars).
_ONEDNN_ATTRS = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """True when this PyTorch build has the oneDNN convolution operators :class:`PackedConv2d` needs (and they run)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        x = torch.randn(1, 2, 4, 4).contiguous(memory_format=torch.channels_last)
        w = torch.randn(3, 2, 3, 3)
        packed = ops._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
        y = ops._convolution_pointwise(x, packed, None, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
        return bool(torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def packable(conv: nn.Module) -> bool:
    """Whether :class:`PackedConv2d` can run ``conv``: a float32 CPU ``nn.Conv2d`` with integer, zero padding."""
    return plain_conv2d(conv) and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"


class PackedConv2d(nn.Module):
    """Inference-only copy of an ``nn.Conv2d`` run by oneDNN with its weight reordered once (channels-last).

    Built from ``conv`` (any ``nn.Conv2d`` with integer zero padding, sepconv's
    depthwise and pointwise layers included: their 'same'/asymmetric ``pad``
    is applied first). ``activation`` (``nn.ReLU`` or ``nn.ReLU6``) is fused
    into the convolution's output. Inputs must be float32 on the CPU; they are
    made channels-last, and so are the outputs. The weight is reordered for
    the first input size seen and again for each new one (the last few cached).
    Gradients do not flow into the weights (``requires_grad`` inputs raise).
    """

    def __init__(self, conv: nn.Conv2d, activation: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not packable(conv):
            raise ValueError(f"PackedConv2d needs a float32 CPU nn.Conv2d with integer zero padding, got {conv!r}")
        if activation is not None and type(activation) not in FUSABLE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {[c.__name__ for c in FUSABLE_ACTIVATIONS]} or None, got {activation!r}")
        self.pad = getattr(conv, "pad", None)  # sepconv's Depthwise layers pad outside the conv
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.dilation = list(conv.stride), list(conv.dilation)
        self.padding, self.groups = list(conv.padding), conv.groups
        self.activation = None if activation is None else type(activation).__name__
        self._attr, self._scalars = ("none", []) if activation is None else _ONEDNN_ATTRS[type(activation)]
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def _packed_weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        packed = self._packed.pop(shape, None)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape))
            if len(self._packed) >= _PACKED_SHAPES:  # each entry is a copy of the weight: keep the recent few
                del self._packed[next(iter(self._packed))]
        self._packed[shape] = packed  # most recently used last
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("PackedConv2d is inference-only: call it under torch.no_grad() or torch.inference_mode()")
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise ValueError(f"PackedConv2d needs a 4D float32 CPU input, got {x.dim()}D {x.dtype} on {x.device}")
        if self.pad is not None:
            x = self.pad(x)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(tuple(x.shape)), self.bias, self.padding, self.stride, self.dilation,
            self.groups, self._attr, self._scalars, "")

    def __getstate__(self) -> dict:  # oneDNN tensors cannot be copied or pickled: repack on first use
        state = self.__dict__.copy()
        state["_packed"] = {}
        return state

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, groups={self.groups}, "
                f"bias={self.bias is not None}, fused_activation={self.activation}")


def pack_convolutions(model: nn.Module, sample_input: Optional[torch.Tensor] = None, *, measure: bool = True,
                      rounds: int = 5, fuse_activations: bool = True,
                      fuse_separable: Optional[bool] = None) -> dict[str, str]:
    """Replace ``model``'s 2D convolutions by faster inference engines, in place; returns what was done per conv.

    ``model`` must be in eval mode (inference only; fold BatchNorm first with
    :func:`sepconv.fold_batchnorm`). Engines:

    * :class:`PackedConv2d` for any 2D convolution with integer zero padding;
    * :class:`~sepconv.backends.fused.FusedSeparableConv2d` for the depthwise and
      pointwise steps of a sepconv separable layer together
      (``fuse_separable``, default: when the fused kernel builds here,
      :func:`sepconv.backends.fused.fused_available`).

    With ``measure`` (needs ``sample_input``), every convolution (or
    separable layer) is timed on its own input from the sample, in
    ``rounds`` interleaved rounds (on the calling thread's CPU time with one
    thread: :func:`sepconv.backends.clock.timing_clock`), as it is (eager PyTorch, channels-last)
    and on each engine, and the fastest is kept (a close call timed twice:
    :func:`sepconv.backends.clock.fastest_call`). Without it, separable layers
    are fused where possible and every other convolution is packed. A ReLU
    or ReLU6 that directly follows a replaced convolution is fused into it
    and replaced by ``nn.Identity`` (``fuse_activations``). The returned dict
    maps each conv's qualified name to ``'eager'``, ``'packed'`` or
    ``'fused'`` or ``'dense'`` (a separable layer merged into one packed
    standard convolution, where that measured fastest), with
    ``'+relu'``/``'+relu6'`` where an activation was fused.
    """
    if model.training:
        raise ValueError("pack_convolutions needs a model in eval mode (call model.eval()): packed weights are a snapshot")
    if not onednn_available():
        raise RuntimeError("pack_convolutions: this PyTorch build lacks the oneDNN (mkldnn) convolution operators")
    if measure and sample_input is None:
        raise ValueError("pack_convolutions(measure=True) needs a sample_input to time each convolution on")
    if fuse_separable is None:
        fuse_separable = fused_available()
    sites = conv_sites(model, packable)
    names = {id(m): n for n, m in model.named_modules()}
    units = _separable_units(sites) if fuse_separable else []
    inputs: dict[int, torch.Tensor] = {}
    if measure:
        watched = [getattr(p, n) for p, n, _ in sites] + [layer for layer, _, _ in units]
        inputs = first_inputs(model, watched, sample_input,
                              keep=lambda x: x.detach().contiguous(memory_format=torch.channels_last))
    decisions: dict[str, str] = {}
    done: set[tuple[int, str]] = set()  # (parent, name) sites already decided as part of a separable layer
    for layer, _, pw_site in units:
        pw_act_site = pw_site[2] if fuse_activations else None
        choice = _replace_separable(model, names[id(layer)], layer, pw_act_site, inputs, measure, rounds,
                                    fuse_activations)
        if choice is None:
            continue
        dw_choice, pw_choice = choice
        prefix = names[id(layer)] + "." if names[id(layer)] else ""
        decisions[prefix + "depthwise"] = dw_choice
        decisions[prefix + "pointwise"] = pw_choice
        done.update({(id(layer), "depthwise"), (id(layer), "pointwise")})
    for parent, name, act_site in sites:
        if (id(parent), name) in done:
            continue
        conv = getattr(parent, name)
        qualified = names.get(id(conv), name)
        act = getattr(*act_site) if (act_site and fuse_activations) else None
        packed = PackedConv2d(conv, act)
        if measure:
            x = inputs.get(id(conv))
            if x is None:  # not reached by the sample: leave it as it is
                decisions[qualified] = "eager (not run by the sample)"
                continue
            eager = copy.deepcopy(conv).to(memory_format=torch.channels_last)
            tail = act if act is not None else nn.Identity()
            candidates = {"eager": inference_call(nn.Sequential(eager, tail), x), "packed": inference_call(packed, x)}
            if _fastest(candidates, rounds, x) == "eager":
                decisions[qualified] = "eager"
                continue
        setattr(parent, name, packed)
        if act is not None:
            setattr(act_site[0], act_site[1], nn.Identity())
        decisions[qualified] = "packed" + ("" if act is None else "+" + type(act).__name__.lower())
    return decisions


def _dense_module(layer: nn.Module, activation: Optional[nn.Module]) -> nn.Module:
    """The separable layer merged into one standard convolution (``to_conv``), packed, ``activation`` fused."""
    dense = layer.to_conv().eval()
    if isinstance(dense, nn.Sequential):  # (pad, conv): padding oneDNN cannot express
        return nn.Sequential(dense[0], PackedConv2d(dense[1], activation))
    return PackedConv2d(dense, activation)


def _replace_separable(model: nn.Module, qualified: str, layer: nn.Module, pw_act_site: Optional[tuple],
                       inputs: dict[int, torch.Tensor], measure: bool, rounds: int,
                       fuse_activations: bool) -> Optional[tuple[str, str]]:
    """Run one separable layer on its fastest engine, in place; (depthwise, pointwise) choices, or None if skipped.

    Engines: ``eager`` (as it is), ``packed`` (each step a :class:`PackedConv2d`),
    ``fused`` (:class:`~sepconv.backends.fused.FusedSeparableConv2d`) and, when
    nothing nonlinear sits between the steps, ``dense``: the layer merged into
    one standard convolution, which is faster where the depthwise step's fixed
    costs outweigh the MACs saved (few input channels). Without ``measure``
    the fused kernel is used.
    """
    dw_act = layer.dw_act if not is_identity(layer.dw_act) else None
    pw_act = getattr(*pw_act_site) if pw_act_site else None
    if fusable(layer.depthwise, layer.pointwise) is not None or (dw_act is not None and not fuse_activations):
        return None
    whole = {"fused": FusedSeparableConv2d(layer.depthwise, layer.pointwise, dw_act, pw_act, pad=layer.pad)}
    choice = "fused"
    if measure:
        x = inputs.get(id(layer))
        if x is None:
            return None
        packed_dw, packed_pw = PackedConv2d(layer.depthwise, dw_act), PackedConv2d(layer.pointwise, pw_act)
        calls = {
            # eager: the layer as it is, plus the following activation when that one sits outside the layer
            "eager": _eager_call(layer, pw_act if pw_act is not None and pw_act_site[0] is not layer else None, x),
            "packed": inference_call(nn.Sequential(layer.pad, packed_dw, packed_pw), x),
            "fused": inference_call(whole["fused"], x),
        }
        if dw_act is None and hasattr(layer, "to_conv"):
            whole["dense"] = _dense_module(layer, pw_act)
            calls["dense"] = inference_call(whole["dense"], x)
        choice = _fastest(calls, rounds, x)
        if choice == "packed":
            layer.depthwise, layer.pointwise = packed_dw, packed_pw
    if choice in whole:
        if qualified:  # the whole layer becomes one module: no per-call input checks or Identity steps left
            parent_name, _, child = qualified.rpartition(".")
            setattr(model.get_submodule(parent_name), child, whole[choice])
        else:  # the model is the layer itself: the new module pads, so the layer no longer does
            layer.pad, layer.depthwise, layer.pointwise = nn.Identity(), whole[choice], nn.Identity()
    if choice == "eager":
        return "eager", "eager"
    if dw_act is not None:
        layer.dw_act = nn.Identity()
    if pw_act is not None:
        setattr(pw_act_site[0], pw_act_site[1], nn.Identity())
    dw_suffix = "" if dw_act is None else "+" + type(dw_act).__name__.lower()
    pw_suffix = "" if pw_act is None else "+" + type(pw_act).__name__.lower()
    return choice + dw_suffix, choice + pw_suffix


def _separable_units(sites: list) -> list:
    """(layer, depthwise site, pointwise site) for each 2D separable layer whose steps are both packable sites.

    A site here is (conv, name, activation site). Normalizations must be
    Identity (folded) on both steps, and the depthwise activation fusable or
    Identity.
    """
    by_layer: dict[int, dict] = {}
    for parent, name, act_site in sites:
        if isinstance(parent, SeparableConvNd) and parent._ndim == 2:
            by_layer.setdefault(id(parent), {"layer": parent})[name] = (getattr(parent, name), name, act_site)
    units = []
    for entry in by_layer.values():
        layer = entry["layer"]
        if "depthwise" not in entry or "pointwise" not in entry:
            continue
        if not (is_identity(layer.dw_norm) and is_identity(layer.pw_norm)):
            continue
        if not (is_identity(layer.dw_act) or type(layer.dw_act) in FUSABLE_ACTIVATIONS):
            continue
        units.append((layer, entry["depthwise"], entry["pointwise"]))
    return units


def _eager_call(layer: nn.Module, tail: Optional[nn.Module], x: torch.Tensor):
    eager = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    return inference_call(nn.Sequential(eager, tail if tail is not None else nn.Identity()), x)


def _fastest(calls: dict, rounds: int, sample: torch.Tensor) -> str:
    return fastest_call(calls, sample, rounds, target_s=0.005)[0]


def _unavailable(sample: torch.Tensor) -> Optional[str]:
    if sample.device.type != "cpu" or sample.dtype != torch.float32 or sample.dim() != 4:
        return f"needs a 4D float32 CPU sample_input, got a {sample.dim()}D {sample.dtype} one on {sample.device}"
    if not onednn_available():
        return "this PyTorch build lacks the oneDNN (mkldnn) convolution operators"
    return None


def _applies(model: nn.Module) -> bool:
    return any(packable(m) for m in model.modules())


def _whole_layer(model: nn.Module) -> nn.Module:
    """The module that now runs all of ``model``, when ``model`` is a separable layer whose steps
    :func:`pack_convolutions` replaced by one module (its other children left as Identity); else ``model``.

    A layer inside a network is replaced in its parent; the model itself cannot be, so without this its
    call would still pass through the layer's input check and its six Identity children."""
    if not isinstance(model, SeparableConvNd):
        return model
    rest = ("pad", "dw_norm", "dw_act", "pointwise", "pw_norm", "pw_act")
    return model.depthwise if all(is_identity(getattr(model, name)) for name in rest) else model


def _build(context: BuildContext) -> dict[str, Candidate]:
    packed = copy.deepcopy(context.base).to(memory_format=torch.channels_last)
    choices = pack_convolutions(packed, context.sample.contiguous(memory_format=torch.channels_last),
                                measure=context.measure)
    return {"onednn": Candidate(_whole_layer(packed), torch.channels_last, "onednn", choices)}


ENGINE = InferenceEngine(
    name="onednn", summary="PyTorch in channels-last with each 2D convolution (or separable layer) on the fastest of "
                           "eager, packed oneDNN, the fused CPU kernel and the merged dense convolution",
    default=True, unavailable=_unavailable, applies=_applies, build=_build)
