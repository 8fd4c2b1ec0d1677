"""Build and load sepconv's C kernels (``csrc/*.c``): one shared library, compiled on first use.

The kernels are plain C (no Python or PyTorch headers): the fused
depthwise -> pointwise inference kernel (``csrc/fused_dwpw.c``,
:mod:`sepconv.backends.fused`), the depthwise weight gradient
(``csrc/depthwise_wgrad.c``) and the 1x1-convolution weight-gradient GEMM
(``csrc/gemm_atb.c``, :mod:`sepconv.backends.training`), and entry points that
take a kernel's arguments as one array (``csrc/calls.c``: ctypes converts each
argument of a call, a cost on small layers). They are compiled
together with the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
for this CPU (``-march=native``) and loaded with :mod:`ctypes`.

Vector code: ``csrc/simd.h`` picks one instruction set at compile time from
what the target has: AVX-512F, else AVX2 with FMA, else ARM NEON (AArch64),
else portable C loops. :func:`isa` names the one the loaded library was
built with. ``$SEPCONV_ISA`` (``native``, the default; ``avx2``; ``scalar``)
builds a narrower variant on a wider CPU, to compare or test the paths;
``avx2`` is refused on a CPU without AVX2 and FMA. A
:class:`~sepconv.backends.fused.FusedSeparableConv2d` runs the variant named
when it was constructed; the training kernels' functions read it at each call.

Cache: built libraries are kept under ``$SEPCONV_CACHE_DIR`` (default
``~/.cache/sepconv``), keyed by sources, compiler, flags and CPU. An entry is
``<name>.so`` plus ``<name>.so.sha256``, the SHA-256 of the library, written
after the library was built, loaded and found to have every symbol. Both are
written atomically (a temporary file, then ``os.replace``; the sidecar last).
Before an entry is loaded its digest is checked against the sidecar (a
truncated library must never be mapped: touching its missing pages kills the
process with SIGBUS); a mismatch, a missing sidecar, a library that does not
load or lacks a symbol is removed and rebuilt. Where no compiler is found or
a build fails, :func:`load` returns the reason instead, and the engines that
need the kernels are not used (nothing requires them); :func:`build_note`
says what was found wrong with a cache entry.

Threads: built with OpenMP when the compiler supports it; with PyTorch's
Linux wheels, which bundle ``libgomp.so.1``, the process then has one OpenMP
runtime, PyTorch's, so the kernels share PyTorch's worker threads rather than
competing with them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from ...utils.io import atomic_write_bytes
from ...utils.machine import cpu_fields

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = tuple(_CSRC / name for name in ("fused_dwpw.c", "gemm_atb.c", "depthwise_wgrad.c", "calls.c"))
_HEADERS = (_CSRC / "simd.h", _CSRC / "wgrad_steps.h")

#: The ``-march`` the kernels are built for. ``native``: this CPU's vector width (AVX-512 where it has it). Tests
#: set a portable target (e.g. ``x86-64-v2``) to exercise the kernels' non-AVX-512 code paths on any machine.
MARCH = "native"
#: The instruction-set variants ``$SEPCONV_ISA`` may ask for.
ISA_CHOICES = ("native", "avx2", "scalar")
_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC")
_OPENMP = ("-fopenmp",)  # tried first; without it the kernels run on one thread
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NOTES: dict[tuple[str, str], str] = {}
_OPEN_FDS: list[int] = []  # descriptors of loaded libraries, kept open: the loader matches a /proc/self/fd name
# to a library it loaded under that name before, so a reused descriptor number would return the old library


def cache_dir() -> Path:
    """Where built kernels are kept: ``$SEPCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/sepconv`` or ``~/.cache/sepconv``."""
    root = os.environ.get("SEPCONV_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sepconv"


def requested_isa() -> str:
    """The variant ``$SEPCONV_ISA`` asks for (``native`` when unset); ValueError naming the value if unknown."""
    value = os.environ.get("SEPCONV_ISA")
    if value is None:  # the common case, on every call of a fused layer: no string work
        return "native"
    value = value.strip().lower() or "native"
    if value not in ISA_CHOICES:
        raise ValueError(f"SEPCONV_ISA must be one of {', '.join(ISA_CHOICES)}, got {value!r}")
    return value


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


def _isa_flags(isa: str) -> tuple[tuple[str, ...], Optional[str]]:
    """Extra compiler flags for a variant: (flags, None), or ((), why it cannot be built here)."""
    if isa == "native":
        return (), None
    if isa == "scalar":
        return ("-DSEPCONV_SCALAR",), None
    flags = cpu_fields().get("flags", "").split()
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= set(flags):
        return (), f"SEPCONV_ISA=avx2 needs an x86-64 CPU with AVX2 and FMA ({platform.machine()} without them here)"
    return ("-mavx2", "-mfma", "-mno-avx512f"), None


def _bind(lib: ctypes.CDLL) -> None:
    """Declare every kernel's signature; AttributeError when the library lacks one."""
    i, p, long = ctypes.c_int, ctypes.c_void_p, ctypes.c_long
    lib.sepconv_fused_dwpw_f32.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, i, i, i, p, p, i, i, p, p, i, i, i, i,
                                           i, i, long, long, i]
    lib.sepconv_fused_dwpw_f32.restype = i
    lib.sepconv_fused_dwpw_args.argtypes = [p]  # the same, its arguments in one int64 array (csrc/calls.c)
    lib.sepconv_fused_dwpw_args.restype = i
    lib.sepconv_fused_forward_f32.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, p, p, i, p, p, i, i, i, i, i, i]
    lib.sepconv_fused_forward_f32.restype = i
    lib.sepconv_fused_jobs.argtypes = [i, i, i, i, i]
    lib.sepconv_fused_jobs.restype = long
    lib.sepconv_fused_has_avx512.restype = i
    lib.sepconv_gemm_atb_f32.argtypes = [long, i, i, p, long, p, long, p, long, i]
    lib.sepconv_gemm_atb_f32.restype = i
    lib.sepconv_atb_has_avx512.restype = i
    lib.sepconv_gemm_f32.argtypes = [long, i, i, p, long, p, long, long, p, p, i, i]
    lib.sepconv_gemm_f32.restype = i
    lib.sepconv_depthwise_f32.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, p, i]
    lib.sepconv_depthwise_f32.restype = i
    lib.sepconv_depthwise_wgrad_f32.argtypes = [p, i, i, i, i, p, i, i, i, i, i, i, i, i, i, i, p, i]
    lib.sepconv_depthwise_wgrad_f32.restype = i
    lib.sepconv_dwpw_backward_f32.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, p, i, p, p, p, p, p, p, i, i, i, i]
    lib.sepconv_dwpw_backward_f32.restype = i
    lib.sepconv_pack_panels_f32.argtypes = [p, long, long, i, i, p, i]
    lib.sepconv_pack_panels_f32.restype = None
    lib.sepconv_isa.argtypes = []
    lib.sepconv_isa.restype = ctypes.c_char_p


def _open_checked(path: Path, digest: Optional[str]) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """Load ``path`` if its SHA-256 is ``digest`` (None: not checked) and it has every symbol: (lib, None) or
    (None, what is wrong). The digest is taken from an open descriptor and the library loaded through that same
    descriptor, so a file replaced in between is never the one loaded."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        return None, f"cannot open {path.name}: {error.strerror or error}"
    keep = False
    try:
        if digest is not None:
            sha = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            if sha.hexdigest() != digest:
                return None, f"{path.name} does not match its checksum (truncated or altered)"
        via_fd = f"/proc/self/fd/{fd}"
        try:
            lib = ctypes.CDLL(via_fd if os.path.exists(via_fd) else str(path))
        except OSError as error:
            return None, f"{path.name} does not load: {error}"
        keep = True  # loaded (it stays mapped): its descriptor's name must not be reused for another library
        try:
            _bind(lib)
        except AttributeError as error:
            return None, f"{path.name} lacks a kernel symbol: {error}"
        return lib, None
    except OSError as error:
        return None, f"cannot read {path.name}: {error.strerror or error}"
    finally:
        if keep:
            _OPEN_FDS.append(fd)
        else:
            os.close(fd)


def _read_digest(sidecar: Path) -> Optional[str]:
    try:
        text = sidecar.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _DIGEST.fullmatch(text) else None


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _remove(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


def load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """The kernels built for :data:`MARCH` and ``$SEPCONV_ISA``: (library, None) or (None, why not)."""
    try:
        isa = requested_isa()
    except ValueError as error:
        return None, str(error)
    return load_for(MARCH, isa)


def build_note() -> Optional[str]:
    """What was wrong with the cache entry of the kernels :func:`load` returns (rebuilt since), or None."""
    try:
        isa = requested_isa()
    except ValueError:
        return None
    load_for(MARCH, isa)
    return _NOTES.get((MARCH, isa))


@functools.lru_cache(maxsize=None)
def load_for(march: str, isa: str = "native") -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """Build (once per sources, compiler, target, variant and CPU) and load the kernels: (library, None) or
    (None, why not). Never raises: every failure is returned as the reason."""
    try:
        return _load_for(march, isa)
    except Exception as error:  # noqa: BLE001 -- a promise: nothing requires the kernels, so nothing here raises
        return None, f"loading the kernels failed: {type(error).__name__}: {error}"


def _load_for(march: str, isa: str) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    if platform.system() == "Windows":
        return None, "sepconv's C kernels are built with a Unix C compiler; not supported on Windows"
    if isa not in ISA_CHOICES:
        return None, f"isa must be one of {', '.join(ISA_CHOICES)}, got {isa!r}"
    extra_isa, why_not = _isa_flags(isa)
    if why_not:
        return None, why_not
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set $CC or install gcc or clang)"
    sources = b"".join(path.read_bytes() for path in _SOURCES + _HEADERS)
    flags = (f"-march={march}",) + extra_isa + _FLAGS
    key = hashlib.sha256(sources + cc.encode() + " ".join(flags + _OPENMP).encode() + _cpu_key().encode()).hexdigest()
    cache = cache_dir()
    path = cache / f"sepconv_kernels-{key[:16]}.so"
    sidecar = path.with_name(path.name + ".sha256")
    if path.exists() or sidecar.exists():
        digest = _read_digest(sidecar)
        if digest is None:
            problem = f"{path.name} has no valid checksum file" if path.exists() else f"{path.name} is missing"
        else:
            lib, problem = _open_checked(path, digest)
            if lib is not None:
                return lib, None
        _NOTES[(march, isa)] = f"cache entry rebuilt: {problem}"
        _remove(sidecar, path)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            built = Path(tmp) / path.name
            for extra in (_OPENMP, ()):  # OpenMP shares PyTorch's threads (its libgomp.so.1 is the one loaded)
                result = subprocess.run([cc, *flags, *extra, f"-I{_CSRC}", "-o", str(built), *map(str, _SOURCES)],
                                        capture_output=True, text=True, timeout=300)
                if result.returncode == 0:
                    break
            else:
                note = _NOTES.get((march, isa))
                return None, (f"building the kernels with {cc} failed: {result.stderr.strip()[-500:]}"
                              + (f" ({note})" if note else ""))
            digest = _file_digest(built)
            lib, problem = _open_checked(built, digest)  # the new build must load and be complete before it is kept
            if lib is None:
                return None, f"the freshly built kernels are unusable: {problem}"
            os.replace(built, path)  # atomic: a concurrent build never leaves a half-written library
            atomic_write_bytes(sidecar, (digest + "\n").encode("ascii"))  # last: marks the entry as good
        return lib, None
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"building the kernels failed: {error}"


def available() -> bool:
    """True when the kernels are built (or build now) and load on this machine."""
    return load()[0] is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (None when it is available)."""
    return load()[1]


def isa() -> Optional[str]:
    """The vector instruction set the loaded kernels use: ``avx512``, ``avx2``, ``neon`` or ``scalar``; None when
    the kernels are unavailable."""
    lib = load()[0]
    if lib is None:
        return None
    try:
        return lib.sepconv_isa().decode("ascii")
    except (AttributeError, OSError, UnicodeDecodeError):
        return None
