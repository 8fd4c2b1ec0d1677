"""sepconv.backends.fused: the fused depthwise -> pointwise kernel computes what the two convolutions compute."""

import platform
from array import array

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.backends import native
import sepconv.backends.fused as fused_module
from sepconv.backends.fused import (STREAM_MIN_BYTES, STREAMED_FLAT_TILE_BYTES, FusedSeparableConv2d, balanced_tile,
                                    fusable, fused_available, fused_unavailable_reason, kernel_schedule, row_tile,
                                    streamed_flat_tile)

needs_kernel = pytest.mark.skipif(not fused_available(), reason=f"fused kernel unavailable: {fused_unavailable_reason()}")
ACTS = {None: (None, lambda y: y), "relu": (nn.ReLU(), F.relu), "relu6": (nn.ReLU6(), lambda y: y.clamp(0, 6))}


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 70), st.integers(1, 80), st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 2]),
    st.integers(0, 3), st.sampled_from([1, 2]), st.booleans(), st.sampled_from([None, "relu", "relu6"]),
    st.sampled_from([None, "relu", "relu6"]), st.integers(3, 13), st.integers(3, 30), st.sampled_from([1, 2]),
    st.integers(0, 9999), st.booleans(),
)
def test_fused_equals_depthwise_then_pointwise(batch, cin, cout, k, stride, padding, dilation, bias, dw_act, pw_act,
                                               h, w, threads, seed, stream):
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        return  # no output pixel
    check_against_reference(batch, cin, cout, k, stride, padding, dilation, bias, dw_act, pw_act, h, w, threads, seed,
                            stream=stream)


def check_against_reference(batch, cin, cout, k, stride, padding, dilation, bias, dw_act, pw_act, h, w, threads, seed,
                            tile=None, stream=False):
    torch.manual_seed(seed)
    dw = nn.Conv2d(cin, cin, k, stride, padding, dilation, groups=cin, bias=bias)
    pw = nn.Conv2d(cin, cout, 1, bias=bias)
    x = 2 * torch.randn(batch, cin, h, w)
    layer = FusedSeparableConv2d(dw, pw, ACTS[dw_act][0], ACTS[pw_act][0])
    if tile is not None:
        layer.tile = tile  # small tiles: tile edges fall inside rows and inside the 8-pixel depthwise blocks
    previous, previous_stream = torch.get_num_threads(), fused_module.STREAM_MIN_BYTES
    torch.set_num_threads(threads)  # 2 threads: jobs split over a pool (and over output channels for one tile)
    # stream: every output written with non-temporal stores where the kernel can (Cout a multiple of 16)
    fused_module.STREAM_MIN_BYTES = 0 if stream else 2**62
    try:
        with torch.no_grad():
            got = layer(x)
            # independent reference: the two convolutions in float64
            ref = ACTS[pw_act][1](F.conv2d(ACTS[dw_act][1](F.conv2d(
                x.double(), dw.weight.double(), None if dw.bias is None else dw.bias.double(), stride, padding,
                dilation, cin)), pw.weight.double(), None if pw.bias is None else pw.bias.double()))
    finally:
        torch.set_num_threads(previous)
        fused_module.STREAM_MIN_BYTES = previous_stream
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@needs_kernel
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 40), st.integers(1, 40), st.sampled_from([3, 5, 7]), st.integers(0, 3),
       st.integers(5, 40), st.integers(1, 50), st.sampled_from([1, 2]), st.integers(0, 9999), st.booleans())
def test_fused_with_small_tiles_and_wide_rows(batch, cin, cout, k, padding, w, tile, threads, seed, stream):
    """Stride 1, dilation 1: the depthwise step's 8-pixel sliding-window blocks, cut by tile edges anywhere."""
    if w + 2 * padding < k:
        return
    check_against_reference(batch, cin, cout, k, 1, padding, 1, True, "relu", None, 9, w, threads, seed, tile=tile,
                            stream=stream)


@needs_kernel
@pytest.mark.parametrize("cout", [20, 32, 52, 64])
@pytest.mark.parametrize("stream", [False, True])
def test_every_register_block_kind(cout, stream):
    """Tiles of 18 pixels (three full 6-row register blocks) and of 16 (a partial block), with a full last weight
    panel (32, 64 outputs) and a partial one of 20 columns (20, 52 outputs): each register block path."""
    for tile in (18, 16):
        check_against_reference(2, 40, cout, 3, 1, 1, 1, True, None, "relu6", 9, 12, 1, cout, tile=tile,
                                stream=stream)


@needs_kernel
@pytest.mark.parametrize("cout", [16, 32, 48, 64, 96])
def test_streamed_output_equals_the_cached_one(cout):
    """Non-temporal stores (outputs of STREAM_MIN_BYTES or more) write the same bits as plain stores."""
    torch.manual_seed(cout)
    layer = FusedSeparableConv2d(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.Conv2d(24, cout, 1))
    x = torch.randn(3, 24, 20, 21)
    previous = fused_module.STREAM_MIN_BYTES
    try:
        with torch.no_grad():
            fused_module.STREAM_MIN_BYTES = 2**62
            plain = layer(x)
            fused_module.STREAM_MIN_BYTES = 0
            streamed = layer(x)
    finally:
        fused_module.STREAM_MIN_BYTES = previous
    assert torch.equal(plain, streamed)


@needs_kernel
def test_float32_output_whatever_the_default_dtype():
    dw, pw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1)
    layer, x = FusedSeparableConv2d(dw, pw), torch.randn(2, 8, 9, 9)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the output buffer must still be float32: the kernel writes float32
    try:
        with torch.no_grad():
            got = layer(x)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(got, pw(dw(x)), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_fused_separable_layer_with_same_padding_and_stride():
    layer = sepconv.SeparableConv2d(12, 40, 3, stride=2, padding="same", dw_act="relu6").eval()  # dynamic 'same' pad
    x = torch.randn(2, 12, 15, 16)
    fused = FusedSeparableConv2d(layer.depthwise, layer.pointwise, layer.dw_act, pad=layer.pad)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), layer(x), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_one_layer_called_on_changing_sizes_threads_and_tiles():
    """The per-size plan cache: a layer reused on other input sizes, thread counts, tiles and streaming
    thresholds computes each call from that call's own geometry."""
    torch.manual_seed(5)
    dw, pw = nn.Conv2d(20, 20, 3, stride=2, padding=1, groups=20), nn.Conv2d(20, 32, 1)
    layer = FusedSeparableConv2d(dw, pw)
    previous, previous_stream = torch.get_num_threads(), fused_module.STREAM_MIN_BYTES
    try:
        for (n, h, w), threads, tile, stream in [((2, 9, 9), 1, None, False), ((2, 12, 8), 1, None, False),
                                                 ((2, 9, 9), 1, None, False), ((1, 16, 7), 2, None, True),
                                                 ((1, 16, 7), 2, None, False), ((2, 9, 9), 2, 12, False),
                                                 ((3, 5, 12), 1, 6, True), ((2, 9, 9), 1, 12, True),
                                                 ((1, 16, 7), 1, 30, False)]:
            torch.set_num_threads(threads)
            if tile is not None:
                layer.tile = tile
            fused_module.STREAM_MIN_BYTES = 0 if stream else 2**62
            x = torch.randn(n, 20, h, w)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), pw(dw(x)), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(previous)
        fused_module.STREAM_MIN_BYTES = previous_stream


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.one_of(st.integers(5, 40), st.sampled_from([16, 32, 48])),
       st.sampled_from([1, 2, 3, 3, 5, 7]), st.sampled_from([3, 5]), st.integers(0, 3), st.integers(0, 3),
       st.integers(1, 14), st.integers(1, 30), st.integers(1, 120), st.booleans(), st.integers(0, 9999))
def test_fused_row_pairs_with_any_kernel_height_padding_and_tile(batch, cin, kh, kw, ph, pw_, h, w, tile, bias, seed):
    """Stride 1, dilation 1, kernel width 3 or 5: the depthwise step computes two output rows at once (sharing
    their input rows) for the whole rows of a tile. Non-square kernels, padding above, below or beyond the kernel's
    reach, images of one or two rows, tiles that hold no, one or several whole rows and start or end mid-row; whole
    vectors of channels (16, 32, 48) drawn often, for the 3x3 row function's segments."""
    if h + 2 * ph < kh or w + 2 * pw_ < kw:
        return  # no output pixel
    torch.manual_seed(seed)
    dw = nn.Conv2d(cin, cin, (kh, kw), 1, (ph, pw_), groups=cin, bias=bias)
    pw = nn.Conv2d(cin, 24, 1, bias=bias)
    layer = FusedSeparableConv2d(dw, pw, nn.ReLU6())
    layer.tile = tile
    x = 2 * torch.randn(batch, cin, h, w)
    with torch.no_grad():
        got = layer(x)
        ref = F.conv2d(F.conv2d(x.double(), dw.weight.double(), None if dw.bias is None else dw.bias.double(), 1,
                                (ph, pw_), 1, cin).clamp(0, 6), pw.weight.double(),
                       None if pw.bias is None else pw.bias.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.sampled_from([16, 32, 64, 128, 144, 256]), st.integers(3, 30), st.integers(15, 60),
       st.integers(0, 2), st.integers(0, 3), st.sampled_from([1, 2]), st.booleans(), st.integers(0, 9999))
def test_fused_stride2_rows_in_pairs_with_any_width_padding_and_tile(batch, cin, h, w, padding, extra, threads,
                                                                     bias, seed):
    """3x3, stride 2, whole channel vectors: the AVX-512 depthwise step computes a tile's whole rows two at a time in
    eight-pixel blocks, the last block of a row overlapping the one before it where the row is no multiple of
    eight (up to 128 channels; more take single rows). The layer's own tile (the image in one tile here) or, for
    an image of several tiles, one that the schedule's cut by the stride's area leaves at one to three rows and a
    few pixels (then rounded as for any layer); heights whose last pair reaches the padding; one and two threads."""
    if h + 2 * padding < 3 or w + 2 * padding < 3:
        return  # no output pixel
    wo = (w + 2 * padding - 3) // 2 + 1
    tile = None if seed % 2 else 4 * (wo * (1 + seed % 3) + extra)
    check_against_reference(batch, cin, 40, 3, 2, padding, 1, bias, "relu", None, h, w, threads, seed, tile=tile)


@needs_kernel
@pytest.mark.parametrize("cin", [3, 20])  # 3: the flat path (<= 4 channels, stride 1 both ways); 20: channel vectors
@pytest.mark.parametrize("stride", [(1, 2), (2, 1)])
def test_fused_with_different_strides_across_and_down(cin, stride):
    torch.manual_seed(cin)
    dw, pw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.Conv2d(cin, 24, 1)
    layer = FusedSeparableConv2d(dw, pw, nn.ReLU())
    x = torch.randn(2, cin, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), pw(F.relu(dw(x))), rtol=1e-5, atol=1e-5)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.integers(1, 20000), st.integers(1, 2000), st.integers(1, 8))
def test_balanced_tiles_split_the_jobs_evenly(batch, pixels, tile, threads):
    size = balanced_tile(batch, pixels, tile, threads)
    assert 1 <= size <= tile  # never over the tile buffer's budget
    count = -(-pixels // tile)
    if threads == 1 or batch * count >= 16 * threads or batch * count < threads:
        assert size == tile  # one thread, many jobs, or fewer tiles than threads (output channels split): unchanged
    elif size != tile or (batch * count) % threads == 0:
        tiles = -(-pixels // size)
        assert (batch * tiles) % threads == 0 and count <= tiles <= count + threads
        assert pixels - (tiles - 1) * size >= 1  # every tile has pixels
    else:  # left alone only where no count up to `threads` more tiles divides evenly
        assert all((batch * t) % threads or -(-pixels // -(-pixels // t)) != t
                   for t in range(count, min(count + threads, pixels) + 1))


def test_balanced_tiles_on_the_layers_that_called_for_them():
    assert balanced_tile(1, 56 * 56, 678, 2) == 528  # 64 -> 128 @112 stride 2: 5 tiles -> 6
    assert -(-(112 * 112) // balanced_tile(1, 112 * 112, 1020, 2)) == 14  # 32 -> 64 @112: 13 tiles -> 14
    assert balanced_tile(32, 32 * 32, 678, 2) == 678  # batch 32: 64 jobs, left alone
    assert balanced_tile(1, 7 * 7, 60, 2) == 60  # 1024 -> 1024 @7: one tile, the output channels are split
    with pytest.raises(ValueError, match="tile must be an integer >= 1, got 0"):
        balanced_tile(1, 49, 0, 2)
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 2.0"):
        balanced_tile(1, 49, 60, 2.0)
    assert balanced_tile(0, 49, 60, 2) == 60  # an empty batch: nothing to balance


def busiest_thread_rows(batch, ho, rows, threads):
    """The most output rows one thread computes when the kernel's jobs (every image's tiles of ``rows`` rows, the
    last shorter) are dealt as OpenMP's static schedule deals them: thread t takes jobs [t q + min(t, r), ...) with
    q, r = divmod(jobs, threads)."""
    tiles = [min(rows, ho - start) for _ in range(batch) for start in range(0, ho, rows)]
    q, r = divmod(len(tiles), threads)
    owner = []
    for t in range(threads):
        owner += [t] * (q + (1 if t < r else 0))
    return max(sum(rows for rows, o in zip(tiles, owner) if o == t) for t in range(threads))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 40), st.integers(1, 120), st.integers(1, 120), st.integers(1, 2000), st.integers(1, 8))
def test_row_tiles_are_whole_rows_with_the_least_busy_thread(batch, ho, wo, tile, threads):
    size = row_tile(batch, ho, wo, tile, threads)
    if wo > tile or ho * wo <= tile:
        assert size is None  # a row longer than a tile, or an image in one tile: no rows to choose
        return
    most = tile // wo
    assert size % wo == 0 and wo <= size <= tile + wo  # whole rows, at most one row over the tile buffer's budget
    rows = size // wo
    if threads == 1 or batch * -(-ho // most) >= 16 * threads:
        assert rows == most
    else:
        assert (most + 1) // 2 <= rows <= most + 1
        load = busiest_thread_rows(batch, ho, rows, threads)
        for other in range((most + 1) // 2, most + 2):  # no other row count leaves the busiest thread less
            other_load = busiest_thread_rows(batch, ho, other, threads)
            assert load < other_load or (load == other_load and rows >= other)


def test_row_tiles_on_the_layers_that_called_for_them():
    assert row_tile(1, 56, 56, 169, 1) == 168  # 64 -> 128 @112 stride 2, one thread: three rows
    # two threads: 19 three-row tiles leave one thread 4 rows more; 14 four-row tiles split as evenly as 28 two-row
    # ones, with half the tiles
    assert row_tile(1, 56, 56, 169, 2) == 224
    assert row_tile(1, 112, 112, 1020, 2) == 896  # 32 -> 64 @112: 13 nine-row tiles -> 14 of eight rows
    assert row_tile(1, 7, 7, 60, 2) is None  # 1024 -> 1024 @7: the image is one tile
    with pytest.raises(ValueError, match="wo must be an integer >= 1, got 0"):
        row_tile(1, 7, 0, 60, 2)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.integers(1, 60), st.integers(1, 60), st.integers(1, 1100), st.integers(6, 1200),
       st.integers(1, 4), st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 3)]), st.booleans())
def test_the_kernel_schedule_shares_small_images_cuts_strided_tiles_and_keeps_rows_whole(batch, ho, wo, cout, tile,
                                                                                         threads, stride, per_call):
    size, groups, _ = kernel_schedule(batch, ho, wo, cout, tile, threads, stride, weight_laid_out_per_call=per_call)
    pixels = ho * wo
    shared = threads > 1 and batch == 1 and pixels < threads * cout and pixels <= threads * tile
    rows_each = -(-ho // threads)
    if shared and (per_call or cout > pixels * stride[0] * stride[1] or -(-ho // rows_each) < threads):
        # the 1x1 weight outweighs the input, its rows make fewer tiles than threads, or the kernel lays the weight
        # out per call: one tile, the output channels dealt to the threads, each reading the whole input and its
        # share of the weight (the panels it laid out)
        assert size == pixels and groups == min(threads, -(-cout // 32))
        return
    if shared:  # the input outweighs the weight: one tile a thread, as few rows each as whole rows allow
        assert size == rows_each * wo and -(-ho // rows_each) == threads and groups == 1
        assert busiest_thread_rows(1, ho, rows_each, threads) == rows_each
        return
    budget = max(1, tile // (stride[0] * stride[1])) if pixels > tile else tile  # strided: cut by the stride's area
    rows = row_tile(batch, ho, wo, budget, threads)
    assert size <= (budget + wo if rows is not None else budget)  # whole rows: at most one row over
    assert size == (rows if rows is not None else balanced_tile(batch, pixels, budget, threads))
    assert groups == (min(threads, -(-cout // 32)) if batch * -(-pixels // size) < threads else 1)


def test_the_kernel_schedule_on_the_layers_that_called_for_it():
    assert kernel_schedule(1, 14, 14, 512, 120, 2)[:2] == (196, 2)  # 512 -> 512 @14: 98 pixels a thread, 512 outputs
    assert kernel_schedule(1, 14, 14, 512, 120, 1)[:2] == (112, 1)  # one thread: the tile's whole rows
    assert kernel_schedule(1, 28, 28, 256, 222, 2)[:2] == (196, 1)  # 256 -> 256 @28: seven rows a tile and thread
    assert kernel_schedule(32, 8, 8, 256, 222, 2)[:2] == (222, 1)  # batch 32: many images to share
    assert kernel_schedule(1, 56, 56, 128, 678, 1, (2, 2))[:2] == (168, 1)  # 64 -> 128 @112 s2: a quarter, in rows
    assert kernel_schedule(1, 56, 56, 128, 678, 1)[:2] == (672, 1)  # the same output at stride 1: not cut
    assert kernel_schedule(1, 14, 14, 512, 222, 1, (2, 2))[:2] == (222, 1)  # 256 -> 512 @28 s2: one tile, not cut
    # two threads: 784 input pixels outweigh 512 output channels, so seven rows a thread, not the channels split
    assert kernel_schedule(1, 14, 14, 512, 222, 2, (2, 2))[:2] == (98, 1)
    # the training engine's forward pass, which lays the weight out on the threads at each call: the channel split
    assert kernel_schedule(1, 14, 14, 512, 222, 2, (2, 2), weight_laid_out_per_call=True)[:2] == (196, 2)
    assert kernel_schedule(1, 7, 7, 1024, 120, 2, (2, 2))[:2] == (49, 2)  # 512 -> 1024 @14 s2: 196 < 1024, split


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4000), st.integers(1, 2000))
def test_streamed_flat_tiles_are_whole_rows_near_the_byte_budget(wo, cout):
    tile = streamed_flat_tile(wo, cout)
    rows, row_bytes = tile // wo, wo * cout * 4
    assert tile % wo == 0 and rows >= 1
    if row_bytes > STREAMED_FLAT_TILE_BYTES:
        assert rows == 1  # a row larger than the budget: one
    else:
        assert rows >= 2  # never a one-row tile of a narrow image
        assert rows == 2 or rows * row_bytes <= STREAMED_FLAT_TILE_BYTES < (rows + 1) * row_bytes


def test_streamed_flat_tiles_on_the_layers_measured():
    assert streamed_flat_tile(32, 64) == 96  # VGG 3 -> 64 @32: three 8 KiB rows
    assert streamed_flat_tile(64, 64) == 128  # a 16 KiB row: two
    assert streamed_flat_tile(224, 32) == 224  # a 28 KiB row: one
    with pytest.raises(ValueError, match="wo and out_channels must be >= 1, got 0 and 8"):
        streamed_flat_tile(0, 8)


@needs_kernel
@pytest.mark.parametrize("cin", [1, 3, 4, 5])
def test_a_streamed_output_on_the_flat_path_takes_the_small_tile(cin):
    """At most four input channels at stride 1 on AVX-512 or AVX2 (the kernel's flat depthwise path) and an output of
    STREAM_MIN_BYTES or more: streamed_flat_tile's tile, computed right; a smaller output, five channels, or the
    rule turned off: the module's own tile."""
    torch.manual_seed(cin)
    dw, pw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, 64, 1)
    layer = FusedSeparableConv2d(dw, pw)
    flat = cin <= 4 and fused_module.fused_isa() in ("avx512", "avx2")
    batch = -(-STREAM_MIN_BYTES // (64 * 32 * 32 * 4))  # the smallest batch whose output is streamed
    threads = max(1, torch.get_num_threads())

    def scheduled(n, tile):  # the tile after kernel_schedule balances it over the threads
        return kernel_schedule(n, 32, 32, 64, tile, threads)[0]

    with torch.no_grad():
        assert layer.kernel_tile(batch, 32, 32) == scheduled(batch, 96 if flat else layer.tile)
        assert layer.kernel_tile(batch - 1, 32, 32) == scheduled(batch - 1, layer.tile)
        x = torch.randn(batch, cin, 32, 32)
        torch.testing.assert_close(layer(x), pw(dw(x)), atol=1e-4, rtol=1e-4)
        layer.streamed_flat_tile = False
        assert layer.kernel_tile(batch, 32, 32) == scheduled(batch, layer.tile)


@needs_kernel
def test_the_training_forward_on_the_flat_path_with_a_streamed_output():
    """fused_separable_forward takes streamed_flat_tile's tiles where the module does: the output and the kept
    depthwise output still match the two convolutions."""
    torch.manual_seed(3)
    batch = -(-STREAM_MIN_BYTES // (64 * 32 * 32 * 4))
    x, dw_w, pw_w = torch.randn(batch, 3, 32, 32), torch.randn(3, 1, 3, 3), torch.randn(64, 3, 1, 1)
    dw_b = torch.randn(3)
    y, mid = fused_module.fused_separable_forward(x, dw_w, dw_b, pw_w, None, (1, 1))
    want_mid = F.conv2d(x, dw_w, dw_b, 1, 1, 1, 3)
    torch.testing.assert_close(mid, want_mid, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, F.conv2d(mid, pw_w), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("cin, size, threads", [(64, 60, 1), (64, 60, 2), (40, 75, 2), (96, 49, 1)])
def test_strided_images_of_several_tiles(cin, size, threads):
    """Stride 2 with more output pixels than the module's tile: the kernel runs tiles cut by the stride's area, of
    whole rows (kernel_schedule), and the layer still computes the two convolutions."""
    layer = FusedSeparableConv2d(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin), nn.Conv2d(cin, 48, 1))
    wo = (size - 1) // 2 + 1
    assert wo * wo > layer.tile
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scheduled = layer.kernel_tile(1, size, size)
    finally:
        torch.set_num_threads(previous)
    assert scheduled <= layer.tile // 4 and scheduled % wo == 0
    check_against_reference(1, cin, 48, 3, 2, 1, 1, True, "relu", None, size, size, threads, cin)


@needs_kernel
@pytest.mark.parametrize("cout, schedule", [(56, (49, 2)), (96, (49, 2)), (40, (28, 1))])
def test_fused_with_a_small_image_shared_among_threads(cout, schedule):
    """A 7x7 image with more output channels than pixels per thread on two threads, instead of the two 30-pixel
    tiles it would take: where its weight outweighs its input (more output channels than its 49 input pixels) one
    tile, its output channels split in two groups (the second a partial panel); else a four-row and a three-row
    tile, one a thread."""
    assert kernel_schedule(1, 7, 7, cout, 30, 2)[:2] == schedule
    check_against_reference(1, 24, cout, 3, 1, 1, 1, True, "relu", None, 7, 7, 2, 3, tile=30)


@needs_kernel
@pytest.mark.parametrize("cin, cout, stride, size, tile, threads", [
    (256, 520, 1, 7, None, 1),  # one 49-pixel tile
    (256, 520, 1, 7, 13, 2),  # 13-pixel tiles (an AVX-512 seven-row block), two threads
    (300, 440, 2, 14, None, 2),  # stride 2 into 7x7, the output channels split between the threads
    (512, 288, 1, 5, 5, 1),  # one short register block per panel
])
def test_large_weights_whose_next_panel_is_prefetched(cin, cout, stride, size, tile, threads):
    """A 1x1 weight of 512 KiB or more on tiles of at most 64 pixels: the kernel's 1x1 step prefetches each next
    weight panel while it computes on the current one (pointwise_step in csrc/fused_dwpw.c)."""
    assert cin * cout * 4 >= 512 * 1024
    check_against_reference(1, cin, cout, 3, stride, 1, 1, True, "relu", None, size, size, threads, cin, tile=tile)


@needs_kernel
def test_the_parts_benchmarks_time_apart():
    """_run(x, 2): the 1x1 part alone on a tile of ones gives act(row sums of the pointwise weight + bias)
    everywhere (not zeros: all-zero output lines stream to memory faster than data); _run(x, 3) is the layer;
    parts outside 1-3 are refused by the kernel."""
    torch.manual_seed(2)
    dw, pw = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.Conv2d(12, 40, 1)
    layer = FusedSeparableConv2d(dw, pw, pw_activation=nn.ReLU())
    x = torch.randn(2, 12, 10, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(layer._run(x, 3), F.relu(pw(dw(x))), rtol=1e-5, atol=1e-5)
        layer._run(x, 1)  # depthwise part alone: runs, writes no output
        expected = F.relu(pw.weight.sum(dim=(1, 2, 3)) + pw.bias).reshape(1, 40, 1, 1).expand(2, 40, 10, 11)
        torch.testing.assert_close(layer._run(x, 2), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="code -2"):
            layer._run(x, 4)


@needs_kernel
def test_the_argument_array_entry_runs_the_kernel_on_the_same_arguments():
    """sepconv_fused_dwpw_args (csrc/calls.c) hands each slot of its array to the same parameter of
    sepconv_fused_dwpw_f32: every argument differs from its neighbours here (a job range short of both ends, the
    depthwise output kept, two threads), and both entries leave y and mid bit for bit the same."""
    lib = native.load()[0]
    torch.manual_seed(5)
    n, h, w, c, kh, kw, sh, sw, ph, pw, cout, tile = 2, 9, 11, 20, 3, 5, 1, 2, 1, 2, 40, 7
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x = torch.randn(n, h, w, c)
    wdw, bdw, bpw = torch.randn(kh, kw, c), torch.randn(c), torch.randn(cout)
    panels = torch.randn(-(-cout // 32), c, 32)
    jobs = lib.sepconv_fused_jobs(n, ho, wo, tile, 1)
    outputs = []
    for entry in ("args", "f32"):
        y, mid = torch.full((n, ho, wo, cout), float("nan")), torch.full((n, ho, wo, c), float("nan"))
        values = (x.data_ptr(), n, h, w, c, wdw.data_ptr(), bdw.data_ptr(), kh, kw, sh, sw, ph, pw, 1, 1, 1,
                  panels.data_ptr(), bpw.data_ptr(), cout, 2, y.data_ptr(), mid.data_ptr(), ho, wo, tile, 1, 0, 3,
                  1, jobs - 1, 2)
        if entry == "args":
            packed = array("q", values)  # a name keeps it alive through the call (a temporary would be freed)
            code = lib.sepconv_fused_dwpw_args(packed.buffer_info()[0])
        else:
            code = lib.sepconv_fused_dwpw_f32(*values)
        assert code == 0
        outputs.append((y, mid))
    (y_args, mid_args), (y_f32, mid_f32) = outputs
    assert torch.equal(y_args.isnan(), y_f32.isnan()) and torch.equal(mid_args.isnan(), mid_f32.isnan())
    assert y_args.isnan().any() and not y_args.isnan().all()  # the first and last jobs were left out
    assert torch.equal(y_args.nan_to_num(), y_f32.nan_to_num()) and torch.equal(mid_args.nan_to_num(),
                                                                                mid_f32.nan_to_num())


@needs_kernel
def test_fused_refuses_what_it_cannot_run():
    dw, pw = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1)
    assert fusable(dw, pw) is None
    assert "depth multiplier 1" in fusable(nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(8, 6, 1))
    assert "integer zero padding" in fusable(nn.Conv2d(4, 4, 3, padding="same", groups=4), pw)
    assert "1x1, stride-1" in fusable(dw, nn.Conv2d(4, 6, 1, stride=2))
    assert "float32 CPU" in fusable(nn.Conv2d(4, 4, 3, groups=4).double(), nn.Conv2d(4, 6, 1).double())
    with pytest.raises(ValueError, match="depth multiplier 1"):
        FusedSeparableConv2d(nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(8, 6, 1))
    with pytest.raises(ValueError, match="dw_activation must be"):
        FusedSeparableConv2d(nn.Conv2d(4, 4, 3, groups=4), pw, nn.GELU())
    layer = FusedSeparableConv2d(nn.Conv2d(4, 4, 3, groups=4), pw)
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.randn(1, 4, 5, 5, requires_grad=True))
    with pytest.raises(ValueError, match="expects 4 input channels"):
        layer(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="no output pixel"):
        layer(torch.randn(1, 4, 2, 2))
    # converted after construction: its kernel reads float32 on the CPU, so a float64 input matching the converted
    # weights must be refused, not read as float32
    for dtype in (torch.float64, torch.bfloat16):
        converted = FusedSeparableConv2d(nn.Conv2d(4, 4, 3, groups=4), pw).to(dtype)
        with pytest.raises(ValueError, match=f"float32 on the CPU only; its weights are now {dtype}"):
            converted(torch.randn(1, 4, 5, 5, dtype=dtype))
    back = FusedSeparableConv2d(nn.Conv2d(4, 4, 3, groups=4), pw).double().float()
    assert back(torch.randn(1, 4, 5, 5)).isfinite().all()


def test_a_failed_build_is_reported_and_the_engines_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path))
    native.load_for.cache_clear()
    try:
        assert not fused_available()
        assert "building the kernels with false failed" in fused_unavailable_reason()
        with pytest.raises(RuntimeError, match="building the kernels"):
            FusedSeparableConv2d(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1))
        from sepconv.backends.onednn import onednn_available, pack_convolutions

        if onednn_available():  # without the kernel, separable layers get packed oneDNN convolutions
            model = nn.Sequential(sepconv.SeparableConv2d(4, 6, 3, padding=1)).eval()
            choices = pack_convolutions(model, measure=False)
            assert set(choices.values()) == {"packed"}
        assert not list(tmp_path.glob("*.so"))  # nothing half-built left in the cache
    finally:
        monkeypatch.undo()
        native.load_for.cache_clear()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the portable target is named for x86-64")
def test_the_portable_code_path_computes_the_same(monkeypatch):
    """The kernel built without AVX-512 (as on older CPUs) runs its plain loops; same results."""
    monkeypatch.setattr(native, "MARCH", "x86-64-v2")
    if not fused_available():
        pytest.skip(f"fused kernel unavailable: {fused_unavailable_reason()}")
    assert not fused_module.fused_uses_avx512()
    for config in [(2, 5, 7, 3, 1, 1, 1, True, "relu", "relu6", 9, 8, 1, 0),
                   (1, 33, 40, 3, 2, 1, 1, False, None, "relu", 12, 11, 2, 1),
                   (3, 16, 32, 5, 1, 2, 2, True, "relu6", None, 13, 13, 2, 2),
                   (1, 70, 3, 1, 1, 0, 1, True, None, None, 4, 5, 1, 3)]:
        check_against_reference(*config)
