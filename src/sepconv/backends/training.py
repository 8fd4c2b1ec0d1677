"""Training engines for the two steps of a separable layer, chosen per convolution by measurement (``tune_training``).

Why (the measurements are in ``benchmarks/results/kernels-*`` and ``docs/design-notes.md``):

* ``'gemm'``, for 1x1 convolutions: a separable layer's training step is
  dominated by its pointwise step's backward pass, which eager PyTorch runs
  poorly on some shapes (at batch 1 on one thread it takes the
  ``_slow_conv2d`` path, im2col + a GEMM). A 1x1 convolution is a matrix
  product, so :class:`Pointwise1x1` computes it as one over the pixels of
  channels-last tensors: forward and input gradient in sepconv's C kernel
  where it builds (:func:`matmul_bt`; oneDNN 1x1 convolutions,
  ``torch.mkldnn_convolution``, otherwise), weight gradient as one matrix
  product over all pixels (:func:`matmul_at_b`: sepconv's C kernel where it
  builds, else ``torch.mm``). oneDNN reorders the weight at every call on
  one thread, which costs most where the weight outweighs the pixels (the
  deep MobileNetV1 layers at batch 1); the C kernel packs it with all
  threads (``benchmarks/bench_pointwise_gemm.py``).
* ``'flip'``, for stride-1 depthwise (grouped) convolutions:
  :class:`FlippedDepthwise` computes the input gradient as a forward
  convolution of the output gradient with the spatially flipped kernel
  (the adjoint of a stride-1 convolution), because oneDNN's depthwise
  backward-data kernel is slower than its forward kernel on channels-last
  inputs (``benchmarks/bench_kernels.py``).
* ``'dwgrad'``, for stride-1 depthwise convolutions (one filter per
  channel), float32 on the CPU: ``'flip'`` with the weight gradient in
  sepconv's C kernel (:func:`depthwise_weight_grad`,
  ``csrc/depthwise_wgrad.c``), which prefetches the next row's input and
  gradient into L2 (``benchmarks/bench_kernels.py``).

* ``'fused'``, for a whole :class:`~sepconv.SeparableConv2d` whose depthwise
  step is undilated with nothing between the steps, float32 on the CPU,
  where sepconv's C kernels build: :class:`FusedSeparableStep` runs each
  pass of the layer in one C kernel. Forward: the fused inference kernel,
  also writing the depthwise output (the 1x1 weight gradient needs it).
  Backward (:func:`depthwise_pointwise_backward`): the 1x1 step's input
  gradient, which both depthwise gradients read, is computed a band of
  rows at a time and used while in cache, never written out, and the 1x1
  weight gradient is summed from the same rows of the output gradient.
  Unfused, a separable layer's depthwise steps are memory-bound passes
  over tensors as large as its input (``docs/design-notes.md``).

While a model is traced or compiled (TorchScript or ONNX export,
``torch.compile``) a tuned layer runs plain PyTorch operations: the kernels
are opaque to a tracer.

The engines compute first derivatives only: their backward passes are marked
``once_differentiable`` (the kernels' results are not tracked by autograd, so
a second derivative through them would be silently wrong), and a double
backward through a tuned layer raises.

Each is faster on some layers and slower on others, so :func:`tune_training`
times eager PyTorch and the engine on each convolution's own input shape and
keeps the faster; nothing changes where eager PyTorch wins.
"""

from __future__ import annotations

import copy
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..geometry import output_size_1d
from ..layers.separable import SeparableConv2d
from ..utils.timing import first_inputs, profiled
from . import fused as fused_kernels
from . import native
from .clock import time_candidates
from .engine import TrainingEngine, always_available
from .fused import check_pair_tensors, fused_separable_forward
from .sites import is_identity, plain_conv2d


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
             transposed: bool = False) -> torch.Tensor:
    """A 1x1 convolution of ``x`` by ``weight`` (Cout, Cin, 1, 1), or with ``transposed=True`` by its transpose
    (Cin <- Cout: the input gradient), in channels-last. float32 CPU tensors go to sepconv's C kernel
    (:func:`matmul_bt`) where it builds, else to oneDNN (PyTorch's own choice can be im2col); the rest to
    ``F.conv2d``."""
    cout, cin = weight.shape[:2]
    if _kernel_library(x, weight) is not None:
        n, _, h, w = x.shape
        # the result is its own tensor, not a view (an autograd Function's output is modified in place by an
        # inplace activation after it); the kernel writes its pixels
        y = torch.empty((n, cin if transposed else cout, h, w), dtype=torch.float32,
                        memory_format=torch.channels_last)
        matmul_bt(_pixels(x.contiguous(memory_format=torch.channels_last)), weight.reshape(cout, cin), bias,
                  transposed=transposed, out=_pixels(y))
        return y
    if transposed:
        weight = weight.reshape(cout, cin).t().reshape(cin, cout, 1, 1)
    if x.dtype == torch.float32 and x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.mkldnn_convolution(x, weight.contiguous(), bias, [0, 0], [1, 1], [1, 1], 1)
    return F.conv2d(x, weight, bias)


def _kernel_library(*tensors: torch.Tensor):
    """sepconv's C kernels when every tensor is float32 on the CPU and they build here, else None."""
    # a plain loop over cheap properties: called at every step, and (design notes) such Python work runs with the
    # caches cold after a kernel
    for t in tensors:
        if t.dtype is not _FLOAT32 or not t.is_cpu:
            return None
    return native.load()[0]


_FLOAT32 = torch.float32


def matmul_at_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.T @ b`` for ``a``: (P, M) and ``b``: (P, N), the weight gradient of a 1x1 convolution over P pixels.

    float32 CPU matrices go to sepconv's C kernel (``csrc/gemm_atb.c``:
    AVX-512, AVX2 or NEON register blocks, the pixels in cache-sized chunks, on
    ``torch.get_num_threads()`` threads; inputs made contiguous first, no copy
    for the pixels of channels-last tensors) when it is built
    (:mod:`sepconv.backends.native`); everything else to ``torch.mm``. The kernel's
    result is not tracked by autograd (it serves inside a backward pass). Why a kernel:
    on this project's AMD CPU ``torch.mm`` runs oneMKL's AVX2 code, about 2x
    slower on these shapes (``benchmarks/README.md``).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"matmul_at_b needs (P, M) and (P, N) matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    lib = _kernel_library(a, b)
    if lib is None:
        return torch.mm(a.t(), b)
    a, b = a.contiguous(), b.contiguous()  # no copy for the pixels of channels-last tensors
    (p, m), n = a.shape, b.shape[1]
    if n < 16 <= m:  # the kernel vectorizes along the columns: compute the transpose when they are few
        return matmul_at_b(b, a).t()
    out = torch.empty(m, n, dtype=torch.float32)  # explicit: the default dtype may be float64
    with profiled("sepconv::gemm_atb"):
        code = lib.sepconv_gemm_atb_f32(p, m, n, a.data_ptr(), m, b.data_ptr(), n, out.data_ptr(),
                                        n, max(1, torch.get_num_threads()))
    if code:
        raise RuntimeError(f"the matmul_at_b kernel failed with code {code} (-1: out of memory)")
    return out


def matmul_bt(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
              transposed: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a @ weight.T + bias`` for ``a``: (P, K) and ``weight``: (N, K); with ``transposed=True``, ``a @ weight``
    for ``weight``: (K, N). A 1x1 convolution over P pixels: its forward pass (``weight``: Cout x Cin) and, with
    ``transposed=True``, its input gradient (the same weight; no transposed copy is made first).

    float32 CPU matrices go to sepconv's C kernel where it builds (``csrc/fused_dwpw.c``,
    ``sepconv_gemm_f32``: the fused kernel's register-blocked 1x1 step, run on the rows of ``a`` in place,
    on ``torch.get_num_threads()`` threads; ``a`` made row-contiguous first, a view for the pixels of a
    channels-last tensor), but for a forward pass over fewer than 256 rows on one thread (the kernel transposes
    the whole weight at each call); everything else to ``torch.addmm`` / ``torch.mm``. Returns a new (P, N)
    tensor, or ``out`` (a contiguous (P, N) tensor of ``a``'s dtype and device) written in place; not tracked by
    autograd.
    """
    if a.dim() != 2 or weight.dim() != 2 or a.shape[1] != weight.shape[0 if transposed else 1]:
        raise ValueError(f"matmul_bt needs a (P, K) matrix and a {'(K, N)' if transposed else '(N, K)'} weight, "
                         f"got {tuple(a.shape)} and {tuple(weight.shape)}")
    n = weight.shape[1 if transposed else 0]
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"matmul_bt: bias must have shape ({n},), got {tuple(bias.shape)}")
    if out is not None and (tuple(out.shape) != (a.shape[0], n) or out.dtype != a.dtype or out.device != a.device
                            or not out.is_contiguous()):
        raise ValueError(f"matmul_bt: out must be a contiguous ({a.shape[0]}, {n}) {a.dtype} tensor on "
                         f"{a.device}, got {tuple(out.shape)} {out.dtype} on {out.device} with strides "
                         f"{tuple(out.stride())}")
    lib = _kernel_library(a, weight, *(() if bias is None else (bias,)))
    threads = max(1, torch.get_num_threads())
    if lib is None or a.shape[0] == 0 or (not transposed and threads == 1 and a.shape[0] < _TRANSPOSE_MIN_ROWS):
        b = weight if transposed else weight.t()
        if out is None:
            return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)
        return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
    if a.stride(1) != 1 or a.stride(0) < a.shape[1]:
        a = a.contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    p, k = a.shape
    out = torch.empty(p, n, dtype=torch.float32) if out is None else out
    # B[k][j] = weight[j][k] (forward) or weight[k][j] (transposed), given to the kernel as strides
    w_k, w_n = (n, 1) if transposed else (1, k)
    chunk = max(6, min(1024, _GEMM_CHUNK_FLOATS // k) // 6 * 6)
    with profiled("sepconv::gemm"):
        code = lib.sepconv_gemm_f32(p, k, n, a.data_ptr(), a.stride(0), weight.data_ptr(), w_k, w_n,
                                    None if bias is None else bias.data_ptr(), out.data_ptr(), chunk, threads)
    if code:
        raise RuntimeError(f"the matmul_bt kernel failed with code {code} (-1: out of memory)")
    return out


#: Below this many rows, :func:`matmul_bt`'s forward pass (the weight read transposed) on one thread goes to
#: ``torch.mm``: the kernel transposes the whole weight into its panels at every call, which outweighs the product
#: for few pixels; with more threads the kernel, which splits the weight among them, was the faster
#: (``benchmarks/bench_pointwise_gemm.py``: ``forward_kernel`` against ``forward_mm``).
_TRANSPOSE_MIN_ROWS = 256

#: Rows of ``a`` per chunk of :func:`matmul_bt` times its columns: a chunk of about 256 KiB, read from the L2 cache
#: by every 32-column panel of the weight. Each chunk reads the whole weight once; sizes of 48-512 KiB timed the
#: same within the host's noise on the suite shapes, so this leans to few chunks.
_GEMM_CHUNK_FLOATS = 65536


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N*H*W, C)`` (a view when ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class Pointwise1x1(torch.autograd.Function):
    """``y = conv1x1(x, weight) + bias`` with gradients computed as matrix products.

    ``grad_x = conv1x1(grad_y, weight^T)``, ``grad_weight = grad_y_pixels^T @ x_pixels``,
    ``grad_bias = sum of grad_y over pixels``. Any dtype and device (float32
    on the CPU uses sepconv's C kernels or oneDNN; the rest ``F.conv2d``);
    checked with ``gradcheck`` in float64.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv1x1(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv1x1(grad_y, weight, None, transposed=True)
        if ctx.needs_input_grad[1]:
            grad_w = _pointwise_weight_grad(grad_y, x, weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _pixels(grad_y.contiguous(memory_format=torch.channels_last)).sum(0)
        return grad_x, grad_w, grad_b


#: Depthwise convolutions of at most this many channels run their stride-1 forward pass and input gradient in
#: sepconv's flat kernel (:func:`depthwise_conv`): a vector of channels would hold few useful lanes (3 of 16 for an
#: RGB input); from 5 channels oneDNN's forward pass was about as fast or faster
#: (``benchmarks/bench_depthwise_few.py``). The weight gradient's kernel makes its own choice per ISA
#: (``wgrad_flat_applies`` in ``csrc/depthwise_wgrad.c``).
FLAT_MAX_CHANNELS = 4


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: tuple[int, int],
                   dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)``: a stride-1 depthwise convolution (``weight``:
    ``(C, 1, KH, KW)``, one filter per channel), zero ``padding`` ``(ph, pw)`` of at most ``dilation * (kernel -
    1)``. float32 CPU tensors of at most :data:`FLAT_MAX_CHANNELS` channels run in sepconv's C kernel
    (``sepconv_depthwise_f32``, ``csrc/fused_dwpw.c``: each output row as one 1D convolution over its pixels'
    channels, with the weight repeating every C floats), channels-last out; the rest ``F.conv2d``. Not tracked by
    autograd."""
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[:2]) != (x.shape[1], 1):
        raise ValueError(f"depthwise_conv needs x (N, C, H, W) and weight (C, 1, KH, KW), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    (n, c, h, w), (kh, kw) = x.shape, weight.shape[2:]
    (ph, pw), (dh, dw) = padding, dilation
    ho, wo = output_size_1d(h, kh, 1, dh, (ph, ph)), output_size_1d(w, kw, 1, dw, (pw, pw))
    if not (0 <= ph <= dh * (kh - 1) and 0 <= pw <= dw * (kw - 1)) or ho < 1 or wo < 1:
        raise ValueError(f"depthwise_conv: padding must be 0..{dh * (kh - 1)} x 0..{dw * (kw - 1)} for a {kh}x{kw} "
                         f"kernel of dilation {tuple(dilation)} on a {h}x{w} input, got {tuple(padding)}")
    extra = () if bias is None else (bias,)
    lib = _kernel_library(x, weight, *extra) if c <= FLAT_MAX_CHANNELS else None
    if lib is None:
        with torch.no_grad():
            return F.conv2d(x, weight, bias, 1, padding, dilation, c)
    x = x.contiguous(memory_format=torch.channels_last)
    taps = weight.detach().reshape(c, kh * kw).t().contiguous()  # the kernel's layout, [KH][KW][C]
    y = torch.empty((n, c, ho, wo), dtype=torch.float32, memory_format=torch.channels_last)
    b = None if bias is None else bias.detach().contiguous()
    with profiled("sepconv::depthwise"):
        code = lib.sepconv_depthwise_f32(x.data_ptr(), n, h, w, c, taps.data_ptr(), None if b is None else b.data_ptr(),
                                         kh, kw, ph, pw, dh, dw, y.data_ptr(), max(1, torch.get_num_threads()))
    if code:
        raise RuntimeError(f"the depthwise kernel failed with code {code} (-1: out of memory)")
    return y


class FlippedDepthwise(torch.autograd.Function):
    """A stride-1 grouped convolution (depthwise: ``groups = in_channels``) whose input gradient is a forward one.

    ``y = conv2d(x, weight, bias, stride 1, padding, dilation, groups)``. The
    adjoint of a stride-1 convolution is a convolution with the kernel
    flipped in space and each group's input/output channels swapped:
    ``grad_x = conv2d(grad_y, flip(weight), padding = dilation * (k - 1) -
    padding, dilation, groups)``; it needs ``padding <= dilation * (k - 1)``
    (what :func:`engine_applies` checks). Weight and bias gradients are
    PyTorch's own (``aten.convolution_backward``), or with
    ``kernel_weight_grad=True`` (depthwise convolutions: one filter per
    channel) :func:`depthwise_weight_grad`'s and ``grad_y`` summed over batch
    and pixels. Checked with ``gradcheck`` in float64 and against
    ``F.conv2d``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: tuple[int, int],
                dilation: tuple[int, int], groups: int, kernel_weight_grad: bool = False) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, groups, bias is not None, kernel_weight_grad)
        if groups == x.shape[1] == weight.shape[0]:  # depthwise, one filter per channel
            return depthwise_conv(x, weight, bias, padding, dilation)
        return F.conv2d(x, weight, bias, 1, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        (ph, pw), dilation, groups, has_bias, kernel_weight_grad = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            cout, cin_g, kh, kw = weight.shape
            # [groups * out_per_group, in_per_group] -> [groups * in_per_group, out_per_group], flipped in space
            adjoint = (weight.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
                       .reshape(groups * cin_g, cout // groups, kh, kw).flip(2, 3))
            pad = (dilation[0] * (kh - 1) - ph, dilation[1] * (kw - 1) - pw)
            if groups == x.shape[1] == cout:
                grad_x = depthwise_conv(grad_y, adjoint, None, pad, dilation)
            else:
                grad_x = F.conv2d(grad_y, adjoint, None, 1, pad, dilation, groups)
        if kernel_weight_grad:
            if ctx.needs_input_grad[1]:
                grad_w = depthwise_weight_grad(x, grad_y, tuple(weight.shape[2:]), (1, 1), (ph, pw), dilation)
            if has_bias and ctx.needs_input_grad[2]:
                grad_b = grad_y.sum((0, 2, 3))
        elif ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2]):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_y, x, weight, [weight.shape[0]] if has_bias else None, [1, 1], [ph, pw], list(dilation), False,
                [0, 0], groups, [False, ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None, None, None, None


def depthwise_weight_grad(x: torch.Tensor, grad_y: torch.Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                          dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The weight gradient ``(C, 1, kh, kw)`` of a depthwise convolution of ``x`` (``(N, C, H, W)``, one filter
    per channel) for output gradient ``grad_y``.

    float32 CPU tensors run in sepconv's C kernel (``csrc/depthwise_wgrad.c``:
    both tensors read once in channels-last, 8-pixel sliding windows, the next
    row of each prefetched into L2, the threads' partial sums added in a fixed
    order) when it builds; everything else runs ``aten.convolution_backward``.
    Not tracked by autograd.
    """

    if x.dim() != 4 or grad_y.dim() != 4 or grad_y.shape[:2] != x.shape[:2]:
        raise ValueError(f"depthwise_weight_grad needs x (N, C, H, W) and grad_y (N, C, Ho, Wo), got "
                         f"{tuple(x.shape)} and {tuple(grad_y.shape)}")
    c, (kh, kw) = x.shape[1], kernel_size
    expected = tuple(output_size_1d(size, k, s, d, (p, p)) for size, k, s, d, p in
                     zip(x.shape[2:], kernel_size, stride, dilation, padding))
    if tuple(grad_y.shape[2:]) != expected:
        raise ValueError(f"depthwise_weight_grad: grad_y is {tuple(grad_y.shape[2:])} pixels, the convolution of a "
                         f"{tuple(x.shape[2:])} input with kernel {tuple(kernel_size)}, stride {tuple(stride)}, "
                         f"padding {tuple(padding)}, dilation {tuple(dilation)} gives {expected}")
    lib = _kernel_library(x, grad_y) if kh <= 16 else None
    if lib is None:
        weight = torch.empty(c, 1, kh, kw, dtype=x.dtype, device=x.device)
        return torch.ops.aten.convolution_backward(grad_y, x, weight, None, list(stride), list(padding),
                                                   list(dilation), False, [0, 0], c, [False, True, False])[1]
    n, _, h, w = x.shape
    ho, wo = grad_y.shape[2:]
    x = x.contiguous(memory_format=torch.channels_last)
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    taps = torch.empty(kh * kw, c, dtype=torch.float32)
    with profiled("sepconv::depthwise_wgrad"):
        code = lib.sepconv_depthwise_wgrad_f32(x.data_ptr(), n, h, w, c, grad_y.data_ptr(), ho, wo, kh, kw,
                                               stride[0], stride[1], padding[0], padding[1], dilation[0],
                                               dilation[1], taps.data_ptr(), max(1, torch.get_num_threads()))
    if code:
        raise RuntimeError(f"the depthwise weight-gradient kernel failed with code {code} (-1: out of memory)")
    return taps.t().reshape(c, 1, kh, kw)


def depthwise_pointwise_backward(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                                 grad_y: torch.Tensor, padding: tuple[int, int], *, stride: tuple[int, int] = (1, 1),
                                 dw_bias: bool = False, mid: Optional[torch.Tensor] = None,
                                 pw_grad: Optional[bool] = None, dw_bias_value: Optional[torch.Tensor] = None,
                                 input_grad: bool = True
                                 ) -> tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor],
                                            Optional[torch.Tensor]]:
    """Gradients of ``y = conv1x1(depthwise(x))`` with respect to ``x``, the depthwise weight (and bias) and the 1x1
    weight.

    The depthwise step: ``stride`` ``(sh, sw)``, dilation 1, one filter per channel (``dw_weight``: ``(C, 1, KH, KW)``),
    zero ``padding`` ``(ph, pw)`` with ``0 <= ph <= KH - 1`` and ``0 <= pw <= KW - 1``; the 1x1 step: ``pw_weight``
    ``(Cout, C, 1, 1)``. ``x``: ``(N, C, H, W)``; ``grad_y`` (and ``mid``, ``(N, C, Ho, Wo)``): ``(N, Cout, Ho, Wo)``
    with ``Ho = (H + 2 ph - KH) // sh + 1``, ``Wo = (W + 2 pw - KW) // sw + 1``. Returns ``(grad_x, grad_dw_weight,
    grad_dw_bias, grad_pw_weight)``: grad_x channels-last (``None`` with ``input_grad=False``: a network's first layer,
    whose input needs no gradient, skips the depthwise step's adjoint), grad_dw_bias ``None`` unless ``dw_bias``,
    grad_pw_weight ``None`` unless ``pw_grad`` (default: whether ``mid`` is given). The 1x1 weight's gradient needs the
    depthwise step's output: ``mid`` where given, else it is recomputed from ``x``, ``dw_weight`` and ``dw_bias_value``
    (the depthwise bias, ``(C,)``, or None), inside the kernel a band of rows at a time
    (:func:`recomputes_depthwise_output` says where), so a training step need not keep it.

    float32 CPU tensors run in sepconv's C kernel (``sepconv_dwpw_backward_f32`` in ``csrc/fused_dwpw.c``) where
    it builds: the 1x1 step's input gradient ``grad_y @ pw_weight`` is computed a band of rows at a time into a
    per-thread buffer and both depthwise gradients are taken from there, so it never goes to memory; the 1x1
    weight gradient is summed from the same band's ``grad_y`` rows while they are in cache, where the weight is
    small enough for one copy per thread (at most :data:`_FUSED_PW_GRAD_MAX_WEIGHTS` elements; else
    :func:`matmul_at_b`). A ``grad_x`` of :data:`sepconv.backends.fused.STREAM_MIN_BYTES` or more is written with
    non-temporal stores, as the fused forward kernel writes its output. Its ``torch.get_num_threads()`` threads share
    the images, an image's rows, or its channels (:func:`backward_channel_groups`). Other tensors: the steps unfused
    (``F.conv2d``, ``aten.convolution_backward``, :func:`matmul_at_b`). Not tracked by autograd.
    """
    pw_grad = mid is not None if pw_grad is None else pw_grad
    if mid is not None and not pw_grad:
        raise ValueError("depthwise_pointwise_backward: mid is given but pw_grad=False; mid serves the 1x1 weight's "
                         "gradient only")
    n, c, h, w, kh, kw, cout = check_pair_tensors("depthwise_pointwise_backward", x, dw_weight, pw_weight)
    (ph, pw), (sh, sw) = padding, stride
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise ValueError(f"depthwise_pointwise_backward: padding must be 0..{kh - 1} x 0..{kw - 1} for a "
                         f"{kh}x{kw} kernel, got {tuple(padding)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"depthwise_pointwise_backward: stride must be >= 1, got {tuple(stride)}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"depthwise_pointwise_backward: a {h}x{w} input with padding {tuple(padding)} is smaller "
                         f"than the {kh}x{kw} kernel")
    expected = (n, cout, output_size_1d(h, kh, sh, 1, (ph, ph)), output_size_1d(w, kw, sw, 1, (pw, pw)))
    if tuple(grad_y.shape) != expected:
        raise ValueError(f"depthwise_pointwise_backward: grad_y must be {expected} for x {tuple(x.shape)}, "
                         f"got {tuple(grad_y.shape)}")
    if mid is not None and tuple(mid.shape) != (n, c, *expected[2:]):
        raise ValueError(f"depthwise_pointwise_backward: mid must be {(n, c, *expected[2:])} (the depthwise output), "
                         f"got {tuple(mid.shape)}")
    if dw_bias_value is not None and tuple(dw_bias_value.shape) != (c,):
        raise ValueError(f"depthwise_pointwise_backward: dw_bias_value must have shape ({c},), got "
                         f"{tuple(dw_bias_value.shape)}")
    extra = tuple(t for t in (mid, dw_bias_value) if t is not None)
    lib = _kernel_library(x, dw_weight, pw_weight, grad_y, *extra) if kh <= 16 else None
    return _backward(lib, x, dw_weight, pw_weight, grad_y, (ph, pw), (sh, sw), dw_bias, mid, pw_grad, dw_bias_value,
                     input_grad)


def _backward(lib, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, grad_y: torch.Tensor,
              padding: tuple[int, int], stride: tuple[int, int], dw_bias: bool, mid: Optional[torch.Tensor],
              pw_grad: bool, dw_bias_value: Optional[torch.Tensor], input_grad: bool):
    """:func:`depthwise_pointwise_backward` on arguments it has checked (or that a forward pass it ran checked):
    ``lib``, sepconv's C kernels where they serve these tensors, else None."""
    (ph, pw), (sh, sw) = padding, stride
    n, c, h, w = x.shape
    kh, kw = dw_weight.shape[2:]
    cout = pw_weight.shape[0]
    lib = lib if n > 0 else None  # an empty batch: the kernel takes at least one image, PyTorch any number
    fuse_pw = pw_grad and lib is not None and _kernel_sums_pw_grad(dw_weight, pw_weight)
    if pw_grad and mid is None and not fuse_pw:  # the unfused 1x1 weight gradient needs the depthwise output whole
        mid = _depthwise_output(x, dw_weight, dw_bias_value, (sh, sw), (ph, pw))
    if lib is None:
        grad_mid = _conv1x1(grad_y, pw_weight, None, transposed=True)
        grad_x, grad_w = torch.ops.aten.convolution_backward(grad_mid, x, dw_weight, None, [sh, sw], [ph, pw],
                                                             [1, 1], False, [0, 0], c, [input_grad, True, False])[:2]
        return (grad_x.contiguous(memory_format=torch.channels_last) if input_grad else None, grad_w,
                grad_mid.sum((0, 2, 3)) if dw_bias else None, _pointwise_weight_grad(grad_y, mid, pw_weight))
    cl = torch.channels_last
    x, grad_y = x.contiguous(memory_format=cl), grad_y.contiguous(memory_format=cl)
    if fuse_pw and mid is not None:
        mid = mid.contiguous(memory_format=cl)
    bias = dw_bias_value.detach().contiguous() if fuse_pw and mid is None and dw_bias_value is not None else None
    # the weights as stored ([C][KH][KW], [Cout][C]: the kernel's layouts), and the depthwise weight's gradient
    # written in its layout: no reshaping around the call (Python work here runs with cold caches, design notes)
    dw_weight, pw_weight = dw_weight.detach().contiguous(), pw_weight.detach().contiguous()
    grad_x = torch.empty((n, c, h, w), dtype=torch.float32, memory_format=cl) if input_grad else None
    grad_w = torch.empty(c, 1, kh, kw, dtype=torch.float32)
    grad_b = torch.empty(c, dtype=torch.float32) if dw_bias else None
    grad_pw = torch.empty(cout, c, 1, 1, dtype=torch.float32) if fuse_pw else None
    # a grad_x too large to stay in cache for the layer below is written around the caches, as the forward
    # kernel's output is (fused.STREAM_MIN_BYTES, read at each call)
    stream = int(grad_x is not None and grad_x.nbytes >= fused_kernels.STREAM_MIN_BYTES)
    threads = max(1, torch.get_num_threads())
    groups = backward_channel_groups(n, h * w, cout, threads)
    with profiled("sepconv::dwpw_backward"):
        code = lib.sepconv_dwpw_backward_f32(x.data_ptr(), n, h, w, c, dw_weight.data_ptr(),
                                             None if bias is None else bias.data_ptr(), kh, kw, sh, sw, ph, pw,
                                             grad_y.data_ptr(), cout, pw_weight.data_ptr(),
                                             mid.data_ptr() if fuse_pw and mid is not None else None,
                                             None if grad_x is None else grad_x.data_ptr(),
                                             grad_w.data_ptr(), None if grad_b is None else grad_b.data_ptr(),
                                             grad_pw.data_ptr() if fuse_pw else None, 0, groups, stream, threads)
    if code:
        raise RuntimeError(f"the depthwise-pointwise backward kernel failed with code {code} (-1: out of memory)")
    if not fuse_pw:
        grad_pw = _pointwise_weight_grad(grad_y, mid, pw_weight)
    return grad_x, grad_w, grad_b, grad_pw


def backward_channel_groups(batch: int, pixels: int, out_channels: int, threads: int) -> int:
    """How many groups of channels :func:`depthwise_pointwise_backward`'s kernel splits its work into on ``threads``
    threads, for ``batch`` input images of ``pixels`` pixels (height x width) each and a 1x1 step of
    ``out_channels`` outputs: 1 (the work split by images, and an image by rows where the images cannot be dealt
    evenly), or ``threads``.

    Split by rows, every thread reads all of the 1x1 weight, and the rows of the 1x1 step's input gradient on both
    sides of a split are computed by both threads. Split by channels, no row is computed twice and each thread reads
    its share of the weight, but first gathers its channels of the input: that pays where the images cannot be
    dealt evenly and the input has fewer pixels than the layer has output channels (each thread's share of the
    input is then smaller than its share of the weight), as in MobileNetV1's 14- and 7-pixel layers at batch 1.
    """
    for name, value in (("batch", batch), ("pixels", pixels), ("out_channels", out_channels), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"backward_channel_groups: {name} must be an integer >= 1, got {value!r}")
    if threads > 1 and batch % threads and batch * pixels < out_channels:
        return threads
    return 1


#: The largest 1x1 weight (elements) whose gradient :func:`depthwise_pointwise_backward`'s kernel sums itself:
#: each thread keeps a copy, updated once per band of rows and added at the end; a larger one (deep layers, whose
#: few pixels make the sum cheap anyway) is left to :func:`matmul_at_b`. At 256 x 256, 28 x 28 pixels, batch 1,
#: the kernel's sum, a band of 56 pixels at a time over a 256 KiB copy, was slower than the kernel without it
#: plus :func:`matmul_at_b` (docs/design-notes.md), so the bound is 128 x 256.
_FUSED_PW_GRAD_MAX_WEIGHTS = 32768


def recomputes_depthwise_output(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor) -> bool:
    """Whether :func:`depthwise_pointwise_backward` computes the 1x1 weight's gradient without the depthwise output
    (recomputing it inside its kernel) for these tensors: float32 CPU tensors where sepconv's C kernels build, a
    kernel at most 16 high, and a 1x1 weight of at most :data:`_FUSED_PW_GRAD_MAX_WEIGHTS` elements. Elsewhere it
    needs ``mid`` (or recomputes it whole with ``F.conv2d``)."""
    return _kernel_sums_pw_grad(dw_weight, pw_weight) and _kernel_library(x, dw_weight, pw_weight) is not None


def _kernel_sums_pw_grad(dw_weight: torch.Tensor, pw_weight: torch.Tensor) -> bool:
    """Whether the backward kernel, where it runs, sums the 1x1 weight gradient itself (and so can recompute the
    depthwise output for it): a kernel at most 16 high, a 1x1 weight of at most _FUSED_PW_GRAD_MAX_WEIGHTS."""
    return dw_weight.shape[2] <= 16 and pw_weight.shape[0] * pw_weight.shape[1] <= _FUSED_PW_GRAD_MAX_WEIGHTS


def _depthwise_output(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                      stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The depthwise step's output, not tracked by autograd (``F.conv2d``, one filter per channel)."""
    with torch.no_grad():
        return F.conv2d(x, dw_weight, dw_bias, stride, padding, 1, x.shape[1])


def _pointwise_weight_grad(grad_y: torch.Tensor, mid: Optional[torch.Tensor],
                           pw_weight: torch.Tensor) -> Optional[torch.Tensor]:
    """``grad_y``'s pixels^T @ ``mid``'s pixels as a 1x1 weight's gradient, or None without ``mid``."""
    if mid is None:
        return None
    cl = torch.channels_last
    return matmul_at_b(_pixels(grad_y.contiguous(memory_format=cl)),
                       _pixels(mid.contiguous(memory_format=cl))).reshape(pw_weight.shape)


class FusedSeparableStep(torch.autograd.Function):
    """``y = conv1x1(depthwise(x, dw_weight, dw_bias), pw_weight, pw_bias)``, each pass of both steps in one kernel.

    The depthwise step: any ``stride``, dilation 1, one filter per channel,
    zero ``padding`` up to ``kernel - 1`` (what
    :func:`depthwise_pointwise_backward` takes). Forward: the fused inference kernel
    (:func:`~sepconv.backends.fused.fused_separable_forward`) where sepconv's C kernels serve the tensors, which
    also writes the depthwise output out for the 1x1 weight gradient unless the backward kernel recomputes it
    (:func:`recomputes_depthwise_output`: then only ``x`` and the weights are kept); else ``F.conv2d`` and
    :func:`_conv1x1`. Backward: :func:`depthwise_pointwise_backward` for
    every gradient but the 1x1 bias's (a sum over pixels). Any dtype and
    device (the C kernels serve float32 on the CPU); checked with
    ``gradcheck`` in float64 and against the two ``nn.Conv2d`` steps.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                pw_weight: torch.Tensor, pw_bias: Optional[torch.Tensor], padding: tuple[int, int],
                stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
        kh, kw = dw_weight.shape[-2:]
        if not (0 <= padding[0] <= kh - 1 and 0 <= padding[1] <= kw - 1):  # what the backward pass takes
            raise ValueError(f"FusedSeparableStep: padding must be 0..{kh - 1} x 0..{kw - 1} for a {kh}x{kw} kernel, "
                             f"got {tuple(padding)}")
        biases = tuple(b for b in (dw_bias, pw_bias) if b is not None)
        lib = _kernel_library(x, dw_weight, pw_weight, *biases)
        if lib is not None:
            # where the backward kernel recomputes the depthwise output for the 1x1 weight gradient, it is not
            # kept: the forward pass does not write it, nor the backward pass read it
            keep = not recomputes_depthwise_output(x, dw_weight, pw_weight)
            y, mid = fused_separable_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, padding, stride=stride,
                                             keep_depthwise=keep)
        else:
            mid = _depthwise_output(x, dw_weight, dw_bias, stride, padding)
            y = _conv1x1(mid, pw_weight, pw_bias)
        # the backward kernel's library, None where it does not serve these tensors (autograd gives grad_y y's
        # shape, dtype and device, and the forward pass checked the rest)
        ctx.conf = (tuple(padding), tuple(stride), dw_bias is not None, pw_bias is not None,
                    lib if kh <= 16 else None)
        ctx.save_for_backward(x, mid, dw_weight, pw_weight, dw_bias)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, mid, dw_weight, pw_weight, dw_bias = ctx.saved_tensors
        padding, stride, has_dw_bias, has_pw_bias, lib = ctx.conf
        need = ctx.needs_input_grad
        grad_x = grad_dw = grad_dwb = grad_pw = grad_pwb = None
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        if need[0] or need[1] or (has_dw_bias and need[2]):
            grad_x, grad_dw, grad_dwb, grad_pw = _backward(
                lib, x, dw_weight, pw_weight, grad_y, padding, stride, has_dw_bias and need[2],
                mid if need[3] else None, need[3], dw_bias, need[0])
        elif need[3]:
            if mid is None:
                mid = _depthwise_output(x, dw_weight, dw_bias, stride, padding)
            grad_pw = _pointwise_weight_grad(grad_y, mid, pw_weight)
        if has_pw_bias and need[4]:
            grad_pwb = _pixels(grad_y).sum(0)
        return (grad_x if need[0] else None, grad_dw if need[1] else None, grad_dwb, grad_pw, grad_pwb, None, None)


class _StepsForward:
    """Placed on a :class:`~sepconv.SeparableConv2d` as its ``_steps_engine``: runs its two steps as
    :class:`FusedSeparableStep` (a module-level class, so the tuned model deep-copies and pickles)."""

    engine = "fused"

    def __call__(self, layer: SeparableConv2d, x: torch.Tensor) -> torch.Tensor:
        if _tracing():
            return layer._steps(x)
        if x.dim() == 3:  # an unbatched (C, H, W) input, which the layer takes: the kernels take a batch
            return self(layer, x.unsqueeze(0)).squeeze(0)
        dw, pw = layer.depthwise, layer.pointwise
        params = (dw.weight, dw.bias, pw.weight, pw.bias)
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params))) \
                and _kernel_library(x, *(t for t in params if t is not None)) is not None:
            # no backward pass to come (evaluation): the fused kernel without writing the depthwise output out
            return fused_separable_forward(x, *params, tuple(dw.padding), stride=tuple(dw.stride),
                                           keep_depthwise=False)[0]
        return FusedSeparableStep.apply(x, *params, tuple(dw.padding), tuple(dw.stride))

    def __repr__(self) -> str:
        return "sepconv.backends.training engine 'fused'"


def _tracing() -> bool:
    """Whether the model is being traced or compiled (TorchScript or ONNX export, ``torch.compile``): the C kernels
    are opaque to a tracer, which would record their output as a constant, so the engines run the plain PyTorch
    operations there."""
    return _IS_TRACING() or _IN_ONNX_EXPORT() or _IS_COMPILING()


# looked up once: `torch.onnx` is a lazy submodule, found through `torch.__getattr__` and importlib at every
# lookup, which was most of _tracing's cost
_IS_TRACING, _IN_ONNX_EXPORT = torch.jit.is_tracing, torch.onnx.is_in_onnx_export
_IS_COMPILING = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)  # torch >= 2.3


class _EngineForward:
    """Placed on an ``nn.Conv2d`` as its ``_conv_forward``: routes it through one engine's autograd Function.

    A module-level class (not a closure) so that the tuned model still
    deep-copies and pickles; ``untune_training`` removes it.
    """

    def __init__(self, engine: str, padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
                 groups: int = 1) -> None:
        self.engine, self.padding, self.dilation, self.groups = engine, padding, dilation, groups

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if _tracing():
            return F.conv2d(x, weight, bias, 1, self.padding, self.dilation, self.groups)
        if x.dim() == 3:  # an unbatched (C, H, W) input, which nn.Conv2d takes: the engines take a batch
            return self(x.unsqueeze(0), weight, bias).squeeze(0)
        if self.engine == "gemm":
            return Pointwise1x1.apply(x, weight, bias)
        return FlippedDepthwise.apply(x, weight, bias, self.padding, self.dilation, self.groups,
                                      self.engine == "dwgrad")

    def __repr__(self) -> str:
        return f"sepconv.backends.training engine {self.engine!r}"


#: The engines :func:`tune_training` chooses among, besides eager PyTorch, and what each computes.
ENGINES = {"gemm": "1x1, stride-1, unpadded, ungrouped nn.Conv2d (Pointwise1x1)",
           "flip": "stride-1 grouped nn.Conv2d (groups > 1, e.g. depthwise, or a one-channel depthwise step) with "
                   "integer zero padding <= dilation * (kernel - 1) (FlippedDepthwise)",
           "dwgrad": "stride-1 depthwise nn.Conv2d (groups = in_channels = out_channels) with integer zero "
                     "padding <= dilation * (kernel - 1), float32 on the CPU, where sepconv's C kernels build "
                     "(FlippedDepthwise with the weight gradient in sepconv's kernel)",
           "fused": "SeparableConv2d with nothing between its steps (no pad module, norm or activation), an "
                    "undilated depthwise step (any stride) of depth multiplier 1 and zero padding <= kernel - 1, "
                    "float32 on the CPU, where sepconv's C kernels build (FusedSeparableStep)"}

#: The engines that run a whole SeparableConv2d rather than one convolution; tuned after its convolutions.
LAYER_ENGINES = ("fused",)


def engine_applies(conv: nn.Module, engine: str) -> bool:
    """Whether ``engine`` (a key of :data:`ENGINES`) can run ``conv`` (for ``'fused'``: a layer)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    if engine in LAYER_ENGINES:
        return _fused_applies(conv)
    if isinstance(conv, SeparableConv2d):
        return False
    if not plain_conv2d(conv) or tuple(conv.stride) != (1, 1):
        return False
    if engine == "gemm":
        return tuple(conv.kernel_size) == (1, 1) and conv.groups == 1 and tuple(conv.padding) == (0, 0)
    if engine == "dwgrad" and not (conv.groups == conv.in_channels == conv.out_channels
                                      and conv.kernel_size[0] <= 16 and _kernel_library(conv.weight) is not None):
        return False
    # a one-channel depthwise step (a separable layer on grey images) is an ungrouped convolution: groups == 1
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    return (conv.groups > 1 or depthwise) and all(0 <= p <= d * (k - 1) for p, d, k in
                                                  zip(conv.padding, conv.dilation, conv.kernel_size))


def _fused_applies(layer: nn.Module) -> bool:
    if not (isinstance(layer, SeparableConv2d) and all(map(is_identity, (layer.pad, layer.dw_norm, layer.dw_act)))):
        return False
    dw, pw = layer.depthwise, layer.pointwise
    return (plain_conv2d(dw) and tuple(dw.dilation) == (1, 1)
            and dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size[0] <= 16
            and all(0 <= p <= k - 1 for p, k in zip(dw.padding, dw.kernel_size))
            and engine_applies(pw, "gemm") and _kernel_library(dw.weight, pw.weight) is not None)


def tunable(conv: nn.Module) -> bool:
    """Whether some engine of :data:`ENGINES` can run ``conv`` (what :func:`tune_training` times)."""
    return any(engine_applies(conv, engine) for engine in ENGINES)


def use_engine(conv: nn.Module, engine: str) -> None:
    """Route ``conv`` through ``engine`` (a key of :data:`ENGINES`; what :func:`tune_training` does where it
    measures faster); :func:`untune_training` undoes it."""
    if not engine_applies(conv, engine):
        raise ValueError(f"engine {engine!r} runs a {ENGINES[engine]}, got {conv!r}")
    if engine in LAYER_ENGINES:
        conv.__dict__["_steps_engine"] = _StepsForward()
        return
    conv._conv_forward = _EngineForward(engine, tuple(conv.padding), tuple(conv.dilation), conv.groups)


def _engine(name: str) -> TrainingEngine:
    return TrainingEngine(
        name=name, summary=ENGINES[name],
        unavailable=(lambda: None if native.available() else native.unavailable_reason())
        if name in ("dwgrad", "fused")
        else always_available,
        applies=functools.partial(engine_applies, engine=name),
        build=functools.partial(use_engine, engine=name))


#: The training engines, in the order :func:`tune_training` times them (after eager PyTorch).
TRAINING_ENGINES = tuple(_engine(name) for name in ENGINES)


def engine_of(conv: nn.Module) -> str:
    """The engine ``conv`` runs on: a key of :data:`ENGINES`, or ``'eager'``."""
    routed = conv.__dict__.get("_conv_forward", conv.__dict__.get("_steps_engine"))
    return routed.engine if isinstance(routed, (_EngineForward, _StepsForward)) else "eager"


def untune_training(model: nn.Module) -> int:
    """Put every convolution :func:`tune_training` changed back on eager PyTorch; returns how many."""
    count = 0
    for module in model.modules():
        if engine_of(module) != "eager":
            module.__dict__.pop("_conv_forward", None)
            module.__dict__.pop("_steps_engine", None)
            count += 1
    return count


def tune_training(model: nn.Module, sample_input: torch.Tensor, *, rounds: int = 5) -> dict[str, str]:
    """Choose, per convolution of ``model``, the fastest training engine; in place. Returns the choices.

    Each :func:`tunable` convolution (1x1 and stride-1 grouped ones, e.g. the
    two steps of a separable layer) is timed forward+backward on random data
    of its own input shape and memory format (taken from one forward pass of
    ``sample_input`` through a copy of the model, so BatchNorm statistics are
    untouched; without the input's gradient where no trainable parameter
    runs before it, as for a network's first layer, and not at all where
    the convolution is frozen too), as eager PyTorch (``'eager'``) and on each engine of
    :data:`ENGINES` that applies (``'gemm'``: :class:`Pointwise1x1`;
    ``'flip'``: :class:`FlippedDepthwise`; ``'dwgrad'``: the same with
    :func:`depthwise_weight_grad`), in ``rounds`` interleaved rounds on the
    clock :func:`sepconv.optimize` uses (the calling thread's CPU time with
    one CPU thread, :func:`sepconv.backends.clock.timing_clock`); the
    convolution is routed through the fastest. Then each
    :class:`~sepconv.SeparableConv2d` that ``'fused'`` applies to
    (:class:`FusedSeparableStep`) is timed whole, in ``3 * rounds`` rounds,
    as it now runs (its convolutions on their chosen engines) and on
    ``'fused'``, and keeps the faster; the returned choices name the layer
    too. The
    parameters, ``state_dict`` and outputs are unchanged (to float
    tolerance); :func:`untune_training` undoes it. Choices hold for the
    measured shapes and thread count. The random data is drawn on a forked
    random stream: the caller's (CPU and the model's CUDA device) is as it
    was.
    """
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        return _tune(model, sample_input, rounds)


def _tune(model: nn.Module, sample_input: torch.Tensor, rounds: int) -> dict[str, str]:

    probe = copy.deepcopy(model).eval()
    # whether a trainable parameter has been used before a module's input arrives: if not (a network's first
    # layer), training needs no gradient of that input, and its candidates are timed without one
    trained = [sample_input.requires_grad]
    marks = [m.register_forward_hook(lambda *_: trained.__setitem__(0, True)) for m in probe.modules()
             if any(p.requires_grad for p in m.parameters(recurse=False))]
    try:
        seen = first_inputs(probe, [m for m in probe.modules() if tunable(m)], sample_input,
                            keep=lambda x: (x.shape, x.is_contiguous(memory_format=torch.channels_last)
                                            and not x.is_contiguous(), trained[0]))
    finally:
        for mark in marks:
            mark.remove()
    shapes: dict[str, tuple[torch.Size, bool, bool]] = {n: seen[id(m)] for n, m in probe.named_modules()
                                                          if id(m) in seen}
    choices: dict[str, str] = {}
    # convolutions first: a layer engine is timed against its layer with the convolutions on their chosen engines
    order = sorted((item for item in model.named_modules() if tunable(item[1]) and item[0] in shapes),
                   key=lambda item: isinstance(item[1], SeparableConv2d))
    for name, module in order:
        shape, channels_last, input_grad = shapes[name]
        if not input_grad and not any(p.requires_grad for p in module.parameters()):
            continue  # frozen, and nothing trained before it: no backward pass runs through it
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(input_grad)
        eager = copy.deepcopy(module)
        eager.__dict__.pop("_conv_forward", None)
        eager.__dict__.pop("_steps_engine", None)
        candidates = {"eager": eager}
        for engine in TRAINING_ENGINES:
            if engine.unavailable() is None and engine.applies(eager):
                candidates[engine.name] = copy.deepcopy(eager)
                engine.build(candidates[engine.name])
        grad = torch.randn_like(eager(x).detach())

        def step(conv: nn.Module):
            def run():
                conv.zero_grad(set_to_none=True)
                x.grad = None
                conv(x).backward(grad)
            return run

        # a whole layer is timed in three times the rounds: its candidates are often within a few percent of each
        # other and replace two convolutions' choices (benchmarks/results/fused-training-*)
        layer = isinstance(module, SeparableConv2d)
        t = time_candidates({name: step(conv) for name, conv in candidates.items()}, x,
                            3 * rounds if layer else rounds, target_s=0.01)
        choice = min(t, key=lambda k: t[k].median)
        module.__dict__.pop("_conv_forward", None)
        module.__dict__.pop("_steps_engine", None)
        if choice != "eager":
            use_engine(module, choice)
        choices[name] = choice
    return choices
