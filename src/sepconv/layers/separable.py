"""Depthwise separable convolutions: a depthwise step followed by a pointwise step."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from ..geometry import ConvSpec, IntOrTuple, PaddingArg, check_positive_int, separable_stage_specs
from ._common import (
    ComposedConvMixin,
    LayerSpec,
    check_input,
    conv_module,
    grouped_to_dense,
    init_linear_stages,
    is_identity,
    make_activation,
    make_norm,
    raise_if_kernel_too_large,
)


class SeparableConvNd(ComposedConvMixin, nn.Module):
    """Shared implementation of :class:`SeparableConv1d`, ``2d`` and ``3d``.

    ``input -> [pad] -> depthwise -> dw_norm -> dw_act -> pointwise -> pw_norm -> pw_act``

    * ``depthwise`` is a plain ``nn.Conv*d`` with ``groups=in_channels`` and
      ``in_channels * depth_multiplier`` outputs (channel ``c*M + m``, as in
      Keras); it carries the kernel size, stride, dilation and padding.
    * ``pointwise`` is a plain 1x1 ``nn.Conv*d`` to ``out_channels``.
    * ``pad`` exists only when the padding cannot be done by the depthwise
      conv itself ('same' with an even kernel or with stride > 1).
    * Normalization and activation after each step are optional: ``None``
      skips (an ``nn.Identity`` stands in), or give a name (``'batchnorm'``,
      ``'relu'``, ``'relu6'``, ...), a class or a ``functools.partial``.
      ``Input -> DW -> BN -> ReLU -> PW -> BN -> ReLU`` is
      ``dw_norm='batchnorm', dw_act='relu', pw_norm='batchnorm', pw_act='relu'``;
      MobileNetV2's linear bottleneck is the same with ``pw_act=None``.
      The default, nothing between the two steps, is the quantization-friendly
      block of Sheng et al. 2018 (a BatchNorm there stretches the depthwise
      channels' ranges apart, which per-tensor int8 cannot follow).

    Bias: ``bias`` is the pointwise bias (Keras' ``SeparableConv2D`` has this
    single bias after the pointwise step); ``depthwise_bias`` adds one after
    the depthwise step. Without normalization or activation between the two
    steps the layer equals one standard convolution, returned by
    :meth:`to_dense_weight`, :meth:`dense_bias` and :meth:`to_conv`.

    Initialization: both steps variance-preserving
    (``kaiming_uniform_(nonlinearity="linear")``, variance ``1 / fan_in`` with
    fan-in ``prod(kernel_size)`` for the depthwise step and
    ``in_channels * depth_multiplier`` for the pointwise), so the composed
    kernel has variance ``1 / (C_in prod(k))``, about what Keras'
    ``SeparableConv2D`` (Glorot-uniform for both kernels) gives when
    ``C_in ~ C_out``; biases and norms keep PyTorch's defaults. PyTorch's
    default for each step would pass 1/9 of the input variance where a
    standard convolution passes 1/3, which can leave a deep stack at chance for
    its first epochs (see "initialization" in ``docs/compare.md``).
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
        depthwise_bias: bool = False,
        dw_norm: LayerSpec = None,
        dw_act: LayerSpec = None,
        pw_norm: LayerSpec = None,
        pw_act: LayerSpec = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        multiplier = check_positive_int(depth_multiplier, "depth_multiplier")
        #: The standard convolution this layer replaces (same shapes and padding).
        self.spec = ConvSpec.make(
            in_channels, out_channels, kernel_size, stride, padding, dilation,
            bias=bias or depthwise_bias, ndim=self._ndim,
        )
        dw_spec, pw_spec = separable_stage_specs(self.spec, multiplier, depthwise_bias)
        if not bias:  # the dense spec carries a bias if either stage has one; the pointwise has only its own
            pw_spec = dataclasses.replace(pw_spec, bias=False)
        depthwise, pad = conv_module(dw_spec, padding_mode, device, dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth_multiplier = multiplier
        self.padding_mode = padding_mode
        self.pad = pad if pad is not None else nn.Identity()
        self.depthwise = depthwise
        self.dw_norm = make_norm(dw_norm, dw_spec.out_channels, self._ndim, "dw_norm", device, dtype)
        self.dw_act = make_activation(dw_act, "dw_act")
        self.pointwise, _ = conv_module(pw_spec, "zeros", device, dtype)
        self.pw_norm = make_norm(pw_norm, out_channels, self._ndim, "pw_norm", device, dtype)
        self.pw_act = make_activation(pw_act, "pw_act")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialize both convolution steps (variance-preserving, see the class docstring)."""
        init_linear_stages(self.depthwise, self.pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self._ndim, self.in_channels)
        # a training engine that runs both steps as one (sepconv.tune_training's 'fused') is set on the instance
        steps = self.__dict__.get("_steps_engine")
        y = steps(self, x) if steps is not None else self._steps(x)
        return self.pw_act(self.pw_norm(y))

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        """``pad -> depthwise -> dw_norm -> dw_act -> pointwise``: the layer before its pointwise norm and
        activation."""
        try:
            y = self.depthwise(self.pad(x))
        except RuntimeError as error:
            raise_if_kernel_too_large(self.spec, x.shape, error, self.padding_mode)
            raise
        return self.pointwise(self.dw_act(self.dw_norm(y)))

    def _check_linear(self) -> None:
        if not (is_identity(self.dw_norm) and is_identity(self.dw_act)):
            raise ValueError(
                f"{type(self).__name__} has normalization/activation between its depthwise and "
                "pointwise steps, so no single standard convolution is equivalent; build it "
                "with dw_norm=None and dw_act=None to get a dense kernel"
            )

    def to_dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, *kernel)`` kernel of the equivalent standard convolution.

        ``W[n, c] = sum_m PW[n, c*M + m] * DW[c*M + m]``. Raises ``ValueError``
        if a normalization or activation sits between the two steps.
        """
        self._check_linear()
        dw = grouped_to_dense(self.depthwise.weight, self.in_channels)  # (C*M, C, *k)
        pw = self.pointwise.weight.flatten(1)  # (C_out, C*M)
        return torch.tensordot(pw, dw, dims=([1], [0]))

    def dense_bias(self) -> Optional[torch.Tensor]:
        """Bias of the equivalent standard convolution: ``PW @ b_dw + b_pw`` (None if neither)."""
        self._check_linear()
        pw = self.pointwise.weight.flatten(1)
        bias = self.pointwise.bias
        if self.depthwise.bias is not None:
            folded = pw @ self.depthwise.bias
            bias = folded if bias is None else bias + folded
        return bias

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={s.kernel_size}, stride={s.stride}, "
            f"padding={s.padding!r}, dilation={s.dilation}, depth_multiplier={self.depth_multiplier}"
        )


class SeparableConv1d(SeparableConvNd):
    """Depthwise separable 1D convolution. ``(N, C_in, L)`` -> ``(N, C_out, L_out)``."""

    _ndim = 1


class SeparableConv2d(SeparableConvNd):
    """Depthwise separable 2D convolution. ``(N, C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``.

    Example (the seeds' 64-filter layer on an RGB image: 286 parameters
    instead of 1792, with Keras' single pointwise bias plus a depthwise
    bias)::

        >>> layer = SeparableConv2d(3, 64, 3, padding="same", depthwise_bias=True)
        >>> sum(p.numel() for p in layer.parameters())
        286
    """

    _ndim = 2


class SeparableConv3d(SeparableConvNd):
    """Depthwise separable 3D convolution. ``(N, C_in, D, H, W)`` -> ``(N, C_out, D', H', W')``."""

    _ndim = 3
