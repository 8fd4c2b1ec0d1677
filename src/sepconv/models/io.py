"""Save and load zoo models as safetensors, with the build recipe in the file's metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.io import atomic_write_bytes

#: Metadata key holding the JSON recipe ``{"name", "variant", "kwargs"}``.
RECIPE_KEY = "sepconv_model"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading models needs safetensors: pip install 'sepconv[experiments]'") from error
    return safetensors.torch


def save_model(path: str | os.PathLike, model: nn.Module, name: str, variant: str, *,
               conversion: dict | None = None, **build_kwargs: Any) -> None:
    """Write ``model``'s state dict to ``path`` (safetensors, atomically) with the recipe that rebuilds it.

    ``name``, ``variant`` and ``build_kwargs`` are what :func:`sepconv.models.build_model` needs;
    ``conversion`` holds the options of :func:`sepconv.factorize.convert` if the model was converted
    after being built. All must be JSON-serializable.
    """
    st = _safetensors()
    recipe: dict[str, Any] = {"name": name, "variant": variant, "kwargs": build_kwargs}
    if conversion is not None:
        recipe["conversion"] = conversion
    try:
        meta = json.dumps(recipe)
    except TypeError as error:
        raise ValueError(f"build_kwargs must be JSON-serializable, got {build_kwargs!r}") from error
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st.save(tensors, metadata={RECIPE_KEY: meta}))


def read_recipe(path: str | os.PathLike) -> dict:
    """The build recipe stored in a model file (without loading the weights)."""
    _safetensors()  # a clear ImportError if safetensors is missing
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as error:  # not a safetensors file, truncated, ...
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {error}") from error
    if RECIPE_KEY not in meta:
        raise ValueError(f"{str(path)!r} has no sepconv model recipe in its metadata (was it written by save_model?)")
    try:
        recipe = json.loads(meta[RECIPE_KEY])
        assert isinstance(recipe, dict) and {"name", "variant", "kwargs"} <= set(recipe)
    except (ValueError, AssertionError) as error:
        raise ValueError(f"{str(path)!r} has a malformed model recipe: {meta[RECIPE_KEY]!r}") from error
    return recipe


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` and load its weights; returns ``(model, recipe)``.

    A recipe with ``conversion`` options is rebuilt by :func:`sepconv.factorize.convert`
    (structure only) before the weights are loaded.

    The architecture comes from the zoo (nothing in the file is executed); a
    recipe naming an unknown model, or weights that do not fit it, raise
    ``ValueError``.
    """
    from .zoo import build_model

    recipe = read_recipe(path)
    model = build_model(recipe["name"], recipe["variant"], **recipe["kwargs"])
    if recipe.get("conversion") is not None:  # rebuild the converted structure, then load its weights
        import warnings

        from ..factorize import convert

        options = dict(recipe["conversion"], init="fresh")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = convert(model, **options)
    state = _safetensors().load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights in {str(path)!r} do not fit the recipe {recipe}: {error}") from error
    return model, recipe
