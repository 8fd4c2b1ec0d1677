"""Training checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts
(model and optimizer state, the epoch, the metric history and the RNG states
that make a resumed run bit-identical to an uninterrupted one). It is saved
with ``torch.save`` into a temporary file in the same directory and moved
into place with ``os.replace``, so a crash never leaves a half-written file;
it is loaded with ``weights_only=True``, which unpickles only tensors and
containers of primitives and never executes code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_write_bytes

#: Bumped when the layout of the checkpoint dict changes.
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain containers only) to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without executing code from it.

    Raises ``FileNotFoundError`` when missing and ``ValueError`` naming the
    file when it is not a sepconv checkpoint of a known format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt zip, refused global, ...: one line, and never torch's weights_only advice
        raise ValueError(f"checkpoint {str(path)!r} cannot be read safely ({type(error).__name__}): it is damaged "
                         "or was not written by sepconv") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if not (type(fmt) is int and fmt == CHECKPOINT_FORMAT):  # a tensor or a list here must not be compared
        raise ValueError(f"{str(path)!r} is not a sepconv checkpoint (format {CHECKPOINT_FORMAT})")
    return state
