"""Bring models from other frameworks into sepconv: Keras ``.keras``/``.h5`` import (:func:`from_keras`).

The imported model is an ordinary ``nn.Module`` built from sepconv layers,
so ``profile``, ``convert``, ``optimize`` and the rest apply to it.
:func:`save_imported` and :func:`load_imported` store it as safetensors with
its Keras config in the metadata, and rebuild it without Keras.

The names are imported on first use, so ``sepconv import-keras --help``
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "from_keras": "sepconv.interop.keras", "build_from_config": "sepconv.interop.keras",
    "read_keras_config": "sepconv.interop.keras",
    "SUPPORTED_LAYERS": "sepconv.interop.keras", "SUPPORTED_ACTIVATIONS": "sepconv.interop.keras",
    "KerasGraph": "sepconv.interop.modules",
    "save_imported": "sepconv.interop.io", "load_imported": "sepconv.interop.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sepconv.interop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
