"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only where /proc is missing)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    The file gets the mode a plain ``open(path, "wb")`` would give it
    (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``, so a
    shared directory or a web server can read results as it could any file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _safetensors_torch(extra: str):
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading and writing model files needs safetensors: pip install 'sepconv[{extra}]'") from error
    return safetensors.torch


def write_state_dict(path: str | os.PathLike, state_dict: dict, metadata: dict[str, str], *,
                     extra: str = "experiments") -> None:
    """Write ``state_dict`` (tensors, detached to the CPU) and string ``metadata`` to ``path`` as safetensors,
    atomically. ``extra`` names the pip extra that brings safetensors, for the ``ImportError`` without it."""
    st = _safetensors_torch(extra)
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    atomic_write_bytes(path, st.save(tensors, metadata=metadata))


def read_metadata(path: str | os.PathLike, *, extra: str = "experiments") -> dict[str, str]:
    """The string metadata of the safetensors file ``path``, without reading its tensors.

    ``FileNotFoundError`` when there is no such file; ``ValueError`` naming the file when it is not a
    readable safetensors file (truncated, another format, ...).
    """
    _safetensors_torch(extra)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # not a safetensors file, truncated, ...
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {error}") from None
