"""Pointwise (1x1) convolutions: the channel-mixing step of a separable convolution."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple
from ._common import check_input, grouped_to_dense


class _PointwiseConvNd:
    """Shared implementation of :class:`PointwiseConv1d`, ``2d`` and ``3d``.

    ``nn.Conv*d`` with ``kernel_size=1`` (a subclass, so every tool sees an
    ordinary convolution): each output pixel is a linear map of the input
    channels at the same position. ``stride`` subsamples (as in a ResNet
    shortcut); ``groups`` gives a grouped pointwise convolution (ShuffleNet).
    Initialization is PyTorch's default for ``nn.Conv*d`` (fan-in
    ``in_channels / groups``).
    """

    _ndim: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        stride: IntOrTuple = 1,
        groups: int = 1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        spec = ConvSpec.make(in_channels, out_channels, 1, stride, 0, 1, groups=groups, bias=bias, ndim=self._ndim)
        super().__init__(  # type: ignore[call-arg]
            spec.in_channels, spec.out_channels, 1, stride=spec.stride, groups=spec.groups,
            bias=bias, device=device, dtype=dtype,
        )
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self._ndim, self.in_channels)  # type: ignore[attr-defined]
        return self._conv_forward(x, self.weight, self.bias)  # type: ignore[attr-defined]

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, 1, ...)`` kernel of the equivalent ``groups=1`` convolution."""
        return grouped_to_dense(self.weight, self.groups)  # type: ignore[attr-defined]


class PointwiseConv1d(_PointwiseConvNd, nn.Conv1d):
    """Pointwise 1D convolution. Input ``(N, C_in, L)`` -> output ``(N, C_out, L)``."""

    _ndim = 1


class PointwiseConv2d(_PointwiseConvNd, nn.Conv2d):
    """Pointwise 2D convolution. Input ``(N, C_in, H, W)`` -> output ``(N, C_out, H, W)``."""

    _ndim = 2


class PointwiseConv3d(_PointwiseConvNd, nn.Conv3d):
    """Pointwise 3D convolution. Input ``(N, C_in, D, H, W)`` -> output ``(N, C_out, D, H, W)``."""

    _ndim = 3
