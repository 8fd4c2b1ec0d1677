"""sepconv.optimize: the same function as the eval-mode model, with BatchNorm folded."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.backends.onnxruntime import onnxruntime_available
from sepconv.backends.onednn import onednn_available
from sepconv.models import build_model


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.sampled_from([1, 2]), st.sampled_from(["same", 1]), st.integers(0, 999))
def test_optimize_equals_eval_model(cin, cout, stride, padding, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(cin, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        sepconv.SeparableConv2d(8, cout, 3, stride=stride, padding=padding, bias=False,
                                dw_norm="batchnorm", dw_act="relu6", pw_norm="batchnorm", pw_act=None),
    )
    model = trained_like(model, seed)
    x = torch.randn(2, cin, 9, 9)
    fast = sepconv.optimize(model, x, measure=False)
    assert fast.folded == 3 and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(m.training for m in fast.modules())  # an inference model, wrapper included
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_optimize_measures_and_keeps_mobilenet_v2_outputs():
    model = trained_like(build_model("mobilenet_v2", alpha=0.35, num_classes=10), 0)
    x = torch.randn(1, 3, 64, 64)
    fast = sepconv.optimize(model, x, rounds=2)
    expected = ({"original", "nchw", "channels_last"} | ({"onnxruntime"} if onnxruntime_available() else set())
                | ({"onednn"} if onednn_available() else set()))
    first = {k: v for k, v in fast.timings_ms.items() if not k.endswith(" (confirmation)")}
    assert set(first) == expected
    candidates = {k: v for k, v in first.items() if k != "original"}
    chosen = min(candidates, key=candidates.get)  # the fastest candidate is the one kept...
    confirmed = {k[: -len(" (confirmation)")]: v for k, v in fast.timings_ms.items() if k.endswith(" (confirmation)")}
    if confirmed:  # ...unless the runner-up was within CLOSE_CALL and won the longer second timing
        ranked = sorted(candidates, key=candidates.get)
        assert set(confirmed) == set(ranked[:2]) and candidates[ranked[1]] < sepconv.backends.optimize.CLOSE_CALL * candidates[ranked[0]]
        chosen = min(confirmed, key=confirmed.get)
    else:
        assert sorted(candidates.values())[1] >= sepconv.backends.optimize.CLOSE_CALL * candidates[chosen]
    assert fast.backend == (chosen if chosen in ("onnxruntime", "onednn") else "eager")
    assert fast.memory_format == (torch.channels_last if chosen in ("channels_last", "onednn") else torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-3, atol=1e-4)


def test_fold_batchnorm_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        sepconv.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        sepconv.optimize(nn.Conv2d(1, 1, 1), [1, 2])


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")
def test_onnxruntime_backend_computes_the_same_function_at_any_batch():
    model = trained_like(build_model("mobilenet_v1", alpha=0.25, num_classes=7), 1)
    x = torch.randn(2, 3, 64, 64)
    fast = sepconv.optimize(model, x, backends=("onnxruntime",))
    assert fast.backend == "onnxruntime" and isinstance(fast.model, sepconv.OnnxRuntimeModel)
    assert fast.timings_ms == {}  # one candidate: nothing to measure
    for batch in (1, 2, 5):  # the batch dimension is dynamic
        xb = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(fast(xb), model(xb), rtol=1e-3, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference-only"):
        fast(torch.randn(1, 3, 64, 64, requires_grad=True))


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")
def test_onnxruntime_sessions_sleep_between_runs_unless_asked_to_spin():
    """Idle ONNX Runtime threads that spin slow the PyTorch work that follows: off by default in to_onnxruntime, on
    when asked; optimize keeps whichever is faster beside the model's PyTorch work and records it."""
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)
    key = "session.intra_op.allow_spinning"
    default = sepconv.to_onnxruntime(model, x, threads=2)
    assert default.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = sepconv.to_onnxruntime(model, x, threads=2, spinning=True)
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    with torch.no_grad():
        torch.testing.assert_close(spinning(x), default(x))
    fast = sepconv.optimize(model, x, backends=("onnxruntime",))  # the choice is recorded
    spins = fast.model.session.get_session_options().get_session_config_entry(key) == "1"
    assert spins == fast.session_options["allow_spinning"]


def test_optimize_backend_bad_input():
    with pytest.raises(ValueError, match="backends must be a non-empty subset"):
        sepconv.optimize(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 4, 4), backends=("tvm",))
    if onnxruntime_available():
        with pytest.raises(ValueError, match="float32 CPU sample_input"):
            sepconv.optimize(nn.Conv2d(1, 1, 1).double(), torch.randn(1, 1, 4, 4, dtype=torch.float64),
                             backends=("onnxruntime",))


def test_a_channels_last_model_names_an_input_it_cannot_take():
    from sepconv.backends.optimize import OptimizedModel

    model = OptimizedModel(nn.Conv2d(3, 4, 3), torch.channels_last, {}, 0)
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"optimized for \(N, C, H, W\) input in channels-last; got shape \(3, 5, 5\)"):
        model(torch.randn(3, 5, 5))
    # a contiguous-format model passes any input on to the model it runs, which takes an unbatched image
    assert OptimizedModel(nn.Conv2d(3, 4, 3), torch.contiguous_format, {}, 0)(torch.randn(3, 5, 5)).shape == (4, 3, 3)


class _TupleOutput(nn.Module):
    """Returns two tensors: the ONNX Runtime wrapper handles one output only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")
def test_a_model_onnxruntime_cannot_run_falls_back_to_the_other_backends_with_a_warning():
    model, x = _TupleOutput().eval(), torch.randn(1, 2, 6, 6)
    with pytest.warns(UserWarning, match="skipping the onnxruntime backend"):
        fast = sepconv.optimize(model, x, rounds=1)
    # the other candidates are still measured; which of them wins is up to the timing
    assert fast.backend in ("eager", "onednn") and "onnxruntime" not in fast.timings_ms
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], model(x)[0])
    with pytest.raises(RuntimeError, match="the onnxruntime backend failed"):
        sepconv.optimize(model, x, backends=("onnxruntime",))


@pytest.mark.slow
def test_compile_backend_is_measured_when_asked():
    model = trained_like(build_model("mobilenet_v2", alpha=0.35, num_classes=10), 2)
    x = torch.randn(1, 3, 32, 32)
    fast = sepconv.optimize(model, x, rounds=2, backends=("eager", "compile"))
    assert {"nchw", "channels_last", "compile"} <= set(fast.timings_ms)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx/onnxruntime not installed (pip install 'sepconv[onnx]')")
def test_onnxruntime_profile_records_every_node():
    import json
    import os

    model, x = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(1, 3, 8, 8)
    runner = sepconv.to_onnxruntime(model, x, profile=True)
    runner(x)
    path = runner.session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.unlink(path)
    ops = {e["args"].get("op_name") for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    assert "Conv" in ops
    plain = sepconv.to_onnxruntime(model, x)
    assert not plain.session.end_profiling()  # no profile without the flag


def test_cpu_time_interleaved_counts_work_not_waiting():
    import time

    from sepconv.backends.clock import cpu_time_interleaved

    def busy():
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass

    timings = cpu_time_interleaved({"sleeps": lambda: time.sleep(0.004), "busy": busy}, rounds=3, target_s=0.01)
    assert timings["sleeps"].median < 0.001 < 0.0015 < timings["busy"].median
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        cpu_time_interleaved({"busy": busy}, rounds=0)
    with pytest.raises(ValueError, match="target_s must be a finite number > 0, got inf"):
        cpu_time_interleaved({"busy": busy}, target_s=float("inf"))


@pytest.mark.parametrize("threads, clock", [(1, "cpu"), (2, "wall")])
def test_optimize_times_one_thread_on_cpu_time(threads, clock):
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = sepconv.optimize(model, x, rounds=2, backends=("eager",))
        assert fast.timing_clock == clock
    finally:
        torch.set_num_threads(before)
    assert sepconv.optimize(model, x, measure=False).timing_clock is None


def _fake_timer(medians_by_call, samples_by_call=None):
    """A stand-in for time_candidates: the medians (s) each successive call reports (and, where given, its samples;
    else the median alone), and what it was asked."""
    from sepconv.utils.timing import Timing

    asked = []

    def timer(calls, sample, rounds, target_s=0.02, apart=()):
        medians = medians_by_call[len(asked)]
        samples = (samples_by_call or {}).get(len(asked), {})
        asked.append((sorted(calls), rounds, target_s, tuple(apart)))
        return {name: Timing(medians[name], medians[name], medians[name], tuple(samples.get(name, (medians[name],))))
                for name in calls}
    return timer, asked


@pytest.mark.parametrize("apart", [(), ("b",)])
def test_fastest_call_confirms_a_close_call_keeping_apart_what_was_asked(monkeypatch, apart):
    from sepconv.backends import clock

    calls = {"original": lambda: None, "a": lambda: None, "b": lambda: None, "c": lambda: None}
    # b within CLOSE_CALL of a: the two are timed again, and the second timing decides; the original, fastest
    # of all, does not compete
    timer, asked = _fake_timer([{"original": 0.5, "a": 1.0, "b": 1.1, "c": 3.0}, {"a": 1.2, "b": 1.0}])
    monkeypatch.setattr(clock, "time_candidates", timer)
    choice, timings = clock.fastest_call(calls, torch.empty(1), rounds=5, target_s=0.01, among=["a", "b", "c"],
                                         apart=apart)
    assert choice == "b" and asked == [(sorted(calls), 5, 0.01, apart), (["a", "b"], 10, 0.025, apart)]
    assert timings["a (confirmation)"] == 1200 and timings["b (confirmation)"] == 1000 and timings["original"] == 500


@pytest.mark.parametrize("threads", [1, 2])
def test_time_candidates_times_another_runtime_apart_with_threads(monkeypatch, threads):
    """With more than one thread the calls named apart are timed first, in rounds of their own, and the others after
    running one of them untimed for SPIN_WAIT_S; with one thread (no idle worker threads) all in the same rounds."""
    from sepconv.backends import clock
    from sepconv.utils import timing

    log = []
    monkeypatch.setattr(clock, "SPIN_WAIT_S", 0.01)
    monkeypatch.setattr(clock, "CPU_CLOCK_WITH_ONE_THREAD", False)  # the wall clock with one thread too

    def fake_interleaved(calls, rounds, target_s, device):
        log.append(("timed", sorted(calls)))
        return {name: timing.Timing(1.0, 1.0, 1.0, (1.0,)) for name in calls}
    monkeypatch.setattr(timing, "interleaved", fake_interleaved)
    calls = {name: (lambda name=name: log.append(("untimed", name))) for name in ("eager", "fused", "ort")}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = clock.time_candidates(calls, torch.empty(1), rounds=3, apart=["ort"])
    finally:
        torch.set_num_threads(before)
    assert sorted(t) == ["eager", "fused", "ort"]
    if threads == 1:
        assert log == [("timed", ["eager", "fused", "ort"])]
    else:
        untimed = [entry for entry in log if entry[0] == "untimed"]
        assert log[0] == ("timed", ["ort"]) and log[-1] == ("timed", ["eager", "fused"])
        assert untimed and set(untimed) == {("untimed", "eager")} and len(log) == len(untimed) + 2


def test_optimize_times_its_onnxruntime_candidate_apart(monkeypatch):
    from sepconv.backends import optimize as opt
    from sepconv.backends.engine import Candidate

    asked = []

    def spy(fns, sample, rounds, target_s=0.02, among=None, apart=()):
        asked.append((sorted(fns), list(among), list(apart)))
        return among[0], {}
    monkeypatch.setattr(opt, "fastest_call", spy)
    model = nn.Conv2d(2, 2, 1).eval()
    candidates = {"nchw": Candidate(model, torch.contiguous_format, "eager"),
                  "onnxruntime": Candidate(model, torch.contiguous_format, "onnxruntime")}
    opt._fastest_candidate(model, torch.randn(1, 2, 3, 3), candidates, rounds=2)
    assert asked == [(["nchw", "onnxruntime", "original"], ["nchw", "onnxruntime"], ["onnxruntime"])]


def test_fastest_call_confirms_when_the_fastest_sample_is_another_candidates(monkeypatch):
    """A clear median winner is timed again against the candidate with the fastest single sample: the medians then
    disagree with the least disturbed samples (the other candidate's rounds were slowed), and the second timing
    decides. Where both agree, nothing is timed again."""
    from sepconv.backends import clock

    calls = {"packed": lambda: None, "fused": lambda: None, "eager": lambda: None}
    first = {"packed": 1.0, "fused": 1.4, "eager": 3.0}  # fused's median is well outside CLOSE_CALL
    timer, asked = _fake_timer([first, {"packed": 1.0, "fused": 0.75}],
                               {0: {"packed": (0.95, 1.0, 1.05), "fused": (0.7, 1.4, 1.5), "eager": (2.9, 3.0, 3.1)}})
    monkeypatch.setattr(clock, "time_candidates", timer)
    choice, timings = clock.fastest_call(calls, torch.empty(1), rounds=3)
    assert choice == "fused" and [a[0] for a in asked] == [sorted(calls), ["fused", "packed"]]
    assert timings["fused (confirmation)"] == 750 and timings["packed (confirmation)"] == 1000
    timer, asked = _fake_timer([first], {0: {"packed": (0.9, 1.0), "fused": (1.3, 1.4), "eager": (2.9, 3.0)}})
    monkeypatch.setattr(clock, "time_candidates", timer)
    assert clock.fastest_call(calls, torch.empty(1), rounds=3)[0] == "packed" and len(asked) == 1


def test_fastest_call_keeps_a_clear_winner_and_checks_among(monkeypatch):
    from sepconv.backends import clock

    timer, asked = _fake_timer([{"a": 1.0, "b": 1.0 * clock.CLOSE_CALL + 0.01}])
    monkeypatch.setattr(clock, "time_candidates", timer)
    calls = {"a": lambda: None, "b": lambda: None}
    assert clock.fastest_call(calls, torch.empty(1), rounds=3)[0] == "a" and len(asked) == 1
    with pytest.raises(ValueError, match="among must name some of the calls"):
        clock.fastest_call(calls, torch.empty(1), rounds=3, among=["z"])


def test_pack_convolutions_chooses_each_engine_by_fastest_call(monkeypatch):
    from sepconv.backends import onednn

    if not onednn.onednn_available():
        pytest.skip("this PyTorch build lacks the oneDNN convolution operators")
    seen = []

    def spy(calls, sample, rounds, target_s=0.02, among=None, apart=()):
        seen.append(sorted(calls))
        assert not apart  # every candidate runs on PyTorch's thread pool
        return "packed", {}
    monkeypatch.setattr(onednn, "fastest_call", spy)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    choices = onednn.pack_convolutions(model, torch.randn(1, 3, 8, 8), rounds=2)
    assert seen == [["eager", "packed"]] and list(choices.values()) == ["packed+relu"]
