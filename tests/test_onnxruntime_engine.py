"""ONNX Runtime as optimize's candidate: configured as a user running it alone would, and the choice recorded."""

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
    if torch.get_num_threads() > 1:
        assert options["chosen_by"] == "timed alone" and set(options["alone_ms"]) == {"spinning", "sleeping"}
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
