"""This machine's roofline, measured: peak compute (a large matmul) and memory bandwidth (a large copy).

The roofline model (Williams, Waterman & Patterson, 2009) bounds the time of
a kernel by ``max(FLOPs / peak_flops, bytes / bandwidth)``. sepconv measures
both ceilings instead of taking them from a data sheet, with the thread count
in use. The compute peak is the fastest of ``torch.mm``, ONNX Runtime's
MatMul of the same size (when installed) and a large 3x3 convolution
(channels-last, 256 channels at 56x56: oneDNN's kernels on the CPU,
cuDNN's on CUDA). One library alone can draw the roof too low: which of
them reaches the core's peak depends on the CPU (``docs/design-notes.md``),
and a roof below what a kernel achieves makes layers look "faster than
their bound". The rates of ``torch.mm`` and of the convolution are recorded
too (``torch_peak_gflops``, ``conv_peak_gflops``).

int8 (``sepconv.quantize``): a depthwise stage does ``2 k^2`` FLOPs per output
value and moves about one input and one output value for it (about 2
FLOPs per byte in float32 for 3x3, 9 in int8, ``conv_cost(..., dtype=torch.int8)``):
memory-bound wherever the ridge (:meth:`Roofline.ridge`) lies above that, and
there int8 gains at most its 4x fewer bytes. A pointwise stage with ``C`` input channels does ``2C``
FLOPs per output value and is compute-bound once ``C`` is a few hundred: int8
gains there only what the int8 compute peak has over the float32 one (dot
products of four int8 pairs per 32-bit lane with AVX-512 VNNI), less the
quantize/requantize work around each kernel. ``model_bound_s(...,
dtype_bytes=1)`` gives the memory side of that bound; the roofline measured
here is a float32 one, so its compute side stays float32's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..utils.timing import interleaved


@dataclass(frozen=True)
class Roofline:
    """Measured ceilings: ``peak_flops`` in FLOP/s and ``bandwidth`` in bytes/s."""

    peak_flops: float
    bandwidth: float
    torch_peak_flops: float | None = None  # torch.mm's rate, when other engines were timed too
    conv_peak_flops: float | None = None  # the 3x3 convolution's rate, when it was timed

    def bound_s(self, flops: float, nbytes: float) -> float:
        """Lower bound on the time (s) of a kernel doing ``flops`` FLOPs and moving ``nbytes`` bytes."""
        return max(flops / self.peak_flops, nbytes / self.bandwidth)

    def ridge(self) -> float:
        """Arithmetic intensity (FLOPs per byte) where compute and memory bounds meet."""
        return self.peak_flops / self.bandwidth

    def as_dict(self) -> dict:
        out = {"peak_gflops": self.peak_flops / 1e9, "bandwidth_gbs": self.bandwidth / 1e9,
               "ridge_flops_per_byte": self.ridge()}
        if self.torch_peak_flops is not None:
            out["torch_peak_gflops"] = self.torch_peak_flops / 1e9
        if self.conv_peak_flops is not None:
            out["conv_peak_gflops"] = self.conv_peak_flops / 1e9
        return out


def measure_roofline(device: torch.device = torch.device("cpu"), matmul_n: int = 2048,
                     copy_mib: int = 256, rounds: int = 7, dtype: torch.dtype = torch.float32,
                     conv_batch: int = 1) -> Roofline:
    """Measure peak FLOP/s and bandwidth (copy of ``copy_mib`` MiB, read + write).

    The peak is the fastest of a ``matmul_n``-square matmul in ``dtype``
    (``torch.mm``; ONNX Runtime's too on the CPU in float32, when installed)
    and a 3x3 convolution of 256 -> 256 channels on ``conv_batch`` 56x56
    channels-last maps (0 leaves it out).

    On CUDA a float32 matmul is timed with TF32 tensor cores exactly when
    ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default for
    convolutions, not for matmuls): the compute roof is then the one the
    convolutions being compared can reach.
    """
    if conv_batch < 0:
        raise ValueError(f"conv_batch must be >= 0, got {conv_batch}")
    device = torch.device(device)
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    out = torch.empty(matmul_n, matmul_n, device=device, dtype=dtype)
    copy, moved = _copy_probe(copy_mib, device)
    candidates = {"matmul": lambda: torch.mm(a, b, out=out), "copy": copy}
    if conv_batch:
        x = torch.randn(conv_batch, 256, 56, 56, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

        def conv():
            with torch.no_grad():
                return torch.nn.functional.conv2d(x, w, padding=1)

        candidates["conv3x3"] = conv
    ort = _onnxruntime_matmul(a, b) if device.type == "cpu" and dtype == torch.float32 else None
    if ort is not None:
        candidates["ort_matmul"] = ort
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
        t = interleaved(candidates, rounds=rounds, target_s=0.05, device=device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    flops = 2 * matmul_n**3
    torch_peak = flops / t["matmul"].median
    rates = [torch_peak] + ([flops / t["ort_matmul"].median] if ort is not None else [])
    conv_peak = None
    if conv_batch:
        from ..cost import conv_cost
        from ..geometry import ConvSpec

        spec = ConvSpec.make(256, 256, 3, padding=1, bias=False)
        # in-bounds FLOPs (the taps on zero padding, 2.4 % of them here, left out) as everywhere a bound is drawn:
        # oneDNN skips them; cuDNN computes them (benchmarks/bench_padding.py, --device cuda), so its arithmetic
        # rate is 2.4 % above this
        conv_peak = conv_cost(spec, (56, 56), batch=conv_batch).in_bounds_flops / t["conv3x3"].median
        rates.append(conv_peak)
    return Roofline(peak_flops=max(rates), bandwidth=moved / t["copy"].median,
                    torch_peak_flops=torch_peak if len(rates) > 1 else None, conv_peak_flops=conv_peak)


def measure_bandwidth(device: torch.device = torch.device("cpu"), copy_mib: int = 256, rounds: int = 3) -> float:
    """Memory bandwidth in bytes/s now: :func:`measure_roofline`'s copy of ``copy_mib`` MiB (read + write) alone,
    the median of ``rounds`` samples. On a machine shared with other tenants the bandwidth moves within minutes
    while the compute peak does not (``docs/design-notes.md``); benchmarks take it beside a measurement to show
    the memory a memory-bound kernel had."""
    if copy_mib < 1 or rounds < 1:
        raise ValueError(f"copy_mib and rounds must be >= 1, got {copy_mib} and {rounds}")
    device = torch.device(device)
    copy, moved = _copy_probe(copy_mib, device)
    return moved / interleaved({"copy": copy}, rounds=rounds, target_s=0.05, device=device)["copy"].median


def _copy_probe(copy_mib: int, device: torch.device):
    """``(call, bytes)``: a callable copying ``copy_mib`` MiB of float32 into a second buffer, and the bytes it
    moves (read + write)."""
    src = torch.empty(copy_mib * 2**20 // 4, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * src.numel() * src.element_size()


def _onnxruntime_matmul(a: torch.Tensor, b: torch.Tensor):
    """A callable running ``a @ b`` in ONNX Runtime with torch's thread count, or None without onnx/onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    n = a.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime releases too
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": a.numpy(), "b": b.numpy()}
    return lambda: session.run(None, feed)


def model_bound_s(model_profile, roofline: Roofline, *, batch: int = 1, dtype_bytes: int = 4,
                  fuse_separable: bool = False) -> float:
    """Roofline lower bound (s) of one forward pass of a whole model, from its :func:`sepconv.cost.profile`.

    Each counted layer (convolutions, ``nn.Linear``) costs
    ``roofline.bound_s(FLOPs, bytes)`` with its in-bounds FLOPs (taps on zero
    padding are work a kernel can skip) and its input and output activations
    and its parameters through memory once (``dtype_bytes`` per element,
    ``batch`` samples; the profile's rows are scaled per sample). Pooling
    layers move their input and output; other leaves (activations,
    flattening) cost nothing, as if applied in the producing layer's pass.
    With ``fuse_separable``, each depthwise -> pointwise pair of a sepconv
    separable layer (rows ``<layer>.depthwise`` then ``<layer>.pointwise``)
    counts as one kernel whose depthwise output never reaches memory: the
    bound of a perfect fused kernel.
    """
    if batch < 1 or dtype_bytes < 1:
        raise ValueError(f"batch and dtype_bytes must be >= 1, got batch={batch}, dtype_bytes={dtype_bytes}")

    def per_sample(shape: tuple[int, ...]) -> int:
        return math.prod(shape[1:])

    pending = None  # a depthwise row waiting for its pointwise partner: (prefix, flops, bytes without its output)
    total = 0.0
    for row in model_profile.rows:
        if row.macs is None:
            if "Pool" in row.kind:
                total += roofline.bound_s(0, batch * (per_sample(row.input_shape) + per_sample(row.output_shape))
                                          * dtype_bytes)
            continue
        flops = 2 * row.in_bounds_macs * batch
        in_bytes = batch * per_sample(row.input_shape) * dtype_bytes
        out_bytes = batch * per_sample(row.output_shape) * dtype_bytes
        weight_bytes = row.params * dtype_bytes
        prefix, _, leaf = row.name.rpartition(".")
        if fuse_separable and leaf == "depthwise":
            pending = (prefix, flops, in_bytes + weight_bytes, out_bytes)
            continue
        if pending is not None:
            if leaf == "pointwise" and prefix == pending[0]:  # one kernel: the depthwise output stays on chip
                total += roofline.bound_s(pending[1] + flops, pending[2] + weight_bytes + out_bytes)
                pending = None
                continue
            total += roofline.bound_s(pending[1], pending[2] + pending[3])  # no partner: on its own
            pending = None
        total += roofline.bound_s(flops, in_bytes + weight_bytes + out_bytes)
    if pending is not None:
        total += roofline.bound_s(pending[1], pending[2] + pending[3])
    return total
