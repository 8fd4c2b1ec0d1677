"""Xception (Chollet, CVPR 2017, Fig. 5): entry, middle (8 repeats) and exit flows of separable convolutions.

Layout as in the paper and Keras' reference implementation: two plain 3x3
convolutions ('valid'), then blocks of [ReLU] -> SeparableConv -> BN with a
strided 1x1 convolution (+BN) on the residual path where the size changes,
3x3 stride-2 max pooling, and global average pooling before the classifier.
Separable convolutions have no bias (BatchNorm follows). Max pooling uses
symmetric padding 1, which gives Keras' 'same' output sizes.
"""

from __future__ import annotations

from torch import nn

from ..layers import SeparableConv2d
from .mobilenet import init_weights


def _sep_bn(cin: int, cout: int) -> nn.Module:
    return SeparableConv2d(cin, cout, 3, padding=1, bias=False, pw_norm="batchnorm")


class XceptionBlock(nn.Module):
    """``reps`` x ([ReLU] SeparableConv BN), optional 3x3/2 max pooling, plus a residual."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int, relu_first: bool = True, grow_first: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        channels = cin
        for i in range(reps):
            out = cout if (grow_first and i == 0) or (not grow_first and i == reps - 1) else channels
            if relu_first or i > 0:
                layers.append(nn.ReLU(inplace=False))
            layers.append(_sep_bn(channels, out))
            channels = out
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.body = nn.Sequential(*layers)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.body(x) + self.skip(x)


class Xception(nn.Module):
    """Xception for ``num_classes`` classes (299x299 inputs in the paper; any size >= 71 works)."""

    def __init__(self, variant: str = "separable", num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        if variant != "separable":
            raise ValueError(f"Xception is built from separable convolutions: variant must be 'separable', got {variant!r}")
        stem = [nn.Conv2d(in_channels, 32, 3, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        entry = [XceptionBlock(64, 128, 2, 2, relu_first=False), XceptionBlock(128, 256, 2, 2), XceptionBlock(256, 728, 2, 2)]
        middle = [XceptionBlock(728, 728, 3, 1) for _ in range(8)]
        exit_ = [
            XceptionBlock(728, 1024, 2, 2, grow_first=False),
            SeparableConv2d(1024, 1536, 3, padding=1, bias=False, pw_norm="batchnorm", pw_act="relu"),
            SeparableConv2d(1536, 2048, 3, padding=1, bias=False, pw_norm="batchnorm", pw_act="relu"),
        ]
        self.features = nn.Sequential(*stem, *entry, *middle, *exit_)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2048, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
