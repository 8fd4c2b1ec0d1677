"""bench_tile.py: a tile run as given is the one the kernel runs, and the layer still computes its output."""

import pytest
import torch
from torch import nn

import bench_tile
from sepconv.backends import fused, native


def test_a_tile_as_given_reaches_the_kernel_and_keeps_the_output():
    if not native.available():
        pytest.skip(f"needs sepconv's C kernels: {native.unavailable_reason()}")
    torch.manual_seed(0)
    layer = fused.FusedSeparableConv2d(nn.Conv2d(16, 16, 3, 2, 1, groups=16), nn.Conv2d(16, 40, 1)).eval()
    x = torch.randn(2, 16, 30, 30).contiguous(memory_format=torch.channels_last)
    copied = bench_tile.scheduled_as(layer, x, 7, 1)  # 7 pixels: tiles end inside the 15-pixel rows
    plan = copied._plan(2, 30, 30, max(1, torch.get_num_threads()))[2]
    assert plan[fused._ARG_TILE] == 7 and plan[fused._ARG_GROUPS] == 1
    assert plan[fused._ARG_JOB_END] == 2 * -(-15 * 15 // 7)  # every (image, tile) job
    assert layer.kernel_tile(2, 30, 30) != 7  # the module itself keeps its schedule
    with torch.no_grad():
        torch.testing.assert_close(copied(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text", ["0,12", "12,a", ","])
def test_tiles_must_be_positive_integers(text):
    with pytest.raises(ValueError, match="--tiles must be comma-separated integers >= 1"):
        bench_tile.parse_tiles(text)
    assert bench_tile.parse_tiles("112, 224") == [112, 224]
    assert bench_tile.parse_tiles("") == []  # no --tiles: the shipped and stride-1 schedules only
