"""Depthwise convolutions: one spatial filter (or ``depth_multiplier`` filters) per input channel."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple, PaddingArg, check_positive_int
from ._common import check_input, dense_conv, grouped_to_dense, raise_if_kernel_too_large, split_padding


class _DepthwiseConvNd:
    """Shared implementation of :class:`DepthwiseConv1d`, ``2d`` and ``3d``.

    A depthwise convolution is ``nn.Conv*d`` with ``groups = in_channels`` and
    ``out_channels = depth_multiplier * in_channels``. Output channel
    ``c * M + m`` is input channel ``c`` filtered by its ``m``-th filter (the
    channel order of Keras' ``DepthwiseConv2D`` and of PyTorch's grouped conv).
    These classes *are* ``nn.Conv*d`` (subclasses), so every tool that handles
    convolutions handles them; they add 'same' padding for any stride,
    ``depth_multiplier`` and clear errors.

    ``out_channels`` may be given instead of ``depth_multiplier`` (it must
    be a multiple of ``in_channels``).

    Initialization is PyTorch's default for ``nn.Conv*d`` (Kaiming-uniform
    with ``a = sqrt(5)`` over the fan-in ``prod(kernel_size)``).
    """

    _ndim: int

    def __init__(
        self,
        in_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        out_channels: Optional[int] = None,
    ) -> None:
        check_positive_int(in_channels, "in_channels")
        multiplier = check_positive_int(depth_multiplier, "depth_multiplier")
        if out_channels is not None:  # nn.Conv*d-style: out_channels = in_channels * depth_multiplier
            out = check_positive_int(out_channels, "out_channels")
            if out % in_channels or (depth_multiplier != 1 and out != in_channels * multiplier):
                raise ValueError(
                    f"out_channels={out_channels} must equal in_channels * depth_multiplier "
                    f"({in_channels} * {depth_multiplier} = {in_channels * multiplier}) for a depthwise convolution"
                    + ("" if depth_multiplier != 1 else f"; valid values are multiples of in_channels={in_channels}")
                )
            multiplier = out // in_channels
        spec = ConvSpec.make(
            in_channels, in_channels * multiplier, kernel_size, stride, padding, dilation,
            groups=in_channels, bias=bias, ndim=self._ndim,
        )
        conv_padding, pad = split_padding(spec, padding_mode)
        super().__init__(  # type: ignore[call-arg]
            spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
            padding=conv_padding, dilation=spec.dilation, groups=spec.groups, bias=bias,
            padding_mode=padding_mode if pad is None else "zeros", device=device, dtype=dtype,
        )
        self.spec = spec
        self.depth_multiplier = multiplier
        self.pad = pad
        #: The padding mode as given by the user (the conv's own is 'zeros' when ``pad`` pads).
        self.spatial_padding_mode = padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self._ndim, self.in_channels)  # type: ignore[arg-type]
        padded = x if self.pad is None else self.pad(x)
        try:
            return self._conv_forward(padded, self.weight, self.bias)  # type: ignore[attr-defined]
        except RuntimeError as error:
            raise_if_kernel_too_large(self.spec, x.shape, error, self.spatial_padding_mode)
            raise

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C*M, C, *kernel)`` standard-convolution kernel that computes the same output."""
        return grouped_to_dense(self.weight, self.in_channels)  # type: ignore[attr-defined]

    def to_conv(self) -> nn.Module:
        """An equivalent standard convolution (``groups=1``) with the dense kernel, as a new module."""
        spec = dataclasses.replace(self.spec, groups=1)
        bias = None if self.bias is None else self.bias.detach()  # type: ignore[attr-defined]
        return dense_conv(spec, self.to_dense_weight().detach(), bias, self.spatial_padding_mode)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, kernel_size={self.spec.kernel_size}, stride={self.spec.stride}, "  # type: ignore[attr-defined]
            f"padding={self.spec.padding!r}, dilation={self.spec.dilation}, "
            f"depth_multiplier={self.depth_multiplier}, bias={self.bias is not None}"  # type: ignore[attr-defined]
        )


class DepthwiseConv1d(_DepthwiseConvNd, nn.Conv1d):
    """Depthwise 1D convolution. Input ``(N, C, L)`` -> output ``(N, C*M, L_out)``."""

    _ndim = 1


class DepthwiseConv2d(_DepthwiseConvNd, nn.Conv2d):
    """Depthwise 2D convolution. Input ``(N, C, H, W)`` -> output ``(N, C*M, H_out, W_out)``.

    Example::

        >>> layer = DepthwiseConv2d(8, 3, padding="same", depth_multiplier=2)
        >>> layer(torch.randn(1, 8, 16, 16)).shape
        torch.Size([1, 16, 16, 16])
    """

    _ndim = 2


class DepthwiseConv3d(_DepthwiseConvNd, nn.Conv3d):
    """Depthwise 3D convolution. Input ``(N, C, D, H, W)`` -> output ``(N, C*M, D_out, H_out, W_out)``."""

    _ndim = 3
