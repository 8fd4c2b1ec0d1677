"""ConvSpec against PyTorch's own shape rules and TensorFlow's documented 'same' rule."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sepconv.geometry import ConvSpec, normalize_padding, torch_pad_arg

from reference import tf_same_pads

F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 3), st.data(),
)
def test_output_size_matches_pytorch(nd, data):
    k = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    p = tuple(data.draw(st.integers(0, 3)) for _ in range(nd))
    size = tuple(data.draw(st.integers(1, 10)) for _ in range(nd))
    spec = ConvSpec.make(2, 3, k, s, p, d, ndim=nd)
    fits = all(n + 2 * q >= (kk - 1) * dd + 1 for n, q, kk, dd in zip(size, p, k, d))
    x, w = torch.zeros(1, 2, *size), torch.zeros(3, 2, *k)
    if fits:
        y = F_CONV[nd](x, w, stride=s, padding=p, dilation=d)
        assert spec.output_shape(size) == tuple(y.shape[1:])
    else:
        with pytest.raises(ValueError, match="does not fit"):
            spec.output_size(size)
        with pytest.raises(RuntimeError):
            F_CONV[nd](x, w, stride=s, padding=p, dilation=d)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.data())
def test_in_bounds_taps_count_what_a_convolution_of_ones_sums(nd, data):
    """A convolution of an all-ones input, zero padded, with an all-ones kernel sums to the in-bounds taps."""
    k = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    size = tuple(data.draw(st.integers(1, 10)) for _ in range(nd))
    padding = data.draw(st.one_of(st.just("same"), st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3))
                                                             for _ in range(nd)])))
    spec = ConvSpec.make(1, 1, k, s, padding, d, ndim=nd)
    try:
        out = spec.output_size(size)
    except ValueError:
        return
    x = F.pad(torch.ones(1, 1, *size, dtype=torch.float64), torch_pad_arg(spec.pads(size)))
    y = F_CONV[nd](x, torch.ones(1, 1, *k, dtype=torch.float64), stride=s, dilation=d)
    assert spec.in_bounds_taps(size) == int(y.sum().item())
    assert spec.in_bounds_taps(size) <= math.prod(out) * spec.kernel_volume
    if all(p == (0, 0) for p in spec.pads(size)):
        assert spec.in_bounds_taps(size) == math.prod(out) * spec.kernel_volume


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 20), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_same_padding_follows_tensorflow(size, k, s, d):
    spec = ConvSpec.make(1, 1, k, s, "same", d, ndim=1)
    assert spec.pads((size,)) == (tf_same_pads(size, k, s, d),)
    assert spec.output_size((size,)) == (math.ceil(size / s),)
    if s == 1:  # PyTorch's own padding='same' (stride 1 only) agrees, extra pixel at the end
        y = F.conv1d(torch.ones(1, 1, size), torch.ones(1, 1, k), padding="same", dilation=d)
        assert y.shape[-1] == size
        assert spec.static_pads == spec.pads((size,))
    else:
        assert spec.static_pads is None


def test_counts_and_shapes():
    spec = ConvSpec.make(8, 16, (3, 5), groups=4, bias=True)
    assert spec.weight_shape == (16, 2, 3, 5)
    assert spec.weight_count == 16 * 2 * 15 and spec.bias_count == 16
    assert spec.param_count == sum(p.numel() for p in torch.nn.Conv2d(8, 16, (3, 5), groups=4).parameters())
    assert normalize_padding("valid", 2) == ((0, 0), (0, 0))
    assert torch_pad_arg(((1, 2), (3, 4))) == [3, 4, 1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_channels=6, out_channels=4, kernel_size=3, groups=4), "groups=4 must divide both in_channels=6"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding=((1, 2),)), "padding must be"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding=((1, -2), (0, 0))), "padding must be >= 0"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, ndim=4), "ndim must be 1, 2 or 3"),
        (dict(in_channels=4, out_channels=4, kernel_size="3"), "kernel_size must be an int"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConvSpec.make(**kwargs)


def test_bad_input_sizes():
    spec = ConvSpec.make(1, 1, 3)
    with pytest.raises(ValueError, match="has 1 spatial dimensions"):
        spec.output_size((5,))
    with pytest.raises(ValueError, match=r"input size must be >= 1.*\(0, 5\)"):
        spec.output_size((0, 5))
