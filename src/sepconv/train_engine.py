"""A training engine for 1x1 convolutions, chosen per layer by measurement (``tune_training``).

Why (measured on this project's CPU, ``benchmarks/README.md``): a separable
layer's training step is dominated by its pointwise (1x1) step's backward
pass, which eager PyTorch runs poorly on some shapes: at batch 1 on one
thread it takes the ``_slow_conv2d`` path (im2col + a oneMKL GEMM at the
AVX2 rate on this AMD CPU); at batch 32 oneDNN's backward-weights kernel ran
at 58 GFLOP/s. A 1x1 convolution is a matrix product, so :class:`Pointwise1x1`
computes it as one: forward and input gradient as oneDNN 1x1 convolutions in
channels-last (``torch.mkldnn_convolution``), weight gradient as one
``torch.mm`` over all pixels. That is faster on some layers and slower on
others, so :func:`tune_training` times both on each layer's own input shape
and keeps the faster; nothing changes where eager PyTorch wins.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution; float32 CPU inputs go to oneDNN in channels-last (PyTorch's own choice can be im2col)."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.mkldnn_convolution(x, weight.contiguous(), bias, [0, 0], [1, 1], [1, 1], 1)
    return F.conv2d(x, weight, bias)


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N*H*W, C)`` (a view when ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class Pointwise1x1(torch.autograd.Function):
    """``y = conv1x1(x, weight) + bias`` with gradients computed as matrix products.

    ``grad_x = conv1x1(grad_y, weight^T)``, ``grad_weight = grad_y_pixels^T @ x_pixels``,
    ``grad_bias = sum of grad_y over pixels``. Any dtype and device (float32
    on the CPU uses oneDNN; the rest ``F.conv2d``); checked with
    ``gradcheck`` in float64.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv1x1(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        cout, cin = weight.shape[:2]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv1x1(grad_y, weight.reshape(cout, cin).t().reshape(cin, cout, 1, 1), None)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            gy = _pixels(grad_y.contiguous(memory_format=torch.channels_last))
            if ctx.needs_input_grad[1]:
                grad_w = torch.mm(gy.t(), _pixels(x.contiguous(memory_format=torch.channels_last)))
                grad_w = grad_w.reshape(weight.shape)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = gy.sum(0)
        return grad_x, grad_w, grad_b


class _GemmConvForward:
    """Placed on a 1x1 ``nn.Conv2d`` as its ``_conv_forward``: routes it through :class:`Pointwise1x1`.

    A module-level class (not a closure) so that the tuned model still
    deep-copies and pickles; ``untune_training`` removes it.
    """

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return Pointwise1x1.apply(x, weight, bias)

    def __repr__(self) -> str:
        return "sepconv.train_engine.Pointwise1x1"


def tunable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d`` (what :class:`Pointwise1x1` computes)."""
    return (isinstance(conv, nn.Conv2d) and not isinstance(conv, nn.ConvTranspose2d)
            and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and conv.groups == 1
            and not isinstance(conv.padding, str) and tuple(conv.padding) == (0, 0))


def use_gemm_engine(conv: nn.Module) -> None:
    """Route a :func:`tunable` convolution through :class:`Pointwise1x1` (what :func:`tune_training` does where
    it measures faster); :func:`untune_training` undoes it."""
    if not tunable(conv):
        raise ValueError(f"use_gemm_engine needs a 1x1, stride-1, unpadded, ungrouped nn.Conv2d, got {conv!r}")
    conv._conv_forward = _GemmConvForward()


def uses_gemm_engine(conv: nn.Module) -> bool:
    """True when :func:`tune_training` routed ``conv`` through :class:`Pointwise1x1`."""
    return isinstance(conv.__dict__.get("_conv_forward"), _GemmConvForward)


def untune_training(model: nn.Module) -> int:
    """Put every convolution :func:`tune_training` changed back on eager PyTorch; returns how many."""
    count = 0
    for module in model.modules():
        if uses_gemm_engine(module):
            del module.__dict__["_conv_forward"]
            count += 1
    return count


def tune_training(model: nn.Module, sample_input: torch.Tensor, *, rounds: int = 5) -> dict[str, str]:
    """Choose, per 1x1 convolution of ``model``, the faster training engine; in place. Returns the choices.

    Each :func:`tunable` convolution is timed forward+backward on random
    data of its own input shape and memory format (taken from one forward
    pass of ``sample_input`` through a copy of the model, so BatchNorm
    statistics are untouched), as eager PyTorch (``'eager'``) and as
    :class:`Pointwise1x1` (``'gemm'``), in ``rounds`` interleaved rounds;
    where ``'gemm'`` is faster the convolution is routed through it. The
    parameters, ``state_dict`` and outputs are unchanged (to float
    tolerance); :func:`untune_training` undoes it. Choices hold for the
    measured shapes and thread count.
    """
    from .bench.timing import interleaved

    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    probe = copy.deepcopy(model).eval()
    names = {id(m): n for n, m in probe.named_modules()}
    shapes: dict[str, tuple[torch.Size, bool]] = {}
    def record(module: nn.Module, args: tuple) -> None:  # a pre-hook that returned a value would replace the input
        x = args[0]
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        shapes.setdefault(names[id(module)], (x.shape, channels_last))

    hooks = [m.register_forward_pre_hook(record) for m in probe.modules() if tunable(m)]
    try:
        with torch.no_grad():
            probe(sample_input)
    finally:
        for h in hooks:
            h.remove()
    choices: dict[str, str] = {}
    for name, module in model.named_modules():
        if not tunable(module) or name not in shapes:
            continue
        shape, channels_last = shapes[name]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        device, dtype = module.weight.device, module.weight.dtype
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
        eager = copy.deepcopy(module)
        eager.__dict__.pop("_conv_forward", None)
        gemm = copy.deepcopy(eager)
        use_gemm_engine(gemm)
        grad = torch.randn_like(eager(x).detach())

        def step(conv: nn.Module):
            def run():
                conv.zero_grad(set_to_none=True)
                x.grad = None
                conv(x).backward(grad)
            return run

        t = interleaved({"eager": step(eager), "gemm": step(gemm)}, rounds=rounds, target_s=0.01, device=device)
        choice = min(t, key=lambda k: t[k].median)
        if choice == "gemm":
            use_gemm_engine(module)
        else:
            module.__dict__.pop("_conv_forward", None)
        choices[name] = choice
    return choices
