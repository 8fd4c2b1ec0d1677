"""bench_kernel_ab.py: the library it swaps in is the one every kernel entry point runs (no kernels built)."""

import pytest
import torch

import bench_kernel_ab as ab
from sepconv import SeparableConv2d
from sepconv.backends import native, training
from sepconv.backends.fused import FusedSeparableConv2d


def test_kernels_from_reaches_the_fused_layer_and_the_training_kernels():
    if not native.available():
        pytest.skip(f"needs sepconv's C kernels: {native.unavailable_reason()}")
    layer = SeparableConv2d(8, 16, 3, padding=1)
    fused = FusedSeparableConv2d(layer.depthwise, layer.pointwise)  # binds its build at construction
    built = fused._library()
    base, head = object(), object()
    current = [base]
    with ab.kernels_from(current):
        assert fused._library() is base
        assert training._kernel_library(torch.zeros(1)) is base
        current[0] = head  # read at each call, as the interleaved rounds switch libraries
        assert fused._library() is head
        assert native.load()[0] is head
    assert fused._library() is built
    assert native.load()[0] is built


def test_kernels_from_restores_the_loaders_after_an_error():
    saved = native.load, native.load_for
    with pytest.raises(RuntimeError):
        with ab.kernels_from([object()]):
            raise RuntimeError("a shape failed")
    assert (native.load, native.load_for) == saved
