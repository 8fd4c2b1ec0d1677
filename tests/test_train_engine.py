"""sepconv.train_engine: the 1x1 training engine computes the same values and gradients as nn.Conv2d."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv.models import build_model
from sepconv.train_engine import Pointwise1x1, tune_training, untune_training, use_gemm_engine, uses_gemm_engine


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
    pointwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert set(choices) == set(pointwise) and set(choices.values()) <= {"eager", "gemm"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm stats untouched
    # force the engine everywhere, then compare a training step with eager PyTorch's
    for name in pointwise:
        use_gemm_engine(model.get_submodule(name))
    reference = copy.deepcopy(model)
    assert untune_training(reference) == len(pointwise)
    assert not any(uses_gemm_engine(m) for m in reference.modules())
    for m in (model, reference):  # eval: no dropout randomness between the two (gradients still flow)
        m.eval()(x).square().mean().backward()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    clone = pickle.loads(pickle.dumps(model))  # a tuned model still pickles
    assert sum(uses_gemm_engine(m) for m in clone.modules()) == len(pointwise)
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        tune_training(model, [1, 2])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        tune_training(model, x, rounds=0)
    with pytest.raises(ValueError, match="use_gemm_engine needs a 1x1"):
        use_gemm_engine(nn.Conv2d(2, 2, 3))
