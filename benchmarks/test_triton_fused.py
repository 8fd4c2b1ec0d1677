"""triton_fused: the Triton kernel computes what the two convolutions compute.

On a machine with a CUDA device the compiled kernel runs; without one,
``conftest.py`` turns Triton's interpreter on and the same kernel runs on CPU
tensors. Either way the reference is the two convolutions in float64.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

triton = pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of PyTorch bring it)")

from triton_fused import (  # noqa: E402
    BlockConfig, TritonFusedSeparableConv2d, candidates_for, interpreting, triton_fused_available,
    triton_fused_unavailable_reason)

pytestmark = pytest.mark.skipif(not triton_fused_available(),
                                reason=f"Triton kernel cannot run: {triton_fused_unavailable_reason()}")
DEVICE = "cpu" if interpreting() else "cuda"
ACTS = {None: (None, lambda y: y), "relu": (nn.ReLU(), F.relu), "relu6": (nn.ReLU6(), lambda y: y.clamp(0, 6))}
CONFIGS = [None, BlockConfig(16, 16, 16), BlockConfig(32, 16, 32, 2), BlockConfig(16, 64, 16, 4, 3)]


@contextlib.contextmanager
def ieee_float32():
    """IEEE float32 products (no TF32), so that the comparison with float64 can be tight."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


@torch.no_grad()
def reference(x, dw, pw, dw_act, pw_act):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    mid = ACTS[dw_act][1](F.conv2d(x.double(), d(dw.weight), d(dw.bias), dw.stride, dw.padding, dw.dilation, dw.groups))
    return ACTS[pw_act][1](F.conv2d(mid, d(pw.weight), d(pw.bias)))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2), st.integers(1, 40), st.integers(1, 70), st.integers(1, 5), st.integers(1, 5),
    st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(0, 2), st.sampled_from([1, 2]),
    st.booleans(), st.sampled_from([None, "relu", "relu6"]), st.sampled_from([None, "relu", "relu6"]),
    st.integers(1, 9), st.integers(1, 9), st.sampled_from(range(len(CONFIGS))), st.booleans(), st.integers(0, 9999),
)
def test_triton_kernel_equals_depthwise_then_pointwise(batch, cin, cout, kh, kw, sh, sw, ph, pw_, dilation, bias,
                                                      dw_act, pw_act, h, w, config, channels_last, seed):
    if h + 2 * ph < dilation * (kh - 1) + 1 or w + 2 * pw_ < dilation * (kw - 1) + 1:
        return  # no output pixel
    torch.manual_seed(seed)
    dw = nn.Conv2d(cin, cin, (kh, kw), (sh, sw), (ph, pw_), dilation, groups=cin, bias=bias).to(DEVICE)
    pw = nn.Conv2d(cin, cout, 1, bias=bias).to(DEVICE)
    x = 8 * torch.randn(batch, cin, h, w, device=DEVICE)  # large enough that ReLU6 clamps
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = TritonFusedSeparableConv2d(dw, pw, ACTS[dw_act][0], ACTS[pw_act][0])
    ref = reference(x, dw, pw, dw_act, pw_act)
    out = torch.full(ref.shape, float("nan"), device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), ieee_float32():
        got = layer.run(x, CONFIGS[config], out=out)  # NaN-poisoned: every element must be written
    assert got is out and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,config", [(16, 16, BlockConfig(16, 16, 16)), (32, 64, BlockConfig(32, 32, 16)),
                                             (32, 40, BlockConfig(16, 32, 32)), (24, 64, BlockConfig(16, 64, 16)),
                                             (48, 48, BlockConfig(16, 16, 32))])
def test_channel_counts_that_fill_the_blocks_and_that_do_not(cin, cout, config):
    """Channel counts that are multiples of the block widths take the unmasked loads (EVEN_K / EVEN_N), others the
    masked ones; dilation 2 and stride 2 move the taps' offsets."""
    torch.manual_seed(cin + cout)
    for stride, dilation in [(1, 1), (2, 2)]:
        dw = nn.Conv2d(cin, cin, 3, stride, 2, dilation, groups=cin, bias=True).to(DEVICE)
        pw = nn.Conv2d(cin, cout, 1, bias=True).to(DEVICE)
        x = 4 * torch.randn(2, cin, 9, 11, device=DEVICE).contiguous(memory_format=torch.channels_last)
        layer = TritonFusedSeparableConv2d(dw, pw, nn.ReLU6())
        with torch.no_grad(), ieee_float32():
            got = layer.run(x, config)
        torch.testing.assert_close(got.double(), reference(x, dw, pw, "relu6", None), rtol=1e-4, atol=1e-4)


def test_32_and_64_bit_offsets_give_the_same_bits():
    """The kernel addresses x and y by 32-bit element offsets when they fit, by 64-bit ones otherwise: both
    ways must compute the same output, strided and padded taps included."""
    torch.manual_seed(3)
    dw = nn.Conv2d(24, 24, 3, 2, 1, groups=24, bias=True).to(DEVICE)
    pw = nn.Conv2d(24, 40, 1, bias=True).to(DEVICE)
    layer = TritonFusedSeparableConv2d(dw, pw, nn.ReLU())
    x = torch.randn(2, 24, 13, 10, device=DEVICE).contiguous(memory_format=torch.channels_last)
    outs = []
    for offs_i32 in (True, False):
        y = torch.full((2, 40, 7, 5), float("nan"), device=DEVICE).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), ieee_float32():
            layer._launch(x, y, BlockConfig(16, 32, 16), layer._precision(), offs_i32)
        outs.append(y)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0].double(), reference(x, dw, pw, "relu", None), rtol=1e-4, atol=1e-4)


def test_the_layer_pads_and_matches_the_separable_module():
    """A sepconv layer whose 'same' padding is a pad module (even kernel) and that has biases."""
    from sepconv import SeparableConv2d

    torch.manual_seed(1)
    layer = SeparableConv2d(12, 20, 4, padding="same", bias=True).to(DEVICE).eval()
    assert not isinstance(layer.pad, nn.Identity)
    x = torch.randn(2, 12, 9, 7, device=DEVICE)
    fused = TritonFusedSeparableConv2d(layer.depthwise, layer.pointwise, pad=layer.pad)
    with torch.no_grad(), ieee_float32():
        torch.testing.assert_close(fused(x), layer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(interpreting(), reason="low-precision tensor-core paths need a CUDA device")
@pytest.mark.parametrize("dtype,tf32,tol", [(torch.float32, True, 5e-3), (torch.float16, False, 5e-3),
                                            (torch.bfloat16, False, 3e-2)])
def test_low_precision_paths_on_cuda(dtype, tf32, tol):
    """TF32 (PyTorch's default for convolutions), float16 and bfloat16: relative error as such products give."""
    torch.manual_seed(2)
    dw = nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=True).cuda()
    pw = nn.Conv2d(64, 96, 1, bias=True).cuda()
    x = torch.randn(4, 64, 28, 28, device="cuda")
    ref = reference(x, dw, pw, "relu", None)
    layer = TritonFusedSeparableConv2d(dw.to(dtype), pw.to(dtype), nn.ReLU())
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.no_grad():
            got = layer(x.to(dtype)).double()
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert torch.isfinite(got).all()
    assert float((got - ref).norm() / ref.norm()) < tol
    assert len(layer.configs) == 1 and next(iter(layer.configs.values())) in candidates_for(64, 96)


def test_candidates_fit_the_layer():
    for cin, cout in [(3, 20), (16, 16), (40, 70), (512, 1024)]:
        options = candidates_for(cin, cout)
        assert options and len(set(options)) == len(options)
        for c in options:
            assert c.out_channels <= max(16, 1 << (cout - 1).bit_length())
            assert 16 <= c.in_channels <= max(16, 1 << (cin - 1).bit_length())
    assert any(c.out_channels == 256 for c in candidates_for(512, 1024))


def test_refuses_what_it_cannot_run():
    dw, pw = nn.Conv2d(8, 8, 3, groups=8).to(DEVICE), nn.Conv2d(8, 4, 1).to(DEVICE)
    with pytest.raises(ValueError, match="pointwise step must be a 1x1"):
        TritonFusedSeparableConv2d(dw, nn.Conv2d(8, 4, 3).to(DEVICE))
    with pytest.raises(ValueError, match="groups = in_channels"):
        TritonFusedSeparableConv2d(nn.Conv2d(8, 8, 3, groups=4).to(DEVICE), pw)
    with pytest.raises(ValueError, match="one dtype"):
        TritonFusedSeparableConv2d(dw.double(), pw.double())
    with pytest.raises(ValueError, match="dw_activation must be"):
        TritonFusedSeparableConv2d(dw.float(), pw.float(), nn.GELU())
    layer = TritonFusedSeparableConv2d(dw.float(), pw.float())
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.randn(1, 8, 5, 5, device=DEVICE, requires_grad=True))
    with pytest.raises(ValueError, match="expects 8 input channels"):
        with torch.no_grad():
            layer(torch.randn(1, 7, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="4D torch.float32"):
        with torch.no_grad():
            layer(torch.randn(1, 8, 5, 5, device=DEVICE, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        with torch.no_grad():
            layer(torch.randn(1, 8, 2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="expects 8 input channels"):
        with torch.no_grad():
            layer.run(torch.randn(1, 9, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="out must be"):
        with torch.no_grad():
            layer.run(torch.randn(1, 8, 5, 5, device=DEVICE), out=torch.empty(1, 4, 3, 3, device=DEVICE))
