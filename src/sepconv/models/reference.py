"""Models by reference: a zoo name, ``package.module:factory``, ``path/to/file.py:factory``, a sepconv model file,
``torchvision:name`` or ``timm:name``, with weights from a state_dict file.

Nothing that is *loaded* can execute code: weights come from safetensors, or
from ``.pt``/``.pth`` files read by ``torch.load(weights_only=True)``, which
refuses pickled Python objects. The one piece of code that runs is the
factory the user names on purpose (importing its module or file, then
calling it).

Every bad reference or weights file raises ``ValueError`` with a one-line
message (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .weights import check_fit, estimate_bytes, load_weights, on_device, one_line, read_weights, refuse_if_too_big

__all__ = ["ModelSource", "check_fit", "estimate_bytes", "load_weights", "one_line", "parse_kwargs", "read_weights",
           "refuse_if_too_big", "resolve_model"]



@dataclass
class ModelSource:
    """Where a model came from: what is needed to rebuild it and to describe it.

    ``kind`` is ``"zoo"``, ``"file"`` (a sepconv model file), ``"factory"``, ``"torchvision"`` or ``"timm"``;
    ``recipe`` is the zoo recipe (``name``, ``variant``, ``kwargs``, maybe ``conversion``) for zoo models
    and sepconv files, else None; ``default_input`` is ``(C, H, W)`` where known.
    """

    reference: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    recipe: Optional[dict] = None
    default_input: Optional[tuple[int, ...]] = None
    weights: Optional[str] = None

    def describe(self) -> dict:
        """A JSON-ready summary (for reports and file metadata)."""
        return {"reference": self.reference, "kind": self.kind, "kwargs": self.kwargs, "weights": self.weights,
                "recipe": self.recipe}


def parse_kwargs(text: Optional[str], name: str = "--kwargs") -> dict:
    """``--kwargs`` JSON text -> a dict with string keys (None or '' -> {})."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{name} must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}: "
                         f"{one_line(error)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object (name: value), got {type(value).__name__} {text!r}")
    return value


def resolve_model(reference: str, *, kwargs: Optional[dict] = None, variant: Optional[str] = None,
                  num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                  image_size: Optional[Sequence[int]] = None, device: Any = None) -> tuple[nn.Module, ModelSource]:
    """Build the model ``reference`` names; returns ``(model, source)``.

    Forms: a zoo name (``vgg_blocks``; ``variant``, ``num_classes``, ``in_channels``, ``image_size`` apply),
    a sepconv model file (``*.safetensors`` written by :func:`sepconv.models.save_model`, weights included),
    ``package.module:factory``, ``path/to/file.py:factory`` (``factory`` may be dotted: ``Net.small``),
    ``torchvision:name`` and ``timm:name``. ``kwargs`` go to the factory. ``device='meta'`` builds
    without allocating (for estimates); sepconv model files are then built from their recipe only.
    """
    kwargs = dict(kwargs or {})
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"MODEL must be a zoo name, package.module:factory or path/to/file.py:factory, got "
                         f"{reference!r}")
    from .zoo import list_models

    zoo = list_models()
    if reference in zoo:
        return _zoo(reference, zoo[reference], kwargs, variant, num_classes, in_channels, image_size, device)
    if reference.endswith(".safetensors") and ":" not in reference:
        return _sepconv_file(reference, kwargs, device)
    module_name, sep, attr = reference.rpartition(":")
    if not sep:
        raise ValueError(f"unknown model {reference!r}: not a zoo name ({', '.join(zoo)}), and not "
                         f"package.module:factory or path/to/file.py:factory")
    if not module_name or not re.fullmatch(r"[A-Za-z_][\w.-]*", attr) or attr.startswith(".") or attr.endswith("."):
        raise ValueError(f"model reference {reference!r} must be package.module:factory or path/to/file.py:factory")
    if module_name in ("torchvision", "timm"):
        return _hub(module_name, attr, reference, kwargs, num_classes, device)
    module = _import(module_name, reference)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (model reference {reference!r})")
        factory = getattr(factory, part)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    model = _call(factory, kwargs, reference, device)
    return model, ModelSource(reference, "factory", kwargs)


def _zoo(name, info, kwargs, variant, num_classes, in_channels, image_size, device):
    from .zoo import build_model

    opts = dict(kwargs)
    variant = opts.pop("variant", variant)
    if num_classes is not None:
        opts["num_classes"] = num_classes
    if in_channels is not None:
        opts["in_channels"] = in_channels
    if image_size is not None and "image_size" in info.options:
        opts.setdefault("image_size", list(image_size))
    with on_device(device):
        try:
            model = build_model(name, variant, **opts)
        except TypeError as error:
            raise ValueError(f"{name}: bad --kwargs {kwargs!r}: {one_line(error)}") from None
    variant = variant or info.variants[0]
    c, h, w = info.default_input
    if in_channels is not None:
        c = in_channels
    if image_size is not None:
        h, w = image_size
    recipe = {"name": name, "variant": variant, "kwargs": {k: v for k, v in opts.items()}}
    return model, ModelSource(name, "zoo", dict(kwargs), recipe, (c, h, w))


def _sepconv_file(path, kwargs, device):
    from .io import load_model, model_on_meta

    if kwargs:
        raise ValueError(f"--kwargs does not apply to a sepconv model file ({path!r} holds its own recipe)")
    if device is not None and torch.device(device).type == "meta":
        model, recipe = model_on_meta(path)
    else:
        model, recipe = load_model(path)
    from .zoo import list_models

    info = list_models().get(recipe["name"])
    default = None
    if info is not None:
        c, h, w = info.default_input
        size = recipe["kwargs"].get("image_size", (h, w))
        size = (size, size) if isinstance(size, int) else tuple(size)
        default = (recipe["kwargs"].get("in_channels", c), *size)
    return model, ModelSource(path, "file", {}, recipe, default, weights=path)


def _hub(library, name, reference, kwargs, num_classes, device):
    try:
        lib = importlib.import_module(library)
    except ImportError:
        raise ValueError(f"model reference {reference!r} needs {library}, which is not installed "
                         f"(pip install {library})") from None
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if library == "torchvision":
        try:
            factory = lib.models.get_model_builder(name)
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"torchvision has no model {name!r} (see torchvision.models.list_models())") from None
    else:
        if name not in lib.list_models():
            raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
        factory = lambda **kw: lib.create_model(name, pretrained=False, **kw)  # noqa: E731
    model = _call(factory, kwargs, reference, device)
    return model, ModelSource(reference, library, kwargs, default_input=(3, 224, 224))


def _import(module_name: str, reference: str):
    """Import ``module_name``: a dotted module, or a ``.py`` file path (the code the user asks to run)."""
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name)
        if path.suffix != ".py":
            raise ValueError(f"model file {module_name!r} must be a .py file (model reference {reference!r})")
        if not path.is_file():
            raise ValueError(f"model file {module_name!r} does not exist (model reference {reference!r})")
        unique = "sepconv_user_" + re.sub(r"\W", "_", str(path.resolve()))
        if unique in sys.modules:  # imported once per process (the meta-device estimate builds the model first)
            return sys.modules[unique]
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {module_name!r} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the user's code: any failure is reported, in one line
            sys.modules.pop(unique, None)
            raise ValueError(f"importing {module_name!r} failed: {type(error).__name__}: {one_line(error)}") from None
        return module
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name):
        raise ValueError(f"{module_name!r} is not a module name (model reference {reference!r})")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(f"cannot import {module_name!r} for model reference {reference!r}: {one_line(error)}") from None
    except Exception as error:
        raise ValueError(f"importing {module_name!r} failed: {type(error).__name__}: {one_line(error)}") from None


def _call(factory, kwargs: dict, reference: str, device) -> nn.Module:
    if not callable(factory):
        raise ValueError(f"{reference!r} names a {type(factory).__name__}, not a callable that returns an nn.Module")
    try:
        with on_device(device):
            model = factory(**kwargs)
    except Exception as error:  # the user's factory: report any failure in one line
        raise ValueError(f"calling {reference!r} with {kwargs or 'no arguments'} failed: {type(error).__name__}: "
                         f"{one_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{reference!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
