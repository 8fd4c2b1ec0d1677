"""ONNX Runtime as an inference engine: export a model to ONNX and run it in an ONNX Runtime CPU session."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from .engine import BuildContext, Candidate, InferenceEngine, applies_to_any_model


class OnnxRuntimeModel(nn.Module):
    """A model exported to ONNX and run by ONNX Runtime on the CPU: inference only, one input, one output.

    Built by :func:`to_onnxruntime`. ``forward`` takes and returns CPU float
    tensors; there is no autograd through it (an input that requires grad
    raises ``RuntimeError``).
    """

    def __init__(self, session: Any, input_name: str, threads: int) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.threads = threads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("OnnxRuntimeModel is inference-only: call it under torch.no_grad() or on a "
                               "tensor that does not require grad")
        if x.device.type != "cpu":
            raise ValueError(f"OnnxRuntimeModel runs on the CPU; got an input on {x.device}")
        (out,) = self.session.run(None, {self.input_name: x.detach().contiguous().numpy()})
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"onnxruntime CPUExecutionProvider, intra_op_num_threads={self.threads}"


def onnxruntime_available() -> bool:
    """True when both ``onnx`` export support and ``onnxruntime`` are importable (``pip install 'sepconv[onnx]'``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(model: nn.Module, sample_input: torch.Tensor) -> bytes:
    """The ONNX bytes (opset 17) of ``model`` in eval mode traced on ``sample_input``: input ``x``, output ``y``, batch dynamic.

    Needs ``onnx`` (``pip install 'sepconv[onnx]'``) and a float32 CPU ``sample_input``.
    """
    if sample_input.device.type != "cpu" or sample_input.dtype != torch.float32:
        raise ValueError(f"export_onnx needs a float32 CPU sample_input, got {sample_input.dtype} on {sample_input.device}")
    import io

    model = model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample_input,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buffer.getvalue()


def onnxruntime_session(model_bytes: bytes, *, threads: Optional[int] = None, spinning: bool = False,
                        profile: bool = False) -> tuple[Any, int]:
    """An ONNX Runtime CPU session of a serialized ONNX model, set up as :func:`to_onnxruntime` describes.

    Returns ``(session, threads)``; ``threads`` defaults to ``torch.get_num_threads()``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = torch.get_num_threads() if threads is None else threads
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
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]), threads


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
    process: on a 2-core AMD Zen 4 with 2 threads the oneDNN/fused separable
    MobileNetV1 took 13.7 ms in rounds interleaved with a spinning session
    against 7.0 ms alone and 7.5 ms beside a sleeping one, while the session
    itself took 5.9 ms spinning and 6.3 ms sleeping alone
    (``benchmarks/bench_networks.py``, ``runtime_interference_ms``). A process
    that runs nothing but the session can ask for ``spinning=True``.

    ``profile``: ONNX Runtime records every node's time on every run;
    ``runner.session.end_profiling()`` writes them to a JSON file (in the
    temporary directory) and returns its path.
    """
    if not onnxruntime_available():
        raise ImportError("to_onnxruntime needs onnx and onnxruntime: pip install 'sepconv[onnx]'")
    model = model.eval()
    session, threads = onnxruntime_session(export_onnx(model, sample_input), threads=threads, spinning=spinning,
                                           profile=profile)
    runner = OnnxRuntimeModel(session, "x", threads)
    with torch.no_grad():
        expected = model(sample_input)
        got = runner(sample_input)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
        raise RuntimeError(f"ONNX Runtime's output differs from PyTorch's (max abs difference "
                           f"{float((got - expected).abs().max()) if got.shape == expected.shape else 'shape ' + str(tuple(got.shape))})")
    return runner




def _unavailable(sample: torch.Tensor) -> Optional[str]:
    if not onnxruntime_available():
        return "needs onnx and onnxruntime installed (pip install 'sepconv[onnx]')"
    if sample.device.type != "cpu" or sample.dtype != torch.float32:
        return f"needs a float32 CPU sample_input, got {sample.dtype} on {sample.device}"
    return None


def _build(context: BuildContext) -> dict[str, Candidate]:
    runner = to_onnxruntime(context.base, context.sample)
    return {"onnxruntime": Candidate(runner, torch.contiguous_format, "onnxruntime")}


ENGINE = InferenceEngine(
    name="onnxruntime", summary="the model exported to ONNX and run by ONNX Runtime (CPU, float32, inference only)",
    default=True, unavailable=_unavailable, applies=applies_to_any_model, build=_build)
