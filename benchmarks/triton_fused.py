"""A fused depthwise -> pointwise convolution for CUDA GPUs, written in Triton: the intermediate stays on chip.

Run as two convolutions, a depthwise separable layer writes the depthwise
output (as large as its input) to device memory and reads it back for the
1x1 step. :class:`TritonFusedSeparableConv2d` computes, per program, the
depthwise result for a block of output pixels and a block of channels in
registers and feeds it straight into a matrix product with the pointwise
weight (``tl.dot``: the tensor cores), accumulating the output block over
all input channels; the intermediate never reaches device memory. Where a
program covers fewer output channels than the layer has, the depthwise
block is recomputed per output-channel block.

Status: correct (tested on NVIDIA H100 and H200 cards and under Triton's
interpreter) but slower than cuDNN's two convolutions on most suite layers,
in float32 and in bfloat16: its depthwise step is bound by the instructions
it issues, not by memory (``docs/design-notes.md``, "GPU"; the records
``results/gpu-*/graphs-*.json`` and ``results/gpu-h200/triton-blocks-*``).
So nothing in the package uses it; ``bench_gpu_graphs.py`` and
``bench_triton_blocks.py`` time it.

It is the GPU sibling of :class:`sepconv.backends.fused.FusedSeparableConv2d` (the
CPU kernel) and, like it, an inference engine: weights copied in at
construction, no autograd, channels-last output. Inputs may be float32,
float16 or bfloat16; products accumulate in float32. For float32 the 1x1
product uses TF32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is
True (PyTorch's default for convolutions, so the standard convolution it is
compared with does the same), IEEE float32 otherwise.

The block sizes are chosen by measurement on the first call for each input
size (a few candidates, CUDA-event medians via ``triton.testing.do_bench``)
and cached. Needs Triton (which CUDA builds of PyTorch bring) and a CUDA
device; :func:`triton_fused_available` says whether it can run and
:func:`triton_fused_unavailable_reason` why not. With ``TRITON_INTERPRET=1``
in the environment before import, Triton's interpreter runs the same kernel
on CPU tensors (slowly): this is how the tests check it on machines without
a GPU.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import nn

from sepconv.backends.fused import FusedPair, fusable_pair

try:  # Triton ships with CUDA builds of PyTorch; CPU builds lack it
    import triton
    import triton.language as tl
except ImportError as _error:  # pragma: no cover - depends on the installation
    triton = None
    _IMPORT_ERROR: Optional[str] = f"Triton is not installed ({_error}); CUDA builds of PyTorch bring it"
else:
    _IMPORT_ERROR = None


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_fused_unavailable_reason() -> Optional[str]:
    """Why :func:`triton_fused_available` is False (None when it is available)."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not (interpreting() or torch.cuda.is_available()):
        return "no CUDA device (and Triton's interpreter is off: TRITON_INTERPRET=1 runs the kernel on the CPU)"
    return None


def triton_fused_available() -> bool:
    """True when Triton is importable and a CUDA device is present (or Triton's interpreter is on)."""
    return triton_fused_unavailable_reason() is None


class BlockConfig(NamedTuple):
    """A program's work: ``pixels`` output pixels x ``out_channels`` output channels, input channels taken
    ``in_channels`` at a time; ``warps`` per program and ``stages`` of software pipelining."""

    pixels: int
    out_channels: int
    in_channels: int
    warps: int = 4
    stages: int = 2


#: Candidate block shapes timed on the first call per input size (capped to the layer by :func:`candidates_for`):
#: the shapes that came near the best of the whole grid on some suite layer in ``bench_triton_blocks.py``'s bfloat16
#: sweep, enough to cover every layer (``results/gpu-h200/triton-blocks-bf16-b32.json``; docs/design-notes.md). All
#: take two pipeline stages: with one, Triton issues the nine taps' loads into registers at once, and the programs
#: spill.
CANDIDATES = (
    BlockConfig(64, 128, 32, 4),
    BlockConfig(64, 256, 64, 4),
    BlockConfig(64, 256, 32, 4),
    BlockConfig(64, 128, 64, 4),
    BlockConfig(64, 64, 16, 4),
    BlockConfig(128, 64, 16, 8),
    BlockConfig(128, 64, 32, 4),
    BlockConfig(32, 128, 64, 4),
)


def _pow2_at_least(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(1, n) - 1).bit_length())


def candidates_for(in_channels: int, out_channels: int) -> list[BlockConfig]:
    """The :data:`CANDIDATES` that fit a layer: no wider in output channels than it needs, at most 16 input channels
    per step when it has no more (``tl.dot`` needs blocks of at least 16)."""
    widest = _pow2_at_least(out_channels)
    k = min(32, _pow2_at_least(in_channels))
    seen, out = set(), []
    for c in CANDIDATES:
        c = c._replace(out_channels=min(c.out_channels, widest), in_channels=min(c.in_channels, k))
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


if triton is not None:

    @triton.jit
    def _activate(v, ACT: tl.constexpr):
        """sepconv.backends.fused's activation codes: 0 none, 1 ReLU, 2 ReLU6."""
        if ACT == 1:
            v = tl.maximum(v, 0.0)
        elif ACT == 2:
            v = tl.minimum(tl.maximum(v, 0.0), 6.0)
        return v

    @triton.jit(do_not_specialize=["n_pixels", "H", "W", "HO", "WO", "SH", "SW", "PH", "PW", "DH", "DW"])
    def _fused_dwpw_kernel(
        x_ptr, dw_w_ptr, dw_b_ptr, pw_w_ptr, pw_b_ptr, y_ptr,
        n_pixels, H, W, C, HO, WO, COUT,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        SH, SW, PH, PW, DH, DW,
        KH: tl.constexpr, KW: tl.constexpr, DW_ACT: tl.constexpr, PW_ACT: tl.constexpr,
        HAS_DW_BIAS: tl.constexpr, HAS_PW_BIAS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, OFFS_I32: tl.constexpr,
    ):
        # one program: BLOCK_P output pixels (flat over batch, rows, columns) x BLOCK_N output channels.
        # EVEN_K / EVEN_N: C / COUT are multiples of BLOCK_K / BLOCK_N, so no channel needs a mask.
        # OFFS_I32: every element offset of x and y fits in int32, so addresses are 32-bit offsets from the base
        # pointers (half the registers and integer work of 64-bit pointers per element).
        pid_p = tl.program_id(0)
        pid_n = tl.program_id(1)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < n_pixels
        img = p // (HO * WO)
        rest = p % (HO * WO)
        oh = rest // WO
        ow = rest % WO
        if not OFFS_I32:
            img = img.to(tl.int64)
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
        ih0 = oh * SH - PH  # the top-left tap's input row and column of each output pixel
        iw0 = ow * SW - PW
        # each pixel's top-left tap offset, once: a tap's offset is it plus a scalar
        base = img * sxn + ih0 * sxh + iw0 * sxw
        co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        co_ok = co < COUT
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            c_ok = c < C
            taps = x_ptr + (base[:, None] + c[None, :] * sxc)
            mid = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
            for i in tl.static_range(KH):
                ih = ih0 + i * DH
                row_ok = p_ok & (ih >= 0) & (ih < H)
                for j in tl.static_range(KW):
                    iw = iw0 + j * DW
                    ok = row_ok & (iw >= 0) & (iw < W)
                    if EVEN_K:
                        xv = tl.load(taps + (i * DH * sxh + j * DW * sxw), mask=ok[:, None], other=0.0)
                        wv = tl.load(dw_w_ptr + (i * KW + j) * C + c)
                    else:
                        xv = tl.load(taps + (i * DH * sxh + j * DW * sxw), mask=ok[:, None] & c_ok[None, :],
                                     other=0.0)
                        wv = tl.load(dw_w_ptr + (i * KW + j) * C + c, mask=c_ok, other=0.0)
                    mid += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
            if HAS_DW_BIAS:
                mid += tl.load(dw_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            mid = _activate(mid, DW_ACT)
            if EVEN_K and EVEN_N:
                w = tl.load(pw_w_ptr + c[:, None] * COUT + co[None, :])
            else:
                w = tl.load(pw_w_ptr + c[:, None] * COUT + co[None, :], mask=c_ok[:, None] & co_ok[None, :], other=0.0)
            acc = tl.dot(mid.to(w.dtype), w, acc, input_precision=PRECISION)
        if HAS_PW_BIAS:
            acc += tl.load(pw_b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
        acc = _activate(acc, PW_ACT)
        out = y_ptr + ((img * syn + oh * syh + ow * syw)[:, None] + co[None, :] * syc)
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _span(t: torch.Tensor) -> int:
    """One more than the largest element offset a kernel reads through ``t``'s strides."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


class TritonFusedSeparableConv2d(FusedPair):
    """Inference-only depthwise -> pointwise convolution computed by one fused Triton kernel on a CUDA GPU.

    Takes the same arguments as :class:`sepconv.backends.fused.FusedSeparableConv2d`
    (the two convolutions of a depthwise separable layer, depth multiplier 1,
    any kernel size, stride, dilation and integer zero padding; ReLU/ReLU6
    after either step; an optional ``pad`` module applied first) and computes
    ``pw_act(pointwise(dw_act(depthwise(pad(x)))))`` for 4D inputs of the
    weights' dtype (float32, float16 or bfloat16) on their CUDA device. The
    output is channels-last; the kernel reads inputs in any layout through
    their strides (channels-last is the fast one).
    """

    def __init__(self, depthwise: nn.Conv2d, pointwise: nn.Conv2d, dw_activation: Optional[nn.Module] = None,
                 pw_activation: Optional[nn.Module] = None, pad: Optional[nn.Module] = None) -> None:
        reason = fusable_pair(depthwise, pointwise)
        if reason is not None:
            raise ValueError(f"TritonFusedSeparableConv2d: {reason}")
        unavailable = triton_fused_unavailable_reason()
        if unavailable is not None:
            raise RuntimeError(f"TritonFusedSeparableConv2d: {unavailable}")
        for conv in (depthwise, pointwise):
            w = conv.weight
            if w.dtype not in _DTYPES or w.dtype != depthwise.weight.dtype or w.device != depthwise.weight.device:
                raise ValueError(f"TritonFusedSeparableConv2d: both weights must share one dtype of {_DTYPES} and one "
                                 f"device, got {depthwise.weight.dtype} on {depthwise.weight.device} and "
                                 f"{pointwise.weight.dtype} on {pointwise.weight.device}")
            if w.device.type != "cuda" and not interpreting():
                raise ValueError(f"TritonFusedSeparableConv2d: weights must be on a CUDA device, got {w.device}")
        super().__init__(depthwise, pointwise, dw_activation, pw_activation, pad)
        with torch.no_grad():  # [C][COUT]: a block of input channels' rows of output-channel weights
            self.register_buffer("pw_weight", pointwise.weight.detach().reshape(self.out_channels, -1).t().contiguous())
        #: The block shape chosen per (input shape, dtype, TF32 setting): filled on first calls.
        self.configs: dict[tuple, BlockConfig] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._checked_input(x))

    def _precision(self) -> Optional[str]:
        """``tl.dot``'s input precision for float32 (TF32 as cuDNN's convolutions are allowed it); None (Triton's
        default, which float16/bfloat16 products ignore) otherwise."""
        if self.dw_weight.dtype != torch.float32:
            return None
        return "tf32" if torch.backends.cudnn.allow_tf32 and not interpreting() else "ieee"

    def run(self, x: torch.Tensor, config: Optional[BlockConfig] = None,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The kernel on an already padded input; ``config`` forces a block shape (default: chosen by measurement
        on the first call for this input shape, the first candidate under the interpreter); ``out``: a
        channels-last tensor of the output's shape, dtype and device to write into (default: a new one)."""
        self._check_input(x)
        return self._run(x, config, out)

    def _run(self, x: torch.Tensor, config: Optional[BlockConfig] = None,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, _, h, w = x.shape
        ho, wo = self.output_size(h, w)
        shape = (n, self.out_channels, ho, wo)
        if out is None:
            y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        elif (tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device
              or not out.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(f"out must be a channels-last {x.dtype} tensor of shape {shape} on {x.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        else:
            y = out
        precision = self._precision()
        if config is None:
            key = (tuple(x.shape), x.stride(), x.dtype, precision)
            config = self.configs.get(key)
            if config is None:
                if len(self.configs) >= 16:  # many input sizes: keep the cache small
                    self.configs.clear()
                config = self.configs[key] = self._choose(x, y, precision)
        self._launch(x, y, config, precision)
        return y

    def _launch(self, x: torch.Tensor, y: torch.Tensor, config: BlockConfig, precision: Optional[str],
                offs_i32: Optional[bool] = None):
        """One launch of the kernel; ``offs_i32`` forces 32-bit (True) or 64-bit (False) element offsets (default:
        32-bit exactly when every offset into ``x`` and ``y`` fits). Returns Triton's handle of the compiled kernel
        (its ``n_regs``, ``n_spills`` and ``metadata`` say what one program uses)."""
        n, c, h, w = x.shape
        _, cout, ho, wo = y.shape
        pixels = n * ho * wo
        grid = (triton.cdiv(pixels, config.pixels), triton.cdiv(cout, config.out_channels))
        dw_bias, pw_bias = self.dw_bias, self.pw_bias
        return _fused_dwpw_kernel[grid](
            x, self.dw_weight, self.dw_weight if dw_bias is None else dw_bias, self.pw_weight,
            self.pw_weight if pw_bias is None else pw_bias, y,
            pixels, h, w, c, ho, wo, cout, *x.stride(), *y.stride(),
            *self.stride, *self.padding, *self.dilation,
            KH=self.kernel_size[0], KW=self.kernel_size[1], DW_ACT=self.dw_act, PW_ACT=self.pw_act,
            HAS_DW_BIAS=dw_bias is not None, HAS_PW_BIAS=pw_bias is not None, PRECISION=precision,
            BLOCK_P=config.pixels, BLOCK_N=config.out_channels, BLOCK_K=config.in_channels,
            EVEN_K=c % config.in_channels == 0, EVEN_N=cout % config.out_channels == 0,
            OFFS_I32=(_span(x) < 2**31 and _span(y) < 2**31) if offs_i32 is None else offs_i32,
            num_warps=config.warps, num_stages=config.stages,
        )

    def _choose(self, x: torch.Tensor, y: torch.Tensor, precision: Optional[str]) -> BlockConfig:
        options = candidates_for(self.in_channels, self.out_channels)
        if interpreting() or len(options) == 1:
            return options[0]
        from triton.testing import do_bench

        times, errors = {}, []
        for config in options:
            try:
                times[config] = do_bench(lambda: self._launch(x, y, config, precision), warmup=5, rep=20, return_mode="median")
            except Exception as error:  # a block shape this GPU cannot run (e.g. out of shared memory): skipped
                errors.append(f"{config}: {type(error).__name__}: {error}")
        if not times:
            raise RuntimeError("TritonFusedSeparableConv2d: no block shape compiled and ran on this device: "
                               + "; ".join(errors))
        return min(times, key=times.get)
