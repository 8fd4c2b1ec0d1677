"""MobileNetV1 (Howard et al., 2017) and MobileNetV2 (Sandler et al., 2018) built from sepconv layers.

MobileNetV1 follows the paper's Table 1 (a 3x3 stride-2 convolution, 13
depthwise separable blocks with BN and ReLU after each step, global average
pooling, a fully connected layer), with the width multiplier ``alpha``
(channels ``int(c * alpha)``) and the resolution multiplier through the input
size. Its ``standard`` variant replaces every depthwise separable block by a
full 3x3 convolution (the paper's "Conv MobileNet", Table 4). The paper's
Table 1 lists the 13th block with stride 2, but its output is 7x7 from a 7x7
input, so the block has stride 1 (as in every reference implementation).

MobileNetV2 follows the paper's Table 2 and torchvision's implementation of
it: inverted residual blocks (1x1 expansion with BN+ReLU6, 3x3 depthwise with
BN+ReLU6, 1x1 linear projection with BN, a residual when shapes allow),
channels rounded to multiples of 8, dropout 0.2 before the classifier.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..layers import SeparableConv2d


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, padding (k-1)//2) -> BatchNorm -> activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(inplace=True),
    )


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, unit BatchNorm, N(0, 0.01) linear layers, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


#: MobileNetV1 body after the first convolution: (output channels, stride) of each separable block.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier ``alpha``; ``variant`` 'separable' (the paper) or 'standard'.

    ``quantization_friendly`` (separable variant): Sheng et al. 2018's block for int8 ("A
    Quantization-Friendly Separable Convolution for MobileNets"), depthwise -> pointwise -> BN -> ReLU with
    no BatchNorm, bias or activation after the depthwise step, so the depthwise output's range is not
    stretched per channel by a BatchNorm; the activations are ReLU (not ReLU6), as in this model already.
    """

    def __init__(self, variant: str = "separable", num_classes: int = 1000, in_channels: int = 3, alpha: float = 1.0,
                 dropout: float = 0.0, quantization_friendly: bool = False) -> None:
        super().__init__()
        if variant not in ("separable", "standard"):
            raise ValueError(f"variant must be 'separable' or 'standard', got {variant!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if quantization_friendly and variant != "separable":
            raise ValueError(f"quantization_friendly applies to the separable variant, got variant={variant!r}")
        ch = lambda c: max(1, int(c * alpha))  # noqa: E731
        between = dict(dw_norm=None, dw_act=None) if quantization_friendly else dict(dw_norm="batchnorm", dw_act="relu")
        layers: list[nn.Module] = [conv_bn_act(in_channels, ch(32), 3, 2)]
        cin = ch(32)
        for cout, stride in V1_BLOCKS:
            if variant == "separable":
                layers.append(SeparableConv2d(cin, ch(cout), 3, stride=stride, padding=1, bias=False,
                                              pw_norm="batchnorm", pw_act="relu", **between))
            else:
                layers.append(conv_bn_act(cin, ch(cout), 3, stride))
            cin = ch(cout)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), never down by more than 10%."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, ReLU6] -> 3x3 depthwise, BN, ReLU6 -> 1x1 linear projection, BN (+ input)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        self.expand = conv_bn_act(cin, hidden, 1, act=nn.ReLU6) if expand_ratio != 1 else nn.Identity()
        self.separable = SeparableConv2d(hidden, cout, 3, stride=stride, padding=1, bias=False,
                                         dw_norm="batchnorm", dw_act="relu6", pw_norm="batchnorm", pw_act=None)

    def forward(self, x):
        y = self.separable(self.expand(x))
        return x + y if self.use_residual else y


#: MobileNetV2 (Table 2): expansion t, output channels c, repeats n, first stride s.
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier ``alpha`` (torchvision's architecture; variant 'separable' only)."""

    def __init__(self, variant: str = "separable", num_classes: int = 1000, in_channels: int = 3, alpha: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if variant != "separable":
            raise ValueError(f"MobileNetV2 is built from depthwise separable blocks: variant must be 'separable', got {variant!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        cin = make_divisible(32 * alpha)
        last = make_divisible(1280 * max(1.0, alpha))
        layers: list[nn.Module] = [conv_bn_act(in_channels, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in V2_SETTINGS:
            cout = make_divisible(c * alpha)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
