"""ONNX Runtime as an inference engine: export a model to ONNX and run it in an ONNX Runtime CPU session."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..utils.timing import inference_call, interleaved
from .engine import BuildContext, Candidate, InferenceEngine, applies_to_any_model

#: Rounds each session variant is timed alone when :func:`fastest_session_options` compares them.
ALONE_ROUNDS = 5


class OnnxRuntimeModel(nn.Module):
    """A model exported to ONNX and run by ONNX Runtime on the CPU: inference only, one input, one output.

    Built by :func:`to_onnxruntime`. ``forward`` takes and returns CPU float32
    tensors (any batch size; other dtypes or devices raise ``ValueError``);
    there is no autograd through it (an input that requires grad raises
    ``RuntimeError`` while grad is enabled). Each call returns a tensor of its
    own: no later call writes into it.
    """

    def __init__(self, session: Any, input_name: str, threads: int, spinning: bool = False) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.threads = threads
        self.spinning = spinning
        # Resolved once: forward then does one ``session.run`` and no per-call look-ups of the output names.
        self._output_names = [session.get_outputs()[0].name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through the session: a new tensor every call, never a buffer a later call overwrites.

        A contiguous ``x`` is handed to ONNX Runtime as a NumPy view of its memory (no copy); any other layout
        is copied to contiguous first. The output is the array ONNX Runtime allocated for this call, wrapped
        without a copy.
        """
        if x.requires_grad:
            if torch.is_grad_enabled():
                raise RuntimeError("OnnxRuntimeModel is inference-only: call it under torch.no_grad() or on a "
                                   "tensor that does not require grad")
            x = x.detach()
        if not x.is_cpu:
            raise ValueError(f"OnnxRuntimeModel runs on the CPU; got an input on {x.device}")
        if x.dtype is not torch.float32:
            raise ValueError(f"OnnxRuntimeModel takes float32 input; got x of dtype {x.dtype}")
        if not x.is_contiguous():
            x = x.contiguous()
        (out,) = self.session.run(self._output_names, {self.input_name: x.numpy()})
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return (f"onnxruntime CPUExecutionProvider, intra_op_num_threads={self.threads}, "
                f"allow_spinning={int(self.spinning)}")

    @property
    def session_options(self) -> dict[str, Any]:
        """The session options that matter for speed: intra-op threads and whether idle threads spin."""
        return {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1, "allow_spinning": self.spinning}


def onnxruntime_available() -> bool:
    """True when both ``onnx`` export support and ``onnxruntime`` are importable (``pip install 'sepconv[onnx]'``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def to_onnxruntime(model: nn.Module, sample_input: torch.Tensor, *, threads: Optional[int] = None,
                   rtol: float = 1e-3, atol: float = 1e-4, spinning: bool = False,
                   profile: bool = False) -> OnnxRuntimeModel:
    """Export ``model`` (eval mode, batch dimension dynamic) to ONNX and load it into an ONNX Runtime session.

    The session uses all graph optimizations and ``threads`` intra-op threads
    (default ``torch.get_num_threads()``). Its output on ``sample_input`` is
    checked against PyTorch's (``rtol``/``atol``); a mismatch raises
    ``RuntimeError``. Needs ``pip install 'sepconv[onnx]'``.

    ``spinning``: whether ONNX Runtime's idle intra-op threads spin-wait for
    work (its own default) or sleep (sepconv's default). Spinning threads keep
    a core busy after each run and slow whatever PyTorch runs next in the
    process (``runtime_interference_ms`` in the ``networks-*`` records of
    ``benchmarks/bench_networks.py``; ``docs/design-notes.md``). A process
    that runs nothing but the session can ask for ``spinning=True``.

    ``profile``: ONNX Runtime records every node's time on every run;
    ``runner.session.end_profiling()`` writes them to a JSON file (in the
    temporary directory) and returns its path.
    """
    if not onnxruntime_available():
        raise ImportError("to_onnxruntime needs onnx and onnxruntime: pip install 'sepconv[onnx]'")
    if sample_input.device.type != "cpu" or sample_input.dtype != torch.float32:
        raise ValueError(f"to_onnxruntime needs a float32 CPU sample_input, got {sample_input.dtype} on {sample_input.device}")
    model = model.eval()
    threads = torch.get_num_threads() if threads is None else threads
    runner = _session(_export(model, sample_input), threads, spinning, profile)
    _check_output(model, runner, sample_input, rtol, atol)
    return runner


def _export(model: nn.Module, sample_input: torch.Tensor) -> bytes:
    """``model`` as ONNX (opset 17, batch dimension dynamic), in memory."""
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample_input,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buffer.getvalue()


def _session(onnx_bytes: bytes, threads: int, spinning: bool, profile: bool = False) -> OnnxRuntimeModel:
    """A CPU session for an exported model: all graph optimizations, ``threads`` intra-op threads, one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimizer warns about every constant it drops
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile:
        import os
        import tempfile

        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "sepconv_onnxruntime")
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return OnnxRuntimeModel(session, "x", threads, spinning)


def _check_output(model: nn.Module, runner: OnnxRuntimeModel, sample_input: torch.Tensor, rtol: float,
                  atol: float) -> None:
    with torch.no_grad():
        expected = model(sample_input)
        got = runner(sample_input)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
        raise RuntimeError(f"ONNX Runtime's output differs from PyTorch's (max abs difference "
                           f"{float((got - expected).abs().max()) if got.shape == expected.shape else 'shape ' + str(tuple(got.shape))})")


def fastest_session_options(model: nn.Module, sample_input: torch.Tensor, *, threads: Optional[int] = None,
                            rounds: int = ALONE_ROUNDS, rtol: float = 1e-3, atol: float = 1e-4,
                            alongside: Optional[Callable[[], object]] = None
                            ) -> tuple[OnnxRuntimeModel, dict[str, Any]]:
    """ONNX Runtime configured for how it will run: the session options that are fastest for ``model`` on
    ``sample_input``, alone or beside PyTorch work, and a record of how they were chosen.

    Intra-op threads: ``threads`` (default ``torch.get_num_threads()``, the
    caller's). Spinning (idle intra-op threads spin-wait for the next run, or
    sleep) matters only with more than one thread: then a spinning and a
    sleeping session are each timed alone, ``rounds`` medians of about 20 ms
    of calls each (the spinning one after the sleeping one, so its spinning
    threads never slow the other). Without ``alongside`` the faster alone is
    returned: ONNX Runtime as a user running nothing else would configure it.
    ``alongside`` is PyTorch work that shares the process (for
    :func:`sepconv.optimize`, the eager model): each variant is then also timed
    as one session run followed by one ``alongside()`` call, and the variant
    whose pair is faster is returned, since a spinning session's idle threads
    compete with PyTorch's for the cores right after each run. With one thread
    there are no worker threads: sleeping, not timed. The record:
    ``intra_op_num_threads``, ``inter_op_num_threads``, ``allow_spinning``,
    ``chosen_by`` (``"timed alone"``, ``"timed with PyTorch work after each
    run"`` or why not timed) and, when timed, ``alone_ms`` (median ms per call
    of each variant) and, with ``alongside``, ``with_pytorch_ms`` (median ms
    per session run plus ``alongside()`` call).
    """
    if not onnxruntime_available():
        raise ImportError("fastest_session_options needs onnx and onnxruntime: pip install 'sepconv[onnx]'")
    if sample_input.device.type != "cpu" or sample_input.dtype != torch.float32:
        raise ValueError(f"fastest_session_options needs a float32 CPU sample_input, got {sample_input.dtype} on "
                         f"{sample_input.device}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"fastest_session_options: rounds must be an integer >= 1, got {rounds!r}")
    model = model.eval()
    threads = torch.get_num_threads() if threads is None else threads
    onnx_bytes = _export(model, sample_input)
    sleeping = _session(onnx_bytes, threads, spinning=False)
    _check_output(model, sleeping, sample_input, rtol, atol)
    if threads <= 1:
        return sleeping, {**sleeping.session_options, "chosen_by": "one intra-op thread: no idle threads to spin"}
    spinning = _session(onnx_bytes, threads, spinning=True)
    variants = (("sleeping", sleeping), ("spinning", spinning))
    alone = {}
    for name, runner in variants:
        alone[name] = interleaved({name: inference_call(runner, sample_input)}, rounds=rounds)[name].median * 1e3
    record: dict[str, Any] = {"chosen_by": "timed alone", "alone_ms": alone}
    score = alone
    if alongside is not None:
        score = {}
        for name, runner in variants:  # the sleeping one first again: no spinning threads left over from before
            session_run = inference_call(runner, sample_input)

            def pair(session_run=session_run):
                session_run()
                alongside()
            score[name] = interleaved({name: pair}, rounds=rounds)[name].median * 1e3
        record = {"chosen_by": "timed with PyTorch work after each run", "alone_ms": alone, "with_pytorch_ms": score}
    kept = spinning if score["spinning"] < score["sleeping"] else sleeping
    if kept is sleeping:
        del spinning
    return kept, {**kept.session_options, **record}




def _unavailable(sample: torch.Tensor) -> Optional[str]:
    if not onnxruntime_available():
        return "needs onnx and onnxruntime installed (pip install 'sepconv[onnx]')"
    if sample.device.type != "cpu" or sample.dtype != torch.float32:
        return f"needs a float32 CPU sample_input, got {sample.dtype} on {sample.device}"
    return None


def _build(context: BuildContext) -> dict[str, Candidate]:
    if not context.measure:
        runner = to_onnxruntime(context.base, context.sample)
        settings = {**runner.session_options, "chosen_by": "not measured (measure=False): sleeping"}
    else:  # the candidate shares the process with PyTorch: the user's model, and the other candidates timed
        runner, settings = fastest_session_options(context.base, context.sample,
                                                   alongside=inference_call(context.base, context.sample))
    return {"onnxruntime": Candidate(runner, torch.contiguous_format, "onnxruntime", settings=settings)}


ENGINE = InferenceEngine(
    name="onnxruntime", summary="the model exported to ONNX and run by ONNX Runtime (CPU, float32, inference only)",
    default=True, unavailable=_unavailable, applies=applies_to_any_model, build=_build)


def export_onnx(model: nn.Module, sample_input: torch.Tensor) -> bytes:
    """The ONNX bytes (opset 17) of ``model`` in eval mode traced on ``sample_input``: input ``x``, output ``y``, batch dynamic.

    Needs ``onnx`` (``pip install 'sepconv[onnx]'``) and a float32 CPU ``sample_input``.
    """
    if sample_input.device.type != "cpu" or sample_input.dtype != torch.float32:
        raise ValueError(f"export_onnx needs a float32 CPU sample_input, got {sample_input.dtype} on {sample_input.device}")
    return _export(model.eval(), sample_input)


def onnxruntime_session(model_bytes: bytes, *, threads: Optional[int] = None, spinning: bool = False,
                        profile: bool = False) -> tuple[Any, int]:
    """An ONNX Runtime CPU session of a serialized ONNX model, set up as :func:`to_onnxruntime` describes.

    Returns ``(session, threads)``; ``threads`` defaults to ``torch.get_num_threads()``.
    """
    threads = torch.get_num_threads() if threads is None else threads
    return _session(model_bytes, threads, spinning, profile).session, threads
