"""Bring models from other frameworks into sepconv: Keras ``.keras``/``.h5`` import (:func:`from_keras`).

The imported model is an ordinary ``nn.Module`` built from sepconv layers,
so ``profile``, ``convert``, ``optimize`` and the rest apply to it.
:func:`save_imported` and :func:`load_imported` store it as safetensors with
its Keras config in the metadata, and rebuild it without Keras.

The names are imported on first use, so ``sepconv import-keras --help``
does not load torch.
"""

from __future__ import annotations

from ..utils.lazy import lazy_package

#: Public name -> the module that defines it.
_EXPORTS = {
    "from_keras": "sepconv.interop.keras", "build_from_config": "sepconv.interop.keras",
    "read_keras_config": "sepconv.interop.keras",
    "SUPPORTED_LAYERS": "sepconv.interop.keras", "SUPPORTED_ACTIVATIONS": "sepconv.interop.keras",
    "KerasGraph": "sepconv.interop.modules",
    "save_imported": "sepconv.interop.io", "load_imported": "sepconv.interop.io",
}

__all__ = sorted(_EXPORTS)


lazy_package(__name__, _EXPORTS)
