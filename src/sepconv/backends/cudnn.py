"""cuDNN convolutions with their ReLU applied in the same kernel: the engine behind ``optimize``'s ``cudnn_relu``.

Why it exists: at moderate batch sizes a separable network on a large GPU
is bound by memory traffic, not arithmetic. Eager PyTorch writes each
convolution's output to device memory and then an in-place ReLU reads and
writes it again; ``torch.cudnn_convolution_relu`` (cuDNN's fused convolution
+ bias + activation) writes it once. On depthwise convolutions the same
fusion was slower in the GPU records (``docs/design-notes.md``), so
:func:`fuse_conv_relu` leaves depthwise convolutions alone unless asked.

:class:`CudnnConvReLU` calls cuDNN's operator for CUDA inputs in inference
(it has no backward); for CPU inputs, or when autograd needs gradients, it
computes the same function as ``relu(conv2d(x))`` with PyTorch's ordinary
operators, so a fused model still trains and runs anywhere.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .engine import BuildContext, Candidate, InferenceEngine, check_close
from .sites import conv_sites, plain_conv2d


def cudnn_fusable(conv: nn.Module) -> bool:
    """Whether :class:`CudnnConvReLU` can take ``conv``: an ``nn.Conv2d`` with integer, zero padding."""
    return plain_conv2d(conv)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


class CudnnConvReLU(nn.Module):
    """``relu(conv(x))`` for an ``nn.Conv2d`` ``conv``, as one cuDNN kernel on CUDA in inference.

    Shares ``conv``'s ``weight`` and ``bias`` parameters (same names, so a
    state dict loads into either). On CUDA with no gradient needed and the
    input in the weight's dtype it calls ``torch.cudnn_convolution_relu``;
    otherwise (CPU, autograd, autocast) ``F.relu(F.conv2d(...))``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not cudnn_fusable(conv):
            raise ValueError(f"CudnnConvReLU needs an nn.Conv2d with integer zero padding, got {conv!r}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                                  or (self.bias is not None and self.bias.requires_grad))
        if x.is_cuda and not needs_grad and x.dtype == self.weight.dtype:  # (under autocast they differ)
            return torch.cudnn_convolution_relu(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                                self.groups)
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups))

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, "
                f"groups={self.groups}, bias={self.bias is not None}")


def fuse_conv_relu(model: nn.Module, *, depthwise: bool = False) -> list[str]:
    """Replace, in place, each ``nn.Conv2d`` directly followed by an ``nn.ReLU`` by a :class:`CudnnConvReLU`.

    "Directly followed" is what :mod:`sepconv.backends.onednn` fuses on the CPU: the
    next non-Identity module of an ``nn.Sequential``, or a separable layer's
    ``dw_act``/``pw_act`` with an Identity norm between (fold BatchNorm first
    with :func:`sepconv.fold_batchnorm`: an unfolded BatchNorm in between
    leaves the pair alone). The ReLU becomes ``nn.Identity``. Depthwise
    convolutions are skipped unless ``depthwise=True`` (see the module's
    docstring); ReLU6 and other activations are
    not fused (cuDNN's operator applies ReLU only). Returns the qualified names
    of the convolutions replaced.
    """
    names = {id(m): n for n, m in model.named_modules()}
    fused = []
    for parent, name, site in conv_sites(model):
        conv = getattr(parent, name)
        if site is None or type(getattr(*site)) is not nn.ReLU or (_is_depthwise(conv) and not depthwise):
            continue
        setattr(parent, name, CudnnConvReLU(conv))
        setattr(site[0], site[1], nn.Identity())
        fused.append(names.get(id(conv), name))
    return fused


#: Sample dtypes cuDNN's fused convolution + ReLU is offered for.
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _unavailable(sample: torch.Tensor) -> Optional[str]:
    if sample.device.type != "cuda":
        return f"needs a sample_input on a CUDA device, got one on {sample.device}"
    if sample.dtype not in _DTYPES:
        return f"needs a float32, float16 or bfloat16 sample_input, got {sample.dtype}"
    return None


def _applies(model: nn.Module) -> bool:
    return any(site is not None and type(getattr(*site)) is nn.ReLU and not _is_depthwise(getattr(parent, name))
               for parent, name, site in conv_sites(model))


def _build(context: BuildContext) -> dict[str, Candidate]:
    """Fused copies in NCHW and (measuring 4D inputs) channels-last, each checked against eager."""
    layouts = [("cudnn_relu", "nchw", torch.contiguous_format)]
    if context.measure and context.sample.dim() == 4:
        layouts.append(("cudnn_relu_channels_last", "channels_last", torch.channels_last))
    built = {}
    for name, eager_name, fmt in layouts:
        fused = copy.deepcopy(context.base)
        fuse_conv_relu(fused)
        fused = fused.to(memory_format=fmt)
        x = context.sample.contiguous(memory_format=fmt)
        eager = context.candidates[eager_name].module if eager_name in context.candidates else context.base
        with torch.no_grad():
            check_close(fused(x), eager(x), context.sample, "cuDNN's fused")
        built[name] = Candidate(fused, fmt, "cudnn_relu")
    return built


ENGINE = InferenceEngine(
    name="cudnn_relu", summary="each non-depthwise Conv2d + ReLU as cuDNN's fused convolution (CUDA)",
    default=True, unavailable=_unavailable, applies=_applies, build=_build)
