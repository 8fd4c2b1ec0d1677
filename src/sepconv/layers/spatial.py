"""Spatially separable convolutions: a k_h x 1 convolution followed by a 1 x k_w convolution."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple, PaddingArg, spatial_stage_specs
from ._common import (
    ComposedConvMixin,
    LayerSpec,
    check_input,
    conv_module,
    init_linear_stages,
    is_identity,
    make_activation,
    make_norm,
    raise_if_kernel_too_large,
)


class SpatiallySeparableConv2d(ComposedConvMixin, nn.Module):
    """A ``k_h x 1`` convolution to ``rank`` channels, then a ``1 x k_w`` convolution.

    ``input -> [pad_h] -> vertical -> mid_norm -> mid_act -> [pad_w] -> horizontal``

    The equivalent standard kernel is
    ``W[n, c, i, j] = sum_r H[n, r, j] * V[r, c, i]``: a sum of ``rank``
    separable terms. For one input and one output channel, ``rank=1`` is the
    Sobel factorization of the seeds (``[1, 2, 1]^T x [-1, 0, 1]``). In
    general the layer computes exactly the kernels whose unfolding
    ``W[(c, i), (n, j)]`` (a ``(C_in*k_h) x (C_out*k_w)`` matrix) has rank at
    most ``rank`` (Jaderberg, Vedaldi & Zisserman, "Speeding up Convolutional
    Neural Networks with Low Rank Expansions", 2014, scheme 2); the best such
    kernel is a truncated SVD (:mod:`sepconv.factorize`). The default
    ``rank = min(in_channels, out_channels)``.

    Padding, stride and dilation are split by axis: the vertical step pads,
    strides and dilates along H only, the horizontal step along W only, so
    'same' (TF semantics, any stride) and every ``padding_mode`` give exactly
    the output of the dense kernel. The single ``bias`` is added after the
    horizontal step.

    Initialization: both weights variance-preserving for a linear map
    (``kaiming_uniform_(nonlinearity="linear")``, i.e. ``U(±sqrt(3 / fan_in))``),
    so the composed kernel has variance ``1 / (C_in k_h k_w)``; the bias as
    PyTorch's default for the horizontal ``nn.Conv2d``. PyTorch's default
    for each stage (variance ``1 / (3 fan_in)``) would pass only 1/9 of the
    input variance through the layer where a standard convolution passes 1/3,
    which can leave a deep stack at chance for its first epochs
    (see "initialization" in ``docs/compare.md``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        rank: Optional[int] = None,
        bias: bool = True,
        padding_mode: str = "zeros",
        mid_norm: LayerSpec = None,
        mid_act: LayerSpec = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        #: The standard convolution this layer replaces.
        self.spec = ConvSpec.make(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias, ndim=2)
        v_spec, h_spec = spatial_stage_specs(self.spec, rank)
        r = v_spec.out_channels
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, r
        self.padding_mode = padding_mode
        vertical, pad1 = conv_module(v_spec, padding_mode, device, dtype)
        horizontal, pad2 = conv_module(h_spec, padding_mode, device, dtype)
        self.pad_h = pad1 if pad1 is not None else nn.Identity()
        self.vertical = vertical
        self.mid_norm = make_norm(mid_norm, r, 2, "mid_norm", device, dtype)
        self.mid_act = make_activation(mid_act, "mid_act")
        self.pad_w = pad2 if pad2 is not None else nn.Identity()
        self.horizontal = horizontal
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize both stages' weights (variance-preserving, see the class docstring) and the bias."""
        init_linear_stages(self.vertical, self.horizontal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, 2, self.in_channels)
        try:
            y = self.vertical(self.pad_h(x))
            y = self.mid_act(self.mid_norm(y))
            return self.horizontal(self.pad_w(y))
        except RuntimeError as error:
            raise_if_kernel_too_large(self.spec, x.shape, error, self.padding_mode)
            raise

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, k_h, k_w)`` kernel ``sum_r H[n, r, j] V[r, c, i]``."""
        if not (is_identity(self.mid_norm) and is_identity(self.mid_act)):
            raise ValueError(
                "SpatiallySeparableConv2d has normalization/activation between its two steps, so no "
                "single standard convolution is equivalent; build it with mid_norm=None and mid_act=None"
            )
        v = self.vertical.weight[..., 0]  # (R, C_in, k_h)
        h = self.horizontal.weight[:, :, 0, :]  # (C_out, R, k_w)
        return torch.einsum("nrj,rci->ncij", h, v)

    def dense_bias(self) -> Optional[torch.Tensor]:
        """Bias of the equivalent standard convolution (the horizontal step's)."""
        return self.horizontal.bias

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={s.kernel_size}, stride={s.stride}, "
            f"padding={s.padding!r}, dilation={s.dilation}, rank={self.rank}"
        )
