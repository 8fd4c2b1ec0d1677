"""Save and load zoo models as safetensors, with the build recipe in the file's metadata."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .weights import CONVERSION_KEYS, check_recipe  # noqa: F401  (part of this module's API)

from ..utils.io import read_metadata, write_state_dict

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
    recipe: dict[str, Any] = {"name": name, "variant": variant, "kwargs": build_kwargs}
    if conversion is not None:
        recipe["conversion"] = conversion
    try:
        meta = json.dumps(recipe)
    except TypeError as error:
        raise ValueError(f"build_kwargs must be JSON-serializable, got {build_kwargs!r}") from error
    write_state_dict(path, model.state_dict(), {RECIPE_KEY: meta})


def read_recipe(path: str | os.PathLike) -> dict:
    """The build recipe stored in a model file (without loading the weights)."""
    meta = read_metadata(path)
    if RECIPE_KEY not in meta:
        raise ValueError(f"{str(path)!r} has no sepconv model recipe in its metadata (was it written by save_model?)")
    try:
        recipe = json.loads(meta[RECIPE_KEY])
    except (ValueError, RecursionError):
        raise ValueError(f"{str(path)!r} has a malformed model recipe (not JSON): {meta[RECIPE_KEY][:80]!r}") from None
    check_recipe(recipe, path)
    return recipe


def _build(recipe: dict, device=None) -> nn.Module:
    """The architecture ``recipe`` describes (weights uninitialized on ``device='meta'``)."""
    from .weights import on_device
    from .zoo import build_model

    with on_device(device):
        try:
            model = build_model(recipe["name"], recipe["variant"], **recipe["kwargs"])
        except TypeError as error:
            raise ValueError(f"the recipe {recipe} does not build: {error}") from None
        if recipe.get("conversion") is not None:  # rebuild the converted structure, then load its weights
            import warnings

            from ..factorize import convert

            options = dict(recipe["conversion"], init="fresh")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = convert(model, **options)
    return model


def model_on_meta(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The model a sepconv file describes, built on the meta device (nothing allocated), and its recipe."""
    recipe = read_recipe(path)
    return _build(recipe, "meta"), recipe


def _header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` and load its weights; returns ``(model, recipe)``.

    A recipe with ``conversion`` options is rebuilt by :func:`sepconv.factorize.convert`
    (structure only) before the weights are loaded.

    The architecture comes from the zoo (nothing in the file is executed); a
    recipe naming an unknown model, with fields of the wrong type, describing
    a model too large for this machine (estimated on the meta device before
    anything is allocated), or weights that do not fit it, raise ``ValueError``.
    """
    from .weights import check_fit, estimate_bytes, refuse_if_too_big

    recipe = read_recipe(path)
    meta = _build(recipe, "meta")  # the recipe is untrusted: check its size and fit before allocating
    refuse_if_too_big(estimate_bytes(meta, None), f"the model in {str(path)!r}")
    shapes = {k: torch.empty(s, device="meta") for k, s in _header_shapes(path).items()}
    check_fit(meta, shapes, repr(str(path)))
    model = _build(recipe)
    state = _safetensors().load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the weights in {str(path)!r} do not fit the recipe {recipe}: {error}") from error
    return model, recipe
