"""Bring models from other frameworks into sepconv: Keras ``.keras``/``.h5`` import (:func:`from_keras`).

The imported model is an ordinary ``nn.Module`` built from sepconv layers,
so ``profile``, ``convert``, ``optimize`` and the rest apply to it.
:func:`save_imported` and :func:`load_imported` store it as safetensors with
its Keras config in the metadata, and rebuild it without Keras.
"""

from .io import load_imported, save_imported
from .keras import SUPPORTED_ACTIVATIONS, SUPPORTED_LAYERS, build_from_config, from_keras, read_keras_config
from .modules import KerasGraph

__all__ = ["KerasGraph", "SUPPORTED_ACTIVATIONS", "SUPPORTED_LAYERS", "build_from_config", "from_keras",
           "load_imported", "read_keras_config", "save_imported"]
