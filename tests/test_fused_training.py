"""The 'fused' training engine: a SeparableConv2d's forward and backward passes each in one C kernel.

Checked against independent references: float64 autograd through ``F.conv2d`` (the kernels' gradients), the two
``nn.Conv2d`` steps of an untuned layer (the engine), ``gradcheck`` in float64 (the autograd Function's own path).
"""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv import SeparableConv2d
from sepconv.backends import native
from sepconv.backends.fused import fused_separable_forward
from sepconv.backends.training import (ENGINES, FusedSeparableStep, backward_channel_groups,
                                       depthwise_pointwise_backward, engine_applies, engine_of, tunable, tune_training,
                                       untune_training, use_engine)

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"sepconv's C kernels: {native.unavailable_reason()}")


def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def _reference_pair(x, dw_weight, dw_bias, pw_weight, pw_bias, padding, stride=1):
    return F.conv2d(F.conv2d(x, dw_weight, dw_bias, stride, padding, 1, x.shape[1]), pw_weight, pw_bias)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 72), st.integers(1, 72), st.integers(1, 12), st.integers(1, 40),
       st.integers(1, 5), st.integers(1, 5), st.data(), st.booleans(), st.integers(1, 3), st.integers(0, 999))
def test_backward_matches_float64_autograd(batch, channels, cout, h, w, kh, kw, data, dw_bias, threads, seed):
    """Input, depthwise-weight, depthwise-bias and 1x1-weight gradients of the pair, every padding 0..k-1, strides
    1-3 (above the kernel size too: input pixels no tap reaches), rows up to 40 pixels wide (at stride 2 the input
    gradient's whole windows of columns, not only its short ones), against float64 autograd (the 1x1 weight's: against
    grad_y^T mid for a given mid, or for the depthwise output, with or without a bias, that the kernel recomputes)."""
    ph, pw = data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kw - 1))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    pw_mode = data.draw(st.sampled_from(["none", "mid", "recompute"]))
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    _check_backward(batch, channels, cout, (h, w), (kh, kw), (ph, pw), (sh, sw), pw_mode,
                    pw_mode == "recompute" and data.draw(st.booleans()), dw_bias, data.draw(st.booleans()), threads,
                    seed)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels, cout, size, kernel, padding, stride", [
    (40, 24, (9, 41), (3, 3), (1, 1), (2, 2)),  # MobileNet's downsampling step: whole windows, a short last one
    (17, 20, (7, 38), (5, 5), (2, 2), (2, 2)),  # a 5-wide kernel, channels past the last whole vector
    (32, 16, (6, 45), (3, 3), (0, 0), (2, 2)),  # no padding: the first window's left columns are outside gm
    (48, 32, (8, 40), (2, 3), (1, 1), (3, 2)),  # stride 3 down the rows: rows that no tap reaches
])
def test_backward_sums_wide_strided_rows_through_windows(threads, channels, cout, size, kernel, padding, stride):
    """At column stride 2 the kernel sums a row's input-gradient pixels through windows of gm columns
    (adjoint_window, ``csrc/fused_dwpw.c``), on rows wide enough for whole windows; against float64 autograd."""
    _check_backward(2, channels, cout, size, kernel, padding, stride, "recompute", True, True, True, threads, 7)


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("channels, cout, size, stride, pw_mode", [
    (70, 90, (5, 6), 1, "recompute"),  # three panels of channels, the last partial
    (96, 130, (7, 7), 2, "mid"),
    (64, 200, (4, 9), 1, "none"),
    (200, 64, (3, 3), 1, "recompute"),  # more panels than threads
])
def test_backward_with_the_channels_split_among_threads(monkeypatch, threads, channels, cout, size, stride, pw_mode):
    """One image with fewer pixels than output channels: the kernel gets its channels split into groups
    (backward_channel_groups), and its gradients still match float64 autograd."""
    calls = _record_backward_calls(monkeypatch)
    for input_grad in (True, False):
        _check_backward(1, channels, cout, size, (3, 3), (1, 1), (stride, stride), pw_mode, True, True, input_grad,
                        threads, channels + cout)
    assert [args[-3] for args in calls] == [threads, threads]  # the kernel's `groups`


def _record_backward_calls(monkeypatch) -> list:
    """Has depthwise_pointwise_backward call the backward kernel through a wrapper that records each call's
    arguments, in the list returned."""
    import sepconv.backends.training as training

    lib = native.load()[0]
    calls = []

    class Recording:  # the kernel library, recording the backward kernel's arguments
        def __getattr__(self, name):
            return getattr(lib, name)

        def sepconv_dwpw_backward_f32(self, *args):
            calls.append(args)
            return lib.sepconv_dwpw_backward_f32(*args)

    monkeypatch.setattr(training, "_kernel_library", lambda *tensors: Recording())
    return calls


def _check_backward(batch, channels, cout, size, kernel, padding, stride, pw_mode, with_bias_value, dw_bias,
                    input_grad, threads, seed):
    """depthwise_pointwise_backward on `threads` threads against float64 autograd through F.conv2d."""
    (h, w), (kh, kw), (ph, pw), (sh, sw) = size, kernel, padding, stride
    torch.manual_seed(seed)
    x = torch.randn(batch, channels, h, w)
    dw_weight, pw_weight = torch.randn(channels, 1, kh, kw), torch.randn(cout, channels, 1, 1)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    gy = torch.randn(batch, cout, ho, wo)
    mid = torch.randn(batch, channels, ho, wo) if pw_mode == "mid" else None
    bias_value = torch.randn(channels) if pw_mode == "recompute" and with_bias_value else None
    before = _threads(threads)
    try:
        gx, gw, gb, gp = depthwise_pointwise_backward(x, dw_weight, pw_weight, gy, (ph, pw), stride=(sh, sw),
                                                      dw_bias=dw_bias, mid=mid, pw_grad=pw_mode != "none",
                                                      dw_bias_value=bias_value, input_grad=input_grad)
    finally:
        torch.set_num_threads(before)
    leaves = [t.double().requires_grad_() for t in (x, dw_weight)]
    bias = torch.zeros(channels, dtype=torch.float64, requires_grad=True)
    y = _reference_pair(leaves[0], leaves[1], bias, pw_weight.double(), None, (ph, pw), (sh, sw))
    rx, rw, rb = torch.autograd.grad(y, [*leaves, bias], gy.double())
    scale = 1e-5 * (1 + gy.abs().max().item() * pw_weight.abs().sum(0).max().item() * (1 + x.abs().max().item()))
    if not input_grad:  # skipped: a network's first layer
        assert gx is None
        gx = rx = torch.zeros(())
    for got, ref in ((gx, rx), (gw, rw), (gb, rb)):
        if got is None:
            assert not dw_bias
            continue
        assert got.dtype == torch.float32 and got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref.double(), rtol=1e-4, atol=scale * (ho * wo * batch) ** 0.5)
    assert not input_grad or gx.is_contiguous(memory_format=torch.channels_last)
    if pw_mode == "none":
        assert gp is None
        return
    if mid is None:
        mid = F.conv2d(x.double(), dw_weight.double(), None if bias_value is None else bias_value.double(), (sh, sw),
                       (ph, pw), 1, channels)
    rp = torch.einsum("nkhw,nchw->kc", gy.double(), mid.double()).reshape(cout, channels, 1, 1)
    assert gp.dtype == torch.float32 and gp.shape == rp.shape
    torch.testing.assert_close(gp.double(), rp, rtol=1e-4, atol=1e-5 * (ho * wo * batch) ** 0.5 * 5)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 3000), st.integers(1, 2048), st.integers(1, 4))
def test_the_backward_kernel_splits_channels_where_the_weight_outweighs_the_input(batch, pixels, cout, threads):
    groups = backward_channel_groups(batch, pixels, cout, threads)
    split = threads > 1 and batch % threads != 0 and batch * pixels < cout
    assert groups == (threads if split else 1)


def test_the_backward_channel_split_on_mobilenet_layers():
    assert backward_channel_groups(1, 14 * 14, 512, 2) == 2  # 512 -> 512 @14
    assert backward_channel_groups(1, 14 * 14, 1024, 2) == 2  # 512 -> 1024, a 14-pixel input at stride 2
    assert backward_channel_groups(1, 7 * 7, 1024, 2) == 2
    assert backward_channel_groups(1, 28 * 28, 512, 2) == 1  # 256 -> 512, a 28-pixel input at stride 2
    assert backward_channel_groups(1, 28 * 28, 256, 2) == 1
    assert backward_channel_groups(1, 14 * 14, 512, 1) == 1  # one thread
    assert backward_channel_groups(2, 7 * 7, 1024, 2) == 1  # one image a thread


@pytest.mark.parametrize("name, args", [("batch", (0, 49, 8, 2)), ("pixels", (1, 0, 8, 2)),
                                        ("out_channels", (1, 49, 2.0, 2)), ("threads", (1, 49, 8, True))])
def test_backward_channel_groups_names_a_bad_argument(name, args):
    with pytest.raises(ValueError, match=f"backward_channel_groups: {name} must be an integer >= 1"):
        backward_channel_groups(*args)


def test_backward_leaves_a_large_1x1_weight_gradient_to_matmul_at_b(monkeypatch):
    """Above _FUSED_PW_GRAD_MAX_WEIGHTS the kernel does not sum the 1x1 weight gradient; the result is the same."""
    import sepconv.backends.training as training

    torch.manual_seed(6)
    x, dw, pw = torch.randn(2, 8, 7, 7), torch.randn(8, 1, 3, 3), torch.randn(12, 8, 1, 1)
    gy, mid = torch.randn(2, 12, 7, 7), torch.randn(2, 8, 7, 7)
    fused = depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), mid=mid)
    monkeypatch.setattr(training, "_FUSED_PW_GRAD_MAX_WEIGHTS", 8 * 12 - 1)
    with torch.profiler.profile() as prof:
        apart = depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), mid=mid)
    if native.available():
        assert "sepconv::gemm_atb" in [e.name for e in prof.events()]
    for a, b in zip(fused, apart):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("channels", [16, 32, 24])
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_streams_a_large_input_gradient_with_the_same_bits(monkeypatch, channels, threads):
    """An input gradient of STREAM_MIN_BYTES or more goes to the kernel with streaming on (non-temporal stores where
    its rows allow: channels a multiple of 16), a smaller one with it off; both give the same bits."""
    import sepconv.backends.fused as fused_module

    calls = _record_backward_calls(monkeypatch)
    torch.manual_seed(channels)
    x, dw, pw = torch.randn(2, channels, 9, 13), torch.randn(channels, 1, 3, 3), torch.randn(20, channels, 1, 1)
    gy = torch.randn(2, 20, 9, 13)
    results = {}
    before = _threads(threads)
    try:
        for stream, least in ((0, 2**62), (1, 0)):
            monkeypatch.setattr(fused_module, "STREAM_MIN_BYTES", least)
            results[stream] = depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), pw_grad=True)
    finally:
        torch.set_num_threads(before)
    assert [args[-2] for args in calls] == [0, 1]  # the kernel's `stream`
    for plain, streamed in zip(results[0], results[1]):
        assert (plain is None and streamed is None) or torch.equal(plain, streamed)


def test_backward_refuses_mid_without_the_1x1_weight_gradient():
    x, dw, pw, gy = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1), torch.randn(1, 6, 5, 5)
    with pytest.raises(ValueError, match="pw_grad=False"):
        depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), mid=torch.randn(1, 4, 5, 5), pw_grad=False)
    with pytest.raises(ValueError, match=r"dw_bias_value must have shape \(4,\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), pw_grad=True, dw_bias_value=torch.randn(5))


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_without_an_input_gradient(threads):
    """A first layer's input needs no gradient: the weights' gradients are the same as with it."""
    torch.manual_seed(9)
    layer = SeparableConv2d(3, 16, 3, padding=1, bias=True)
    use_engine(layer, "fused")
    x = torch.randn(2, 3, 10, 10)
    before = _threads(threads)
    try:
        grads = []
        for needs in (False, True):
            layer.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(needs)
            layer(xi).square().sum().backward()
            assert (xi.grad is not None) == needs
            grads.append([p.grad.clone() for p in layer.parameters()])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("small_enough", [True, False])
def test_fused_step_keeps_the_depthwise_output_only_where_the_kernel_needs_it(monkeypatch, small_enough):
    """Where the backward kernel recomputes the depthwise output, the step saves x and the weights only (stride 1:
    the depthwise output has x's size, so a kept one shows as a second tensor of it); above the weight bound it
    keeps it. The gradients agree either way."""
    import sepconv.backends.training as training

    if not small_enough:
        monkeypatch.setattr(training, "_FUSED_PW_GRAD_MAX_WEIGHTS", 0)
    torch.manual_seed(7)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    dw, pw = torch.randn(8, 1, 3, 3, requires_grad=True), torch.randn(12, 8, 1, 1, requires_grad=True)
    db = torch.randn(8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = FusedSeparableStep.apply(x, dw, db, pw, None, (1, 1))
    recomputed = training.recomputes_depthwise_output(x, dw, pw)
    assert recomputed == (small_enough and native.available())
    assert saved.count(x.shape) == (1 if recomputed else 2)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
    got = torch.autograd.grad(y, (x, dw, db, pw), g)
    leaves = [t.detach().double().requires_grad_() for t in (x, dw, db, pw)]
    ref = torch.autograd.grad(_reference_pair(leaves[0], leaves[1], leaves[2], leaves[3], None, (1, 1)), leaves,
                              g.double())
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@needs_kernels
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 70), st.integers(1, 14), st.integers(1, 14),
       st.sampled_from([1, 3, 5]), st.data(), st.booleans(), st.booleans(), st.integers(1, 3), st.integers(0, 999))
def test_forward_keeping_depthwise_matches_conv2d(batch, channels, cout, h, w, k, data, dw_bias, pw_bias, threads,
                                                  seed):
    pad, stride = data.draw(st.integers(0, k - 1)), data.draw(st.integers(1, 2))
    if h + 2 * pad < k or w + 2 * pad < k:
        return
    torch.manual_seed(seed)
    x = torch.randn(batch, channels, h, w)
    dw_weight, pw_weight = torch.randn(channels, 1, k, k), torch.randn(cout, channels, 1, 1)
    db = torch.randn(channels) if dw_bias else None
    pb = torch.randn(cout) if pw_bias else None
    keep = data.draw(st.booleans())
    before = _threads(threads)
    try:
        y, mid = fused_separable_forward(x, dw_weight, db, pw_weight, pb, (pad, pad), stride=(stride, stride),
                                         keep_depthwise=keep)
    finally:
        torch.set_num_threads(before)
    ref_mid = F.conv2d(x.double(), dw_weight.double(), None if db is None else db.double(), stride, pad, 1, channels)
    ref_y = F.conv2d(ref_mid, pw_weight.double(), None if pb is None else pb.double())
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-4, atol=1e-4 * k * channels ** 0.5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    if not keep:
        assert mid is None
        return
    torch.testing.assert_close(mid.double(), ref_mid, rtol=1e-5, atol=1e-5 * k)
    assert mid.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dw_bias, pw_bias", [(True, True), (False, False), (True, False)])
def test_fused_step_gradcheck_float64(dw_bias, pw_bias):
    """The autograd Function's own path (float64: the unfused steps) against finite differences."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    dw = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    db = torch.randn(4, dtype=torch.float64, requires_grad=True) if dw_bias else None
    pb = torch.randn(6, dtype=torch.float64, requires_grad=True) if pw_bias else None
    assert torch.autograd.gradcheck(lambda *t: FusedSeparableStep.apply(t[0], t[1], db, t[2], pb, (1, 2)), (x, dw, pw))
    assert torch.autograd.gradcheck(lambda *t: FusedSeparableStep.apply(t[0], t[1], db, t[2], pb, (1, 1), (2, 3)),
                                    (x, dw, pw))
    if dw_bias and pw_bias:
        assert torch.autograd.gradcheck(lambda b1, b2: FusedSeparableStep.apply(x, dw, b1, pw, b2, (1, 0)), (db, pb))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layer_args, batch, size", [
    ((8, 12, 3, 1, 1, 1, True, "zeros", 1, True), 2, (9, 7)),  # both biases
    ((16, 32, 3, 1, 1), 4, (32, 32)),  # several bands per image, whole vectors
    ((5, 7, 5, 1, 2, 1, False, "zeros", 1, True), 3, (6, 11)),  # 5x5, partial vectors, depthwise bias only
    ((3, 9, 3, 1, 0), 1, (8, 8)),  # unpadded: the output smaller than the input
    ((24, 40, (3, 5), 1, (2, 1)), 1, (28, 15)),  # one image split between the threads
    ((32, 64, 3, 2, 1), 1, (28, 28)),  # stride 2 (MobileNetV1's downsampling layers), one image split
    ((6, 10, 3, (2, 1), (0, 1), 1, True), 2, (13, 8)),  # unequal strides, an odd size, a depthwise bias
])
def test_fused_engine_matches_the_untuned_layer(threads, layer_args, batch, size):
    torch.manual_seed(2)
    layer = SeparableConv2d(*layer_args)
    routed = copy.deepcopy(layer)
    if not engine_applies(routed, "fused"):
        pytest.skip(f"the fused engine needs sepconv's C kernels: {native.unavailable_reason()}")
    use_engine(routed, "fused")
    assert engine_of(routed) == "fused"
    x = torch.randn(batch, layer.in_channels, *size).contiguous(memory_format=torch.channels_last)
    before = _threads(threads)
    try:
        outs = []
        for module in (layer, routed):
            xi = x.clone().requires_grad_(True)
            y = module(xi)
            y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
            outs.append([y.detach(), xi.grad] + [p.grad for p in module.parameters()])
    finally:
        torch.set_num_threads(before)
    for got, ref in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-5 * ref.abs().max().item())


@needs_kernels
def test_fused_engine_runs_both_kernels_once_per_step():
    torch.manual_seed(4)
    layer = SeparableConv2d(16, 24, 3, padding=1, bias=True)
    use_engine(layer, "fused")
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    with torch.profiler.profile() as prof:
        layer(x).sum().backward()
    names = [e.name for e in prof.events()]
    assert names.count("sepconv::fused_dwpw") == 1 and names.count("sepconv::dwpw_backward") == 1
    assert "sepconv::gemm_atb" not in names  # the 1x1 weight gradient: in the backward kernel
    assert not any(n.startswith("aten::convolution") for n in names)
    # evaluation (no gradient to come): the forward kernel alone, without the autograd Function
    with torch.no_grad(), torch.profiler.profile() as prof:
        y = layer(x)
    names = [e.name for e in prof.events()]
    assert names.count("sepconv::fused_dwpw") == 1 and "FusedSeparableStep" not in names
    untuned = copy.deepcopy(layer)
    untune_training(untuned)
    with torch.no_grad():
        torch.testing.assert_close(y, untuned(x), rtol=1e-4, atol=1e-4)


def test_fused_engine_applies_to_plain_undilated_layers_only():
    kernels = native.available()
    assert "fused" in ENGINES
    assert engine_applies(SeparableConv2d(8, 16, 3, padding=1), "fused") == kernels
    assert engine_applies(SeparableConv2d(8, 16, (3, 5), padding=(2, 0), depthwise_bias=True), "fused") == kernels
    assert engine_applies(SeparableConv2d(8, 16, 3, stride=2, padding=1), "fused") == kernels
    for layer in (SeparableConv2d(8, 16, 3, padding=2, dilation=2),
                  SeparableConv2d(8, 16, 3, padding=1, depth_multiplier=2),
                  SeparableConv2d(8, 16, 3, padding=1, dw_norm="batchnorm"),
                  SeparableConv2d(8, 16, 3, padding=1, dw_act="relu"),
                  SeparableConv2d(8, 16, 4, padding="same"),  # an even kernel: a pad module
                  SeparableConv2d(8, 16, 3, padding=1, padding_mode="reflect"),
                  SeparableConv2d(8, 16, 3, padding=1).double(),
                  nn.Conv2d(8, 8, 3, padding=1, groups=8)):
        assert not engine_applies(layer, "fused"), layer
    # the per-convolution engines do not take a layer
    assert not any(engine_applies(SeparableConv2d(8, 8, 1), e) for e in ("gemm", "flip", "dwgrad"))
    with pytest.raises(ValueError, match="engine 'fused' runs a SeparableConv2d"):
        use_engine(SeparableConv2d(8, 16, 3, padding=2, dilation=2), "fused")


@needs_kernels
def test_tune_training_times_the_layer_after_its_convolutions_and_can_be_undone():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SeparableConv2d(8, 16, 3, padding=1, pw_norm="batchnorm",
                                                                         pw_act="relu"))
    x = torch.randn(4, 3, 16, 16)
    choices = tune_training(model, x, rounds=1)
    assert set(choices) == {"1", "1.depthwise", "1.pointwise"} == {n for n, m in model.named_modules() if tunable(m)}
    assert choices["1"] in ("eager", "fused") and engine_of(model[1]) == choices["1"]
    use_engine(model[1], "fused")
    clone = pickle.loads(pickle.dumps(model))  # a tuned model still pickles and deep-copies
    assert engine_of(clone[1]) == "fused" and engine_of(copy.deepcopy(model)[1]) == "fused"
    reference = copy.deepcopy(model)
    assert untune_training(reference) >= 1 and all(engine_of(m) == "eager" for m in reference.modules())
    for m in (model, reference):
        m(x).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_backward_refuses_shapes_that_do_not_belong_together():
    x, dw, pw = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3), torch.randn(5, 4, 1, 1)
    gy = torch.randn(2, 5, 6, 6)
    with pytest.raises(ValueError, match="needs 4-D"):
        depthwise_pointwise_backward(x[0], dw, pw, gy, (1, 1))
    with pytest.raises(ValueError, match=r"dw_weight must be \(4, 1, KH, KW\)"):
        depthwise_pointwise_backward(x, torch.randn(4, 2, 3, 3), pw, gy, (1, 1))
    with pytest.raises(ValueError, match=r"padding must be 0..2 x 0..2 .* got \(3, 1\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (3, 1))
    with pytest.raises(ValueError, match=r"grad_y must be \(2, 5, 4, 6\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (0, 1))
    with pytest.raises(ValueError, match=r"mid must be \(2, 4, 6, 6\) \(the depthwise output\), got \(2, 5, 6, 6\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), mid=gy)
    with pytest.raises(ValueError, match=r"stride must be >= 1, got \(0, 1\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), stride=(0, 1))
    with pytest.raises(ValueError, match=r"grad_y must be \(2, 5, 3, 6\)"):
        depthwise_pointwise_backward(x, dw, pw, gy, (1, 1), stride=(2, 1))


def test_step_refuses_padding_its_backward_pass_cannot_take():
    # the step checks in its forward pass what its backward pass, which skips the public checks, needs
    x, dw, pw = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(4, 1, 3, 3), torch.randn(5, 4, 1, 1)
    with pytest.raises(ValueError, match=r"FusedSeparableStep: padding must be 0..2 x 0..2 .* got \(1, 3\)"):
        FusedSeparableStep.apply(x, dw, None, pw, None, (1, 3), (1, 1))


@pytest.mark.parametrize("engine", ["gemm", "dwgrad", "fused"])
def test_a_second_derivative_through_an_engine_raises(engine):
    """The engines' backward passes are first-order only; a double backward says so instead of being wrong."""
    torch.manual_seed(7)
    layer = SeparableConv2d(4, 6, 3, padding=1)
    target = {"gemm": layer.pointwise, "dwgrad": layer.depthwise, "fused": layer}[engine]
    if not engine_applies(target, engine):
        pytest.skip(f"{engine} needs sepconv's C kernels: {native.unavailable_reason()}")
    use_engine(target, engine)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("engine", ["gemm", "flip", "dwgrad", "fused"])
def test_a_traced_or_exported_tuned_model_computes_the_layer(engine):
    """Tracing (TorchScript, the ONNX export sepconv.optimize uses) sees plain PyTorch operations, not the kernels'
    outputs as constants: the traced model follows a new input."""
    import warnings

    torch.manual_seed(8)
    model = nn.Sequential(SeparableConv2d(4, 6, 3, padding=1), nn.ReLU()).eval()
    layer = model[0]
    target = {"gemm": layer.pointwise, "flip": layer.depthwise, "dwgrad": layer.depthwise, "fused": layer}[engine]
    if not engine_applies(target, engine):
        pytest.skip(f"{engine} needs sepconv's C kernels: {native.unavailable_reason()}")
    reference = copy.deepcopy(model)
    use_engine(target, engine)
    x, other = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(other), reference(other), rtol=1e-4, atol=1e-5)
    pytest.importorskip("onnxruntime", reason="the ONNX export check needs the onnx extra")
    pytest.importorskip("onnx", reason="the ONNX export check needs the onnx extra")
    from sepconv.backends.onnxruntime import export_onnx, onnxruntime_session

    session = onnxruntime_session(export_onnx(model, x))[0]
    got = torch.from_numpy(session.run(None, {"x": other.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, reference(other), rtol=1e-4, atol=1e-5)


def test_forward_refuses_tensors_that_do_not_belong_together():
    """Checked before the kernel reads memory: a wrong-length bias would otherwise be read past its end."""
    x, dw, pw = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1)
    with pytest.raises(ValueError, match=r"for 4 input channels dw_weight must be \(4, 1, KH, KW\)"):
        fused_separable_forward(x, torch.randn(3, 1, 3, 3), None, pw, None, (1, 1))
    with pytest.raises(ValueError, match=r"dw_bias must have shape \(4,\), got \(2,\)"):
        fused_separable_forward(x, dw, torch.randn(2), pw, None, (1, 1))
    with pytest.raises(ValueError, match=r"pw_bias must have shape \(6,\), got \(4,\)"):
        fused_separable_forward(x, dw, None, pw, torch.randn(4), (1, 1))
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(-1, 1\)"):
        fused_separable_forward(x, dw, None, pw, None, (-1, 1))
    with pytest.raises(ValueError, match=r"stride must be >= 1, got \(1, 0\)"):
        fused_separable_forward(x, dw, None, pw, None, (1, 1), stride=(1, 0))
    with pytest.raises(ValueError, match="needs float32 CPU tensors, got x torch.float64"):
        fused_separable_forward(x.double(), dw, None, pw, None, (1, 1))
    # a weight the kernel would read as float32 (float64's bytes: garbage)
    with pytest.raises(ValueError, match="needs float32 CPU tensors, got pw_weight torch.float64"):
        fused_separable_forward(x, dw, None, pw.double(), None, (1, 1))
    with pytest.raises(ValueError, match="needs float32 CPU tensors, got dw_bias torch.float16"):
        fused_separable_forward(x, dw, torch.randn(4).half(), pw, None, (1, 1))
    with pytest.raises(ValueError, match="needs 4-D x and weights"):
        fused_separable_forward(x[0], dw, None, pw, None, (1, 1))
