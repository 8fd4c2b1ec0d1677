"""The VGG-block CNN of the seed article on TensorFlow's SeparableConv2D, in four convolution variants.

The article (seed 001) builds three VGG blocks of two 3x3 'same' convolutions
with ReLU, each block followed by 2x2 max pooling (64, 128 and 256 filters),
then Flatten and a Dense layer over the 10 CIFAR-10 classes, once with
``Conv2D`` and once with ``SeparableConv2D``. Its text gives the sizes
"~1.2M vs ~200k" parameters; this reconstruction has 1,186,378 and 174,821
at 32x32x3 with 10 classes (see ``docs/models.md``).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

from torch import nn

from ..layers import SeparableConv2d, SpatiallySeparableConv2d

VARIANTS = ("standard", "separable", "grouped", "spatial")


def conv3x3(variant: str, cin: int, cout: int, groups: int = 4) -> nn.Module:
    """One 3x3 'same' convolution (stride 1) of the given variant, with a bias as in Keras.

    * ``standard``: ``nn.Conv2d``;
    * ``separable``: depthwise + pointwise, one bias after the pointwise step (Keras' ``SeparableConv2D``);
    * ``grouped``: ``nn.Conv2d`` with the largest group count ``g <= groups`` dividing both channel counts;
    * ``spatial``: 3x1 to ``min(cin, cout)`` channels, then 1x3 (:class:`SpatiallySeparableConv2d`).
    """
    if variant == "standard":
        return nn.Conv2d(cin, cout, 3, padding=1)
    if variant == "separable":
        return SeparableConv2d(cin, cout, 3, padding="same")
    if variant == "grouped":
        g = max(d for d in range(1, groups + 1) if cin % d == 0 and cout % d == 0)
        return nn.Conv2d(cin, cout, 3, padding=1, groups=g)
    if variant == "spatial":
        return SpatiallySeparableConv2d(cin, cout, 3, padding="same")
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


class VGGBlocks(nn.Module):
    """``len(channels)`` VGG blocks (``convs_per_block`` 3x3 convs + ReLU, then 2x2 max pooling), Flatten, Linear.

    Input ``(N, in_channels, H, W)`` with ``(H, W) = image_size``; output
    ``(N, num_classes)`` logits. ``width`` multiplies every channel count
    (rounded, at least 1), for small fast experiments.
    """

    def __init__(
        self,
        variant: str = "standard",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: Union[int, Sequence[int]] = 32,
        width: float = 1.0,
        channels: Sequence[int] = (64, 128, 256),
        convs_per_block: int = 2,
        groups: int = 4,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        scale = 2 ** len(channels)
        if h < scale or w < scale:
            raise ValueError(
                f"image_size={image_size!r} is too small for {len(channels)} VGG blocks: each halves the size, "
                f"so it must be at least {scale}"
            )
        self.variant = variant
        layers: list[nn.Module] = []
        cin = in_channels
        for c in channels:
            cout = max(1, round(c * width))
            for _ in range(convs_per_block):
                layers += [conv3x3(variant, cin, cout, groups), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * math.prod((h // scale, w // scale)), num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
