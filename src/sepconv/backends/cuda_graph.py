"""Replaying a model's forward pass from a CUDA graph: one launch per call instead of one per kernel.

On a large GPU the layers of a small-batch network can finish faster than the
host launches them, so eager time is launch time whatever the layer's
arithmetic (``docs/design-notes.md``). A graph replays a recorded sequence of
kernels with one launch, so the separable layers' smaller arithmetic shows up
in the wall-clock time.

A graph is recorded for one input shape, dtype, device and memory layout and
reads its input from, and writes its output to, fixed memory. :class:`CudaGraphModel`
hides that: it copies each input into the recorded buffer, replays, and
returns a copy of the output; inputs the graph was not recorded for run the
model eagerly. ``sepconv.optimize`` offers it as its ``cudagraph`` backend on
CUDA inputs and keeps it where it times fastest.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .engine import BuildContext, Candidate, InferenceEngine, applies_to_any_model, check_close

#: Calls before recording, on a side stream: cuDNN's algorithm search, Triton's autotuning and lazy
#: initializations run there, not inside the graph.
WARMUP_CALLS = 3


def _set_sync_debug_mode(mode: int | str) -> None:
    with warnings.catch_warnings():  # setting it warns that the mode is a prototype, on every call
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode(mode)


def capture(fn: Callable[[], torch.Tensor], repeat: int = 1,
            warmup: int = WARMUP_CALLS) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Record ``repeat`` calls of ``fn`` (no arguments, CUDA work only) into one CUDA graph, under ``no_grad``.

    ``fn`` runs ``warmup`` times first on a side stream (PyTorch's recipe for
    capture), then once more with PyTorch's CUDA sync debug mode set to
    ``"error"``: a call that synchronizes with the host (``.item()``,
    data-dependent shapes) cannot be recorded, and raises there, before any
    recording starts. Returns the graph and the tensor the last recorded call
    returned: each ``graph.replay()`` rewrites that tensor in place.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):  # first calls may synchronize (algorithm searches); later ones must not
            fn()
        previous = torch.cuda.get_sync_debug_mode()
        _set_sync_debug_mode("error")
        try:
            fn()
        finally:
            _set_sync_debug_mode(previous)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        for _ in range(repeat):
            out = fn()
    return graph, out


class CudaGraphModel(nn.Module):
    """``model``'s inference forward pass recorded as a CUDA graph for inputs like ``sample_input``, replayed per call.

    A call whose input has ``sample_input``'s shape, dtype and device copies
    it into the graph's input buffer (laid out as ``sample_input``: inputs in
    that memory layout copy fastest), replays the graph and returns a
    copy of its output (``clone_output=False`` returns the graph's own output
    tensor instead, which the next call overwrites: faster by one copy, for
    callers that consume each output before the next call). Any other input,
    and an input that requires grad while grad mode is on, runs ``model``
    eagerly, so the module computes ``model``'s function for every input.
    Replayed outputs carry no autograd history (inference only).

    The graph reads the parameters in place: in-place updates of them (e.g.
    ``load_state_dict``) are seen by later replays; replacing a parameter or a
    submodule is not. ``model`` must be in eval mode, on the input's CUDA
    device, and return one tensor; its forward pass must not synchronize with
    the host (``.item()``, data-dependent shapes), which recording rejects.
    """

    def __init__(self, model: nn.Module, sample_input: torch.Tensor, *, clone_output: bool = True) -> None:
        super().__init__()
        if model.training:
            raise ValueError("CudaGraphModel needs a model in eval mode (call model.eval()): a recorded graph "
                             "cannot update BatchNorm statistics or draw new dropout masks")
        if not isinstance(sample_input, torch.Tensor):
            raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
        if sample_input.device.type != "cuda":
            raise ValueError(f"CudaGraphModel needs a sample_input on a CUDA device, got one on {sample_input.device}")
        self.model = model
        self.clone_output = clone_output
        self._device = sample_input.device
        with torch.cuda.device(self._device):
            self._static_input = torch.empty_strided(sample_input.shape, sample_input.stride(),
                                                     dtype=sample_input.dtype, device=self._device)
            self._static_input.copy_(sample_input)
            self._graph, self._static_output = capture(lambda: model(self._static_input))
        if not isinstance(self._static_output, torch.Tensor):
            raise ValueError(f"CudaGraphModel needs a model that returns one tensor, got "
                             f"{type(self._static_output).__name__}")

    def recorded_for(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` replays the graph (same shape, dtype and device as the sample)."""
        s = self._static_input
        return x.device == s.device and x.dtype == s.dtype and x.shape == s.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recorded_for(x) or (x.requires_grad and torch.is_grad_enabled()):
            return self.model(x)
        self._static_input.copy_(x)
        self._graph.replay()
        return self._static_output.clone() if self.clone_output else self._static_output

    def extra_repr(self) -> str:
        return (f"recorded_for=(shape={tuple(self._static_input.shape)}, dtype={self._static_input.dtype}, "
                f"stride={self._static_input.stride()}), clone_output={self.clone_output}")


def _unavailable(sample: torch.Tensor) -> Optional[str]:
    if sample.device.type != "cuda":
        return f"needs a sample_input on a CUDA device, got one on {sample.device}"
    return None


def _build(context: BuildContext) -> dict[str, Candidate]:
    """A graph of each eager-module candidate built so far (eager layouts, cuDNN-fused), checked against it."""
    sources = [("nchw", torch.contiguous_format)]
    if context.measure and context.sample.dim() == 4:
        sources.append(("channels_last", torch.channels_last))
    sources += [(name, c.memory_format) for name, c in context.candidates.items() if c.engine == "cudnn_relu"]
    built = {}
    for eager_name, fmt in sources:
        # the eager candidate of the same layout when there is one: the graph reads its parameters in place
        eager = (context.candidates[eager_name].module if eager_name in context.candidates
                 else copy.deepcopy(context.base).to(memory_format=fmt))
        x = context.sample.contiguous(memory_format=fmt)
        graphed = CudaGraphModel(eager, x)
        with torch.no_grad():  # against the same eager model: the same kernels
            check_close(graphed(x), eager(x), context.sample, "the replayed graph's")
        built[f"cudagraph_{eager_name}" if eager_name != "nchw" else "cudagraph"] = Candidate(graphed, fmt, "cudagraph")
    return built


ENGINE = InferenceEngine(
    name="cudagraph", summary="each eager candidate's forward recorded as a CUDA graph and replayed per call (CUDA)",
    default=True, unavailable=_unavailable, applies=applies_to_any_model, build=_build)
