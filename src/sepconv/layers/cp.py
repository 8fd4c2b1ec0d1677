"""CP-decomposed 2D convolution: 1x1, k_h x 1 depthwise, 1 x k_w depthwise, 1x1 (Lebedev et al. 2015)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple, PaddingArg, check_positive_int, cp_stage_specs
from ._common import ComposedConvMixin, check_input, conv_module, init_linear_stages, raise_if_kernel_too_large


class CPConv2d(ComposedConvMixin, nn.Module):
    """A 2D convolution whose kernel is a rank-``R`` CP (canonical polyadic) tensor.

    ``input -> first (1x1, C_in -> R) -> [pad_h] -> vertical (k_h x 1, depthwise)
    -> [pad_w] -> horizontal (1 x k_w, depthwise) -> last (1x1, R -> C_out)``

    The equivalent standard kernel is
    ``W[n, c, i, j] = sum_r L[n, r] V[r, i] H[r, j] F[r, c]``
    (Lebedev, Ganin, Rakhuba, Oseledets & Lempitsky, "Speeding-up Convolutional
    Neural Networks Using Fine-tuned CP-Decomposition", ICLR 2015). It costs
    ``R (C_in + k_h + k_w + C_out)`` weights instead of ``C_out C_in k_h k_w``.
    Padding, stride and dilation are split by axis as in
    :class:`SpatiallySeparableConv2d`; the bias is added by ``last``. The
    weights for a given kernel come from
    :func:`sepconv.factorize.cp_factorize` (ALS, via tensorly).

    Initialization: all four stages variance-preserving (nothing nonlinear
    sits between them).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        rank: int,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        self.rank = check_positive_int(rank, "rank")
        #: The standard convolution this layer replaces.
        self.spec = ConvSpec.make(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias, ndim=2)
        first, vertical, horizontal, last = cp_stage_specs(self.spec, self.rank)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.padding_mode = padding_mode
        self.first, _ = conv_module(first, "zeros", device, dtype)
        self.vertical, pad_h = conv_module(vertical, padding_mode, device, dtype)
        self.horizontal, pad_w = conv_module(horizontal, padding_mode, device, dtype)
        self.pad_h = pad_h if pad_h is not None else nn.Identity()
        self.pad_w = pad_w if pad_w is not None else nn.Identity()
        self.last, _ = conv_module(last, "zeros", device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize the four stages (variance-preserving, see the class docstring)."""
        init_linear_stages(self.first, self.vertical, self.horizontal, self.last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, 2, self.in_channels)
        try:
            y = self.vertical(self.pad_h(self.first(x)))
            return self.last(self.horizontal(self.pad_w(y)))
        except RuntimeError as error:
            raise_if_kernel_too_large(self.spec, x.shape, error, self.padding_mode)
            raise

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, k_h, k_w)`` kernel ``sum_r L[n, r] V[r, i] H[r, j] F[r, c]``."""
        f = self.first.weight[:, :, 0, 0]  # (R, C_in)
        v = self.vertical.weight[:, 0, :, 0]  # (R, k_h)
        h = self.horizontal.weight[:, 0, 0, :]  # (R, k_w)
        last = self.last.weight[:, :, 0, 0]  # (C_out, R)
        return torch.einsum("nr,rc,ri,rj->ncij", last, f, v, h)

    def dense_bias(self) -> Optional[torch.Tensor]:
        """Bias of the equivalent standard convolution (the last step's)."""
        return self.last.bias

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={s.kernel_size}, rank={self.rank}, "
                f"stride={s.stride}, padding={s.padding!r}, dilation={s.dilation}")
