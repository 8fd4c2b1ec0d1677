"""sepconv.backends.onednn: packed oneDNN convolutions compute what nn.Conv2d (+ ReLU/ReLU6) computes."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.models import build_model
from sepconv.backends.fused import fused_available
from sepconv.backends.onednn import PackedConv2d, onednn_available, pack_convolutions

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build lacks the oneDNN (mkldnn) operators")

ACTIVATIONS = {None: lambda y: y, "relu": F.relu, "relu6": lambda y: y.clamp(0, 6)}
MODULES = {None: None, "relu": nn.ReLU(), "relu6": nn.ReLU6()}


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3), st.sampled_from([1, 2, 3]), st.integers(1, 4), st.sampled_from([1, 3, 5]),
    st.sampled_from([1, 2]), st.integers(0, 2), st.sampled_from([1, 2]), st.booleans(),
    st.sampled_from([None, "relu", "relu6"]), st.integers(5, 12), st.integers(0, 999),
)
def test_packed_conv_equals_conv2d(batch, groups, per_group, k, stride, padding, dilation, bias, act, size, seed):
    torch.manual_seed(seed)
    cin, cout = groups * per_group, groups * (per_group + 1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    if (size + 2 * padding - dilation * (k - 1)) < 1:
        return  # no output pixel: nn.Conv2d refuses it too
    x = 3 * torch.randn(batch, cin, size, size)
    packed = PackedConv2d(conv, MODULES[act])
    with torch.no_grad():
        expected = ACTIVATIONS[act](F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation, groups))
        got = packed(x)
        again = packed(x[:1])  # another input size: repacked, still right
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected[:1], rtol=1e-4, atol=1e-4)


def test_packed_depthwise_keeps_sepconvs_own_padding():
    layer = sepconv.DepthwiseConv2d(6, 4, stride=2, padding="same", depth_multiplier=2).eval()  # dynamic 'same' pad
    x = torch.randn(2, 6, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(PackedConv2d(layer)(x), layer(x), rtol=1e-5, atol=1e-5)


def test_packed_conv_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="integer zero padding"):
        PackedConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="integer zero padding"):
        PackedConv2d(nn.Conv2d(2, 2, 3).double())
    with pytest.raises(ValueError, match="activation must be one of"):
        PackedConv2d(nn.Conv2d(2, 2, 3), nn.GELU())
    packed = PackedConv2d(nn.Conv2d(2, 2, 3))
    with pytest.raises(RuntimeError, match="inference-only"):
        packed(torch.randn(1, 2, 5, 5, requires_grad=True))
    with pytest.raises(ValueError, match="4D float32 CPU input"):
        packed(torch.randn(1, 2, 5, 5, dtype=torch.float64))


def test_packed_conv_keeps_only_a_few_reordered_weights():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    packed = PackedConv2d(conv)
    with torch.no_grad():
        for batch in range(1, 8):  # seven input shapes
            x = torch.randn(batch, 3, 6, 6)
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)
    assert list(packed._packed) == [(b, 3, 6, 6) for b in range(4, 8)]  # the four most recent


def test_packed_conv_survives_deepcopy_and_pickle_after_use():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    packed = PackedConv2d(conv, nn.ReLU())
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        y = packed(x)
        for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
            torch.testing.assert_close(clone(x), y)


def _trained_like(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name,variant", [("mobilenet_v1", "separable"), ("mobilenet_v2", "separable"),
                                          ("vgg_blocks", "standard"), ("vgg_blocks", "separable")])
def test_pack_convolutions_keeps_the_networks_function(name, variant):
    kwargs = {"alpha": 0.25} if name.startswith("mobilenet") else {}
    model = _trained_like(build_model(name, variant=variant, num_classes=5, **kwargs), 0)
    sepconv.fold_batchnorm(model)
    x = torch.randn(2, 3, 32, 32)
    packed = copy.deepcopy(model)
    choices = pack_convolutions(packed, measure=False)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(choices) == n_convs and all(c.startswith(("packed", "fused")) for c in choices.values())
    if fused_available() and variant == "separable":  # measure=False fuses every separable layer it can
        assert any(c.startswith("fused") for c in choices.values())
    assert not any(isinstance(m, nn.Conv2d) for m in packed.modules())
    fused = sum("+" in c for c in choices.values())
    relus = lambda m: sum(isinstance(a, (nn.ReLU, nn.ReLU6)) for a in m.modules())  # noqa: E731
    assert fused > 0 and relus(packed) == relus(model) - fused  # each fused activation left the graph
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-3, atol=1e-4)


def test_pack_convolutions_measures_each_layer():
    model = _trained_like(build_model("mobilenet_v1", alpha=0.25, num_classes=5), 1)
    sepconv.fold_batchnorm(model)
    x = torch.randn(1, 3, 32, 32)
    packed = copy.deepcopy(model)
    choices = pack_convolutions(packed, x, rounds=1)
    assert set(choices.values()) <= {"eager", "packed", "packed+relu", "fused", "fused+relu"}
    kept = sum(c == "eager" for c in choices.values())
    assert sum(isinstance(m, nn.Conv2d) for m in packed.modules()) == kept
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        pack_convolutions(model.train(), x)
    with pytest.raises(ValueError, match="needs a sample_input"):
        pack_convolutions(model.eval(), None)


def test_optimize_onednn_backend():
    model = _trained_like(build_model("mobilenet_v2", alpha=0.35, num_classes=10), 3)
    x = torch.randn(1, 3, 48, 48)
    fast = sepconv.optimize(model, x, backends=("onednn",))
    assert fast.backend == "onednn" and fast.memory_format == torch.channels_last
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(fast.layer_choices) == n_convs  # each conv was timed eager vs packed
    assert set(fast.layer_choices.values()) <= {"eager", "packed", "packed+relu6", "fused", "fused+relu6"}
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="'onednn', which needs a 4D float32 CPU"):
        sepconv.optimize(nn.Conv1d(1, 1, 1), torch.randn(1, 1, 4), backends=("onednn",))


def test_layers_the_fused_kernel_cannot_run_are_packed_step_by_step():
    model = nn.Sequential(
        sepconv.SeparableConv2d(4, 6, 3, stride=2, padding="same", depth_multiplier=2),  # multiplier 2: not fusable
        nn.ReLU(),
        sepconv.SeparableConv2d(6, 5, 3, padding=1, dw_act="relu6"),
        nn.ReLU6(),
    ).eval()
    x = torch.randn(2, 4, 11, 11)
    packed = copy.deepcopy(model)
    choices = pack_convolutions(packed, measure=False)
    assert choices["0.depthwise"] == "packed" and choices["0.pointwise"] == "packed+relu"
    if fused_available():
        assert choices["2.depthwise"] == "fused+relu6" and choices["2.pointwise"] == "fused+relu6"
        assert type(packed[2]).__name__ == "FusedSeparableConv2d"  # the whole layer became one module
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_separable_layer_as_the_whole_model_is_fused_in_place():
    layer = sepconv.SeparableConv2d(8, 24, 3, padding="same", pw_act="relu").eval()
    x = torch.randn(3, 8, 10, 10)
    packed = copy.deepcopy(layer)
    choices = pack_convolutions(packed, measure=False)
    expected = "fused+relu" if fused_available() else "packed+relu"
    assert choices["pointwise"] == expected and choices["depthwise"] == expected.split("+")[0]
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(packed(x[:0]), layer(x[:0]))  # an empty batch too


@pytest.mark.skipif(not fused_available(), reason="the fused kernel does not build here")
def test_optimizing_one_separable_layer_runs_the_fused_module_alone():
    """The onednn engine on a model that is one separable layer: its candidate is the module that replaced the
    layer's steps, not the layer with six Identity children around it."""
    from sepconv.backends.engine import BuildContext
    from sepconv.backends.fused import FusedSeparableConv2d
    from sepconv.backends.onednn import ENGINE

    layer = sepconv.SeparableConv2d(8, 24, 3, padding=1, pw_act="relu6").eval()
    x = torch.randn(2, 8, 9, 9)
    built = ENGINE.build(BuildContext(layer, x, False, {}))["onednn"]
    assert isinstance(built.module, FusedSeparableConv2d)
    assert built.layer_choices == {"depthwise": "fused", "pointwise": "fused+relu6"}
    with torch.no_grad():
        torch.testing.assert_close(built.module(x.contiguous(memory_format=torch.channels_last)), layer(x),
                                   rtol=1e-4, atol=1e-5)
    # a layer kept as it is (or run step by step) stays the model
    kept = sepconv.SeparableConv2d(4, 6, 3, depth_multiplier=2).eval()  # multiplier 2: not fusable
    stepwise = ENGINE.build(BuildContext(kept, torch.randn(1, 4, 7, 7), False, {}))["onednn"]
    assert isinstance(stepwise.module, sepconv.SeparableConv2d)
    assert isinstance(stepwise.module.depthwise, PackedConv2d) and isinstance(stepwise.module.pointwise, PackedConv2d)


@pytest.mark.parametrize("stride,act", [(1, None), (2, nn.ReLU()), (2, nn.ReLU6())])
def test_a_separable_layer_merged_into_one_packed_convolution_computes_the_layer(stride, act):
    """optimize's 'dense' choice: the layer's to_conv(), packed, with the following activation fused."""
    from sepconv.backends.onednn import _dense_module

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(5, 7, 3, stride=stride, padding="same").eval()
    x = torch.randn(2, 5, 11, 10)
    with torch.no_grad():
        expected = layer(x) if act is None else act(layer(x))
        got = _dense_module(layer, act)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
