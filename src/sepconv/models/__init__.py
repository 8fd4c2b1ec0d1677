"""The model zoo: the seeds' VGG-block network, MobileNetV1, MobileNetV2 and Xception, by name.

``build_model(name, variant)`` builds one; ``list_models()`` says what exists;
``save_model``/``load_model`` store a model as safetensors with its build
recipe (JSON) in the metadata, so loading rebuilds the architecture from the
zoo and never executes anything from the file.
"""

from __future__ import annotations

from .io import load_model, save_model
from .mobilenet import MobileNetV1, MobileNetV2
from .vgg import VGGBlocks
from .xception import Xception
from .zoo import ModelInfo, build_model, list_models

__all__ = ["ModelInfo", "MobileNetV1", "MobileNetV2", "VGGBlocks", "Xception", "build_model", "list_models", "load_model", "save_model"]
