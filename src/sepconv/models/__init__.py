"""The model zoo: the seeds' VGG-block network, MobileNetV1, MobileNetV2 and Xception, by name.

``build_model(name, variant)`` builds one; ``list_models()`` says what exists;
``save_model``/``load_model`` store a model as safetensors with its build
recipe (JSON) in the metadata, so loading rebuilds the architecture from the
zoo and never executes anything from the file.
"""

from __future__ import annotations

from ..utils.lazy import lazy_package

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "load_model": ".io",
    "save_model": ".io",
    "MobileNetV1": ".mobilenet",
    "MobileNetV2": ".mobilenet",
    "VGGBlocks": ".vgg",
    "Xception": ".xception",
    "ModelInfo": ".zoo",
    "build_model": ".zoo",
    "list_models": ".zoo",
    "ModelSource": ".reference",
    "load_weights": ".weights",
    "read_weights": ".weights",
    "resolve_model": ".reference",
}

__all__ = sorted(_EXPORTS)

lazy_package(__name__, _EXPORTS)
