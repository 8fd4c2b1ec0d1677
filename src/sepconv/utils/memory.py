"""Process-wide memory-allocator settings for training loops (glibc's malloc)."""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's <malloc.h>
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest mmap threshold glibc accepts on 64-bit
_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, so training steps stop page-faulting fresh pages.

    PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks
    with fresh ``mmap`` pages and returns freed memory at the top of the heap
    to the OS, so a training step that allocates activations and gradients
    of several MiB and frees them again touches new pages every step: one
    page fault per 4 KiB, which can take longer than the layer's arithmetic
    (``docs/design-notes.md``). This sets ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's
    maximum: blocks up to that size come from the heap) and
    ``M_TRIM_THRESHOLD`` to 2 GiB (freed heap memory stays with the process).

    The heap still grows for the first few steps after the call: PyTorch
    asks for 64-byte aligned blocks, and glibc's aligned allocation needs a
    little more than a freed block of the same size, so reuse settles only
    once the heap holds enough free blocks (``docs/design-notes.md``).

    Process-wide and permanent: the process keeps its peak heap size, and
    glibc's adaptive threshold cannot be switched back on. Blocks over 32 MiB
    are still mapped fresh; a caching allocator loaded with ``LD_PRELOAD``
    (jemalloc or tcmalloc, as PyTorch's performance tuning guide suggests)
    avoids that too. Returns True when applied, False where the C library is
    not glibc (nothing is changed).
    """
    global _memory_kept
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _memory_kept = _memory_kept or ok
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _memory_kept


def memory_limit() -> int:
    """Bytes a command may plan to allocate: the machine's physical memory (``SEPCONV_MAX_BYTES`` overrides)."""
    override = os.environ.get("SEPCONV_MAX_BYTES")
    if override and override.isdigit():
        return int(override)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 << 30
