"""sepconv.backends.training: the training engines compute the same values and gradients as nn.Conv2d; the allocator."""

import copy
import pickle
import platform
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv import SeparableConv2d
from sepconv.backends import native
from sepconv.models import build_model
from sepconv.backends.training import (ENGINES, FLAT_MAX_CHANNELS, FlippedDepthwise, Pointwise1x1, depthwise_conv,
                                       depthwise_weight_grad, engine_applies, engine_of, matmul_at_b, matmul_bt,
                                       tunable, tune_training, untune_training, use_engine)

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"sepconv's C kernels: {native.unavailable_reason()}")


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.booleans(),
       st.booleans(), st.integers(0, 999))
def test_pointwise_gradients_match_conv2d(batch, cin, cout, h, w, bias, channels_last, seed):
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, cin, h, w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(cout, cin, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, weight, b)
    assert torch.autograd.gradcheck(Pointwise1x1.apply, inputs)
    # and against the independent reference, F.conv2d with autograd
    gy = torch.randn(batch, cout, h, w, dtype=torch.float64)
    got = torch.autograd.grad(Pointwise1x1.apply(*inputs), [t for t in inputs if t is not None], gy)
    ref = torch.autograd.grad(F.conv2d(x, weight, b), [t for t in inputs if t is not None], gy)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70), st.integers(1, 70), st.booleans(), st.integers(1, 3),
       st.integers(0, 999))
def test_matmul_at_b_matches_float64(p, m, n, strided, threads, seed):
    """The kernel's register blocks (12 x 32), their ragged edges, the transposed orientation for few columns,
    strided inputs and the thread splits (by blocks, or by pixels when blocks are few) against float64."""
    torch.manual_seed(seed)
    a, b = torch.randn(p, m + 3 * strided), torch.randn(p, n + 2 * strided)
    a, b = a[:, :m], b[:, :n]  # strided: rows longer than the matrix
    with torch_threads(threads):
        got = matmul_at_b(a, b)
    ref = a.double().t() @ b.double()
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * max(1.0, p ** 0.5))


@pytest.mark.parametrize("m", range(1, 26))
def test_matmul_at_b_every_register_block_height(m):
    """Full-width register blocks (32 columns) of every height 1-12 (m = 12 q + r rows: q full blocks, then r),
    each compiled as its own loop."""
    torch.manual_seed(m)
    a, b = torch.randn(97, m), torch.randn(97, 64)
    torch.testing.assert_close(matmul_at_b(a, b).double(), a.double().t() @ b.double(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_at_b_over_many_pixel_chunks(threads):
    """Enough pixels that the kernel streams them in several cache-sized chunks (about 700 here)."""
    torch.manual_seed(2)
    a, b = torch.randn(5000, 50), torch.randn(5000, 90)
    with torch_threads(threads):
        got = matmul_at_b(a, b)
    torch.testing.assert_close(got.double(), a.double().t() @ b.double(), rtol=1e-5, atol=1e-3)


def test_matmul_at_b_portable_build_and_fallbacks(monkeypatch):
    torch.manual_seed(1)
    a, b = torch.randn(500, 37), torch.randn(500, 45)
    ref = a.double().t() @ b.double()
    monkeypatch.setattr(native, "MARCH", "x86-64-v2")  # the kernel's plain loops (no AVX-512)
    if native.available() and platform.machine() in ("x86_64", "AMD64"):
        assert not native.load()[0].sepconv_atb_has_avx512()
        torch.testing.assert_close(matmul_at_b(a, b).double(), ref, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(native, "load", lambda: (None, "no kernels"))  # torch.mm
    torch.testing.assert_close(matmul_at_b(a, b).double(), ref, rtol=1e-5, atol=1e-4)
    # float64 always goes to torch.mm
    torch.testing.assert_close(matmul_at_b(a.double(), b.double()), ref)
    with pytest.raises(ValueError, match="matmul_at_b needs"):
        matmul_at_b(a, b[:10])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70), st.integers(1, 80), st.booleans(), st.booleans(), st.booleans(),
       st.integers(1, 3), st.integers(0, 999))
def test_matmul_bt_matches_float64(p, k, n, transposed, bias, strided, threads, seed):
    """The 1x1 GEMM (forward: weight read transposed; input gradient: as stored) against float64: register blocks
    of 6-7 rows and 32 columns and their ragged edges, rows of ``a`` longer than the matrix, biases, threads."""
    torch.manual_seed(seed)
    a = torch.randn(p, k + 5 * strided)[:, :k]
    weight = torch.randn(k, n) if transposed else torch.randn(n, k)
    b = torch.randn(n) if bias else None
    with torch_threads(threads):
        got = matmul_bt(a, weight, b, transposed=transposed)
    ref = a.double() @ (weight.double() if transposed else weight.double().t())
    if bias:
        ref = ref + b.double()
    assert got.shape == (p, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * max(1.0, k ** 0.5))


def test_matmul_bt_fallbacks_and_bad_shapes(monkeypatch):
    torch.manual_seed(3)
    a, weight, b = torch.randn(50, 20), torch.randn(30, 20), torch.randn(30)
    ref = a.double() @ weight.double().t() + b.double()
    torch.testing.assert_close(matmul_bt(a.double(), weight.double(), b.double()), ref)  # float64: torch.addmm
    monkeypatch.setattr(native, "load", lambda: (None, "no kernels"))
    torch.testing.assert_close(matmul_bt(a, weight, b).double(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, K\) weight, got \(50, 20\) and \(20, 30\)"):
        matmul_bt(a, weight.t())
    with pytest.raises(ValueError, match=r"bias must have shape \(30,\), got \(29,\)"):
        matmul_bt(a, weight, b[:29])


@needs_kernels
@pytest.mark.parametrize("h, w, kernel_calls", [(16, 9, 2), (9, 7, 1)])
def test_pointwise_engine_runs_the_gemm_kernel_and_matches_conv2d(h, w, kernel_calls):
    """float32 on the CPU, one thread: forward and input gradient in sepconv's GEMM (named in profiles), the
    forward of fewer than 256 pixels in torch.mm; all three gradients as F.conv2d's, NCHW and channels-last."""
    torch.manual_seed(4)
    weight = torch.randn(40, 24, 1, 1, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 24, h, w).contiguous(memory_format=fmt).requires_grad_()
        gy = torch.randn(2, 40, h, w)
        with torch_threads(1), torch.profiler.profile() as prof:
            y = Pointwise1x1.apply(x, weight, b)
            got = torch.autograd.grad(y, (x, weight, b), gy)
        assert [e.count for e in prof.key_averages() if e.key == "sepconv::gemm"] == [kernel_calls]
        ref_y = F.conv2d(x, weight, b)
        ref = torch.autograd.grad(ref_y, (x, weight, b), gy)
        torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-4)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [3, 20])  # 18 and 800 pixels: the forward on torch.mm (one thread) and the kernel
def test_pointwise_engine_output_takes_an_inplace_activation(threads, size):
    """The engine's output is its own tensor, not a view made inside the autograd Function, so an inplace
    activation after it (nn.ReLU(inplace=True), as in the zoo's blocks) works and gives eager's gradients."""
    torch.manual_seed(5)
    conv = nn.Conv2d(12, 20, 1)
    tuned = copy.deepcopy(conv)
    use_engine(tuned, "gemm")
    x = torch.randn(2, 12, size, size).contiguous(memory_format=torch.channels_last)
    grads = []
    with torch_threads(threads):
        for module in (conv, tuned):
            xi = x.clone().requires_grad_()
            y = nn.ReLU(inplace=True)(module(xi))
            y.square().sum().backward()
            grads.append((y.detach(), xi.grad, module.weight.grad, module.bias.grad))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_bt_writes_into_out():
    torch.manual_seed(6)
    a, weight, b = torch.randn(40, 8), torch.randn(24, 8), torch.randn(24)
    for p in (40, 300):
        a = torch.randn(p, 8)
        out = torch.full((p, 24), float("nan"))
        assert matmul_bt(a, weight, b, out=out) is out
        torch.testing.assert_close(out.double(), a.double() @ weight.double().t() + b.double(), rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match=r"out must be a contiguous \(300, 24\)"):
        matmul_bt(a, weight, out=torch.empty(24, 300).t())


def test_matmul_at_b_float32_whatever_the_default_dtype():
    a, b = torch.randn(300, 20), torch.randn(300, 40)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the kernel writes float32 into the buffer it is given
    try:
        got = matmul_at_b(a, b)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), a.double().t() @ b.double(), rtol=1e-5, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 2), st.integers(1, 2), st.sampled_from([1, 2, 3, 5]),
       st.integers(1, 2), st.integers(0, 4), st.integers(0, 4), st.booleans(), st.integers(0, 999))
def test_flipped_depthwise_gradients_match_conv2d(batch, groups, in_per_group, multiplier, k, dilation, ph, pw,
                                                  bias, seed):
    """Depthwise (and any grouped) stride-1 convolutions, with dilation and padding up to dilation * (k - 1)."""
    torch.manual_seed(seed)
    ph, pw = min(ph, dilation * (k - 1)), min(pw, dilation * (k - 1))
    cin, cout = groups * in_per_group, groups * multiplier
    size = dilation * (k - 1) + 2
    x = torch.randn(batch, cin, size, size + 1, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, in_per_group, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
    args = ((ph, pw), (dilation, dilation), groups)
    assert torch.autograd.gradcheck(lambda *t: FlippedDepthwise.apply(*t, *args), (x, weight, b))
    y = FlippedDepthwise.apply(x, weight, b, *args)
    ref = F.conv2d(x, weight, b, 1, (ph, pw), dilation, groups)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    leaves = [t for t in (x, weight, b) if t is not None]
    for g, r in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(g, r)


def test_engine_applies_to_the_right_convolutions():
    assert engine_applies(nn.Conv2d(8, 8, 3, padding=1, groups=8), "flip")
    assert engine_applies(nn.Conv2d(8, 16, 5, padding=4, dilation=2, groups=4), "flip")
    assert not engine_applies(nn.Conv2d(8, 8, 3, padding=3, groups=8), "flip")  # padding > k - 1
    assert not engine_applies(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), "flip")
    assert not engine_applies(nn.Conv2d(8, 8, 3, padding="same", groups=8), "flip")
    assert not engine_applies(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), "flip")
    assert not engine_applies(nn.Conv2d(8, 8, 3, padding=1), "flip")  # ungrouped: eager's own path
    assert engine_applies(nn.Conv2d(8, 4, 1), "gemm") and not engine_applies(nn.Conv2d(8, 4, 1, groups=2), "gemm")
    assert set(ENGINES) == {"gemm", "flip", "dwgrad", "fused"}
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert engine_applies(depthwise, "dwgrad") == native.available()
    assert not engine_applies(nn.Conv2d(8, 16, 3, padding=1, groups=8), "dwgrad")  # channel multiplier 2
    assert not engine_applies(nn.Conv2d(8, 8, 3, padding=1, groups=4), "dwgrad")  # grouped, not depthwise
    assert not engine_applies(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), "dwgrad")
    assert not engine_applies(depthwise.double(), "dwgrad")  # the kernel is float32


def test_float32_cpu_path_matches_conv2d():
    torch.manual_seed(0)
    x = torch.randn(4, 24, 9, 9, requires_grad=True)
    weight = torch.randn(40, 24, 1, 1, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    y = Pointwise1x1.apply(x, weight, b)
    torch.testing.assert_close(y, F.conv2d(x, weight, b), rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, weight, b), gy)
    ref = torch.autograd.grad(F.conv2d(x, weight, b), (x, weight, b), gy)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


def test_tune_training_keeps_the_model_and_can_be_undone():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", "separable", alpha=0.25, num_classes=5)  # train mode, with BatchNorm
    x = torch.randn(2, 3, 32, 32)
    before = copy.deepcopy(model.state_dict())
    choices = tune_training(model, x, rounds=1)
    tuned = [n for n, m in model.named_modules() if tunable(m)]
    kinds = {n: "gemm" if model.get_submodule(n).kernel_size == (1, 1) else "flip" for n in tuned}
    assert "flip" in kinds.values() and "gemm" in kinds.values()  # both steps of the separable blocks
    allowed = {n: {"eager", kinds[n]} | ({"dwgrad"} if kinds[n] == "flip" and native.available() else set())
               for n in tuned}
    assert set(choices) == set(tuned) and all(choices[n] in allowed[n] for n in tuned)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm stats untouched
    # force the engines everywhere, then compare a training step with eager PyTorch's
    for name in tuned:
        use_engine(model.get_submodule(name), kinds[name])
    reference = copy.deepcopy(model)
    assert untune_training(reference) == len(tuned)
    assert all(engine_of(m) == "eager" for m in reference.modules())
    for m in (model, reference):  # eval: no dropout randomness between the two (gradients still flow)
        m.eval()(x).square().mean().backward()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    clone = pickle.loads(pickle.dumps(model))  # a tuned model still pickles
    assert [engine_of(clone.get_submodule(n)) for n in tuned] == [kinds[n] for n in tuned]
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        tune_training(model, [1, 2])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        tune_training(model, x, rounds=0)
    with pytest.raises(ValueError, match="engine 'gemm' runs a 1x1"):
        use_engine(nn.Conv2d(2, 2, 3), "gemm")
    with pytest.raises(ValueError, match="engine 'flip' runs a stride-1 grouped"):
        use_engine(nn.Conv2d(2, 2, 3, stride=2, groups=2), "flip")
    with pytest.raises(ValueError, match="engine must be one of"):
        engine_applies(nn.Conv2d(2, 2, 1), "fast")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.one_of(st.integers(1, 40), st.sampled_from([16, 32, 48])), st.integers(1, 12),
       st.integers(1, 40), st.sampled_from([1, 2, 3, 3, 4, 5, 7]), st.integers(1, 2), st.integers(1, 2),
       st.integers(0, 3), st.integers(1, 2), st.integers(0, 999))
@needs_kernels
def test_depthwise_weight_grad_matches_float64(batch, channels, h, w, k, stride, dilation, pad, threads, seed):
    """The kernel against float64 PyTorch: ragged channel blocks, rows cut anywhere by the 8-pixel sliding windows,
    borders, strides and dilations (the general path), 1 or 2 threads; whole vectors of channels (16, 32, 48) drawn
    often, for the 3x3 stride-1 row form and its border blocks."""
    torch.manual_seed(seed)
    pad = min(pad, dilation * (k - 1))
    h, w = max(h, dilation * (k - 1) + 1 - 2 * pad), max(w, dilation * (k - 1) + 1 - 2 * pad)
    x = torch.randn(batch, channels, h, w)
    weight = torch.randn(channels, 1, k, k)
    conf = ((stride, stride), (pad, pad), (dilation, dilation))
    gy = torch.randn(F.conv2d(x, weight, None, *conf, channels).shape)
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), weight.double(), None, *map(list, conf),
                                              False, [0, 0], channels, [False, True, False])[1]
    with torch_threads(threads):
        got = depthwise_weight_grad(x, gy, (k, k), *conf)
    assert got.dtype == torch.float32 and got.shape == weight.shape
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * (gy.numel() / channels) ** 0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.sampled_from([8, 16, 24, 32, 48, 64]), st.integers(1, 9), st.integers(1, 40),
       st.integers(0, 2), st.integers(1, 2), st.integers(0, 999))
@needs_kernels
def test_3x3_depthwise_weight_grad_row_form_matches_float64(batch, channels, h, w, pad, threads, seed):
    """3x3, stride 1, whole vectors of channels (the row form with its sums held along the row): rows narrower than
    one window up to several, every padding, images of one row up, against float64 PyTorch."""
    torch.manual_seed(seed)
    h, w = max(h, 3 - 2 * pad), max(w, 3 - 2 * pad)
    x = torch.randn(batch, channels, h, w)
    weight = torch.randn(channels, 1, 3, 3)
    conf = ((1, 1), (pad, pad), (1, 1))
    gy = torch.randn(F.conv2d(x, weight, None, *conf, channels).shape)
    ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), weight.double(), None, *map(list, conf),
                                              False, [0, 0], channels, [False, True, False])[1]
    with torch_threads(threads):
        got = depthwise_weight_grad(x, gy, (3, 3), *conf)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * (gy.numel() / channels) ** 0.5)


@needs_kernels
def test_depthwise_weight_grad_is_the_same_on_every_run():
    """Two threads' partial sums are added in thread order, not arrival order: repeated runs agree bit for bit."""
    torch.manual_seed(3)
    x, gy = torch.randn(4, 48, 20, 20), torch.randn(4, 48, 20, 20)
    with torch_threads(2):
        runs = [depthwise_weight_grad(x, gy, (3, 3), (1, 1), (1, 1)) for _ in range(5)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_depthwise_weight_grad_portable_build_and_fallback(monkeypatch):
    torch.manual_seed(4)
    x, weight = torch.randn(2, 6, 9, 9), torch.randn(6, 1, 3, 3)
    gy = torch.randn(2, 6, 9, 9)
    ref = torch.ops.aten.convolution_backward(gy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 6,
                                              [False, True, False])[1]
    if native.available() and platform.machine() in ("x86_64", "AMD64"):
        monkeypatch.setattr(native, "MARCH", "x86-64-v2")  # the kernel's portable loops (no AVX-512)
        assert not native.load()[0].sepconv_fused_has_avx512()
        torch.testing.assert_close(depthwise_weight_grad(x, gy, (3, 3), (1, 1), (1, 1)), ref, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(native, "load", lambda: (None, "no kernels"))  # PyTorch's path
    torch.testing.assert_close(depthwise_weight_grad(x, gy, (3, 3), (1, 1), (1, 1)), ref)
    ref64 = torch.ops.aten.convolution_backward(gy.double(), x.double(), weight.double(), None, [1, 1], [1, 1],
                                                [1, 1], False, [0, 0], 6, [False, True, False])[1]
    torch.testing.assert_close(depthwise_weight_grad(x.double(), gy.double(), (3, 3), (1, 1), (1, 1)), ref64)
    # shapes that do not belong together are refused before any kernel reads memory
    with pytest.raises(ValueError, match="needs x"):
        depthwise_weight_grad(x, gy[:, :4], (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="grad_y is"):
        depthwise_weight_grad(x, gy, (3, 3), (1, 1), (0, 0))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 2), st.integers(1, 5), st.sampled_from([1, 2, 3, 5]), st.integers(1, 2), st.integers(0, 4),
       st.integers(0, 4), st.booleans(), st.integers(0, 999))
def test_flipped_depthwise_with_the_kernel_weight_gradient(batch, channels, k, dilation, ph, pw, bias, seed):
    """gradcheck in float64 (the fallback path), then float32 gradients (the kernel) against F.conv2d's."""
    torch.manual_seed(seed)
    ph, pw = min(ph, dilation * (k - 1)), min(pw, dilation * (k - 1))
    size = dilation * (k - 1) + 2
    x = torch.randn(batch, channels, size, size + 1, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels, dtype=torch.float64, requires_grad=True) if bias else None
    args = ((ph, pw), (dilation, dilation), channels, True)
    assert torch.autograd.gradcheck(lambda *t: FlippedDepthwise.apply(*t, *args), (x, weight, b))
    leaves = [t.detach().float().requires_grad_() for t in (x, weight, b) if t is not None]
    x32, w32, b32 = leaves[0], leaves[1], leaves[2] if bias else None
    y = FlippedDepthwise.apply(x32, w32, b32, *args)
    ref = F.conv2d(x32, w32, b32, 1, (ph, pw), dilation, channels)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(ref)
    for g, r in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, FLAT_MAX_CHANNELS + 2), st.integers(1, 20), st.integers(1, 20),
       st.integers(1, 5), st.integers(1, 5), st.integers(1, 2), st.integers(0, 8), st.integers(0, 8), st.booleans(),
       st.booleans(), st.integers(1, 3), st.integers(0, 999))
def test_depthwise_conv_matches_float64(batch, channels, h, w, kh, kw, dilation, ph, pw, bias, channels_last, threads,
                                        seed):
    """A stride-1 depthwise convolution (sepconv's flat kernel up to FLAT_MAX_CHANNELS channels, F.conv2d above)
    against float64 F.conv2d: rows narrower than a vector up to several, paddings up to the kernel's extent
    (the right margin of the padded rows), dilations, biases, either memory format, 1-3 threads over bands."""
    torch.manual_seed(seed)
    ph, pw = min(ph, dilation * (kh - 1)), min(pw, dilation * (kw - 1))
    h, w = max(h, dilation * (kh - 1) + 1 - 2 * ph), max(w, dilation * (kw - 1) + 1 - 2 * pw)
    x = torch.randn(batch, channels, h, w)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = torch.randn(channels, 1, kh, kw)
    b = torch.randn(channels) if bias else None
    with torch_threads(threads):
        got = depthwise_conv(x, weight, b, (ph, pw), (dilation, dilation))
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), 1, (ph, pw), dilation, channels)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * kh * kw)


@needs_kernels
def test_depthwise_conv_runs_the_kernel_for_few_channels_and_checks_its_padding():
    torch.manual_seed(6)
    w = torch.randn(3, 1, 3, 3)

    def kernels(x, weight):
        with torch.profiler.profile() as prof:
            depthwise_conv(x, weight, None, (1, 1))
        return {e.key for e in prof.key_averages() if e.key.startswith("sepconv::")}

    assert kernels(torch.randn(2, 3, 8, 8), w) == {"sepconv::depthwise"}
    wide = FLAT_MAX_CHANNELS + 1
    assert kernels(torch.randn(2, wide, 8, 8), torch.randn(wide, 1, 3, 3)) == set()  # oneDNN's vectors fill up
    with pytest.raises(ValueError, match=r"padding must be 0..2 x 0..2 for a 3x3 kernel.*got \(3, 1\)"):
        depthwise_conv(torch.randn(1, 3, 8, 8), w, None, (3, 1))


def test_a_one_channel_depthwise_step_takes_the_depthwise_engines():
    """A separable layer on grey images has a depthwise step of one channel, an ungrouped nn.Conv2d(1, 1): the
    depthwise engines run it (and compute what eager PyTorch does); a two-channel ungrouped convolution is no
    depthwise step."""
    torch.manual_seed(7)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    assert engine_applies(conv, "flip") and not engine_applies(nn.Conv2d(2, 2, 3, padding=1), "flip")
    assert engine_applies(conv, "dwgrad") == native.available()
    x = torch.randn(3, 1, 9, 10, requires_grad=True)
    gy = torch.randn(3, 1, 9, 10)
    for engine in ("flip", "dwgrad") if native.available() else ("flip",):
        routed = copy.deepcopy(conv)
        use_engine(routed, engine)
        got = torch.autograd.grad(routed(x), (x, routed.weight, routed.bias), gy)
        ref = torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), gy)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_dwgrad_engine_in_a_model_matches_eager():
    torch.manual_seed(5)
    model = build_model("mobilenet_v1", "separable", alpha=0.25, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = copy.deepcopy(model)
    convs = [m for m in model.modules() if engine_applies(m, "dwgrad")]
    assert len(convs) >= 5
    for conv in convs:
        use_engine(conv, "dwgrad")
    assert {engine_of(c) for c in convs} == {"dwgrad"}
    model(x).square().mean().backward()
    reference(x).square().mean().backward()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert untune_training(model) == len(convs)


@pytest.mark.parametrize("shape", [(4, 7, 5), (0, 4, 7, 5)], ids=["unbatched", "empty-batch"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_takes_the_inputs_eager_pytorch_takes(engine, shape):
    """nn.Conv2d and sepconv's layers take an unbatched (C, H, W) input and an empty batch; a layer or convolution
    put on an engine still does, with the same output and gradients."""
    torch.manual_seed(3)
    layer = SeparableConv2d(4, 6, 3, padding=1, bias=True)
    reference = copy.deepcopy(layer)
    conv = {"fused": layer, "gemm": layer.pointwise}.get(engine, layer.depthwise)
    if not engine_applies(conv, engine):
        pytest.skip(f"{engine!r} does not run here: {ENGINES[engine]}")
    use_engine(conv, engine)
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), reference(x_ref)
    assert y.shape == y_ref.shape == (*shape[:-3], 6, 7, 5)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


_HEAP = """
import ctypes, sys, torch
import sepconv

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def step():
    # Two 8 MiB tensors alive at once, then freed: what a training step's activations do.
    before = libc.mallinfo2()
    a = torch.ones(2 * 1024 * 1024)
    b = torch.ones(2 * 1024 * 1024)
    live = libc.mallinfo2()
    del a, b
    return live.hblks - before.hblks, libc.mallinfo2().fordblks

if sys.argv[1] == "keep":
    print(sepconv.keep_freed_memory(), sepconv.utils.memory.freed_memory_kept())
mapped, _ = step()
print(mapped, min(step()[1] for _ in range(5)))
"""


def _glibc_version() -> tuple[int, ...]:
    return tuple(int(part) for part in (platform.libc_ver()[1] or "0").split(".")[:2])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
@pytest.mark.skipif(_glibc_version() < (2, 33), reason=f"mallinfo2 needs glibc 2.33 or later, not {platform.libc_ver()[1]}")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    """glibc's own accounting (mallinfo2), in fresh processes (the setting is process-wide and permanent):
    by default a fresh process maps 8 MiB blocks with mmap (returned to the OS on free, fresh pages
    next time); after keep_freed_memory() they come from the heap and, once freed, stay with the
    process as free heap memory that later steps can reuse. How many page faults that saves depends on
    the kernel and the heap's history; benchmarks/bench_freed_memory.py measures it."""
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.split()

    mapped_default, _ = run("default")
    assert int(mapped_default) == 2  # the test's premise: glibc's default threshold maps 8 MiB blocks
    applied, kept, mapped, free_after = run("keep")
    assert applied == "True" and kept == "True"
    assert int(mapped) == 0
    assert int(free_after) >= 16 * 2**20


def test_tune_training_times_on_the_clock_optimize_uses(monkeypatch):
    """With one CPU thread tune_training times on the thread's CPU time, with more on the wall clock."""
    from sepconv.backends import clock
    from sepconv.utils import timing

    used = []
    real_cpu, real_wall = clock.cpu_time_interleaved, timing.interleaved
    monkeypatch.setattr(clock, "cpu_time_interleaved", lambda *a, **k: used.append("cpu") or real_cpu(*a, **k))
    monkeypatch.setattr(timing, "interleaved", lambda *a, **k: used.append("wall") or real_wall(*a, **k))
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 8, 1))
    x = torch.randn(2, 4, 8, 8)
    threads = torch.get_num_threads()
    try:
        for n, expected in ((1, "cpu"), (2, "wall")):
            torch.set_num_threads(n)
            used.clear()
            tune_training(model, x, rounds=1)
            assert used and set(used) == {expected}
            untune_training(model)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_tune_training_times_a_first_layer_without_its_input_gradient(monkeypatch, input_requires_grad):
    """Training needs no gradient of the input of a layer that no trainable parameter runs before (a network's first
    layer, or one after frozen layers), unless the network's input itself requires one: its candidates are timed so."""
    import sepconv.backends.training as training

    timed = []
    real = training.time_candidates
    monkeypatch.setattr(training, "time_candidates",
                        lambda calls, x, *a, **k: timed.append(x.requires_grad) or real(calls, x, *a, **k))
    frozen = nn.Conv2d(4, 4, 1)
    frozen.requires_grad_(False)
    model = nn.Sequential(frozen, nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(4, 8, 1),
                          SeparableConv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 4, 8, 8, requires_grad=input_requires_grad)
    choices = tune_training(model, x, rounds=1)
    # the frozen 1x1 (nothing trained before it or in it: timed only where the input's gradient flows through it),
    # the depthwise step after it (its input needs a gradient only if the network's does), then the rest
    assert ("0" in choices) == input_requires_grad
    head = 2 if input_requires_grad else 1
    assert timed[:head] == [input_requires_grad] * head and all(timed[head:]) and len(timed) >= head + 2
