"""A fused depthwise -> pointwise convolution for CPU inference: the intermediate tensor stays in cache.

A depthwise separable layer run as two convolutions writes the depthwise
output (as large as the input) to memory and reads it back for the pointwise
step. :class:`FusedSeparableConv2d` computes the depthwise result for a tile
of output pixels into a buffer sized for the L2 cache and multiplies it by
the pointwise weight at once (a register-blocked GEMM in AVX-512, AVX2 + FMA
or ARM NEON vectors, whichever the CPU has), so that traffic disappears. It is an inference engine: weights are
copied in at construction, no autograd. :func:`fused_separable_forward` runs the same kernel for a
training step's forward pass, writing the depthwise output out as well (the 1x1 weight gradient needs it).

The kernel is plain C (``csrc/fused_dwpw.c``), built on first use with the
machine's C compiler and cached (:mod:`sepconv.backends.native` says how and where).
Where no compiler is found or the build fails, :func:`fused_available` is
False and :func:`fused_unavailable_reason` says why; :func:`sepconv.optimize`
then uses the other engines (nothing requires this one). It runs on
``torch.get_num_threads()`` OpenMP threads, PyTorch's own.

Whether it is faster than the two oneDNN convolutions depends on the shape
and the machine: :func:`sepconv.backends.onednn.pack_convolutions` measures both per
layer and keeps the faster (``benchmarks/README.md`` has the numbers).
"""

from __future__ import annotations

from array import array
from typing import Optional

import torch
from torch import nn

from ..geometry import output_size_1d
from ..utils.timing import profiled
from . import native

_NR = 32  # output channels per packed weight panel (the kernel's NR)
_ACTS = {None: 0, nn.ReLU: 1, nn.ReLU6: 2}
_TILE_BYTES = 256 * 1024  # depthwise tile buffer: about half of a 1-2 MiB L2 cache
# slots of sepconv_fused_dwpw_f32's argument array (csrc/calls.c) that FusedSeparableConv2d._kernel_args fills
_ARG_X, _ARG_DW_WEIGHT, _ARG_DW_BIAS, _ARG_PW_PANELS, _ARG_PW_BIAS, _ARG_Y, _ARG_PARTS = 0, 5, 6, 16, 17, 20, 27
_ARG_STREAM = 26  # set by _plan from STREAM_MIN_BYTES (benchmarks/bench_output_state.py sets it itself)
_ARG_TILE, _ARG_GROUPS, _ARG_JOB_END = 24, 25, 29  # benchmarks/bench_tile.py runs a tile as given


#: Outputs of at least this many bytes are written with non-temporal stores (around the caches: their lines are
#: not read in before being overwritten); smaller ones, which the next layer may still find in cache, with plain
#: stores. Read at each call. Streaming pays for outputs of several MiB and not for the outputs of a network at
#: batch 1, which the next layer may still find in cache (``networks-*`` records, ``docs/design-notes.md``).
STREAM_MIN_BYTES = 4 * 2**20


def _check_counts(where: str, values) -> None:
    """ValueError naming ``where``, the argument and its value unless each ``(name, value, least)`` of ``values`` has
    an integer (not a bool) value of at least ``least``."""
    for name, value, least in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{where}: {name} must be an integer >= {least}, got {value!r}")


def balanced_tile(batch: int, pixels: int, tile: int, threads: int) -> int:
    """The tile size (output pixels) that splits ``batch`` images of ``pixels`` output pixels evenly over ``threads``.

    The kernel's jobs are (image, tile) pairs, dealt to the threads in
    contiguous chunks. With few jobs, a count that ``threads`` does not divide,
    or a short last tile, leaves a thread idle at the end. So while there are at least one
    and fewer than 16 jobs per thread, this returns the largest size (a
    multiple of 6, the kernel's register block, where that keeps the count) of
    at most ``tile`` whose tile count per image times ``batch`` is a multiple
    of ``threads``, the tiles of an image then being equal but for rounding.
    Otherwise (one thread, many jobs, or too few pixels for such a count),
    ``tile``. With fewer tiles than threads the kernel splits the output
    channels among the threads instead, which reads each thread's half of the
    pointwise weight only, where splitting their few pixels would make each
    thread read the whole weight.
    """
    _check_counts("balanced_tile", (("batch", batch, 0), ("pixels", pixels, 1), ("tile", tile, 1),
                                    ("threads", threads, 1)))
    count = -(-pixels // tile)
    if threads <= 1 or batch * count >= 16 * threads or batch * count < threads:
        return tile
    for tiles in range(count, min(count + threads, pixels) + 1):
        if (batch * tiles) % threads == 0:
            size = -(-pixels // tiles)
            rounded = -(-size // 6) * 6
            if rounded <= tile and -(-pixels // rounded) == tiles:
                return rounded
            if -(-pixels // size) == tiles:
                return size
    return tile  # too few pixels to split so: the kernel splits the output channels instead


def row_tile(batch: int, ho: int, wo: int, tile: int, threads: int) -> Optional[int]:
    """The tile (output pixels) of whole output rows for ``batch`` images of ``ho`` x ``wo`` output pixels, at most
    ``tile`` (or one row more, below), dealt to ``threads`` threads; None where a row is longer than ``tile`` or an
    image fits in one tile.

    A tile that ends inside a row makes the tiles on either side of it both read the input rows around that row
    (``docs/design-notes.md``). With one thread, or with enough jobs (16 or more a thread) for any imbalance to be
    small, that is the most rows ``tile`` holds. Otherwise the kernel deals its jobs (image, tile) to the threads
    in contiguous chunks (OpenMP's static schedule), so a tile count the threads do not share evenly, or a short
    last tile, leaves a thread idle at the end: of the row counts from one more than that most down to half of it,
    the one whose busiest thread computes the fewest rows, the larger at a tie. The one row over ``tile`` is there
    for when the most rows split unevenly and half as many are the next even split: each tile has a fixed cost, so
    the larger even split is the quicker one.
    """
    _check_counts("row_tile", (("batch", batch, 0), ("ho", ho, 1), ("wo", wo, 1), ("tile", tile, 1),
                               ("threads", threads, 1)))
    if wo > tile or ho * wo <= tile:
        return None
    most = tile // wo
    if threads == 1 or batch * -(-ho // most) >= 16 * threads:
        return most * wo
    best_rows, best_load = most, None
    for rows in range(most + 1, (most + 1) // 2 - 1, -1):
        load = _busiest_thread_rows(batch, ho, rows, threads)
        if best_load is None or load < best_load:
            best_rows, best_load = rows, load
    return best_rows * wo


def _busiest_thread_rows(batch: int, ho: int, rows: int, threads: int) -> int:
    """The output rows of the busiest thread when ``batch`` images of ``ho`` rows, in tiles of ``rows`` rows (the
    last of an image shorter), are dealt to ``threads`` threads as OpenMP's static schedule deals them: contiguous
    chunks, the first ``jobs % threads`` threads one job more."""
    per_image = -(-ho // rows)
    jobs = [rows] * (per_image - 1) + [ho - (per_image - 1) * rows]
    jobs = jobs * batch
    q, extra = divmod(len(jobs), threads)
    busiest, start = 0, 0
    for t in range(threads):
        count = q + (t < extra)
        busiest = max(busiest, sum(jobs[start:start + count]))
        start += count
    return busiest


def kernel_schedule(batch: int, ho: int, wo: int, out_channels: int, tile: int, threads: int,
                    stride: tuple[int, int] = (1, 1), weight_laid_out_per_call: bool = False) -> tuple[int, int, bool]:
    """How the fused kernel runs an output of ``batch`` x ``ho`` x ``wo`` pixels and ``out_channels`` channels on
    ``threads`` threads with tiles of about ``tile`` pixels, the depthwise step at ``stride``: ``(tile, groups,
    stream)``, the tile size, the number of output-channel groups (more than one where there are fewer tiles than
    threads) and whether the output is written with non-temporal stores (:data:`STREAM_MIN_BYTES`).

    One image of at most ``threads`` tiles whose threads would each get fewer pixels than there are output
    channels is shared among the threads in one of two ways, whichever reads fewer bytes a thread. Where its 1x1
    weight outweighs its input (more output channels than input pixels), it is one tile, its output channels
    split: each thread reads the whole input and its share of the weight (the 1x1 GEMM's own rule,
    ``sepconv_gemm_f32``), for a tile buffer at most ``threads`` times the usual size. Otherwise, where its rows
    make one tile a thread (``ceil(ho / threads)`` rows each), each thread takes one: its share of the input and
    the whole weight, with no depthwise step computed twice; where they do not, the output channels are split.
    ``weight_laid_out_per_call``: the kernel lays the 1x1 weight out at each call (``sepconv_fused_forward_f32``,
    the training engine's forward pass), its panels split among the threads as the channel split deals them, so
    that each thread of a channel split reads the panels it has just written; such an image is always split by
    channels.

    For any other layer, where an image takes more than one tile, a strided layer's tile is ``tile`` divided by the
    stride's area: its input rows then take the room a stride-1 tile's take, and the next tile's, which the kernel
    fetches into L2 during the 1x1 step, fit there beside the current tile's buffer; a thread's first tile, which
    nothing fetched ahead, is smaller too. The tile is then whole output rows (:func:`row_tile`) where it holds one,
    else balanced over the threads by pixels (:func:`balanced_tile`)."""
    pixels = ho * wo
    if threads > 1 and batch == 1 and pixels < threads * out_channels and pixels <= threads * tile:
        rows_each = -(-ho // threads)
        # the weight's bytes against the input's (out_channels x in_channels against input pixels x in_channels),
        # and whether the rows make one tile a thread
        split_rows = (not weight_laid_out_per_call and out_channels <= pixels * stride[0] * stride[1]
                      and -(-ho // rows_each) == threads)
        tile = rows_each * wo if split_rows else pixels
    elif pixels > tile:
        tile = max(1, tile // (stride[0] * stride[1]))
    rows = row_tile(batch, ho, wo, tile, threads)
    tile = rows if rows is not None else balanced_tile(batch, pixels, tile, threads)
    tiles = batch * -(-pixels // tile)
    groups = min(threads, -(-out_channels // _NR)) if tiles < threads else 1
    return tile, groups, batch * out_channels * pixels * 4 >= STREAM_MIN_BYTES  # the float32 output's bytes


def default_tile(in_channels: int) -> int:
    """The fused kernel's tile (output pixels; a multiple of 6) whose depthwise rows fill about 256 KiB."""
    return max(6, (_TILE_BYTES // (4 * (in_channels + 32))) // 6 * 6)


#: Output bytes per tile that :func:`streamed_flat_tile` aims for.
STREAMED_FLAT_TILE_BYTES = 24 * 1024
FLAT_MAX_CHANNELS = 4  # the kernel's flat depthwise path (FLAT_MAX_C in csrc/fused_dwpw.c), on AVX-512 and AVX2


def on_flat_path(lib, in_channels: int, stride: tuple[int, int]) -> bool:
    """Whether the kernels ``lib`` (a loaded build) run a depthwise step of ``in_channels`` channels at
    ``stride`` on their flat path, the one :func:`streamed_flat_tile` is for (AVX-512 and AVX2 builds)."""
    return (in_channels <= FLAT_MAX_CHANNELS and tuple(stride) == (1, 1)
            and lib.sepconv_isa().decode() in ("avx512", "avx2"))


def flat_aware_tile(lib, batch: int, in_channels: int, out_channels: int, wo: int, ho: int,
                    stride: tuple[int, int], tile: int) -> int:
    """``tile``, or :func:`streamed_flat_tile`'s where that is smaller and the layer is on the flat path
    (:func:`on_flat_path`) with an output of :data:`STREAM_MIN_BYTES` or more."""
    if batch * out_channels * ho * wo * 4 >= STREAM_MIN_BYTES and on_flat_path(lib, in_channels, stride):
        return min(tile, streamed_flat_tile(wo, out_channels))
    return tile


def streamed_flat_tile(wo: int, out_channels: int) -> int:
    """The tile (output pixels, whole rows of ``wo``) for a layer on the kernel's flat depthwise path (at most
    :data:`FLAT_MAX_CHANNELS` input channels, stride 1) whose output is streamed to memory.

    There the 1x1 step (a few multiply-adds per output) is bound by writing the output, and the depthwise step
    hides under the tail of a tile's stores only when a tile is small: rows whose output comes to about
    :data:`STREAMED_FLAT_TILE_BYTES`, at least two where one row is smaller than that (a one-row tile of a
    narrow image pads four input rows for one output row), one where a row is larger (the measurements:
    ``tile-parts-*-flat-rows`` records, ``docs/design-notes.md``)."""
    if wo < 1 or out_channels < 1:
        raise ValueError(f"streamed_flat_tile: wo and out_channels must be >= 1, got {wo} and {out_channels}")
    row_bytes = wo * out_channels * 4
    rows = max(2, STREAMED_FLAT_TILE_BYTES // row_bytes) if row_bytes <= STREAMED_FLAT_TILE_BYTES else 1
    return rows * wo


def check_pair_tensors(where: str, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                       dw_bias: Optional[torch.Tensor] = None,
                       pw_bias: Optional[torch.Tensor] = None) -> tuple[int, int, int, int, int, int, int]:
    """Check a depthwise (one filter per channel) -> 1x1 pair's tensors before a kernel reads them: ``x``
    ``(N, C, H, W)``, ``dw_weight`` ``(C, 1, KH, KW)``, ``pw_weight`` ``(Cout, C, 1, 1)``, biases ``(C,)`` and
    ``(Cout,)`` or None. Returns ``(N, C, H, W, KH, KW, Cout)``; ``ValueError`` naming ``where``, the tensors'
    shapes and the expected ones otherwise."""
    if x.dim() != 4 or dw_weight.dim() != 4 or pw_weight.dim() != 4:
        raise ValueError(f"{where} needs 4-D x and weights, got {tuple(x.shape)}, {tuple(dw_weight.shape)} and "
                         f"{tuple(pw_weight.shape)}")
    n, c, h, w = x.shape
    kh, kw = dw_weight.shape[2:]
    cout = pw_weight.shape[0]
    if tuple(dw_weight.shape[:2]) != (c, 1) or tuple(pw_weight.shape[1:]) != (c, 1, 1):
        raise ValueError(f"{where}: for {c} input channels dw_weight must be ({c}, 1, KH, KW) and pw_weight "
                         f"(Cout, {c}, 1, 1), got {tuple(dw_weight.shape)} and {tuple(pw_weight.shape)}")
    for name, bias, size in (("dw_bias", dw_bias, c), ("pw_bias", pw_bias, cout)):
        if bias is not None and tuple(bias.shape) != (size,):
            raise ValueError(f"{where}: {name} must have shape ({size},), got {tuple(bias.shape)}")
    return n, c, h, w, kh, kw, cout


def fused_separable_forward(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                            pw_weight: torch.Tensor, pw_bias: Optional[torch.Tensor], padding: tuple[int, int], *,
                            stride: tuple[int, int] = (1, 1),
                            keep_depthwise: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """An undilated depthwise (one filter per channel, zero ``padding``, ``stride``) -> 1x1 pair in the fused
    kernel: ``(y, mid)``, the layer's output and, with ``keep_depthwise``, the depthwise step's output (what a
    training step keeps for the 1x1 weight gradient; else None), channels-last float32 tensors.

    ``x``: ``(N, C, H, W)`` float32 on the CPU; ``dw_weight``: ``(C, 1, KH, KW)``; ``pw_weight``:
    ``(Cout, C, 1, 1)``; biases ``(C,)`` / ``(Cout,)`` or None. The weights are read as stored and laid out for
    the kernel inside it at each call (they change between training steps). Not tracked by autograd;
    ``RuntimeError`` where the kernel does not build (:func:`fused_unavailable_reason`).
    """
    n, c, h, w, kh, kw, cout = check_pair_tensors("fused_separable_forward", x, dw_weight, pw_weight, dw_bias,
                                                  pw_bias)
    (ph, pw), (sh, sw) = padding, stride
    if ph < 0 or pw < 0:
        raise ValueError(f"fused_separable_forward: padding must be >= 0, got {tuple(padding)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"fused_separable_forward: stride must be >= 1, got {tuple(stride)}")
    for name, t in (("x", x), ("dw_weight", dw_weight), ("dw_bias", dw_bias), ("pw_weight", pw_weight),
                    ("pw_bias", pw_bias)):
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise ValueError(f"fused_separable_forward needs float32 CPU tensors, got {name} {t.dtype} on {t.device}")
    lib = native.load()[0]
    if lib is None:
        raise RuntimeError(f"fused_separable_forward: {fused_unavailable_reason()}")
    ho, wo = output_size_1d(h, kh, sh, 1, (ph, ph)), output_size_1d(w, kw, sw, 1, (pw, pw))
    if ho < 1 or wo < 1:
        raise ValueError(f"fused_separable_forward: a {h}x{w} input with padding {tuple(padding)} is smaller "
                         f"than the {kh}x{kw} kernel")
    threads = max(1, torch.get_num_threads())
    x = x.contiguous(memory_format=torch.channels_last)
    tile = flat_aware_tile(lib, n, c, cout, wo, ho, (sh, sw), default_tile(c))
    tile, groups, stream = kernel_schedule(n, ho, wo, cout, tile, threads, (sh, sw), weight_laid_out_per_call=True)
    y = torch.empty((n, cout, ho, wo), dtype=torch.float32, memory_format=torch.channels_last)
    mid = torch.empty((n, c, ho, wo), dtype=torch.float32, memory_format=torch.channels_last) if keep_depthwise else None
    # the weights as stored (the kernel lays them out: they change at every step); kept in locals, as a pointer
    # into a temporary copy would dangle
    dw_weight, pw_weight = dw_weight.detach().contiguous(), pw_weight.detach().contiguous()
    dw_bias = None if dw_bias is None else dw_bias.detach().contiguous()
    pw_bias = None if pw_bias is None else pw_bias.detach().contiguous()
    with profiled("sepconv::fused_dwpw"):
        code = lib.sepconv_fused_forward_f32(
            x.data_ptr(), n, h, w, c, dw_weight.data_ptr(), None if dw_bias is None else dw_bias.data_ptr(), kh, kw,
            sh, sw, ph, pw, pw_weight.data_ptr(), None if pw_bias is None else pw_bias.data_ptr(), cout, y.data_ptr(),
            None if mid is None else mid.data_ptr(), ho, wo, tile, groups, int(stream), threads)
    if code:
        raise RuntimeError(f"the fused kernel failed with code {code} (-1: out of memory)")
    return y, mid


def fused_available() -> bool:
    """True when the fused kernel is built (or builds now) and loads on this machine."""
    return native.available()


def fused_unavailable_reason() -> Optional[str]:
    """Why :func:`fused_available` is False (None when it is available)."""
    return native.unavailable_reason()


def fused_uses_avx512() -> bool:
    """Whether the loaded kernel was compiled with its AVX-512 path (:func:`fused_isa` names the path taken)."""
    lib = native.load()[0]
    return bool(lib is not None and lib.sepconv_fused_has_avx512())


def fused_isa() -> Optional[str]:
    """The vector instruction set the loaded kernel uses (``avx512``, ``avx2``, ``neon`` or ``scalar``; see
    :func:`sepconv.backends.native.isa`), or None when it is unavailable."""
    return native.isa()


def _activation_code(activation: Optional[nn.Module], name: str) -> int:
    kind = None if activation is None or isinstance(activation, nn.Identity) else type(activation)
    if kind not in _ACTS:
        raise ValueError(f"{name} must be nn.ReLU, nn.ReLU6, nn.Identity or None, got {activation!r}")
    return _ACTS[kind]


def fusable(depthwise: nn.Module, pointwise: nn.Module) -> Optional[str]:
    """None if :class:`FusedSeparableConv2d` can run this pair, else the reason it cannot."""
    reason = fusable_pair(depthwise, pointwise)
    if reason is not None:
        return reason
    for conv in (depthwise, pointwise):
        if conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
            return f"float32 CPU weights only, got {conv.weight.dtype} on {conv.weight.device}"
    return None


def fusable_pair(depthwise: nn.Module, pointwise: nn.Module) -> Optional[str]:
    """None if the two convolutions have the structure a fused depthwise -> pointwise kernel computes (this
    module's for the CPU, :mod:`triton_fused`'s for CUDA), else the reason they have not; dtype and
    device are each engine's own check."""
    if not (isinstance(depthwise, nn.Conv2d) and isinstance(pointwise, nn.Conv2d)):
        return "both steps must be nn.Conv2d"
    c = depthwise.in_channels
    if depthwise.groups != c or depthwise.out_channels != c:
        return f"the depthwise step must have groups = in_channels = out_channels (depth multiplier 1), got {depthwise}"
    if isinstance(depthwise.padding, str) or depthwise.padding_mode != "zeros":
        return f"the depthwise step needs integer zero padding, got padding={depthwise.padding!r}, " \
               f"padding_mode={depthwise.padding_mode!r}"
    if (pointwise.kernel_size != (1, 1) or pointwise.stride != (1, 1) or pointwise.groups != 1
            or pointwise.in_channels != c or tuple(pointwise.padding) != (0, 0)):
        return f"the pointwise step must be a 1x1, stride-1, ungrouped, unpadded conv from {c} channels, got {pointwise}"
    return None


class FusedPair(nn.Module):
    """What the fused engines share (this module's CPU kernel, :mod:`triton_fused`'s GPU one): the pair's
    geometry and activations, the ``pad`` module, the depthwise weight as ``[KH][KW][C]`` (one tap's weights for a
    run of channels contiguous), the biases, the output size and the checks of an input."""

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d, dw_activation: Optional[nn.Module],
                 pw_activation: Optional[nn.Module], pad: Optional[nn.Module]) -> None:
        super().__init__()
        c, cout = depthwise.in_channels, pointwise.out_channels
        kh, kw = depthwise.kernel_size
        self.in_channels, self.out_channels = c, cout
        self.kernel_size, self.stride = (kh, kw), tuple(depthwise.stride)
        self.padding, self.dilation = tuple(depthwise.padding), tuple(depthwise.dilation)
        self.dw_act = _activation_code(dw_activation, "dw_activation")
        self.pw_act = _activation_code(pw_activation, "pw_activation")
        self.pad = pad if pad is not None and not isinstance(pad, nn.Identity) else None
        with torch.no_grad():
            self.register_buffer("dw_weight", depthwise.weight.detach().reshape(c, kh, kw).permute(1, 2, 0).contiguous())
            self.register_buffer("dw_bias", None if depthwise.bias is None else depthwise.bias.detach().clone())
            self.register_buffer("pw_bias", None if pointwise.bias is None else pointwise.bias.detach().clone())

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output rows and columns for an already padded ``h`` x ``w`` input (``ValueError`` when there are none)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        ho, wo = output_size_1d(h, kh, sh, dh, (ph, ph)), output_size_1d(w, kw, sw, dw, (pw, pw))
        if ho < 1 or wo < 1:
            raise ValueError(f"input of {h}x{w} pixels is smaller than the {kh}x{kw} kernel (dilation "
                             f"{self.dilation}, padding {self.padding}): no output pixel")
        return ho, wo

    def _checked_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded by ``pad``, after :meth:`_check_input`."""
        self._check_input(x)
        return x if self.pad is None else self.pad(x)

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a no-grad 4D input of the weights' dtype and device with ``in_channels`` channels."""
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{type(self).__name__} is inference-only: call it under torch.no_grad() or "
                               "torch.inference_mode()")
        weight = self._buffers["dw_weight"]  # direct access: nn.Module's __getattr__ is slow on the per-call path
        if x.dim() != 4 or x.dtype != weight.dtype or x.device != weight.device:
            raise ValueError(f"{type(self).__name__} needs a 4D {weight.dtype} input on {weight.device}, got "
                             f"{x.dim()}D {x.dtype} on {x.device}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, got input shape "
                             f"{tuple(x.shape)}")

    def extra_repr(self) -> str:
        names = {0: None, 1: "ReLU", 2: "ReLU6"}
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, dw_act={names[self.dw_act]}, "
                f"pw_act={names[self.pw_act]}")


class FusedSeparableConv2d(FusedPair):
    """Inference-only depthwise -> pointwise convolution computed by one fused CPU kernel.

    Built from the two steps of a depthwise separable layer (``depthwise``: a
    ``groups = channels`` ``nn.Conv2d`` with integer zero padding, any kernel
    size, stride and dilation; ``pointwise``: a 1x1 ``nn.Conv2d``), the
    activations applied right after each (``nn.ReLU``, ``nn.ReLU6`` or None;
    BatchNorm must be folded first, :func:`sepconv.fold_batchnorm`) and an
    optional ``pad`` module applied to the input first (sepconv's 'same'
    padding). Computes ``pw_act(pointwise(dw_act(depthwise(pad(x)))))`` for
    4D float32 CPU inputs and returns it channels-last. Raises
    ``RuntimeError`` where the kernel cannot be built
    (:func:`fused_unavailable_reason`). The kernel build is the one
    ``$SEPCONV_ISA`` names when the module is constructed
    (:mod:`sepconv.backends.native`); the module keeps it.
    """

    # defaults for modules pickled before these attributes (set per module in __init__)
    _isa, streamed_flat_tile = "native", True

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d, dw_activation: Optional[nn.Module] = None,
                 pw_activation: Optional[nn.Module] = None, pad: Optional[nn.Module] = None) -> None:
        reason = fusable(depthwise, pointwise)
        if reason is not None:
            raise ValueError(f"FusedSeparableConv2d: {reason}")
        if not fused_available():
            raise RuntimeError(f"FusedSeparableConv2d: {fused_unavailable_reason()}")
        super().__init__(depthwise, pointwise, dw_activation, pw_activation, pad)
        c, cout = self.in_channels, self.out_channels
        with torch.no_grad():
            panels = -(-cout // _NR)
            packed = torch.zeros(panels * _NR, c)
            packed[:cout] = pointwise.weight.detach().reshape(cout, c)
            # [panel][c][32]: each 32-column panel contiguous, as the kernel's register blocks read it
            self.register_buffer("pw_panels", packed.reshape(panels, _NR, c).permute(0, 2, 1).contiguous())
        self.tile = default_tile(c)
        # the build this module runs, fixed here: reading $SEPCONV_ISA at every call was a sizeable part of the
        # call's Python work (os.environ.get on a missing key raises and catches a KeyError)
        self._isa = native.requested_isa()
        #: Whether a streamed output on the kernel's flat depthwise path takes :func:`streamed_flat_tile`'s tile
        #: instead of ``tile`` (benchmarks turn it off to time a given tile).
        self.streamed_flat_tile = True
        self._plans: dict[tuple, tuple] = {}  # see _plan

    def _plan(self, n: int, h: int, w: int, threads: int) -> tuple[int, int, array]:
        """``(ho, wo, args)``: the output size and the kernel's argument array (``sepconv_fused_dwpw_args``, one
        int64 per argument of ``sepconv_fused_dwpw_f32``) with every value but the tensors' addresses and
        ``parts`` filled in, computed once per input size, thread count, tile, streaming threshold and
        ``streamed_flat_tile``, so that a call does little Python work besides the kernel."""
        key = (n, h, w, threads, self.tile, STREAM_MIN_BYTES, self.streamed_flat_tile)
        plan = self._plans.get(key)
        if plan is None:
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
            ho, wo = self.output_size(h, w)
            lib = self._library()
            tile = self.tile
            if self.streamed_flat_tile:
                tile = flat_aware_tile(lib, n, self.in_channels, self.out_channels, wo, ho, self.stride, tile)
            tile, groups, stream = kernel_schedule(n, ho, wo, self.out_channels, tile, threads, self.stride)
            jobs = lib.sepconv_fused_jobs(n, ho, wo, tile, groups)
            # sepconv_fused_dwpw_f32's parameters in order; 0 in the slots _run fills (the _ARG_* indices)
            args = array("q", (0, n, h, w, self.in_channels, 0, 0, kh, kw, sh, sw, ph, pw, dh, dw, self.dw_act,
                               0, 0, self.out_channels, self.pw_act, 0, 0, ho, wo, tile, groups, int(stream), 0,
                               0, jobs, threads))
            plan = (ho, wo, args)
            if len(self._plans) >= 16:  # many input sizes: keep the cache small
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def kernel_tile(self, n: int, h: int, w: int) -> int:
        """The tile (output pixels) the kernel runs for ``n`` inputs of ``h`` x ``w`` pixels (after ``pad``, if
        any) with ``torch.get_num_threads()`` threads: ``tile``, or :func:`streamed_flat_tile`'s, then balanced over
        the threads (:func:`kernel_schedule`)."""
        return self._plan(n, h, w, max(1, torch.get_num_threads()))[2][_ARG_TILE]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._checked_input(x).contiguous(memory_format=torch.channels_last))

    def _check_input(self, x: torch.Tensor) -> None:
        """:meth:`FusedPair._check_input`, and raise unless the input (hence the weights) is float32 on the CPU,
        which is what the kernel reads: ``.to()``, ``.double()`` or ``.half()`` convert the module's buffers."""
        FusedPair._check_input(self, x)
        if x.dtype != torch.float32 or not x.is_cpu:
            weight = self._buffers["dw_weight"]
            raise ValueError(f"{type(self).__name__} computes float32 on the CPU only; its weights are now "
                             f"{weight.dtype} on {weight.device}: convert it back with .float().cpu(), or run the "
                             "separable layer it was built from")

    def _run(self, x: torch.Tensor, parts: int = 3) -> torch.Tensor:
        """The kernel on a channels-last, padded input. ``parts``: 3 the layer, 1 the depthwise step alone (the
        returned tensor is not written), 2 the pointwise step alone on a tile of ones (benchmarks time them apart)."""
        n, _, h, w = x.shape
        ho, wo, plan_args = self._plan(n, h, w, max(1, torch.get_num_threads()))
        c = self.out_channels
        # channels-last strides given directly: empty_strided is quicker than empty(memory_format=)
        y = torch.empty_strided((n, c, ho, wo), (ho * wo * c, 1, wo * c, c), dtype=torch.float32)
        args = self._kernel_args(plan_args, x, y, parts)
        # one ctypes argument instead of 31: ctypes converts each argument, which cost more than the kernel's own
        # setup (benchmarks/bench_call_overhead.py)
        code = self._library().sepconv_fused_dwpw_args(args.buffer_info()[0])
        if code:
            raise RuntimeError(f"the fused kernel failed with code {code} (-1: out of memory, -2: a job range or "
                               f"parts outside what the kernel accepts)")
        return y

    def _library(self):
        """The kernels of the build this module was constructed with (loaded once per process)."""
        return native.load_for(native.MARCH, self._isa)[0]

    def _kernel_args(self, plan_args: array, x: torch.Tensor, y: torch.Tensor, parts: int = 3) -> array:
        """A copy of a :meth:`_plan` argument array with the addresses of ``x``, ``y`` and this module's weights and
        ``parts`` filled in: what ``sepconv_fused_dwpw_args`` takes. A copy per call, as the module may run in
        several threads at once; the caller keeps the array and the tensors alive until the kernel returns."""
        buffers = self._buffers  # direct access: nn.Module's __getattr__ is slow on the per-call path
        dw_bias, pw_bias = buffers["dw_bias"], buffers["pw_bias"]
        args = array("q", plan_args)
        args[_ARG_X], args[_ARG_Y], args[_ARG_PARTS] = x.data_ptr(), y.data_ptr(), parts
        args[_ARG_DW_WEIGHT], args[_ARG_PW_PANELS] = buffers["dw_weight"].data_ptr(), buffers["pw_panels"].data_ptr()
        if dw_bias is not None:
            args[_ARG_DW_BIAS] = dw_bias.data_ptr()
        if pw_bias is not None:
            args[_ARG_PW_BIAS] = pw_bias.data_ptr()
        return args

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tile={self.tile}"
