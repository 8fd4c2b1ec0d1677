"""ONNX Runtime as optimize's candidate: configured for how it runs (alone, or beside PyTorch work), and the choice
recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sepconv
from sepconv.backends import onnxruntime as ort_engine

pytest.importorskip("onnxruntime", reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")
pytest.importorskip("onnx", reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")

SPIN_KEY = "session.intra_op.allow_spinning"


def _model_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(sepconv.SeparableConv2d(4, 8, 3, padding=1), nn.ReLU()).eval()
    return model, torch.randn(1, 4, 10, 10)


def _spins(runner) -> bool:
    return runner.session.get_session_options().get_session_config_entry(SPIN_KEY) == "1"


@pytest.mark.parametrize("spinning_ms, sleeping_ms, spins", [(1.0, 2.0, True), (2.0, 1.0, False)])
def test_the_variant_faster_alone_is_kept_and_recorded(monkeypatch, spinning_ms, sleeping_ms, spins):
    model, x = _model_and_input()
    calls = []

    def fake_interleaved(fns, rounds):
        ((name, fn),) = fns.items()  # one variant at a time: timed alone
        fn()
        calls.append(name)
        median = {"spinning": spinning_ms, "sleeping": sleeping_ms}[name] / 1e3
        return {name: type("T", (), {"median": median})()}

    monkeypatch.setattr(ort_engine, "interleaved", fake_interleaved)
    runner, record = ort_engine.fastest_session_options(model, x, threads=2)
    assert calls == ["sleeping", "spinning"]  # the spinning one last: its threads never slow the other
    assert _spins(runner) == spins == runner.spinning == record["allow_spinning"]
    assert record["intra_op_num_threads"] == 2 == runner.session.get_session_options().intra_op_num_threads
    assert record["chosen_by"] == "timed alone"
    assert record["alone_ms"] == pytest.approx({"spinning": spinning_ms, "sleeping": sleeping_ms})
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("with_torch, spins", [({"spinning": 3.0, "sleeping": 2.5}, False),
                                                ({"spinning": 2.0, "sleeping": 2.5}, True)])
def test_beside_pytorch_work_the_pair_decides_not_the_session_alone(monkeypatch, with_torch, spins):
    """Spinning is faster alone here; what is kept is the variant whose run plus the PyTorch work after it is faster
    (a spinning session's idle threads compete with PyTorch's right after each run)."""
    model, x = _model_and_input()
    calls, after = [], []

    def fake_interleaved(fns, rounds):
        ((name, fn),) = fns.items()
        fn()
        calls.append(name)
        table = {"spinning": 1.0, "sleeping": 2.0} if len(calls) <= 2 else with_torch
        return {name: type("T", (), {"median": table[name] / 1e3})()}

    monkeypatch.setattr(ort_engine, "interleaved", fake_interleaved)
    runner, record = ort_engine.fastest_session_options(model, x, threads=2, alongside=lambda: after.append(1))
    assert calls == ["sleeping", "spinning"] * 2 and len(after) == 2  # each pair ran the PyTorch work once
    assert _spins(runner) == spins == record["allow_spinning"]
    assert record["chosen_by"] == "timed with PyTorch work after each run"
    assert record["alone_ms"] == pytest.approx({"spinning": 1.0, "sleeping": 2.0})
    assert record["with_pytorch_ms"] == pytest.approx(with_torch)


def test_one_thread_is_not_timed_and_sleeps(monkeypatch):
    model, x = _model_and_input()
    monkeypatch.setattr(ort_engine, "interleaved", lambda *a, **k: pytest.fail("timed with one thread"))
    runner, record = ort_engine.fastest_session_options(model, x, threads=1)
    assert not _spins(runner) and record["allow_spinning"] is False and "one intra-op thread" in record["chosen_by"]
    assert "alone_ms" not in record


def test_the_callers_thread_count_is_the_default(monkeypatch):
    model, x = _model_and_input()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(ort_engine, "interleaved",
                        lambda fns, rounds: {n: type("T", (), {"median": 1e-3})() for n in fns})
    runner, record = ort_engine.fastest_session_options(model, x)
    assert runner.threads == 3 == record["intra_op_num_threads"]


def test_optimize_records_the_session_options_whichever_candidate_wins():
    model, x = _model_and_input()
    fast = sepconv.optimize(model, x, rounds=2)
    options = fast.session_options
    assert options is not None and options["intra_op_num_threads"] == torch.get_num_threads()
    assert isinstance(options["allow_spinning"], bool)
    if torch.get_num_threads() > 1:  # beside the PyTorch work of the process: the eager model after each run
        assert options["chosen_by"] == "timed with PyTorch work after each run"
        assert set(options["alone_ms"]) == set(options["with_pytorch_ms"]) == {"spinning", "sleeping"}
    if fast.backend == "onnxruntime":
        assert _spins(fast.model) == options["allow_spinning"]
    unmeasured = sepconv.optimize(model, x, measure=False)
    assert unmeasured.session_options["allow_spinning"] is False
    assert "not measured" in unmeasured.session_options["chosen_by"]


def test_bad_arguments_name_the_argument():
    model, x = _model_and_input()
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        ort_engine.fastest_session_options(model, x, rounds=0)
    with pytest.raises(ValueError, match="float32 CPU sample_input"):
        ort_engine.fastest_session_options(model.double(), x.double())


# --- the OnnxRuntimeModel call path: numerics, ownership of outputs, layouts, threads ---

@pytest.fixture(scope="module")
def runners():
    """Two exported layers (stride 1 and 2, channels not multiples of 8) with their eager references."""
    torch.manual_seed(1)
    built = []
    for model, shape in ((nn.Sequential(sepconv.SeparableConv2d(5, 7, 3, padding=1), nn.ReLU()), (1, 5, 9, 11)),
                         (sepconv.SeparableConv2d(6, 4, 3, stride=2, padding=1), (2, 6, 8, 8))):
        model.eval()
        built.append((model, ort_engine.to_onnxruntime(model, torch.randn(*shape), threads=1), shape))
    return built


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("which", [0, 1])
def test_outputs_match_eager_for_any_batch(runners, which, batch):
    model, runner, shape = runners[which]
    x = torch.randn(batch, *shape[1:])
    with torch.no_grad():
        got, expected = runner(x), model(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_each_call_returns_a_tensor_no_later_call_overwrites(runners):
    model, runner, shape = runners[0]
    x1, x2 = torch.randn(*shape), torch.randn(*shape)
    with torch.no_grad():
        y1 = runner(x1)
        kept = y1.clone()
        y2 = runner(x2)  # same shape: the case a cached output buffer would get wrong
        torch.testing.assert_close(y2, model(x2), rtol=1e-4, atol=1e-5)
        assert torch.equal(y1, kept)
        assert y1.untyped_storage().data_ptr() != y2.untyped_storage().data_ptr()
        y2.fill_(float("nan"))  # writing into a result changes neither the input nor the next call
        torch.testing.assert_close(runner(x2), model(x2), rtol=1e-4, atol=1e-5)
        assert torch.equal(y1, kept) and not x2.isnan().any()


@pytest.mark.parametrize("layout", ["channels_last", "strided_slice", "expanded_batch"])
def test_non_contiguous_input_is_handled(runners, layout):
    model, runner, shape = runners[0]
    base = torch.randn(*shape)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "strided_slice":
        x = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2]
    else:
        x = base.expand(3, *shape[1:])  # batch stride 0
    assert not x.is_contiguous()
    before = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x.contiguous()), rtol=1e-4, atol=1e-5)
    assert torch.equal(x, before)


def test_an_input_that_requires_grad_runs_under_no_grad_only(runners):
    model, runner, shape = runners[0]
    x = torch.randn(*shape, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        runner(x)
    with torch.no_grad():
        got = runner(x)
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    assert not got.requires_grad


@pytest.mark.parametrize("x, match", [(torch.randn(1, 5, 9, 11, dtype=torch.float64), "float32 input; got x of dtype"),
                                      (torch.empty(1, 5, 9, 11, device="meta"), "runs on the CPU")])
def test_bad_input_raises_value_error(runners, x, match):
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        runners[0][1](x)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_thread_count_asked_for_is_the_sessions(threads):
    model, x = _model_and_input()
    runner = ort_engine.to_onnxruntime(model, x, threads=threads)
    assert runner.session.get_session_options().intra_op_num_threads == threads == runner.threads
    assert runner.session.get_session_options().inter_op_num_threads == 1
    assert f"intra_op_num_threads={threads}" in repr(runner)
    assert runner.session_options["intra_op_num_threads"] == threads
