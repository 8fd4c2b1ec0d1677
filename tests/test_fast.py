"""sepconv.optimize: the same function as the eval-mode model, with BatchNorm folded."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.models import build_model


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.sampled_from([1, 2]), st.sampled_from(["same", 1]), st.integers(0, 999))
def test_optimize_equals_eval_model(cin, cout, stride, padding, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(cin, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        sepconv.SeparableConv2d(8, cout, 3, stride=stride, padding=padding, bias=False,
                                dw_norm="batchnorm", dw_act="relu6", pw_norm="batchnorm", pw_act=None),
    )
    model = trained_like(model, seed)
    x = torch.randn(2, cin, 9, 9)
    fast = sepconv.optimize(model, x, measure=False)
    assert fast.folded == 3 and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_optimize_measures_and_keeps_mobilenet_v2_outputs():
    model = trained_like(build_model("mobilenet_v2", alpha=0.35, num_classes=10), 0)
    x = torch.randn(1, 3, 64, 64)
    fast = sepconv.optimize(model, x, rounds=2)
    assert set(fast.timings_ms) == {"original", "nchw", "channels_last"}
    assert fast.memory_format in (torch.contiguous_format, torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-3, atol=1e-4)


def test_fold_batchnorm_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        sepconv.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        sepconv.optimize(nn.Conv2d(1, 1, 1), [1, 2])
