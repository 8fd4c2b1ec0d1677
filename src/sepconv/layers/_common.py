"""Pieces shared by every sepconv layer: padding, factories, input checks."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import PADDING_MODES, ConvSpec, Pads, is_symmetric, same_pads_1d, torch_pad_arg

CONV_CLASSES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_F_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}

#: A normalization or activation choice: None (skip), a name, a class or a
#: callable (e.g. ``functools.partial``) that returns a module.
LayerSpec = Union[None, str, Callable[..., nn.Module]]


def check_padding_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


#: Padding modes that read the input itself, and how large a pad they allow: reflect needs pad < size,
#: circular pad <= size (it wraps around at most once).
_PAD_LIMITS = {"reflect": 1, "circular": 0}


def _check_pad_fits(shape: torch.Size, flat: tuple[int, ...], mode: str) -> None:
    """Raise ``ValueError`` when ``flat`` (``F.pad`` order: last dimension first) is too large for ``mode``."""
    slack = _PAD_LIMITS[mode]
    for i in range(len(flat) // 2):
        size, before, after = int(shape[-1 - i]), flat[2 * i], flat[2 * i + 1]
        if max(before, after) > size - slack:
            raise ValueError(f"padding_mode={mode!r} pads ({before}, {after}) along a dimension of size {size} of input "
                             f"{tuple(shape)}; {mode} padding must be {'smaller than' if slack else 'at most'} the "
                             f"input size: use a larger input, less padding, or padding_mode='zeros'")


class Pad(nn.Module):
    """Pads the spatial dimensions of its input for a following convolution.

    Static padding (``pads`` given) is applied as is. Dynamic padding
    (``spec.padding == 'same'`` with a stride > 1) is computed from the input
    size by :meth:`ConvSpec.pads`, so the output size is ``ceil(in / stride)``
    with the extra pixel at the end (TensorFlow/Keras semantics).
    """

    def __init__(self, spec: ConvSpec, padding_mode: str = "zeros", pads: Optional[Pads] = None):
        super().__init__()
        self.spec = spec
        self.mode = _F_PAD_MODE[check_padding_mode(padding_mode)]
        self.pads = pads
        self._flat = torch_pad_arg(pads) if pads is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flat
        if flat is None:
            size = x.shape[-self.spec.ndim :]
            flat = torch_pad_arg(
                tuple(
                    same_pads_1d(int(n), k, s, d)
                    for n, k, s, d in zip(size, self.spec.kernel_size, self.spec.stride, self.spec.dilation)
                )
            )
        if not any(flat):
            return x
        if self.mode in _PAD_LIMITS:
            _check_pad_fits(x.shape, flat, self.mode)
        return F.pad(x, flat, mode=self.mode)

    def extra_repr(self) -> str:
        if self.pads is None:
            return f"'same' (dynamic, stride={self.spec.stride}), mode={self.mode!r}"
        return f"{self.pads}, mode={self.mode!r}"


def split_padding(spec: ConvSpec, padding_mode: str) -> tuple[tuple[int, ...], Optional[Pad]]:
    """Decide who pads: the convolution itself, or a :class:`Pad` before it.

    Symmetric static padding goes to the convolution (``padding=`` and
    ``padding_mode=``), so the conv is exactly what ``nn.Conv*d`` would be.
    Asymmetric static padding (e.g. 'same' with an even kernel) and dynamic
    padding ('same' with stride > 1) get a :class:`Pad` module and the
    convolution gets ``padding=0``.
    """
    pads = spec.static_pads
    if pads is not None and is_symmetric(pads):
        return tuple(p[0] for p in pads), None
    return (0,) * spec.ndim, Pad(spec, padding_mode, pads)


def conv_module(
    spec: ConvSpec,
    padding_mode: str = "zeros",
    device: Any = None,
    dtype: Any = None,
) -> tuple[nn.Module, Optional[Pad]]:
    """Build the plain ``nn.Conv*d`` for ``spec`` and, when needed, its :class:`Pad`."""
    conv_padding, pad = split_padding(spec, padding_mode)
    conv = CONV_CLASSES[spec.ndim](
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        stride=spec.stride,
        padding=conv_padding,
        dilation=spec.dilation,
        groups=spec.groups,
        bias=spec.bias,
        padding_mode=padding_mode if pad is None else "zeros",
        device=device,
        dtype=dtype,
    )
    return conv, pad


def dense_conv(spec: ConvSpec, weight: torch.Tensor, bias: Optional[torch.Tensor], padding_mode: str) -> nn.Module:
    """A standard convolution module computing ``spec`` with the given dense kernel.

    Returns a plain ``nn.Conv*d`` when the padding allows it, else
    ``nn.Sequential(Pad, nn.Conv*d)``.
    """
    conv, pad = conv_module(spec, padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv if pad is None else nn.Sequential(pad, conv)


_NORMS: dict[str, dict[int, type[nn.Module]]] = {
    "batchnorm": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instancenorm": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}
_NORMS["bn"] = _NORMS["batchnorm"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": functools.partial(nn.ReLU, inplace=True),
    "relu6": functools.partial(nn.ReLU6, inplace=True),
    "silu": functools.partial(nn.SiLU, inplace=True),
    "swish": functools.partial(nn.SiLU, inplace=True),
    "hardswish": functools.partial(nn.Hardswish, inplace=True),
    "gelu": nn.GELU,
    "elu": functools.partial(nn.ELU, inplace=True),
    "leakyrelu": functools.partial(nn.LeakyReLU, 0.01, inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def make_norm(norm: LayerSpec, num_features: int, ndim: int, name: str, device: Any = None, dtype: Any = None) -> nn.Module:
    """Build a normalization layer for ``num_features`` channels; None gives ``nn.Identity``.

    ``norm`` is a name (``'batchnorm'``/``'bn'``, ``'instancenorm'``), a class
    or a callable taking the number of features.
    """
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        key = norm.lower().replace("_", "")
        if key not in _NORMS:
            raise ValueError(f"{name} must be None, a callable or one of {sorted(_NORMS)}, got {norm!r}")
        module = _NORMS[key][ndim](num_features)
    elif callable(norm):
        module = norm(num_features)
    else:
        raise TypeError(f"{name} must be None, a string, a class or a callable, got {norm!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name}={norm!r} returned {type(module).__name__}, not an nn.Module")
    if device is not None or dtype is not None:
        module = module.to(device=device, dtype=dtype)
    return module


def make_activation(act: LayerSpec, name: str) -> nn.Module:
    """Build an activation layer; None gives ``nn.Identity``.

    ``act`` is a name (e.g. ``'relu'``, ``'relu6'``, ``'silu'``), a class or a
    callable taking no arguments.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        key = act.lower().replace("_", "")
        if key not in _ACTIVATIONS:
            raise ValueError(f"{name} must be None, a callable or one of {sorted(_ACTIVATIONS)}, got {act!r}")
        return _ACTIVATIONS[key]()
    if callable(act):
        module = act()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}={act!r} returned {type(module).__name__}, not an nn.Module")
        return module
    raise TypeError(f"{name} must be None, a string, a class or a callable, got {act!r}")


def check_input(module: nn.Module, x: torch.Tensor, ndim: int, in_channels: int) -> None:
    """Raise ``ValueError`` if ``x`` is not ``(N, C, *spatial)`` or ``(C, *spatial)`` with C = in_channels."""
    if x.dim() not in (ndim + 1, ndim + 2) or x.shape[-ndim - 1] != in_channels:
        raise ValueError(
            f"{type(module).__name__} expects input of shape (N, {in_channels}, {', '.join('DHW'[-ndim:])}) "
            f"or ({in_channels}, {', '.join('DHW'[-ndim:])}), got {tuple(x.shape)}"
        )


def is_identity(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity)


def grouped_to_dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Expand a grouped-convolution weight ``(O, I/g, *k)`` to the dense ``(O, I, *k)``.

    Output channel ``o`` belongs to group ``o // (O / g)`` and only sees that
    group's input channels; every other entry of the dense kernel is zero.
    """
    if groups == 1:
        return weight
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    out_per_group = out_ch // groups
    dense = weight.new_zeros((out_ch, in_per_group * groups, *weight.shape[2:]))
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * in_per_group : (g + 1) * in_per_group] = weight[rows]
    return dense


def raise_if_kernel_too_large(spec: ConvSpec, input_shape: Any, error: RuntimeError,
                              padding_mode: str = "zeros") -> None:
    """Turn PyTorch's RuntimeError for a too-small input into a clear ValueError, else re-raise.

    Two causes are named: a (padded, dilated) kernel larger than the input,
    and reflect/circular padding wider than the input it reflects or wraps.
    Called only after a convolution failed, so the check costs nothing on
    the normal path.
    """
    spatial = tuple(input_shape)[-spec.ndim :]
    spec.output_size(spatial)  # raises ValueError naming the sizes
    if padding_mode in _PAD_LIMITS:
        _check_pad_fits(torch.Size(input_shape), tuple(torch_pad_arg(spec.pads(spatial))), padding_mode)
    raise error


def init_linear_stages(*convs: nn.Module) -> None:
    """Initialize a chain of convolutions with nothing nonlinear between them so the chain preserves variance.

    Each weight gets ``kaiming_uniform_(nonlinearity="linear")`` (variance
    ``1 / fan_in``), so the composed kernel has variance ``1 / fan_in`` of the
    dense convolution it stands for; biases keep PyTorch's default. With
    PyTorch's default per stage (variance ``1 / (3 fan_in)``) a chain of s
    stages would pass ``3^-s`` of the input variance where one standard
    convolution passes 1/3 (see ``SpatiallySeparableConv2d``).
    """
    for conv in convs:
        conv.reset_parameters()  # PyTorch's default, including the bias
        nn.init.kaiming_uniform_(conv.weight, nonlinearity="linear")


class ComposedConvMixin:
    """For layers whose stages compose into one standard convolution: :meth:`to_conv` from the layer's
    ``to_dense_weight()`` and ``dense_bias()`` (which each layer defines), its ``spec`` and ``padding_mode``."""

    spec: ConvSpec
    padding_mode: str
    to_dense_weight: Callable[[], torch.Tensor]
    dense_bias: Callable[[], Optional[torch.Tensor]]

    def to_conv(self) -> nn.Module:
        """A new standard convolution module (with a pad module if needed) computing the same output.

        Normalization or activation *after* the last stage is not included: append it if present.
        """
        bias = self.dense_bias()
        return dense_conv(self.spec, self.to_dense_weight().detach(), None if bias is None else bias.detach(),
                          self.padding_mode)
