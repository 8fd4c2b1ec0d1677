"""sepconv.backends.cudnn: Conv2d + ReLU pairs as cuDNN's fused convolution, and optimize's cudnn_relu backend.

The fused operator exists on CUDA only; on the CPU the module computes the
same function with PyTorch's operators, so the site selection, the argument
wiring (against a NumPy reference) and training through it are tested
everywhere, the cuDNN operator itself where a CUDA device is present.
"""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv import SeparableConv2d
from sepconv.backends.cudnn import CudnnConvReLU, fuse_conv_relu
from sepconv.backends.engine import check_close

from reference import np_conv

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.fixture(autouse=True)
def ieee_float32(monkeypatch):
    """Full float32 convolutions on CUDA: TF32's rounding would blur the comparisons below."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 2), st.sampled_from([1, 2, 4]), st.integers(1, 3), st.sampled_from([1, 3, 5]),
    st.sampled_from([1, 2]), st.integers(0, 2), st.sampled_from([1, 2]), st.booleans(), st.integers(5, 10),
    st.integers(0, 999),
)
def test_conv_relu_equals_a_reference(device, batch, groups, per_group, k, stride, padding, dilation, bias, size,
                                      seed):
    if (size + 2 * padding - dilation * (k - 1)) < 1:
        return  # no output pixel
    torch.manual_seed(seed)
    cin, cout = groups * per_group, groups * (per_group + 1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    x = torch.randn(batch, cin, size, size)
    padded = np.pad(x.double().numpy(), [(0, 0), (0, 0), (padding, padding), (padding, padding)])
    expected = np.maximum(np_conv(padded, conv.weight.detach().double().numpy(),
                                  None if conv.bias is None else conv.bias.detach().double().numpy(),
                                  (stride, stride), (dilation, dilation), groups), 0)
    fused = CudnnConvReLU(conv.to(device))
    with torch.no_grad():
        got = fused(x.to(device))
    np.testing.assert_allclose(got.cpu().double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_fused_module_trains_and_shares_the_convolutions_parameters():
    conv = nn.Conv2d(3, 4, 3, padding=1, groups=1).double()
    fused = CudnnConvReLU(conv)
    assert fused.weight is conv.weight and fused.bias is conv.bias
    assert set(fused.state_dict()) == set(conv.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fused, (x,))


def test_refuses_what_cudnn_cannot_run():
    for conv in (nn.Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                 nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="integer zero padding"):
            CudnnConvReLU(conv)
    with pytest.raises(ValueError, match="'cudnn_relu', which needs a sample_input on a CUDA device"):
        sepconv.optimize(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 4, 4), backends=("cudnn_relu",))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Identity(), nn.ReLU(inplace=True),                     # fused
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),                            # BN between: not
        nn.Conv2d(8, 8, 1), nn.ReLU6(),                                                        # ReLU6: not
        SeparableConv2d(8, 16, 3, padding=1, dw_act="relu", pw_act="relu"),                    # pointwise only
        SeparableConv2d(16, 16, 3, padding=1),                                                 # then the next ReLU
        nn.ReLU(),
        nn.Conv2d(16, 4, 3, padding="same"), nn.ReLU(),                                        # 'same': not
    ).eval()


def test_fuse_conv_relu_picks_the_pairs_and_keeps_the_function():
    model = net()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
    fused = copy.deepcopy(model)
    names = fuse_conv_relu(fused)
    assert names == ["8.pointwise", "9.pointwise", "0"]
    assert isinstance(fused[0], CudnnConvReLU) and isinstance(fused[2], nn.Identity)
    assert isinstance(fused[8].pointwise, CudnnConvReLU) and isinstance(fused[8].pw_act, nn.Identity)
    assert isinstance(fused[8].depthwise, nn.Conv2d) and isinstance(fused[8].dw_act, nn.ReLU)  # depthwise left
    assert isinstance(fused[10], nn.Identity) and isinstance(fused[5], nn.ReLU) and isinstance(fused[12], nn.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected)
    everything = copy.deepcopy(model)
    assert fuse_conv_relu(everything, depthwise=True) == ["8.depthwise", "8.pointwise", "9.pointwise", "0"]
    with torch.no_grad():
        torch.testing.assert_close(everything(x), expected)
    assert fuse_conv_relu(everything) == []  # nothing left to fuse


def test_check_close_is_relative_to_the_output_scale():
    x32 = torch.zeros(1)
    big = torch.full((3,), 1000.0)
    check_close(big + 0.05, big, x32, "a")  # 5e-5 of the largest output
    with pytest.raises(RuntimeError, match="a output differs.*tolerance 0.0001"):
        check_close(big + 0.5, big, x32, "a")
    check_close(big + 5.0, big, x32.bfloat16(), "b")  # half precision: 1e-2 of the largest output
    with pytest.raises(RuntimeError, match="shape"):
        check_close(big[:2], big, x32, "c")
    with pytest.raises(RuntimeError, match="differs"):
        check_close(big * float("nan"), big, x32, "d")


@cuda
def test_the_cudnn_operator_runs_in_inference_and_autograd_otherwise(monkeypatch):
    calls = []
    real = torch.cudnn_convolution_relu

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(torch, "cudnn_convolution_relu", spy)
    fused = CudnnConvReLU(nn.Conv2d(4, 6, 3, padding=1, bias=False).cuda())
    x = torch.randn(2, 4, 8, 8, device="cuda")
    with torch.no_grad():
        y = fused(x)
    assert len(calls) == 1 and (y >= 0).all()
    fused(x).sum().backward()  # parameters want gradients: autograd's operators, no cuDNN fused call
    assert len(calls) == 1 and fused.weight.grad is not None


@cuda
def test_optimize_with_only_the_cudnn_backend():
    """(optimize's default candidates on CUDA, the cuDNN-fused ones among them: tests/test_cuda_graph.py)"""
    model = net().cuda()
    x = torch.randn(2, 3, 9, 9, device="cuda")
    only = sepconv.optimize(model, x, backends=("cudnn_relu",), measure=False)
    assert only.backend == "cudnn_relu" and only.candidate == "cudnn_relu" and isinstance(only.model[0], CudnnConvReLU)
    with torch.no_grad():
        torch.testing.assert_close(only(x), model(x), rtol=1e-4, atol=1e-4)
