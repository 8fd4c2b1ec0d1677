"""BatchNorm folding: an eval-mode BatchNorm after a convolution becomes part of the convolution's weight and bias."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..layers.separable import SeparableConvNd

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
        if isinstance(module, SeparableConvNd):
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


