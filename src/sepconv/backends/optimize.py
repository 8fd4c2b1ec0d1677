"""``sepconv.optimize``: an inference path that folds BatchNorm and picks backend and memory layout by measurement."""

from __future__ import annotations

import copy
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils.timing import inference_call, interleaved
from .fold import fold_batchnorm
from .onednn import onednn_available, pack_convolutions
from .onnxruntime import onnxruntime_available, to_onnxruntime


class OptimizedModel(nn.Module):
    """A model prepared for inference: BatchNorm folded, run by the backend and memory format that measured fastest."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format, timings_ms: dict[str, float], folded: int,
                 backend: str = "eager", layer_choices: Optional[dict[str, str]] = None,
                 candidate: Optional[str] = None):
        super().__init__()
        #: The name under which :func:`optimize` timed the kept candidate (a key of ``timings_ms`` when measured).
        self.candidate = candidate if candidate is not None else backend
        #: For the ``onednn`` backend: per convolution, ``packed[+activation]`` or ``eager`` (what measured faster).
        self.layer_choices = dict(layer_choices or {})
        self.model = model
        self.memory_format = memory_format
        self.timings_ms = timings_ms
        self.folded = folded
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def extra_repr(self) -> str:
        fmt = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        packed = sum(c.startswith("packed") for c in self.layer_choices.values())
        return (f"backend={self.backend}, memory_format={fmt}, folded_batchnorms={self.folded}, "
                + (f"packed_convolutions={packed}/{len(self.layer_choices)}, " if self.backend == "onednn" else "")
                + f"measured_ms={self.timings_ms}")


#: When the runner-up is within this factor of the fastest candidate, :func:`optimize` times the two again.
CLOSE_CALL = 1.2
#: Untimed pause before each timing sample when timing with more than one thread (see interleaved's settle_s): with
#: 2 threads on a 2-core AMD Zen 4, ONNX Runtime's MobileNetV1 took 6.9 ms in rounds interleaved with the
#: oneDNN/fused model, 6.2 ms with a 10 ms pause and 6.3 ms alone.
SETTLE_S = 0.01

#: Backends :func:`optimize` can measure; ``compile`` is opt-in (compiling takes tens of seconds).
BACKENDS = ("eager", "onednn", "onnxruntime", "compile", "cudnn_relu", "cudagraph")
#: Sample dtypes for which ``cudnn_relu`` is a default candidate on CUDA.
_CUDNN_RELU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def optimize(model: nn.Module, sample_input: torch.Tensor, *, measure: bool = True, rounds: int = 7,
             backends: Optional[Sequence[str]] = None) -> OptimizedModel:
    """Return an inference-ready copy of ``model``: BatchNorm folded, backend and memory layout chosen by timing.

    ``sample_input`` is a representative batch (shape and dtype of real use).
    Candidates, timed in interleaved rounds (medians in ``timings_ms``, with
    the original model timed in the same rounds for comparison):

    * ``eager``: PyTorch in NCHW (``nchw``) and, for 4D inputs, channels-last;
    * ``onednn``: PyTorch in channels-last with each 2D convolution that
      measures faster that way replaced by a :class:`~sepconv.backends.onednn.PackedConv2d`
      (oneDNN with the weight reordered once and a following ReLU/ReLU6 fused;
      :func:`~sepconv.backends.onednn.pack_convolutions`). Still a PyTorch module, so
      it runs any model eager runs; 4D float32 CPU inputs only;
    * ``onnxruntime``: the folded model exported to ONNX and run by ONNX
      Runtime (:func:`to_onnxruntime`; inference only, float32 on the CPU).
      On the CPU this project measures, ONNX Runtime runs 1x1 convolutions
      about twice as fast as PyTorch (``benchmarks/README.md``);
    * ``compile``: ``torch.compile`` of the folded model (NCHW) with inductor's
      ``freezing`` on, compiled for the sample's shape; opt-in;
    * ``cudnn_relu`` (CUDA inputs): eager PyTorch with each non-depthwise
      ``Conv2d`` that a ReLU directly follows replaced by cuDNN's fused
      convolution + ReLU (:func:`~sepconv.backends.cudnn.fuse_conv_relu`), in NCHW
      (``cudnn_relu``) and channels-last (``cudnn_relu_channels_last``);
      skipped when the model has no such pair;
    * ``cudagraph`` (CUDA inputs): the forward of each eager candidate above
      (``nchw``, ``channels_last`` and the ``cudnn_relu`` ones when timed)
      recorded as a CUDA graph for the sample's shape (``cudagraph``,
      ``cudagraph_channels_last``, ``cudagraph_cudnn_relu``,
      ``cudagraph_cudnn_relu_channels_last``), replayed per call
      (:class:`~sepconv.backends.cuda_graph.CudaGraphModel`: one launch per call
      instead of one per kernel; other input shapes run eagerly).

    ``backends`` restricts the candidates (default: ``eager``, plus
    ``onednn`` and ``onnxruntime`` when available and the sample is float32
    on the CPU, plus ``cudnn_relu`` (float32/16, bfloat16) and ``cudagraph``
    when the sample is on a CUDA device; if the model cannot be exported or
    recorded, or its ONNX Runtime, cuDNN-fused or graph outputs differ, a
    warning says so and the other candidates are used). The kept candidate's
    name is the result's ``candidate``.
    On CUDA every timing sample ends with a device synchronization. The fastest is kept;
    when the runner-up is within 20 % (``CLOSE_CALL``), the two are timed
    again with twice the rounds and longer samples before choosing (recorded
    in ``timings_ms`` as ``'<name> (confirmation)'``). ``measure=False`` keeps
    the first candidate (eager NCHW). The result
    computes the same function as ``model.eval()`` to float tolerance; the
    original model is not modified.
    """
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    cpu_float = sample_input.device.type == "cpu" and sample_input.dtype == torch.float32
    cuda = sample_input.device.type == "cuda"
    ort_usable = onnxruntime_available() and cpu_float
    onednn_usable = cpu_float and sample_input.dim() == 4 and onednn_available()
    explicit = backends is not None
    if backends is None:
        backends = (("eager",) + (("onednn",) if onednn_usable else ()) + (("onnxruntime",) if ort_usable else ())
                    + (("cudnn_relu",) if cuda and sample_input.dtype in _CUDNN_RELU_DTYPES else ())
                    + (("cudagraph",) if cuda else ()))
    backends = tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"backends must be a non-empty subset of {BACKENDS}, got {backends!r}")
    if "onnxruntime" in backends and not ort_usable:
        raise ValueError("backends includes 'onnxruntime', which needs onnx and onnxruntime installed "
                         "(pip install 'sepconv[onnx]') and a float32 CPU sample_input")
    if "onednn" in backends and not onednn_usable:
        raise ValueError("backends includes 'onednn', which needs a 4D float32 CPU sample_input and a PyTorch build "
                         "with oneDNN (sepconv.backends.onednn.onednn_available())")
    for needs_cuda in ("cudnn_relu", "cudagraph"):
        if needs_cuda in backends and not cuda:
            raise ValueError(f"backends includes {needs_cuda!r}, which needs a sample_input on a CUDA device, got "
                             f"one on {sample_input.device}")
    base = copy.deepcopy(model).eval()
    folded = fold_batchnorm(base)
    layer_choices: dict[str, str] = {}
    candidates: dict[str, tuple[nn.Module, torch.memory_format, str]] = {}
    if "eager" in backends:
        candidates["nchw"] = (base, torch.contiguous_format, "eager")
        if measure and sample_input.dim() == 4:
            candidates["channels_last"] = (copy.deepcopy(base).to(memory_format=torch.channels_last),
                                           torch.channels_last, "eager")
    if "onednn" in backends:
        packed = copy.deepcopy(base).to(memory_format=torch.channels_last)
        layer_choices = pack_convolutions(packed, sample_input.contiguous(memory_format=torch.channels_last),
                                          measure=measure)
        candidates["onednn"] = (packed, torch.channels_last, "onednn")
    if "onnxruntime" in backends:
        try:
            candidates["onnxruntime"] = (to_onnxruntime(base, sample_input), torch.contiguous_format, "onnxruntime")
        except Exception as error:  # export or session failed, or outputs differ: an explicit request fails loudly
            _skip_or_raise("onnxruntime", "onnxruntime backend", error, explicit)
    if "cudnn_relu" in backends:
        from .cudnn import fuse_conv_relu

        layouts = [("cudnn_relu", "nchw", torch.contiguous_format)]
        if measure and sample_input.dim() == 4:
            layouts.append(("cudnn_relu_channels_last", "channels_last", torch.channels_last))
        for name, eager_name, fmt in layouts:
            fused = copy.deepcopy(base)
            if not fuse_conv_relu(fused):
                break  # no Conv2d + ReLU pair: the candidate would be eager's
            fused = fused.to(memory_format=fmt)
            x = sample_input.contiguous(memory_format=fmt)
            try:
                with torch.no_grad():
                    _check_close(fused(x), candidates.get(eager_name, (base,))[0](x), sample_input, "cuDNN's fused")
            except Exception as error:  # the operator is missing, refuses the dtype, or its output differs
                _skip_or_raise("cudnn_relu", f"{name} candidate", error, explicit)
                break
            candidates[name] = (fused, fmt, "cudnn_relu")
    if "cudagraph" in backends:
        from .cuda_graph import CudaGraphModel

        sources = [("nchw", "cudagraph", torch.contiguous_format)]
        if measure and sample_input.dim() == 4:
            sources.append(("channels_last", "cudagraph_channels_last", torch.channels_last))
        sources += [(name, f"cudagraph_{name}", fmt) for name, (_, fmt, kind) in list(candidates.items())
                    if kind == "cudnn_relu"]
        for eager_name, name, fmt in sources:
            try:
                # the eager candidate of the same layout when there is one: the graph reads its parameters in place
                eager = (candidates[eager_name][0] if eager_name in candidates
                         else copy.deepcopy(base).to(memory_format=fmt))
                x = sample_input.contiguous(memory_format=fmt)
                graphed = CudaGraphModel(eager, x)
                with torch.no_grad():  # against the same eager model: the same kernels
                    _check_close(graphed(x), eager(x), sample_input, "the replayed graph's")
            except Exception as error:  # recording failed (host sync, data-dependent shapes) or outputs differ
                _skip_or_raise("cudagraph", f"{name} candidate", error, explicit)
                break
            candidates[name] = (graphed, fmt, "cudagraph")
    if "compile" in backends:
        import torch._inductor.config as inductor_config

        compiled = torch.compile(base)
        # compile now, not inside the timing, with inductor's freezing: weights become constants that it can
        # prepack for oneDNN; without it, inductor on this CPU ran MobileNetV1 2.5x slower (benchmarks/README.md)
        with torch.no_grad(), inductor_config.patch(freezing=True):
            expected, got = base(sample_input), compiled(sample_input)
        if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
            raise RuntimeError("optimize: torch.compile's output differs from eager's")
        candidates["compile"] = (compiled, torch.contiguous_format, "compile")
    if not candidates:  # pragma: no cover - only reachable with backends=("onnxruntime",), which raises above
        raise RuntimeError("optimize: no backend could run the model")
    timings: dict[str, float] = {}
    choice = next(iter(candidates))
    if measure and len(candidates) > 1:
        original = copy.deepcopy(model).eval()
        fns = {"original": inference_call(original, sample_input)}
        fns.update({name: inference_call(m, sample_input.contiguous(memory_format=fmt))
                    for name, (m, fmt, _) in candidates.items()})
        # with several threads, pause before each sample: runtimes' idle workers spinning from the previous
        # candidate (ONNX Runtime's, PyTorch's OpenMP pool) otherwise take cores from the next one
        settle = SETTLE_S if torch.get_num_threads() > 1 else 0.0
        device = sample_input.device  # on CUDA, each sample ends with a synchronization
        t = interleaved(fns, rounds=rounds, settle_s=settle, device=device)
        timings = {k: v.median * 1e3 for k, v in t.items()}
        ranked = sorted(candidates, key=lambda name: timings[name])
        choice = ranked[0]
        if len(ranked) > 1 and timings[ranked[1]] < CLOSE_CALL * timings[ranked[0]]:
            # a close call on a noisy machine: time the two front-runners again, longer, before choosing
            again = interleaved({name: fns[name] for name in ranked[:2]}, rounds=2 * rounds, target_s=0.05,
                                settle_s=settle, device=device)
            choice = min(ranked[:2], key=lambda name: again[name].median)
            timings.update({f"{name} (confirmation)": again[name].median * 1e3 for name in ranked[:2]})
    module, fmt, backend = candidates[choice]
    return OptimizedModel(module, fmt, timings, folded, backend, layer_choices if backend == "onednn" else {},
                          candidate=choice)


def _skip_or_raise(backend: str, what: str, error: Exception, explicit: bool) -> None:
    """A candidate could not be built: raise when its backend was asked for explicitly, else warn (naming ``what``
    was skipped, and why) and let :func:`optimize` go on with the others."""
    if explicit:
        raise RuntimeError(f"optimize: the {backend} backend failed for this model: {error}") from error
    warnings.warn(f"optimize: skipping the {what} ({type(error).__name__}: {error})", stacklevel=3)


def _check_close(got: torch.Tensor, expected: torch.Tensor, sample_input: torch.Tensor, what: str) -> None:
    """Raise RuntimeError when a candidate's output differs from eager's by more than the sample's precision allows.

    The largest difference is taken relative to the largest output magnitude:
    1e-2 in half precision and in float32 on CUDA with TF32 convolutions
    allowed (PyTorch's default; different algorithms round differently),
    1e-4 in float32 otherwise, 1e-8 in float64.
    """
    dtype = sample_input.dtype
    if dtype == torch.float64:
        tol = 1e-8
    elif dtype == torch.float32 and not (sample_input.is_cuda and torch.backends.cudnn.allow_tf32):
        tol = 1e-4
    else:
        tol = 1e-2
    if got.shape != expected.shape:
        raise RuntimeError(f"{what} output differs from eager's in shape: {tuple(got.shape)} vs {tuple(expected.shape)}")
    scale = float(expected.detach().abs().max().float()) if expected.numel() else 0.0
    err = float((got.detach().float() - expected.detach().float()).abs().max()) if got.numel() else 0.0
    if not err <= tol * max(scale, 1e-30):
        raise RuntimeError(f"{what} output differs from eager's (max abs difference {err:.3g}, largest output "
                           f"{scale:.3g}, tolerance {tol:g} of it)")
