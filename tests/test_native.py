"""The compiled-kernel cache: a bad entry is never loaded; it is rebuilt, or the engines fall back with the reason.

Each corruption runs in its own process: a truncated library that were mapped would kill that process with SIGBUS
(exit 135), so exit 0 with the right report is the assertion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sepconv.backends import native

ROOT = Path(__file__).resolve().parents[1]
_WRAPPER: list[Path] = []  # the compiler every probe names (set by built_cache)

PROBE = r"""
import json, torch
from torch import nn
from sepconv.backends import native
from sepconv.backends.fused import FusedSeparableConv2d, fused_available, fused_uses_avx512
from sepconv.backends.training import matmul_at_b
report = {"available": fused_available(), "reason": native.unavailable_reason(), "note": native.build_note(),
          "isa": native.isa(), "avx512": fused_uses_avx512()}
a, b = torch.randn(50, 6), torch.randn(50, 7)
report["atb_ok"] = bool(torch.allclose(matmul_at_b(a, b), a.T @ b, atol=1e-4))
if report["available"]:
    torch.manual_seed(0)
    dw, pw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1)
    x = torch.randn(1, 8, 9, 9)
    report["fused_ok"] = bool(torch.allclose(FusedSeparableConv2d(dw, pw)(x), pw(dw(x)), atol=1e-4))
print(json.dumps(report))
"""


def _python_env(cache: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env["SEPCONV_CACHE_DIR"] = str(cache)
    env["CC"] = str(_WRAPPER[0])
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SEPCONV_ISA", None)
    env.update(extra)
    return env


def _probe(cache: Path, **extra: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE], env=_python_env(cache, **extra), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache directory holding one good entry, built by a separate process."""
    if not native.available():
        pytest.skip(f"sepconv's C kernels cannot be built here: {native.unavailable_reason()}")
    cache = tmp_path_factory.mktemp("kernel-cache")
    _WRAPPER[:] = [_wrapper(tmp_path_factory.mktemp("cc"))]
    report = _probe(cache)
    assert report["available"] and report["note"] is None and report["fused_ok"]
    return cache


def _wrapper(folder: Path) -> Path:
    """A compiler named the same in every probe (the cache key includes the name) that fails when BREAK_CC is set."""
    real = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    script = folder / "cc-wrapper"
    if not script.exists():
        script.write_text(f'#!/bin/sh\nif [ -n "$BREAK_CC" ]; then echo "compiler disabled" >&2; exit 1; fi\n'
                          f'exec "{real}" "$@"\n')
        script.chmod(0o755)
    return script


def _entry(cache: Path) -> tuple[Path, Path]:
    (library,) = cache.glob("sepconv_kernels-*.so")
    return library, library.with_name(library.name + ".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_good_entry_has_a_matching_checksum_and_is_reused(built_cache, tmp_path):
    library, sidecar = _entry(built_cache)
    assert sidecar.read_text().strip() == _digest(library)
    assert not [p for p in built_cache.iterdir() if p not in (library, sidecar)]  # no build leftovers
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    report = _probe(cache, BREAK_CC="1")  # reused: no compiler is needed
    assert report["available"] and report["note"] is None and report["fused_ok"]
    assert report["isa"] in ("avx512", "avx2", "neon", "scalar")


def _no_symbols_library(path: Path) -> None:
    source = path.with_suffix(".c")
    source.write_text("int sepconv_something_else(void) { return 0; }\n")
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(path), str(source)], check=True, capture_output=True)
    source.unlink()


def _corrupt(kind: str, library: Path, sidecar: Path) -> str:
    """Break the entry one way; returns the words the note must contain."""
    if kind == "truncated":  # the sidecar still holds the complete library's digest
        library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
        return "does not match its checksum"
    if kind == "garbage":  # a digest that matches: the file is read, then refused by the loader
        library.write_bytes(os.urandom(50_000))
        sidecar.write_text(_digest(library) + "\n")
        return "does not load"
    if kind == "no-symbols":  # a valid library without the kernels, with a matching digest
        _no_symbols_library(library)
        sidecar.write_text(_digest(library) + "\n")
        return "lacks a kernel symbol"
    if kind == "wrong-digest":
        sidecar.write_text("0" * 64 + "\n")
        return "does not match its checksum"
    if kind == "no-sidecar":  # as left by a crash between the library and its checksum (or an older sepconv)
        sidecar.unlink()
        return "no valid checksum file"
    if kind == "garbage-sidecar":
        sidecar.write_bytes(b"\xff\x00 not a digest")
        return "no valid checksum file"
    raise AssertionError(kind)


KINDS = ["truncated", "garbage", "no-symbols", "wrong-digest", "no-sidecar", "garbage-sidecar"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_entry_falls_back_with_the_reason_when_it_cannot_be_rebuilt(built_cache, tmp_path, kind):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    library, sidecar = _entry(cache)
    words = _corrupt(kind, library, sidecar)
    report = _probe(cache, BREAK_CC="1")  # the compiler fails: no rebuild possible
    assert not report["available"] and report["isa"] is None and not report["avx512"]
    assert "cc-wrapper failed: compiler disabled" in report["reason"] and words in report["reason"]
    assert words in report["note"]
    assert report["atb_ok"]  # the training path fell back to PyTorch
    assert not library.exists() and not sidecar.exists()  # the bad entry is gone


@pytest.mark.parametrize("kind", ["truncated", "no-symbols"])
def test_a_bad_entry_is_rebuilt(built_cache, tmp_path, kind):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    library, sidecar = _entry(cache)
    words = _corrupt(kind, library, sidecar)
    report = _probe(cache)
    assert report["available"] and report["fused_ok"] and report["atb_ok"]
    assert words in report["note"]
    assert sidecar.read_text().strip() == _digest(library)  # repaired: the next process loads it as is
    again = _probe(cache, BREAK_CC="1")
    assert again["available"] and again["note"] is None


def test_an_unknown_isa_request_is_a_reason_not_an_exception(monkeypatch):
    monkeypatch.setenv("SEPCONV_ISA", "sse9")
    assert native.load() == (None, "SEPCONV_ISA must be one of native, avx2, scalar, got 'sse9'")
    assert not native.available() and native.isa() is None
    with pytest.raises(ValueError, match="SEPCONV_ISA must be one of"):
        native.requested_isa()


def test_an_unwritable_cache_is_a_reason_not_an_exception(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(blocker / "sub"))  # a directory below a plain file
    native.load_for.cache_clear()
    try:
        library, reason = native.load_for("native", "scalar")
        assert library is None and "building the kernels failed" in reason
    finally:
        monkeypatch.undo()
        native.load_for.cache_clear()


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler here: the engines run without the kernels")
def test_the_kernels_build_wherever_a_compiler_is_found():
    """The kernel tests skip where the kernels are unavailable, so a compile error in csrc/ must fail here
    instead of turning those tests into skips."""
    assert native.load()[1] is None, native.unavailable_reason()
    assert native.available() and native.isa() in {"avx512", "avx2", "neon", "scalar"}
