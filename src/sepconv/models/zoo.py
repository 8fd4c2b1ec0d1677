"""The zoo's registry: each model's name, variants, default input and citation, and ``build_model``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .mobilenet import MobileNetV1, MobileNetV2
from .vgg import VARIANTS as VGG_VARIANTS
from .vgg import VGGBlocks
from .xception import Xception


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one model."""

    name: str
    description: str
    variants: tuple[str, ...]
    default_input: tuple[int, int, int]  # (C, H, W)
    default_num_classes: int
    builder: Callable[..., nn.Module]
    citation: str

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword arguments the builder accepts besides variant, num_classes and in_channels."""
        skip = {"self", "variant", "num_classes", "in_channels"}
        return tuple(p for p in inspect.signature(self.builder).parameters if p not in skip)


_ZOO: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("vgg_blocks", "three VGG blocks of two 3x3 convs (64/128/256), Flatten, Dense; the seed article's CIFAR-10 net",
                  VGG_VARIANTS, (3, 32, 32), 10, VGGBlocks,
                  "seed 001, 'Using Depthwise Separable Convolutions in Tensorflow'; Simonyan & Zisserman 2015 (VGG blocks)"),
        ModelInfo("mobilenet_v1", "MobileNetV1 with width multiplier alpha; 'standard' = the paper's Conv MobileNet",
                  ("separable", "standard"), (3, 224, 224), 1000, MobileNetV1,
                  "Howard et al. 2017, arXiv:1704.04861, Tables 1, 4, 6, 7"),
        ModelInfo("mobilenet_v2", "MobileNetV2 (inverted residuals, linear bottlenecks, ReLU6), torchvision's layout",
                  ("separable",), (3, 224, 224), 1000, MobileNetV2,
                  "Sandler et al. 2018, arXiv:1801.04381, Table 2"),
        ModelInfo("xception", "Xception: entry, middle (x8) and exit flows of separable convolutions with residuals",
                  ("separable",), (3, 299, 299), 1000, Xception,
                  "Chollet 2017, CVPR, 'Xception: Deep Learning with Depthwise Separable Convolutions', Fig. 5, Table 3"),
    )
}


def list_models() -> dict[str, ModelInfo]:
    """The zoo's models by name."""
    return dict(_ZOO)


def build_model(name: str, variant: Optional[str] = None, num_classes: Optional[int] = None,
                in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` in ``variant`` (default: its first variant).

    ``num_classes`` defaults to the model's own (10 for vgg_blocks, 1000 for
    the MobileNets). Other keyword arguments go to the model (``image_size``
    and ``width`` for vgg_blocks, ``alpha`` for the MobileNets). Unknown names,
    variants or options raise ``ValueError`` listing the valid ones.
    """
    if name not in _ZOO:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_ZOO)}")
    info = _ZOO[name]
    variant = info.variants[0] if variant is None else variant
    if variant not in info.variants:
        raise ValueError(f"unknown variant {variant!r} of {name}; valid variants: {', '.join(info.variants)}")
    unknown = sorted(set(kwargs) - set(info.options))
    if unknown:
        raise ValueError(f"{name} does not take {', '.join(unknown)}; valid options: {', '.join(info.options)}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return info.builder(variant=variant, num_classes=info.default_num_classes if num_classes is None else num_classes,
                        in_channels=in_channels, **kwargs)
