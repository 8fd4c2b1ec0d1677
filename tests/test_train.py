"""Training loop: bit-identical resume, Ctrl-C, divergence, safe checkpoints, DDP with 2 CPU processes."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sepconv.data import ImageDataset
from sepconv.train import (
    TrainConfig, TrainingDiverged, TrainingInterrupted, evaluate, fit, load_checkpoint, save_checkpoint,
)

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")  # everything but wall times


def tiny_data(n_train=64, n_val=20, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 3:].sum(dim=(1, 2)) > 0).long()
    return ImageDataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], ["a", "b", "c", "d"])


def tiny_model(seed=0, norm=True, dropout=0.3) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Flatten(), nn.Linear(4 * 36, 4)]
    return nn.Sequential(*layers)


def metrics(history):
    return [{k: h[k] for k in METRICS} for h in history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_bit_identical(tmp_path):
    data = tiny_data()
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-2, seed=3)
    full = fit(tiny_model(), data, cfg, checkpoint_path=tmp_path / "full.pt")
    part = fit(tiny_model(), data, cfg, checkpoint_path=tmp_path / "part.pt", stop_after_epoch=2)
    assert len(part.history) == 2
    assert load_checkpoint(tmp_path / "part.pt")["epoch"] == 2
    # a fresh process would rebuild the model from the seed; the checkpoint then replaces everything
    resumed = fit(tiny_model(), data, cfg, checkpoint_path=tmp_path / "part.pt", resume=True)
    assert resumed.start_epoch == 2
    assert metrics(resumed.history) == metrics(full.history)
    assert same_weights(resumed.model, full.model)
    # the optimizer state too: one more epoch from each checkpoint stays identical
    cfg5 = TrainConfig(epochs=5, batch_size=16, lr=1e-2, seed=3)
    a = fit(tiny_model(), data, cfg5, checkpoint_path=tmp_path / "full.pt", resume=True)
    b = fit(tiny_model(), data, cfg5, checkpoint_path=tmp_path / "part.pt", resume=True)
    assert metrics(a.history) == metrics(b.history) and same_weights(a.model, b.model)


def test_training_learns_and_seed_matters(tmp_path):
    data = tiny_data(n_train=128)
    cfg = TrainConfig(epochs=6, batch_size=16, lr=1e-2, seed=0)
    before = evaluate(tiny_model(), data.val_x, data.val_y)[0]
    run = fit(tiny_model(), data, cfg)
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.history[-1]["val_loss"] < before
    other = fit(tiny_model(), data, TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=1))
    assert metrics(other.history) != metrics(run.history[:1])  # a different data order


def test_cpu_training_is_channels_last_and_matches_nchw(monkeypatch):
    """fit trains 4D batches on the CPU in channels-last memory; the same run in NCHW agrees to float rounding."""
    from sepconv.train import loop

    assert loop.memory_format_for("cpu", torch.zeros(2, 1, 4, 4)) == torch.channels_last
    assert loop.memory_format_for("cpu", torch.zeros(2, 8)) == torch.contiguous_format
    assert loop.memory_format_for("meta", torch.zeros(2, 1, 4, 4)) == torch.contiguous_format
    data = tiny_data()
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0)
    fast = fit(tiny_model(dropout=0.0), data, cfg)  # no dropout: its mask follows the memory order
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(loop, "memory_format_for", lambda device, x: torch.contiguous_format)
    plain = fit(tiny_model(dropout=0.0), data, cfg)
    assert plain.model[0].weight.is_contiguous()
    # the epoch's training loss averages the 4 steps' losses, each after the previous updates: same to rounding.
    # (Weights are not compared: Adam's first steps move a parameter by about lr whatever its gradient's size,
    # so a gradient that is ~0 and rounds to the other sign moves it 2 * lr apart.)
    assert fast.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-6)
    assert fast.history[0]["val_loss"] == pytest.approx(plain.history[0]["val_loss"], rel=1e-2)  # after 4 Adam steps


def test_fit_can_tune_training_engines_first():
    """tune_training=True routes the separable model's convolutions by timing, reports the choices, leaves the
    random stream alone (same dropout masks: the first epoch's loss equals the untuned run's to float rounding)."""
    from sepconv import SeparableConv2d
    from sepconv.backends.training import ENGINES, engine_applies, engine_of, tunable

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), SeparableConv2d(4, 8, 3, padding=1), nn.ReLU(),
                             nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 36, 4))

    data, cfg = tiny_data(), TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0)
    tuned = fit(model(), data, cfg, tune_training=True)
    plain = fit(model(), data, cfg)
    engines = tuned.extra["training_engines"]
    # the layer itself too where the fused engine builds (sepconv's C kernels)
    layer = {"1"} if engine_applies(tuned.model[1], "fused") else set()
    assert set(engines) == {n for n, m in tuned.model.named_modules() if tunable(m)} == {"1.depthwise", "1.pointwise",
                                                                                          *layer}
    assert all(engine_of(tuned.model.get_submodule(n)) == e and e in {"eager", *ENGINES} for n, e in engines.items())
    assert "training_engines" not in plain.extra
    assert tuned.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-5)


def test_evaluate_runs_without_autograd():
    class NoGrad(nn.Module):
        def forward(self, x):
            assert not torch.is_grad_enabled(), "evaluate must not build an autograd graph"
            return x.flatten(1)[:, :4]

    loss, acc = evaluate(NoGrad(), torch.randn(10, 1, 6, 6), torch.randint(0, 4, (10,)))
    assert loss > 0 and 0 <= acc <= 1


def test_resume_refuses_other_settings(tmp_path):
    data = tiny_data()
    fit(tiny_model(), data, TrainConfig(epochs=1, batch_size=16), checkpoint_path=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="lr=0.001.*lr=0.5"):
        fit(tiny_model(), data, TrainConfig(epochs=2, batch_size=16, lr=0.5), checkpoint_path=tmp_path / "c.pt", resume=True)
    fit(tiny_model(), data, TrainConfig(epochs=3, batch_size=16), checkpoint_path=tmp_path / "c.pt", resume=True)
    with pytest.raises(ValueError, match="already has 3 epochs"):
        fit(tiny_model(), data, TrainConfig(epochs=2, batch_size=16), checkpoint_path=tmp_path / "c.pt", resume=True)


class InterruptAt(nn.Module):
    """Wraps a model and raises KeyboardInterrupt on the ``at``-th training forward call."""

    def __init__(self, inner: nn.Module, at: int):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return self.inner(x)


def test_ctrl_c_keeps_last_epoch_and_resumes(tmp_path):
    data = tiny_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2)
    full = fit(tiny_model(), data, cfg)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingInterrupted) as info:
        fit(InterruptAt(tiny_model(), at=4 + 2), data, cfg, checkpoint_path=ckpt)  # 4 batches/epoch: mid epoch 2
    assert info.value.completed_epochs == 1 and info.value.checkpoint == ckpt
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    # resume with the plain model (the wrapper only adds a prefix to parameter names)
    state["model"] = {k.removeprefix("inner."): v for k, v in state["model"].items()}
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "format"})
    resumed = fit(tiny_model(), data, cfg, checkpoint_path=ckpt, resume=True)
    assert metrics(resumed.history) == metrics(full.history) and same_weights(resumed.model, full.model)


class SignalAt(nn.Module):
    """Wraps a model and sends this process a real SIGINT on the ``at``-th training forward calls."""

    def __init__(self, inner: nn.Module, at: tuple[int, ...]):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls in self.at:
                import signal

                signal.raise_signal(signal.SIGINT)
        return self.inner(x)


def test_real_sigint_stops_at_the_next_step_and_restores_the_handler(tmp_path):
    import signal

    # as in an interactive terminal: Python's own handler (a test run started as a background job, `cmd &`, has
    # SIGINT ignored, and then so does fit, by design)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_real_sigint(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fit(SignalAt(tiny_model(), at=()), tiny_data(), TrainConfig(epochs=1, batch_size=16)).history


def _check_real_sigint(tmp_path):
    import signal

    data = tiny_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2)
    model = SignalAt(tiny_model(), at=(4 + 2,))  # 4 batches/epoch: mid epoch 2
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, data, cfg, checkpoint_path=tmp_path / "s.pt")
    assert info.value.completed_epochs == 1 and load_checkpoint(tmp_path / "s.pt")["epoch"] == 1
    assert model.calls == 6  # the step that was running finished; the next one did not start
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back
    # the handler itself: the first Ctrl-C only sets the flag, a second one stops at once
    from sepconv.train.loop import _CtrlC

    stop = _CtrlC()
    stop.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_divergence_stops_with_message():
    data = tiny_data()
    data.train_x[5, 0, 0, 0] = float("nan")  # poisons the batch that holds sample 5
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, batch \d+; try a smaller learning rate"):
        fit(tiny_model(norm=False), data, TrainConfig(epochs=2, batch_size=16), desc="standard")


def test_checkpoint_is_atomic_and_safe(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temp files left
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": Payload()}, evil)
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_checkpoint(evil)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="cannot be read safely|not a sepconv checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sepconv checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 2.5}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"), ({"seed": -3}, "seed"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


# ---------------------------------------------------------------- DDP, 2 CPU processes with gloo

def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable(all_threads=True)  # an abort in a worker prints where each Python thread was
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    run = fit(tiny_model(norm=False, dropout=0.0), tiny_data(), TrainConfig(epochs=2, batch_size=16, lr=1e-2),
              checkpoint_path=Path(out_dir) / "ddp.pt")
    from sepconv.train.distributed import weights_agree

    agree = weights_agree(run.model)
    if rank == 1:  # drift one replica: the check must notice
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] += 1e-3
    drifted = weights_agree(run.model)
    if rank == 1:
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] -= 1e-3
    torch.save({"state": run.model.state_dict(), "history": metrics(run.history), "agree": agree,
                "drifted": drifted}, Path(out_dir) / f"rank{rank}.pt")
    # Both ranks are done with gloo after this barrier, and everything the test checks is on disk. The workers then
    # leave without tearing gloo down: with destroy_process_group after this barrier, a CI run aborted a worker with
    # "terminate called without an active exception". Shutting PyTorch's process group down is not what this test
    # checks; an abort before this point still fails it, with each thread's stack from faulthandler.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_two_processes_agree_with_single_process(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert r0["history"] == r1["history"]
    assert r0["agree"] and r1["agree"] and not r0["drifted"] and not r1["drifted"]
    assert load_checkpoint(tmp_path / "ddp.pt")["epoch"] == 2  # written once, by rank 0
    # each rank trains on half of every global batch and DDP averages the gradients: that equals
    # single-process training on the whole batch (64 samples and batch 16 divide evenly by 2)
    single = fit(tiny_model(norm=False, dropout=0.0), tiny_data(), TrainConfig(epochs=2, batch_size=16, lr=1e-2))
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, rtol=1e-4, atol=1e-5)
    for a, b in zip(r0["history"], metrics(single.history)):
        assert a["epoch"] == b["epoch"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and abs(a["val_acc"] - b["val_acc"]) < 1e-9


# ---------------------------------------------------------------- soft targets and distillation

def test_one_hot_soft_targets_train_as_class_indices():
    """Cross-entropy against one-hot probability rows is cross-entropy against the indices: same run."""
    data = tiny_data()
    soft = ImageDataset("tiny", data.train_x, torch.nn.functional.one_hot(data.train_y, 4).float(),
                        data.val_x, data.val_y, data.classes)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=3)
    hard_run, soft_run = fit(tiny_model(), data, cfg), fit(tiny_model(), soft, cfg)
    for h, s in zip(hard_run.history, soft_run.history):
        # the two losses round differently in the last bits, so allow one image of 64 to flip on a near-tie
        assert abs(s["train_acc"] - h["train_acc"]) <= 1 / 64 + 1e-9
        assert s["train_loss"] == pytest.approx(h["train_loss"], rel=1e-4)
    for (name, a), b in zip(hard_run.model.state_dict().items(), soft_run.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_soft_targets_pull_the_student_towards_the_teacher():
    """Trained on a teacher's softened outputs at temperature 3, a student's softened outputs approach them."""
    from sepconv.train import Tempered, distillation_targets

    data = tiny_data(n_train=128)
    teacher = fit(tiny_model(seed=5), data, TrainConfig(epochs=4, batch_size=16, lr=1e-2, seed=0)).model.eval()
    with torch.no_grad():
        targets = distillation_targets(teacher(data.train_x), temperature=3.0)
    kd = ImageDataset("tiny", data.train_x, targets, data.val_x, data.val_y, data.classes)
    student = Tempered(tiny_model(seed=1, norm=False, dropout=0.0), 3.0)

    def gap():  # mean KL(teacher || student) at temperature 3
        with torch.no_grad():
            log_s = torch.log_softmax(student.eval()(data.train_x), 1)
        return float((targets * (targets.clamp_min(1e-12).log() - log_s)).sum(1).mean())

    before = gap()
    fit(student, kd, TrainConfig(epochs=8, batch_size=16, lr=1e-2, seed=0))
    assert gap() < 0.5 * before


def test_distillation_targets_and_tempered():
    from sepconv.train import Tempered, distillation_targets

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    assert distillation_targets(logits, hard=True).tolist() == [0, 1]
    t1, t4 = distillation_targets(logits), distillation_targets(logits, temperature=4.0)
    torch.testing.assert_close(t1.sum(1), torch.ones(2))
    torch.testing.assert_close(t1, torch.softmax(logits, 1))
    assert bool((t4.max(1).values < t1.max(1).values).all())  # a higher temperature flattens the targets
    model = nn.Linear(3, 3)
    x = torch.randn(5, 3)
    torch.testing.assert_close(Tempered(model, 2.5)(x), model(x) / 2.5)
    for bad in (0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="temperature"):
            distillation_targets(logits, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            Tempered(model, bad)


@pytest.mark.parametrize("targets, match", [
    (lambda y: torch.full((64, 4), 0.3), "sum to 1"),
    (lambda y: torch.nn.functional.one_hot(y, 4).float() * 2 - 1, "non-negative"),
    (lambda y: torch.full((64, 4), float("nan")), "finite"),
    (lambda y: torch.full((64,), 0.5), r"\(N, num_classes >= 2\)"),
    (lambda y: y[:10], "10 targets for 64"),
    (lambda y: y.view(64, 1), "1-D"),
])
def test_fit_refuses_targets_it_cannot_use(targets, match):
    data = tiny_data()
    bad = ImageDataset("tiny", data.train_x, targets(data.train_y), data.val_x, data.val_y, data.classes)
    with pytest.raises(ValueError, match=match):
        fit(tiny_model(), bad, TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0))
