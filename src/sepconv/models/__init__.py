"""The model zoo: the seeds' VGG-block network, MobileNetV1, MobileNetV2 and Xception, by name.

``build_model(name, variant)`` builds one; ``list_models()`` says what exists;
``save_model``/``load_model`` store a model as safetensors with its build
recipe (JSON) in the metadata, so loading rebuilds the architecture from the
zoo and never executes anything from the file.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    """Import the public names on first use (PEP 562): ``sepconv --help`` must not import torch."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
