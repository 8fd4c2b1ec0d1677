"""The pointwise-then-depthwise order ("blueprint separable", BSConv-U): a 1x1 step, then a per-output-channel filter."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple, PaddingArg, blueprint_stage_specs, check_positive_int
from ._common import (
    ComposedConvMixin,
    check_input,
    conv_module,
    grouped_to_dense,
    init_linear_stages,
    raise_if_kernel_too_large,
)


class _BlueprintSeparableConvNd(ComposedConvMixin, nn.Module):
    """Shared implementation of :class:`BlueprintSeparableConv1d`, ``2d`` and ``3d``.

    ``input -> pointwise -> [pad] -> depthwise``

    The order of a depthwise separable convolution reversed (Haase & Amthor,
    "Rethinking Depthwise Separable Convolutions: How Intra-Kernel
    Correlations Lead to Improved MobileNets", CVPR 2020, BSConv-U):
    ``pointwise`` is a 1x1 ``nn.Conv*d`` from ``C_in`` to
    ``C_out * depth_multiplier`` channels; ``depthwise`` is an ``nn.Conv*d``
    with ``groups = C_out`` from those channels to ``C_out`` that carries the
    kernel size, stride, dilation, padding and the bias. With multiplier M,
    output channel ``n`` sees ``W[n, c] = sum_m PW[n*M + m, c] DW[n, m]``: each
    ``C_in x prod(k)`` slice ``W[n]`` has rank <= M (the depthwise-first order
    constrains the ``C_out x prod(k)`` slices per *input* channel instead).
    The optimal weights for a given kernel are
    :func:`sepconv.factorize.blueprint_factorize`.

    Initialization: both stages variance-preserving (nothing nonlinear sits
    between them; see :func:`sepconv.layers._common.init_linear_stages`).
    """

    _ndim: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        depth_multiplier: int = 1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        multiplier = check_positive_int(depth_multiplier, "depth_multiplier")
        #: The standard convolution this layer replaces (same shapes and padding).
        self.spec = ConvSpec.make(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias,
                                  ndim=self._ndim)
        pw_spec, dw_spec = blueprint_stage_specs(self.spec, multiplier)
        self.in_channels, self.out_channels, self.depth_multiplier = in_channels, out_channels, multiplier
        self.padding_mode = padding_mode
        self.pointwise, _ = conv_module(pw_spec, "zeros", device, dtype)
        depthwise, pad = conv_module(dw_spec, padding_mode, device, dtype)
        self.pad = pad if pad is not None else nn.Identity()
        self.depthwise = depthwise
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize both stages (variance-preserving, see the class docstring)."""
        init_linear_stages(self.pointwise, self.depthwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self._ndim, self.in_channels)
        try:
            return self.depthwise(self.pad(self.pointwise(x)))
        except RuntimeError as error:
            raise_if_kernel_too_large(self.spec, x.shape, error, self.padding_mode)
            raise

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, *kernel)`` kernel ``W[n, c] = sum_m PW[n*M + m, c] * DW[n, m]``."""
        dw = grouped_to_dense(self.depthwise.weight, self.out_channels)  # (C_out, C_out*M, *k)
        pw = self.pointwise.weight.flatten(1)  # (C_out*M, C_in)
        return torch.einsum("om...,mc->oc...", dw, pw)

    def dense_bias(self) -> Optional[torch.Tensor]:
        """Bias of the equivalent standard convolution (the depthwise step's)."""
        return self.depthwise.bias

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={s.kernel_size}, stride={s.stride}, "
                f"padding={s.padding!r}, dilation={s.dilation}, depth_multiplier={self.depth_multiplier}")


class BlueprintSeparableConv1d(_BlueprintSeparableConvNd):
    """Pointwise-then-depthwise 1D convolution. ``(N, C_in, L)`` -> ``(N, C_out, L_out)``."""

    _ndim = 1


class BlueprintSeparableConv2d(_BlueprintSeparableConvNd):
    """Pointwise-then-depthwise 2D convolution. ``(N, C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``."""

    _ndim = 2


class BlueprintSeparableConv3d(_BlueprintSeparableConvNd):
    """Pointwise-then-depthwise 3D convolution. ``(N, C_in, D, H, W)`` -> ``(N, C_out, D', H', W')``."""

    _ndim = 3
