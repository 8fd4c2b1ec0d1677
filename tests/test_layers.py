"""Layers against an independent NumPy reference, on random configurations."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv import (
    DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d,
    PointwiseConv1d, PointwiseConv2d, PointwiseConv3d,
    SeparableConv1d, SeparableConv2d, SeparableConv3d,
    SpatiallySeparableConv2d,
)
from sepconv.layers import BlueprintSeparableConv1d, BlueprintSeparableConv2d, BlueprintSeparableConv3d, CPConv2d

from reference import np_conv, np_pad, tf_same_pads

DW = {1: DepthwiseConv1d, 2: DepthwiseConv2d, 3: DepthwiseConv3d}
PW = {1: PointwiseConv1d, 2: PointwiseConv2d, 3: PointwiseConv3d}
SEP = {1: SeparableConv1d, 2: SeparableConv2d, 3: SeparableConv3d}
BLUE = {1: BlueprintSeparableConv1d, 2: BlueprintSeparableConv2d, 3: BlueprintSeparableConv3d}
F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MODES = ["zeros", "reflect", "replicate", "circular"]


@st.composite
def conv_cases(draw, ndims=(1, 2, 3)):
    nd = draw(st.sampled_from(ndims))
    kmax, smax = (4, 9) if nd < 3 else (3, 6)
    case = dict(
        nd=nd,
        cin=draw(st.integers(1, 4)),
        cout=draw(st.integers(1, 5)),
        mult=draw(st.integers(1, 3)),
        kernel=tuple(draw(st.integers(1, kmax)) for _ in range(nd)),
        stride=tuple(draw(st.integers(1, 3)) for _ in range(nd)),
        dilation=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
        size=tuple(draw(st.integers(1, smax)) for _ in range(nd)),
        batch=draw(st.integers(1, 2)),
        mode=draw(st.sampled_from(MODES)),
        bias=draw(st.booleans()),
        dw_bias=draw(st.booleans()),
    )
    kind = draw(st.sampled_from(["same", "valid", "int", "pairs"]))
    if kind in ("same", "valid"):
        case["padding"] = kind
    elif kind == "int":
        case["padding"] = draw(st.integers(0, 2))
    else:
        case["padding"] = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    return case


def reference_pads(case):
    p, nd = case["padding"], case["nd"]
    if p == "same":
        return [tf_same_pads(n, k, s, d) for n, k, s, d in zip(case["size"], case["kernel"], case["stride"], case["dilation"])]
    if p == "valid":
        return [(0, 0)] * nd
    if isinstance(p, int):
        return [(p, p)] * nd
    return list(p)


def feasible(case, pads) -> bool:
    """Whether the padded input fits the dilated kernel (else the layer must raise ValueError)."""
    return all(
        n + a + b >= (k - 1) * d + 1
        for n, (a, b), k, d in zip(case["size"], pads, case["kernel"], case["dilation"])
    )


def mode_ok(case, pads) -> bool:
    # PyTorch's reflect/circular padding need the pad smaller than / at most the input size.
    return case["mode"] == "zeros" or all(max(a, b) < n for n, (a, b) in zip(case["size"], pads))


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@settings(max_examples=120, deadline=None)
@given(conv_cases())
def test_separable_matches_numpy_reference(case):
    nd, pads = case["nd"], reference_pads(case)
    assume(mode_ok(case, pads))
    torch.manual_seed(0)
    layer = SEP[nd](
        case["cin"], case["cout"], case["kernel"], stride=case["stride"], padding=case["padding"],
        dilation=case["dilation"], bias=case["bias"], padding_mode=case["mode"],
        depth_multiplier=case["mult"], depthwise_bias=case["dw_bias"], dtype=torch.float64,
    )
    x = torch.randn(case["batch"], case["cin"], *case["size"], dtype=torch.float64)
    if not feasible(case, pads):
        with pytest.raises(ValueError, match="kernel_size"):
            layer(x)
        return
    y = layer(x)
    xp = np_pad(x.numpy(), pads, case["mode"])
    mid = np_conv(xp, as_np(layer.depthwise.weight), None if layer.depthwise.bias is None else as_np(layer.depthwise.bias),
                  case["stride"], case["dilation"], groups=case["cin"])
    ref = np_conv(mid, as_np(layer.pointwise.weight), None if layer.pointwise.bias is None else as_np(layer.pointwise.bias),
                  (1,) * nd, (1,) * nd)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    # The dense kernel is one standard convolution computing the same thing.
    bias = layer.dense_bias()
    dense = np_conv(xp, as_np(layer.to_dense_weight()), None if bias is None else as_np(bias), case["stride"], case["dilation"])
    np.testing.assert_allclose(dense, ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(as_np(layer.to_conv()(x)), ref, rtol=1e-9, atol=1e-9)
    if case["padding"] == "same":
        assert y.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(case["size"], case["stride"]))


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_depthwise_matches_numpy_reference(case):
    nd, pads = case["nd"], reference_pads(case)
    assume(mode_ok(case, pads))
    layer = DW[nd](
        case["cin"], case["kernel"], stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        depth_multiplier=case["mult"], bias=case["bias"], padding_mode=case["mode"], dtype=torch.float64,
    )
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    x = torch.randn(case["batch"], case["cin"], *case["size"], dtype=torch.float64)
    if not feasible(case, pads):
        with pytest.raises(ValueError, match="kernel_size"):
            layer(x)
        return
    xp = np_pad(x.numpy(), pads, case["mode"])
    b = None if layer.bias is None else as_np(layer.bias)
    ref = np_conv(xp, as_np(layer.weight), b, case["stride"], case["dilation"], groups=case["cin"])
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    # Keras channel order: output channel c*M + m only sees input channel c.
    dense = layer.to_dense_weight()
    for o in range(dense.shape[0]):
        others = [c for c in range(case["cin"]) if c != o // case["mult"]]
        assert torch.all(dense[o, others] == 0)
    np.testing.assert_allclose(as_np(layer.to_conv()(x)), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(conv_cases(ndims=(2,)), st.integers(1, 4))
def test_spatially_separable_matches_numpy_reference(case, rank):
    pads = reference_pads(case)
    assume(mode_ok(case, pads))
    layer = SpatiallySeparableConv2d(
        case["cin"], case["cout"], case["kernel"], stride=case["stride"], padding=case["padding"],
        dilation=case["dilation"], rank=rank, bias=case["bias"], padding_mode=case["mode"], dtype=torch.float64,
    )
    x = torch.randn(case["batch"], case["cin"], *case["size"], dtype=torch.float64)
    if not feasible(case, pads):
        with pytest.raises(ValueError, match="kernel_size"):
            layer(x)
        return
    v = as_np(layer.vertical.weight)[..., 0]  # (R, C, kh)
    h = as_np(layer.horizontal.weight)[:, :, 0, :]  # (N, R, kw)
    dense = np.zeros((case["cout"], case["cin"], *case["kernel"]))
    for r in range(rank):  # sum of `rank` outer products, written as loops on purpose
        for n in range(case["cout"]):
            for c in range(case["cin"]):
                dense[n, c] += np.outer(v[r, c], h[n, r])
    np.testing.assert_allclose(as_np(layer.to_dense_weight()), dense, rtol=1e-12, atol=1e-12)
    xp = np_pad(x.numpy(), pads, case["mode"])
    b = None if layer.horizontal.bias is None else as_np(layer.horizontal.bias)
    ref = np_conv(xp, dense, b, case["stride"], case["dilation"])
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_blueprint_matches_numpy_reference(case):
    """Pointwise first (at the input resolution), then the per-output-channel filter with the padding/stride."""
    nd, pads = case["nd"], reference_pads(case)
    assume(mode_ok(case, pads))
    layer = BLUE[nd](case["cin"], case["cout"], case["kernel"], stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], bias=case["bias"], padding_mode=case["mode"],
                     depth_multiplier=case["mult"], dtype=torch.float64)
    x = torch.randn(case["batch"], case["cin"], *case["size"], dtype=torch.float64)
    if not feasible(case, pads):
        with pytest.raises(ValueError, match="kernel_size"):
            layer(x)
        return
    mid = np_conv(x.numpy(), as_np(layer.pointwise.weight), None, (1,) * nd, (1,) * nd)
    b = None if layer.depthwise.bias is None else as_np(layer.depthwise.bias)
    ref = np_conv(np_pad(mid, pads, case["mode"]), as_np(layer.depthwise.weight), b, case["stride"],
                  case["dilation"], groups=case["cout"])
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    pw, dw, m = as_np(layer.pointwise.weight).reshape(case["cout"], case["mult"], case["cin"]), as_np(layer.depthwise.weight), case["mult"]
    dense = np.zeros((case["cout"], case["cin"], *case["kernel"]))
    for n in range(case["cout"]):  # W[n, c] = sum_m PW[n*M + m, c] DW[n, m], as loops on purpose
        for c in range(case["cin"]):
            for j in range(m):
                dense[n, c] += pw[n, j, c] * dw[n, j]
    np.testing.assert_allclose(as_np(layer.to_dense_weight()), dense, rtol=1e-12, atol=1e-12)
    # padding (any mode: it copies or zeroes pixels) commutes with the bias-free 1x1 step, so one dense conv equals it
    np.testing.assert_allclose(as_np(layer.to_conv()(x)), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(conv_cases(ndims=(2,)), st.integers(1, 5))
def test_cp_conv_matches_numpy_reference(case, rank):
    pads = reference_pads(case)
    assume(mode_ok(case, pads))
    layer = CPConv2d(case["cin"], case["cout"], case["kernel"], rank=rank, stride=case["stride"],
                     padding=case["padding"], dilation=case["dilation"], bias=case["bias"],
                     padding_mode=case["mode"], dtype=torch.float64)
    x = torch.randn(case["batch"], case["cin"], *case["size"], dtype=torch.float64)
    if not feasible(case, pads):
        with pytest.raises(ValueError, match="kernel_size"):
            layer(x)
        return
    f, v = as_np(layer.first.weight)[:, :, 0, 0], as_np(layer.vertical.weight)[:, 0, :, 0]
    h, last = as_np(layer.horizontal.weight)[:, 0, 0, :], as_np(layer.last.weight)[:, :, 0, 0]
    dense = np.zeros((case["cout"], case["cin"], *case["kernel"]))
    for r in range(rank):  # sum of rank-1 tensors, as loops on purpose
        for n in range(case["cout"]):
            for c in range(case["cin"]):
                dense[n, c] += last[n, r] * f[r, c] * np.outer(v[r], h[r])
    np.testing.assert_allclose(as_np(layer.to_dense_weight()), dense, rtol=1e-12, atol=1e-12)
    b = None if layer.last.bias is None else as_np(layer.last.bias)
    ref = np_conv(np_pad(x.numpy(), pads, case["mode"]), dense, b, case["stride"], case["dilation"])
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.integers(1, 6), st.integers(1, 6), st.integers(1, 2), st.integers(1, 2), st.booleans())
def test_pointwise_matches_numpy_reference(nd, cin_g, cout_g, groups, stride, bias):
    layer = PW[nd](cin_g * groups, cout_g * groups, bias=bias, stride=stride, groups=groups, dtype=torch.float64)
    x = torch.randn(2, cin_g * groups, *([5] * nd), dtype=torch.float64)
    b = None if layer.bias is None else as_np(layer.bias)
    ref = np_conv(x.numpy(), as_np(layer.weight), b, (stride,) * nd, (1,) * nd, groups=groups)
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    dense_ref = np_conv(x.numpy(), as_np(layer.to_dense_weight()), b, (stride,) * nd, (1,) * nd)
    np.testing.assert_allclose(dense_ref, ref, rtol=1e-10, atol=1e-10)


def test_sobel_is_one_separable_term():
    """The seeds' example: Sobel = [1, 2, 1]^T x [-1, 0, 1], as a rank-1 spatially separable layer."""
    layer = SpatiallySeparableConv2d(1, 1, 3, rank=1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.vertical.weight.copy_(torch.tensor([1.0, 2.0, 1.0]).view(1, 1, 3, 1))
        layer.horizontal.weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    assert torch.equal(layer.to_dense_weight()[0, 0], sobel)
    x = torch.randn(1, 1, 15, 15, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (1, 1, 13, 13)
    torch.testing.assert_close(y, F.conv2d(x, sobel.view(1, 1, 3, 3)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: DepthwiseConv1d(2, 3, padding="same", stride=2, depth_multiplier=2),
        lambda: DepthwiseConv2d(2, (2, 3), padding="same", stride=(2, 1)),
        lambda: DepthwiseConv3d(2, 2, padding=1),
        lambda: PointwiseConv2d(3, 4, groups=1),
        lambda: SeparableConv1d(2, 3, 3, padding="same", depthwise_bias=True),
        lambda: SeparableConv2d(2, 3, 3, stride=2, padding="same", depth_multiplier=2, depthwise_bias=True),
        lambda: SeparableConv3d(2, 3, 2, padding="same"),
        lambda: SpatiallySeparableConv2d(2, 3, (3, 2), padding="same", stride=2, rank=2),
        lambda: SeparableConv2d(2, 3, 3, padding=1, dw_act="tanh", pw_act="silu"),
        lambda: BlueprintSeparableConv1d(2, 3, 3, padding="same", stride=2, depth_multiplier=2),
        lambda: BlueprintSeparableConv2d(2, 3, (3, 2), padding="same", stride=2),
        lambda: BlueprintSeparableConv3d(2, 2, 2, padding=1),
        lambda: CPConv2d(2, 3, (3, 2), rank=2, padding="same", stride=2),
    ],
)
def test_gradcheck_float64(make):
    torch.manual_seed(0)
    layer = make().double()
    nd = (3 if isinstance(layer, (DepthwiseConv3d, SeparableConv3d, BlueprintSeparableConv3d))
          else 1 if isinstance(layer, (DepthwiseConv1d, SeparableConv1d, BlueprintSeparableConv1d)) else 2)
    x = torch.randn(2, layer.in_channels, *([5] * nd), dtype=torch.float64, requires_grad=True)
    params = tuple(p for p in layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x, *params), eps=1e-6, atol=1e-5)


def test_state_dict_keys_are_readable():
    layer = SeparableConv2d(4, 8, 3, padding="same", dw_norm="batchnorm", dw_act="relu", pw_norm="bn", pw_act="relu6")
    keys = set(layer.state_dict())
    assert {"depthwise.weight", "pointwise.weight", "pointwise.bias", "dw_norm.weight", "pw_norm.running_mean"} <= keys
    assert type(layer.depthwise) is nn.Conv2d and type(layer.pointwise) is nn.Conv2d
    assert layer.depthwise.groups == 4 and layer.pointwise.kernel_size == (1, 1)
    assert isinstance(layer.dw_act, nn.ReLU) and isinstance(layer.pw_act, nn.ReLU6)
    assert isinstance(layer.pad, nn.Identity)  # odd kernel, stride 1: the conv pads by itself


def test_injection_order_and_linear_bottleneck():
    layer = SeparableConv2d(
        3, 5, 3, padding=1, bias=False, dw_norm=nn.BatchNorm2d, dw_act=functools.partial(nn.ReLU6),
        pw_norm=functools.partial(nn.BatchNorm2d, momentum=0.01), pw_act=None,
    ).eval()
    x = torch.randn(2, 3, 7, 7)
    manual = layer.pw_norm(layer.pointwise(torch.clamp(layer.dw_norm(layer.depthwise(x)), 0, 6)))
    torch.testing.assert_close(layer(x), manual)
    assert layer.pw_norm.momentum == 0.01 and isinstance(layer.pw_act, nn.Identity)
    assert (layer(x) < 0).any()  # linear bottleneck: no activation after the pointwise step
    with pytest.raises(ValueError, match="dw_norm=None"):
        layer.to_dense_weight()


def test_parameter_counts_from_the_seeds():
    # 3 -> 64 filters, 3x3: standard conv with bias vs DW (with bias) + PW (with bias)
    assert sum(p.numel() for p in nn.Conv2d(3, 64, 3).parameters()) == 3 * 3 * 3 * 64 + 64
    layer = SeparableConv2d(3, 64, 3, depthwise_bias=True)
    assert sum(p.numel() for p in layer.parameters()) == (3 * 3 * 3 + 3) + (3 * 64 + 64)
    # Keras' SeparableConv2D: one bias, after the pointwise step.
    assert sum(p.numel() for p in SeparableConv2d(256, 256, 3, bias=False).parameters()) == 9 * 256 + 256 * 256


def test_channels_last_bfloat16_and_unbatched():
    torch.manual_seed(0)
    layer = SeparableConv2d(4, 6, 3, stride=2, padding="same", depthwise_bias=True)
    x = torch.randn(2, 4, 9, 9)
    ref = layer(x)
    torch.testing.assert_close(layer.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)), ref)
    torch.testing.assert_close(layer(x[0]), ref[0])
    bf = SeparableConv2d(4, 6, 3, stride=2, padding="same", depthwise_bias=True)
    bf.load_state_dict(layer.state_dict())
    out = bf.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_jit_trace_compile_and_export():
    torch.manual_seed(0)
    layer = SeparableConv2d(3, 4, 4, stride=2, padding="same", dw_norm="batchnorm", dw_act="relu").eval()
    x = torch.randn(1, 3, 11, 11)
    traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x))
    compiled = torch.compile(layer, backend="eager")  # dynamo capture of the padding logic; no C++ build needed
    torch.testing.assert_close(compiled(x), layer(x))
    exported = torch.export.export(layer, (x,)).module()
    torch.testing.assert_close(exported(x), layer(x))


@pytest.mark.slow
def test_torch_compile_inductor():
    torch.manual_seed(0)
    layer = SpatiallySeparableConv2d(3, 4, 3, stride=2, padding="same").eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(layer)(x), layer(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_matches():
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'sepconv[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'sepconv[onnx]')")
    import io
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(
        SeparableConv2d(3, 8, 3, stride=2, padding="same", dw_norm="bn", dw_act="relu"),
        SpatiallySeparableConv2d(8, 4, 3, padding="same"),
        DepthwiseConv2d(4, 2, padding="same"),
    ).eval()
    x = torch.randn(1, 3, 15, 15)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SeparableConv2d(0, 4, 3), "in_channels must be a positive int.*0"),
        (lambda: SeparableConv2d(3, -1, 3), "out_channels.*-1"),
        (lambda: SeparableConv2d(3, 4, 0), "kernel_size must be >= 1.*0"),
        (lambda: SeparableConv2d(3, 4, 3, stride=(1, 0)), r"stride must be >= 1.*\(1, 0\)"),
        (lambda: SeparableConv2d(3, 4, (3, 3, 3)), "kernel_size must be an int or a sequence of 2 ints"),
        (lambda: SeparableConv2d(3, 4, 3, depth_multiplier=0), "depth_multiplier.*0"),
        (lambda: SeparableConv2d(3, 4, 3, padding="full"), "padding must be 'same', 'valid'.*'full'"),
        (lambda: SeparableConv2d(3, 4, 3, padding=-1), "padding must be >= 0.*-1"),
        (lambda: SeparableConv2d(3, 4, 3, padding_mode="mirror"), "padding_mode must be one of.*'mirror'"),
        (lambda: SeparableConv2d(3, 4, 3, dw_act="relu7"), "dw_act must be None.*'relu7'"),
        (lambda: SeparableConv2d(3, 4, 3, pw_norm="layernorm2"), "pw_norm must be None.*'layernorm2'"),
        (lambda: SeparableConv2d(3, 4, 3, dw_norm=lambda n: 3), "dw_norm.*returned int"),
        (lambda: SpatiallySeparableConv2d(3, 4, 3, rank=0), "rank must be a positive int.*0"),
        (lambda: SpatiallySeparableConv2d(3, 4, (3, 3, 3)), "kernel_size"),
        (lambda: DepthwiseConv2d(3, 3, depth_multiplier=1.5), "depth_multiplier must be a positive int.*1.5"),
        (lambda: DepthwiseConv2d(4, 3, out_channels=6), r"out_channels=6 must equal in_channels \* depth_multiplier.*multiples of in_channels=4"),
        (lambda: DepthwiseConv2d(4, 3, out_channels=8, depth_multiplier=3), r"out_channels=8 must equal.*4 \* 3 = 12"),
        (lambda: PointwiseConv2d(4, 6, groups=4), "groups=4 must divide.*out_channels=6"),
        (lambda: SeparableConv2d(True, 4, 3), "in_channels must be a positive int.*True"),
    ],
)
def test_bad_arguments_name_argument_and_value(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "layer, shape",
    [
        (SeparableConv2d(3, 4, 3), (2, 5, 8, 8)),
        (SeparableConv2d(3, 4, 3), (2, 3, 8)),
        (DepthwiseConv2d(3, 3), (2, 4, 8, 8)),
        (PointwiseConv3d(3, 4), (1, 3, 4, 4)),
        (SpatiallySeparableConv2d(3, 4, 3), (1, 2, 3, 8, 8)),
    ],
)
def test_wrong_input_shape_is_a_value_error(layer, shape):
    with pytest.raises(ValueError, match=r"expects input of shape.*got \(" + ", ".join(map(str, shape))):
        layer(torch.randn(*shape))


def test_kernel_larger_than_valid_input():
    with pytest.raises(ValueError, match=r"kernel_size=\(5, 5\).*does not fit input size \(4, 9\)"):
        SeparableConv2d(3, 4, 5, padding="valid")(torch.randn(1, 3, 4, 9))
    # 'same' always forms an output of ceil(in / stride), even when the kernel exceeds the input
    assert SeparableConv2d(3, 4, 5, padding="same", stride=3)(torch.randn(1, 3, 4, 9)).shape == (1, 4, 2, 3)


def test_depthwise_out_channels_sets_the_multiplier():
    layer = DepthwiseConv2d(4, 3, out_channels=12)
    assert layer.depth_multiplier == 3 and layer.weight.shape == (12, 1, 3, 3)


def test_public_api():
    for name in sepconv.__all__:
        assert getattr(sepconv, name).__doc__, name


@pytest.mark.parametrize("cin,cout,k", [(64, 96, 3), (128, 32, (5, 3))])
def test_spatial_init_gives_the_composed_kernel_unit_fan_in_variance(cin, cout, k):
    """Both stages are variance-preserving, so Var(W_dense) = 1 / (C_in k_h k_w), 3x PyTorch's default for a
    dense conv; PyTorch's default per stage would give 1/9 of that (the vgg_blocks spatial variant then stalls)."""
    torch.manual_seed(0)
    layer = sepconv.SpatiallySeparableConv2d(cin, cout, k)
    kh, kw = (k, k) if isinstance(k, int) else k
    var = float(layer.to_dense_weight().detach().double().var())
    assert var == pytest.approx(1.0 / (cin * kh * kw), rel=0.1)
    bound = 1.0 / math.sqrt(layer.rank * kw)  # the bias keeps PyTorch's default for the horizontal conv
    assert float(layer.horizontal.bias.detach().abs().max()) <= bound


@pytest.mark.parametrize("make", [lambda: BlueprintSeparableConv2d(64, 96, 3, depth_multiplier=2),
                                  lambda: CPConv2d(64, 96, 3, rank=256),
                                  lambda: SeparableConv2d(64, 96, 3, depth_multiplier=2)])
def test_composed_layers_init_gives_unit_fan_in_variance(make):
    """Like the spatial layer: stages with nothing nonlinear between them are each variance-preserving."""
    torch.manual_seed(0)
    layer = make()
    assert float(layer.to_dense_weight().detach().double().var()) == pytest.approx(1.0 / (64 * 9), rel=0.15)


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["reflect", "circular", "replicate", "zeros"]), size=st.integers(1, 5),
       pad=st.integers(0, 6), kind=st.sampled_from(["separable", "depthwise", "spatial"]))
def test_padding_wider_than_the_input_is_a_value_error_naming_the_mode(mode, size, pad, kind):
    """Reflect/circular padding that does not fit the input: a ValueError, never PyTorch's RuntimeError."""
    layer = {"separable": lambda: sepconv.SeparableConv2d(2, 3, 3, padding=pad, padding_mode=mode),
             "depthwise": lambda: sepconv.DepthwiseConv2d(2, 3, padding=pad, padding_mode=mode),
             "spatial": lambda: sepconv.SpatiallySeparableConv2d(2, 3, (3, 3), padding=pad, padding_mode=mode)}[kind]()
    x = torch.randn(1, 2, size, size + 1)
    fits = {"reflect": pad < size, "circular": pad <= size}.get(mode, True) and size + 2 * pad >= 3
    if fits:
        assert layer(x).shape[-2:] == (size + 2 * pad - 2, size + 2 * pad - 1)
    else:
        with pytest.raises(ValueError, match="padding|kernel|input"):
            layer(x)
