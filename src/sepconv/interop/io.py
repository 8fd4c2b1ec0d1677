"""Store an imported Keras model as safetensors, with its Keras config in the metadata, and rebuild it.

The file holds the state dict and, under the metadata key :data:`KERAS_KEY`,
the JSON ``{"format": 1, "channels_last": bool, "keras_config": {...}}``.
Loading rebuilds the architecture from that config with the same builder
:func:`~sepconv.interop.from_keras` uses, then loads the weights strictly;
nothing in the file is executed.
"""

from __future__ import annotations

from typing import Optional

import json
import os

from ..utils.io import read_metadata, write_state_dict
from .keras import build_from_config
from .modules import KerasGraph

#: Metadata key holding the Keras recipe of an imported model.
KERAS_KEY = "sepconv_keras"
FORMAT = 1


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading imported models needs safetensors: pip install 'sepconv[keras]'") from error
    return safetensors.torch


def save_imported(path: str | os.PathLike, model: KerasGraph) -> None:
    """Write ``model`` (from :func:`~sepconv.interop.from_keras`) to ``path`` as safetensors, atomically.

    The Keras config and the layout option travel in the metadata, so
    :func:`load_imported` rebuilds the same module.
    """
    if not isinstance(model, KerasGraph) or not hasattr(model, "keras_config"):
        raise ValueError(f"model must be a model returned by from_keras, got {type(model).__name__}")
    recipe = {"format": FORMAT, "channels_last": model.channels_last, "keras_config": model.keras_config}
    write_state_dict(path, model.state_dict(), {KERAS_KEY: json.dumps(recipe)}, extra="keras")


def load_imported(path: str | os.PathLike) -> KerasGraph:
    """Rebuild a model written by :func:`save_imported` (or ``sepconv import-keras``); returns it in eval mode."""
    meta = read_metadata(path, extra="keras")
    if KERAS_KEY not in meta:
        raise ValueError(f"{str(path)!r} has no imported Keras model in its metadata (was it written by "
                         "sepconv import-keras?)")
    try:
        recipe = json.loads(meta[KERAS_KEY])
        assert isinstance(recipe, dict) and recipe.get("format") == FORMAT and "keras_config" in recipe
    except (ValueError, AssertionError, RecursionError):
        raise ValueError(f"{str(path)!r} has a malformed imported-model recipe") from None
    model = build_from_config(recipe["keras_config"], channels_last=bool(recipe.get("channels_last", False)))
    state = _safetensors().load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights in {str(path)!r} do not fit its Keras config: {error}") from None
    return model.eval()


def input_shape_of(model: KerasGraph) -> Optional[tuple[int, ...]]:
    """The ``(C, *spatial)`` input shape (PyTorch order) the Keras config of ``model`` declares, or None.

    None when the model has several inputs or leaves a size open (``None`` in Keras' ``batch_shape``).
    """
    config = getattr(model, "keras_config", None)
    layers = (config or {}).get("config", {}).get("layers", []) if isinstance(config, dict) else []
    shapes = [layer.get("config", {}).get("batch_shape") or layer.get("config", {}).get("batch_input_shape")
              for layer in layers if isinstance(layer, dict) and layer.get("class_name") == "InputLayer"]
    if len(shapes) != 1 or not isinstance(shapes[0], (list, tuple)) or len(shapes[0]) < 3:
        return None
    dims = list(shapes[0][1:])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        return None
    return (dims[-1], *dims[:-1])
