"""Every instruction set the kernels claim, checked against a double-precision reference (tests/kernels_check.c).

AVX-512 and AVX2 + FMA run natively where the CPU has them; the portable loops anywhere; ARM NEON is
cross-compiled with aarch64-linux-gnu-gcc and run under qemu-aarch64 (correctness only: emulated speed says
nothing). A missing compiler, emulator or CPU feature skips with the reason.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepconv.backends import native
from sepconv.utils.machine import cpu_fields

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "src" / "sepconv" / "backends" / "native" / "csrc"
SOURCES = [str(CSRC / name) for name in ("fused_dwpw.c", "gemm_atb.c", "depthwise_wgrad.c")]
X86 = platform.machine() in ("x86_64", "AMD64")
FLAGS = set(cpu_fields().get("flags", "").split())


def _host_cc() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _variants():
    """(isa, compiler, flags, runner prefix, why it cannot run here or None)."""
    cc = _host_cc()
    no_cc = None if cc else "no C compiler found"
    yield "scalar", cc, ["-march=native", "-DSEPCONV_SCALAR", "-fopenmp"], [], no_cc
    yield ("avx512", cc, ["-mavx512f", "-mavx2", "-mfma", "-fopenmp"], [],
           no_cc or (None if X86 and "avx512f" in FLAGS else "this CPU has no AVX-512F"))
    yield ("avx2", cc, ["-mavx2", "-mfma", "-mno-avx512f", "-fopenmp"], [],
           no_cc or (None if X86 and {"avx2", "fma"} <= FLAGS else "this CPU has no AVX2 + FMA"))
    if platform.machine() in ("aarch64", "arm64"):
        yield "neon", cc, ["-fopenmp"], [], no_cc
    else:
        cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
        why = None if cross and qemu else ("aarch64-linux-gnu-gcc and qemu-aarch64 are needed "
                                           "(apt-get install gcc-aarch64-linux-gnu qemu-user)")
        yield "neon", cross, ["-static"], [qemu], why


@pytest.mark.parametrize("isa, cc, flags, runner, why", [pytest.param(*v, id=v[0]) for v in _variants()])
def test_the_kernels_match_the_reference_on_every_isa(tmp_path, isa, cc, flags, runner, why):
    if why:
        pytest.skip(why)
    binary = tmp_path / f"kernels_check_{isa}"
    build = subprocess.run([cc, "-O2", "-std=c11", *flags, f"-I{CSRC}", str(ROOT / "tests" / "kernels_check.c"),
                            *SOURCES, "-o", str(binary), "-lm"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=600)
    found = re.search(r"isa=(\w+) checks=(\d+) failures=(\d+)", run.stdout)
    assert found, run.stdout + run.stderr[-2000:]
    assert found.group(1) == isa  # the path claimed is the path compiled
    assert int(found.group(2)) > 100_000 and found.group(3) == "0", run.stderr[-2000:]
    assert run.returncode == 0


def test_isa_names_the_loaded_variant(monkeypatch):
    """With no SEPCONV_ISA (the default), the widest variant this CPU runs is loaded."""
    monkeypatch.delenv("SEPCONV_ISA", raising=False)
    if not native.available():
        pytest.skip(f"sepconv's C kernels: {native.unavailable_reason()}")
    expected = ("avx512" if "avx512f" in FLAGS else "avx2" if {"avx2", "fma"} <= FLAGS else "scalar") if X86 else None
    if expected:
        assert native.isa() == expected
    else:
        assert native.isa() in ("neon", "scalar")


@pytest.mark.skipif(not (X86 and {"avx2", "fma"} <= FLAGS), reason="SEPCONV_ISA=avx2 needs an x86-64 CPU with AVX2 + FMA")
@pytest.mark.parametrize("variant", ["avx2", "scalar"])
def test_a_narrower_variant_is_built_on_request_and_computes_the_same(monkeypatch, variant):
    if not native.available():
        pytest.skip(f"sepconv's C kernels: {native.unavailable_reason()}")
    from sepconv.backends.fused import FusedSeparableConv2d, fused_isa, fused_separable_forward
    from sepconv.backends.training import depthwise_pointwise_backward, depthwise_weight_grad, matmul_at_b, matmul_bt

    monkeypatch.setenv("SEPCONV_ISA", variant)
    assert native.isa() == variant == fused_isa()
    torch.manual_seed(0)
    for c_in, c_out, k, stride, size in [(16, 40, 3, 1, 11), (13, 7, 5, 2, 9), (3, 32, 3, 1, 12)]:
        dw = nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in)
        pw = nn.Conv2d(c_in, c_out, 1)
        x = torch.randn(2, c_in, size, size)
        with torch.no_grad():
            torch.testing.assert_close(FusedSeparableConv2d(dw, pw)(x), pw(dw(x)), atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            gy = torch.randn_like(dw(x))
        pad = (k // 2, k // 2)
        got = depthwise_weight_grad(x, gy, (k, k), (stride, stride), pad)
        want = torch.nn.grad.conv2d_weight(x.double(), dw.weight.shape, gy.double(), stride, pad, 1, c_in)
        torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-4)
    a, b = torch.randn(300, 24), torch.randn(300, 40)
    torch.testing.assert_close(matmul_at_b(a, b), a.T @ b, atol=1e-4, rtol=1e-4)
    w, bias = torch.randn(40, 24), torch.randn(40)
    torch.testing.assert_close(matmul_bt(a, w, bias), a @ w.T + bias, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(matmul_bt(b, w, transposed=True), b @ w, atol=1e-4, rtol=1e-4)
    # the fused layer's training kernels: forward with the depthwise output kept, and the backward pass
    x, dw_w, pw_w = torch.randn(2, 20, 9, 10), torch.randn(20, 1, 3, 3), torch.randn(36, 20, 1, 1)
    y, mid = fused_separable_forward(x, dw_w, None, pw_w, None, (1, 1))
    torch.testing.assert_close(mid, F.conv2d(x, dw_w, None, 1, 1, 1, 20), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y, F.conv2d(mid, pw_w), atol=1e-4, rtol=1e-4)
    xr, dr, pr = (t.double().requires_grad_() for t in (x, dw_w, pw_w))
    gy = torch.randn(2, 36, 9, 10)
    want = torch.autograd.grad(F.conv2d(F.conv2d(xr, dr, None, 1, 1, 1, 20), pr), (xr, dr, pr), gy.double())
    gx, gd, _, gp = depthwise_pointwise_backward(x, dw_w, pw_w, gy, (1, 1), mid=mid)
    for g, r in zip((gx, gd, gp), want):
        torch.testing.assert_close(g.double(), r, atol=1e-3, rtol=1e-4)
    y, mid = fused_separable_forward(x, dw_w, None, pw_w, None, (1, 1), stride=(2, 2))  # a downsampling layer
    gy = torch.randn_like(y)
    want = torch.autograd.grad(F.conv2d(F.conv2d(xr, dr, None, 2, 1, 1, 20), pr), (xr, dr, pr), gy.double())
    gx, gd, _, gp = depthwise_pointwise_backward(x, dw_w, pw_w, gy, (1, 1), stride=(2, 2), mid=mid)
    for g, r in zip((gx, gd, gp), want):
        torch.testing.assert_close(g.double(), r, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(not (X86 and {"avx2", "fma"} <= FLAGS),
                    reason="SEPCONV_ISA=avx2 needs an x86-64 CPU with AVX2 + FMA")
def test_a_fused_module_keeps_the_build_it_was_constructed_with(monkeypatch):
    """SEPCONV_ISA is read when FusedSeparableConv2d is built, not at each call: a module built under
    SEPCONV_ISA=scalar runs the scalar kernels after the variable changes, and a copy of it too."""
    if not native.available():
        pytest.skip(f"sepconv's C kernels: {native.unavailable_reason()}")
    import copy

    from sepconv.backends.fused import FusedSeparableConv2d

    torch.manual_seed(0)
    dw, pw = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 24, 1)
    x = torch.randn(1, 16, 8, 8)
    monkeypatch.setenv("SEPCONV_ISA", "scalar")
    scalar = FusedSeparableConv2d(dw, pw)
    monkeypatch.setenv("SEPCONV_ISA", "avx2")
    wide = FusedSeparableConv2d(dw, pw)
    monkeypatch.delenv("SEPCONV_ISA")

    def no_lookup():
        raise AssertionError("the module looked up $SEPCONV_ISA's build at a call")

    monkeypatch.setattr(native, "load", no_lookup)
    for module, isa in ((scalar, "scalar"), (copy.deepcopy(scalar), "scalar"), (wide, "avx2")):
        assert module._library().sepconv_isa().decode() == isa
        with torch.no_grad():
            torch.testing.assert_close(module(x), pw(dw(x)), atol=1e-4, rtol=1e-4)
