"""Weights from files that cannot execute code, the checks that they fit a model, and size estimates.

A state_dict comes from safetensors, or from ``.pt``/``.pth`` files read by
``torch.load(weights_only=True)``, which refuses pickled Python objects.
Sizes are estimated on PyTorch's meta device from :mod:`sepconv.cost` before
anything is allocated, so absurd sizes are refused with the estimate.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..utils.memory import memory_limit

#: Extensions read as weights files.
WEIGHTS_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")
#: How many mismatched keys an error message lists.
SHOWN_KEYS = 4


def one_line(error: BaseException) -> str:
    """``error`` as one line, without torch's advice to load with ``weights_only=False``."""
    text = str(error).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), type(error).__name__)
    first = re.sub(r"(?i)[^.;]*weights_only\s*=\s*False[^.;]*[.;]?", "", first).strip() or type(error).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class on_device:
    """``with on_device(device):`` builds modules on ``device`` (None: the default)."""

    def __init__(self, device):
        self.context = torch.device(device) if device is not None else None

    def __enter__(self):
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)
        return False



# ------------------------------------------------------------------ weights


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from ``path``: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``.

    A ``.pt`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` (a training checkpoint, such as sepconv's)
    gives that inner dict. Anything that is not a mapping of names to tensors is refused (``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix not in WEIGHTS_EXTENSIONS:
        raise ValueError(f"weights file {str(path)!r} must end in {', '.join(WEIGHTS_EXTENSIONS)}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - depends on the environment
            raise ValueError("reading .safetensors weights needs safetensors: pip install safetensors") from None
        try:
            state = load_file(str(path))
        except Exception as error:  # truncated, not safetensors, ...
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {one_line(error)}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            if "Weights only load failed" in str(error) or "Unsupported global" in str(error):
                raise ValueError(f"{str(path)!r} holds Python objects, not only tensors; sepconv loads weights "
                                 f"without executing code: save model.state_dict() instead") from None
            raise ValueError(f"{str(path)!r} is not a readable PyTorch weights file: {one_line(error)}") from None
    return _state_dict_of(state, path)


def _state_dict_of(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{str(path)!r} does not hold a state_dict (a mapping of parameter names to tensors)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{str(path)!r} is not a state_dict: {len(bad)} entries are not name -> tensor, "
                         f"e.g. {bad[0]!r}")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel / DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_fit(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``ValueError`` listing the first few missing, unexpected and mis-shaped keys if ``state`` does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {_fmt(state[k].shape)}, model {_fmt(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f", ... {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN_KEYS])}{more}")
    raise ValueError(f"the weights in {what} do not fit the model: {'; '.join(parts)}")


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the state_dict in ``path`` into ``model`` (strict, after :func:`check_fit`); returns ``model``."""
    state = read_weights(path)
    check_fit(model, state, repr(str(path)))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"the weights in {str(path)!r} hold NaN or inf values in {', '.join(bad[:SHOWN_KEYS])}")
    model.load_state_dict(state, strict=True)
    return model


# ------------------------------------------------------------------ estimates before allocating


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def estimate_bytes(model: nn.Module, input_shape: Optional[Sequence[int]], batch: int = 1) -> dict:
    """Bytes that running ``model`` (built on the meta device) on ``batch`` inputs of ``input_shape`` takes.

    ``params``: parameters and buffers; ``activation``: the largest input + output of one leaf module for
    the batch, from :func:`sepconv.cost.profile` (shapes only, nothing allocated on ``meta``).
    """
    from ..cost import profile

    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    activation = 0
    result = None
    if input_shape is not None:
        result = profile(model, tuple(input_shape))
        for row in result.rows:
            per_sample = (math.prod(row.input_shape[1:]) + math.prod(row.output_shape[1:])) * 4
            activation = max(activation, per_sample * batch)
    return {"params": params, "activation": activation, "total": params + activation, "profile": result}


def refuse_if_too_big(estimate: dict, what: str, limit: Optional[int] = None) -> None:
    """``ValueError`` with the estimate when ``estimate['total']`` exceeds ``limit`` (default :func:`memory_limit`)."""
    limit = memory_limit() if limit is None else limit
    if estimate["total"] > limit:
        raise ValueError(
            f"{what} would need about {human_bytes(estimate['total'])} (parameters {human_bytes(estimate['params'])}"
            f", largest activation {human_bytes(estimate['activation'])}; estimated by sepconv.cost without "
            f"allocating), more than the {human_bytes(limit)} this machine has; refusing")


#: Metadata key under which ``sepconv convert`` records the source and conversion of a model built by reference.
SOURCE_KEY = "sepconv_source"


def conversion_of(path: str | os.PathLike) -> Optional[dict]:
    """The conversion options recorded in a ``.safetensors`` weights file by ``sepconv convert`` (None if none).

    The options are validated like a model file's recipe (known keys, types), since file metadata is untrusted.
    """
    import json

    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as error:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {one_line(error)}") from None
    if SOURCE_KEY not in meta:
        return None
    try:
        record = json.loads(meta[SOURCE_KEY])
    except (ValueError, RecursionError):
        raise ValueError(f"{str(path)!r} has malformed {SOURCE_KEY} metadata (not JSON)") from None
    conversion = record.get("conversion") if isinstance(record, dict) else None
    if conversion is None:
        return None
    check_recipe({"name": "", "variant": "", "kwargs": {}, "conversion": conversion}, path)
    return conversion


#: Conversion options a recipe may hold, and the type each must have.
CONVERSION_KEYS = {"to": str, "depth_multiplier": int, "rank": (int, type(None)), "include": (str, type(None)),
                   "exclude": (str, type(None)), "min_kernel": int}


def check_recipe(recipe: object, path: str | os.PathLike = "<recipe>") -> dict:
    """Validate a recipe's types (``name``/``variant`` str, ``kwargs`` dict, known ``conversion`` options); returns it.

    File metadata is untrusted input: anything else raises ``ValueError`` naming the file and the field.
    """
    where = repr(str(path))
    if not isinstance(recipe, dict) or not {"name", "variant", "kwargs"} <= set(recipe):
        raise ValueError(f"{where} has a malformed model recipe: expected an object with name, variant and kwargs")
    unknown = sorted(set(recipe) - {"name", "variant", "kwargs", "conversion"})
    if unknown:
        raise ValueError(f"{where}: unknown recipe field(s) {', '.join(map(repr, unknown))}")
    for key in ("name", "variant"):
        if not isinstance(recipe[key], str):
            raise ValueError(f"{where}: recipe {key} must be a string, got {type(recipe[key]).__name__}")
    if not isinstance(recipe["kwargs"], dict):
        raise ValueError(f"{where}: recipe kwargs must be an object, got {type(recipe['kwargs']).__name__}")
    conversion = recipe.get("conversion")
    if conversion is not None:
        if not isinstance(conversion, dict):
            raise ValueError(f"{where}: recipe conversion must be an object, got {type(conversion).__name__}")
        for key, value in conversion.items():
            if key not in CONVERSION_KEYS:
                raise ValueError(f"{where}: unknown conversion option {key!r}; valid: {', '.join(CONVERSION_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, CONVERSION_KEYS[key]):
                raise ValueError(f"{where}: conversion option {key} has the wrong type ({type(value).__name__})")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{where}: conversion option {key} must be >= 1, got {value}")
    return recipe
