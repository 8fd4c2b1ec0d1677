"""``sepconv.optimize``: an inference path that folds BatchNorm and picks the memory layout by measurement."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers.separable import _SeparableConvNd

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm layers into the convolution before them, in place; returns how many.

    Handles the normalizations inside sepconv's separable layers (``dw_norm``
    into ``depthwise``, ``pw_norm`` into ``pointwise``) and a convolution
    directly followed by a BatchNorm in an ``nn.Sequential``. The model must
    be in eval mode (the folded layer uses the running statistics).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call model.eval()); training BatchNorm cannot be folded")
    folded = 0
    for module in model.modules():
        if isinstance(module, _SeparableConvNd):
            for conv_name, norm_name in (("depthwise", "dw_norm"), ("pointwise", "pw_norm")):
                conv, norm = getattr(module, conv_name), getattr(module, norm_name)
                if isinstance(norm, _NORMS) and norm.track_running_stats:
                    setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                    setattr(module, norm_name, nn.Identity())
                    folded += 1
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats:
                    module._modules[first] = fuse_conv_bn_eval(conv, norm)
                    module._modules[second] = nn.Identity()
                    folded += 1
    return folded


class OptimizedModel(nn.Module):
    """A model prepared for inference: BatchNorm folded, inputs converted to the chosen memory format."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format, timings_ms: dict[str, float], folded: int):
        super().__init__()
        self.model = model
        self.memory_format = memory_format
        self.timings_ms = timings_ms
        self.folded = folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def extra_repr(self) -> str:
        fmt = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        return f"memory_format={fmt}, folded_batchnorms={self.folded}, measured_ms={self.timings_ms}"


def optimize(model: nn.Module, sample_input: torch.Tensor, *, measure: bool = True, rounds: int = 7) -> OptimizedModel:
    """Return an inference-ready copy of ``model``: BatchNorm folded, memory layout chosen by timing.

    ``sample_input`` is a representative batch (shape and dtype of real use).
    The copy is timed in NCHW and channels-last (4D inputs) with interleaved
    rounds and the faster layout is kept; ``measure=False`` keeps NCHW.
    ``timings_ms`` records the medians, with the original model timed in the
    same rounds for comparison. The result computes the same function as
    ``model.eval()`` to float tolerance; the original model is not modified.
    """
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    base = copy.deepcopy(model).eval()
    folded = fold_batchnorm(base)
    timings: dict[str, float] = {}
    fmt = torch.contiguous_format
    if measure and sample_input.dim() == 4:
        from .bench.timing import interleaved

        nhwc = copy.deepcopy(base).to(memory_format=torch.channels_last)
        x_last = sample_input.contiguous(memory_format=torch.channels_last)
        original = copy.deepcopy(model).eval()

        def run(m: nn.Module, x: torch.Tensor):
            def call():
                with torch.no_grad():
                    return m(x)
            return call

        t = interleaved({"original": run(original, sample_input), "nchw": run(base, sample_input),
                         "channels_last": run(nhwc, x_last)}, rounds=rounds)
        timings = {k: v.median * 1e3 for k, v in t.items()}
        if timings["channels_last"] < timings["nchw"]:
            base, fmt = nhwc, torch.channels_last
    return OptimizedModel(base, fmt, timings, folded)
