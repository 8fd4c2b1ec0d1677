"""Build and load sepconv's C kernels (``csrc/*.c``): one shared library, compiled on first use.

The kernels are plain C (no Python or PyTorch headers): the fused
depthwise -> pointwise inference kernel (``csrc/fused_dwpw.c``,
:mod:`sepconv.backends.fused`), the depthwise weight gradient
(``csrc/depthwise_wgrad.c``) and the 1x1-convolution weight-gradient GEMM
(``csrc/gemm_atb.c``, :mod:`sepconv.backends.training`). They are compiled
together with the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
for this CPU (``-march=native``), cached under ``$SEPCONV_CACHE_DIR``
(default ``~/.cache/sepconv``) by source, compiler, flags and CPU, and
loaded with :mod:`ctypes`. Where no compiler is found or the build fails,
:func:`load` returns the reason instead, and the engines that need the
kernels are not used (nothing requires them). Threads: built with OpenMP
when the compiler supports it; with PyTorch's Linux wheels, which bundle
``libgomp.so.1``, the process then has one OpenMP runtime, PyTorch's, so the
kernels share PyTorch's worker threads rather than competing with them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from ...utils.machine import cpu_fields

_SOURCES = tuple(Path(__file__).resolve().parent / "csrc" / name for name in ("fused_dwpw.c", "gemm_atb.c",
                                                                                  "depthwise_wgrad.c"))

#: The ``-march`` the kernels are built for. ``native``: this CPU's vector width (AVX-512 where it has it). Tests
#: set a portable target (e.g. ``x86-64-v2``) to exercise the kernels' non-AVX-512 code paths on any machine.
MARCH = "native"
_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC")
_OPENMP = ("-fopenmp",)  # tried first; without it the kernels run on one thread


def cache_dir() -> Path:
    """Where built kernels are kept: ``$SEPCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/sepconv`` or ``~/.cache/sepconv``."""
    root = os.environ.get("SEPCONV_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sepconv"


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (a shared cache must not mix them)."""
    fields = cpu_fields()
    return platform.machine() + platform.processor() + "".join(
        f"{key}:{fields.get(key, '')}\n" for key in ("model name", "cpu family", "model", "flags", "Features"))


def _compiler() -> Optional[str]:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """The kernels built for :data:`MARCH`: (library, None) or (None, why not)."""
    return load_for(MARCH)


@functools.lru_cache(maxsize=None)
def load_for(march: str) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """Build (once per sources, compiler, target and CPU) and load the kernels: (library, None) or (None, why not)."""
    if platform.system() == "Windows":
        return None, "sepconv's C kernels are built with a Unix C compiler; not supported on Windows"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set $CC or install gcc or clang)"
    sources = b"".join(path.read_bytes() for path in _SOURCES)
    flags = (f"-march={march}",) + _FLAGS
    key = hashlib.sha256(sources + cc.encode() + " ".join(flags + _OPENMP).encode() + _cpu_key().encode()).hexdigest()
    cache = cache_dir()
    path = cache / f"sepconv_kernels-{key[:16]}.so"
    if not path.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = Path(tmp) / path.name
                for extra in (_OPENMP, ()):  # OpenMP shares PyTorch's threads (its libgomp.so.1 is the one loaded)
                    result = subprocess.run([cc, *flags, *extra, "-o", str(built), *map(str, _SOURCES)],
                                            capture_output=True, text=True, timeout=120)
                    if result.returncode == 0:
                        break
                else:
                    return None, f"building the kernels with {cc} failed: {result.stderr.strip()[-500:]}"
                os.replace(built, path)  # atomic: a concurrent build never leaves a half-written library
        except (OSError, subprocess.SubprocessError) as error:
            return None, f"building the kernels failed: {error}"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        return None, f"loading the kernels failed: {error}"
    i, p, long = ctypes.c_int, ctypes.c_void_p, ctypes.c_long
    lib.sepconv_fused_dwpw_f32.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, i, i, i, p, p, i, i, p, i, i, i, i, i,
                                           i, long, long, i]
    lib.sepconv_fused_dwpw_f32.restype = i
    lib.sepconv_fused_jobs.argtypes = [i, i, i, i, i]
    lib.sepconv_fused_jobs.restype = long
    lib.sepconv_fused_has_avx512.restype = i
    lib.sepconv_gemm_atb_f32.argtypes = [long, i, i, p, long, p, long, p, long, i]
    lib.sepconv_gemm_atb_f32.restype = i
    lib.sepconv_atb_has_avx512.restype = i
    lib.sepconv_depthwise_wgrad_f32.argtypes = [p, i, i, i, i, p, i, i, i, i, i, i, i, i, i, i, p, i]
    lib.sepconv_depthwise_wgrad_f32.restype = i
    return lib, None


def available() -> bool:
    """True when the kernels are built (or build now) and load on this machine."""
    return load()[0] is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (None when it is available)."""
    return load()[1]
