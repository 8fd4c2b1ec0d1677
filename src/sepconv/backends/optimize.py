"""``sepconv.optimize``: an inference path that folds BatchNorm and picks backend and memory layout by measurement."""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils.timing import inference_call
from .clock import CLOSE_CALL, SPIN_WAIT_S, fastest_call, timing_clock  # noqa: F401 -- the constants: re-exported
from .engine import BuildContext, Candidate, InferenceEngine
from .fold import fold_batchnorm
from .registry import INFERENCE_ENGINES


class OptimizedModel(nn.Module):
    """A model prepared for inference: BatchNorm folded, run by the backend and memory format that measured fastest."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format, timings_ms: dict[str, float], folded: int,
                 backend: str = "eager", layer_choices: Optional[dict[str, str]] = None,
                 candidate: Optional[str] = None, candidate_settings: Optional[dict[str, dict]] = None,
                 timing_clock: Optional[str] = None):
        super().__init__()
        #: Per candidate built, how its engine configured it (e.g. ``"onnxruntime"``: its session options and
        #: how they were chosen, :func:`~sepconv.backends.onnxruntime.fastest_session_options`).
        self.candidate_settings = {name: dict(v) for name, v in (candidate_settings or {}).items()}
        #: What ``timings_ms`` were measured on: ``"wall"`` or ``"cpu"`` (the calling thread's CPU time; see
        #: :func:`sepconv.backends.clock.timing_clock`), None when nothing was timed.
        self.timing_clock = timing_clock
        #: The name under which :func:`optimize` timed the kept candidate (a key of ``timings_ms`` when measured).
        self.candidate = candidate if candidate is not None else backend
        #: For the ``onednn`` backend: per convolution, ``packed[+activation]`` or ``eager`` (what measured faster).
        self.layer_choices = dict(layer_choices or {})
        self.model = model
        self.memory_format = memory_format
        self.timings_ms = timings_ms
        self.folded = folded
        self.backend = backend
        self.training = model.training  # an inference model: in eval mode as its wrapped model is

    @property
    def session_options(self) -> Optional[dict]:
        """ONNX Runtime's candidate's session options and how they were chosen (None when it was not built),
        whether or not that candidate was kept."""
        return self.candidate_settings.get("onnxruntime")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format == torch.channels_last and x.dim() != 4:
            raise ValueError(f"this model was optimized for (N, C, H, W) input in channels-last; got shape "
                             f"{tuple(x.shape)} (an unbatched image: x.unsqueeze(0))")
        return self.model(x.contiguous(memory_format=self.memory_format))

    def extra_repr(self) -> str:
        fmt = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        packed = sum(c.startswith("packed") for c in self.layer_choices.values())
        return (f"backend={self.backend}, memory_format={fmt}, folded_batchnorms={self.folded}, "
                + (f"packed_convolutions={packed}/{len(self.layer_choices)}, " if self.backend == "onednn" else "")
                + f"measured_ms={self.timings_ms}")


#: Names of the engines :func:`optimize` can measure, in registry order; ``compile`` is opt-in.
BACKENDS = tuple(engine.name for engine in INFERENCE_ENGINES)


def optimize(model: nn.Module, sample_input: torch.Tensor, *, measure: bool = True, rounds: int = 7,
             backends: Optional[Sequence[str]] = None, verbose: bool = False) -> OptimizedModel:
    """Return an inference-ready copy of ``model``: BatchNorm folded, engine and memory layout chosen by timing.

    ``sample_input`` is a representative batch (shape and dtype of real use).
    Each engine of :data:`sepconv.backends.registry.INFERENCE_ENGINES` that
    can run on the sample builds its candidate(s); the candidates are timed
    in interleaved rounds (medians in ``timings_ms``, with the original model
    timed in the same rounds for comparison):

    * ``eager``: PyTorch in NCHW (``nchw``) and, for 4D inputs, channels-last;
    * ``onednn``: channels-last PyTorch with each 2D convolution, or each
      separable layer, on whichever of eager, packed oneDNN
      (:class:`~sepconv.backends.onednn.PackedConv2d`), the fused CPU kernel
      and the merged dense convolution measures fastest
      (:func:`~sepconv.backends.onednn.pack_convolutions`; per-layer choices
      in ``layer_choices``); 4D float32 CPU inputs;
    * ``onnxruntime``: the folded model exported to ONNX and run by ONNX
      Runtime as a user would run it alone: the caller's thread count, and
      spinning or sleeping idle threads, whichever is faster timed alone
      (:func:`~sepconv.backends.onnxruntime.fastest_session_options`;
      recorded in ``session_options``); inference only, float32 on the CPU;
    * ``cudnn_relu`` (CUDA): each non-depthwise ``Conv2d`` followed by a
      ReLU as cuDNN's fused convolution + ReLU, NCHW and channels-last;
    * ``cudagraph`` (CUDA): each eager candidate recorded as a CUDA graph for
      the sample's shape and replayed per call;
    * ``compile``: ``torch.compile`` with inductor's freezing; opt-in.

    ``backends`` restricts the engines by name (default: every engine whose
    ``default`` is set and that can run on the sample). An engine that fails
    to build (export, recording, or outputs that differ from eager's) is
    skipped with a warning, or raises ``RuntimeError`` when it was asked for
    explicitly. The fastest candidate is kept; when the runner-up is within
    ``CLOSE_CALL`` of it, or another candidate has the fastest single
    sample, the two are timed again with twice the rounds
    before choosing (``'<name> (confirmation)'`` in ``timings_ms``;
    :func:`sepconv.backends.clock.fastest_call`). With more than one thread
    the ONNX Runtime candidate is timed in rounds of its own, before the
    others, which first run untimed for ``SPIN_WAIT_S``: idle ONNX Runtime
    threads that spin would slow whichever candidate ran after them. On CUDA
    each timing sample ends with a device synchronization. With one thread on
    the CPU the candidates are timed on the calling thread's CPU time, so
    other processes on a busy machine do not decide the choice
    (:func:`sepconv.backends.clock.timing_clock`; recorded in ``timing_clock``). ``measure=False``
    keeps the first candidate (eager NCHW). ``verbose`` prints one line
    before building and one before timing. The result computes the same
    function as ``model.eval()`` to float tolerance; ``model`` is not
    modified.
    """
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    engines = _engines(backends, sample_input)
    base = copy.deepcopy(model).eval()
    folded = fold_batchnorm(base)
    if verbose:
        print(f"sepconv.optimize: building {len(engines)} engine(s): {', '.join(e.name for e in engines)}",
              file=sys.stderr, flush=True)
    context = BuildContext(base, sample_input, measure, {})
    for engine in engines:
        if not engine.applies(base):
            continue
        try:
            context.candidates.update(engine.build(context))
        except Exception as error:  # export, recording or the output check failed
            _skip_or_raise(engine.name, error, explicit=backends is not None)
    candidates = context.candidates
    if not candidates:
        raise RuntimeError("optimize: no engine could run the model")
    timings: dict[str, float] = {}
    choice = next(iter(candidates))
    if measure and len(candidates) > 1:
        if verbose:
            print(f"sepconv.optimize: timing {len(candidates)} candidates ...", file=sys.stderr, flush=True)
        choice, timings = _fastest_candidate(model, sample_input, candidates, rounds)
    kept = candidates[choice]
    settings = {name: c.settings for name, c in candidates.items() if c.settings}
    return OptimizedModel(kept.module, kept.memory_format, timings, folded, kept.engine, kept.layer_choices,
                          candidate=choice, candidate_settings=settings,
                          timing_clock=timing_clock(sample_input) if timings else None)


def _engines(backends: Optional[Sequence[str]], sample: torch.Tensor) -> list[InferenceEngine]:
    """The engines to build, in registry order: those named (each must run on ``sample``), else the defaults."""
    if backends is None:
        return [e for e in INFERENCE_ENGINES if e.default and e.unavailable(sample) is None]
    backends = tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"backends must be a non-empty subset of {BACKENDS}, got {backends!r}")
    chosen = [e for e in INFERENCE_ENGINES if e.name in backends]
    for engine in chosen:
        reason = engine.unavailable(sample)
        if reason is not None:
            raise ValueError(f"backends includes {engine.name!r}, which {reason}")
    return chosen


def _fastest_candidate(model: nn.Module, sample: torch.Tensor, candidates: dict[str, Candidate],
                       rounds: int) -> tuple[str, dict[str, float]]:
    """Time the candidates (and the original model beside them) in interleaved rounds, a close call twice
    (:func:`~sepconv.backends.clock.fastest_call`); the fastest's name and the medians (ms)."""
    original = copy.deepcopy(model).eval()
    fns = {"original": inference_call(original, sample)}
    fns.update({name: inference_call(c.module, sample.contiguous(memory_format=c.memory_format))
                for name, c in candidates.items()})
    return fastest_call(fns, sample, rounds, target_s=0.02, among=list(candidates),
                        apart=[name for name, c in candidates.items() if c.engine == "onnxruntime"])


def _skip_or_raise(engine: str, error: Exception, explicit: bool) -> None:
    """An engine could not build its candidate: raise when it was asked for explicitly, else warn and go on."""
    if explicit:
        raise RuntimeError(f"optimize: the {engine} backend failed for this model: {error}") from error
    warnings.warn(f"optimize: skipping the {engine} backend ({type(error).__name__}: {error})", stacklevel=3)
