"""`sepconv compare` under hostile input and faults: fuzzed arguments, run.json and checkpoints; SIGKILL and resume.

The argument fuzz runs the validate-only path (``--dry-run``) in-process, so
each example checks every setting, the data and the output directory and
sizes every variant without training. Each fuzz test has a soak variant with
many more examples, marked ``slow``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sepconv.cli import main  # noqa: E402
from sepconv.experiments.config import CompareConfig, RunOptions, record_of  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SOAK = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
TINY = ["--variants", "standard,separable", "--width", "0.125", "--batch-size", "128", "--quiet",
        "--latency-time", "0.01", "--no-optimized-latency", "--threads", "1"]

NASTY = ["0", "-1", "1", "2", "0.5", "3", "inf", "-inf", "nan", "1e309", "1e-320", "", " ", "-",
         "99999999999999999999999", "abc", "standard", "separable,standard", "standard,converted", "converted",
         "digits", "cifar10", "imagefolder", "cpu", "auto", "cuda", "cuda:0", "cuda:-1", "vgg_blocks",
         "mobilenet_v1", "xception", "separable", "cp", "a" * 300, "a/" * 200, "\x00", "missing/dir"]
VALUE = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), st.integers(-10**30, 10**30).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))


def _options() -> tuple[list[str], list[str]]:
    """(flags taking a value, switches) of `sepconv compare`, from the config declarations."""
    from dataclasses import fields

    valued, switches = [], []
    for cls in (CompareConfig, RunOptions):
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f.metadata["kind"] == "bool":
                switches.append(flag)
                if cls is CompareConfig or f.default is True:
                    switches.append("--no-" + f.name.replace("_", "-"))
            elif f.name not in ("out", "tensorboard"):
                valued.append(flag)
    return valued, [s for s in switches if s not in ("--dry-run", "--resume")]


VALUED, SWITCHES = _options()
ARGV = st.lists(st.one_of(st.tuples(st.sampled_from(VALUED), VALUE).map(list),
                          st.sampled_from(SWITCHES).map(lambda s: [s])), max_size=6).map(lambda x: sum(x, []))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    threads = torch.get_num_threads()
    try:
        rc = main(["compare", *argv])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    return rc, err


def check_outcome(rc: int, err: str) -> None:
    assert rc in (0, 2), (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if rc == 2 and err.startswith("sepconv compare: error:"):
        assert err.strip().count("\n") == 0, err


def _fuzz_arguments(argv, capsys, tmp):
    here = os.getcwd()
    os.chdir(tmp)  # relative --data-dir values resolve in an empty folder, not the checkout
    try:
        rc, err = run_cli([*argv, "--dry-run", "--quiet", "--out", str(Path(tmp) / "o")], capsys)
    finally:
        os.chdir(here)
    check_outcome(rc, err)
    assert not (Path(tmp) / "o").exists()  # a dry run writes nothing


@FAST
@given(argv=ARGV)
def test_fuzz_arguments(argv, capsys, tmp_path):
    _fuzz_arguments(argv, capsys, tmp_path)


@pytest.mark.slow
@SOAK
@given(argv=ARGV)
def test_fuzz_arguments_soak(argv, capsys, tmp_path):
    _fuzz_arguments(argv, capsys, tmp_path)


# ------------------------------------------------------------------ run.json

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
FIELD_NAMES = [name for name in record_of(CompareConfig())]
CONFIG_EDIT = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELD_NAMES), JSON),
    st.tuples(st.just("drop"), st.sampled_from(FIELD_NAMES), st.none()),
    st.tuples(st.just("add"), st.text(max_size=8), JSON),
), min_size=1, max_size=3)


def _fuzz_run_json(edits, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r"
        out.mkdir()
        config = record_of(CompareConfig(epochs=1, variants=["standard"], width=0.125, batch_size=128))
        for action, key, value in edits:
            if action == "drop":
                config.pop(key, None)
            else:
                config[key] = value
        (out / "run.json").write_text(json.dumps({"config": config, "started": "x"}))
        rc, err = run_cli(["--resume", "--out", str(out), "--dry-run", "--quiet"], capsys)
        check_outcome(rc, err)


@FAST
@given(edits=CONFIG_EDIT)
def test_fuzz_run_json(edits, capsys):
    _fuzz_run_json(edits, capsys)


@pytest.mark.slow
@SOAK
@given(edits=CONFIG_EDIT)
def test_fuzz_run_json_soak(edits, capsys):
    _fuzz_run_json(edits, capsys)


# ------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "r"
    assert main(["compare", *TINY, "--variants", "standard", "--epochs", "1", "--out", str(out)]) == 0
    return out


TENSOR = st.builds(lambda shape, kind: torch.zeros(shape, dtype=kind),
                   st.lists(st.integers(0, 4), max_size=3), st.sampled_from([torch.float32, torch.uint8, torch.int64]))
ANY = st.one_of(JSON, TENSOR)


def _paths(state: dict, depth: int = 0) -> list[tuple]:
    """Key paths into a checkpoint dict (two levels deep)."""
    found = []
    for key, value in state.items():
        found.append((key,))
        if isinstance(value, dict) and depth == 0:
            found += [(key, *p) for p in _paths(value, 1)]
    return found


def _fuzz_checkpoint(data, trained, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(shutil.copytree(trained, Path(tmp) / "r"))
        path = out / "checkpoints" / "standard.pt"
        state = torch.load(path, weights_only=True)
        for _ in range(data.draw(st.integers(1, 3))):
            where = data.draw(st.sampled_from(_paths(state)))
            parent = state
            for key in where[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()):
                del parent[where[-1]]
            else:
                parent[where[-1]] = data.draw(ANY)
            if not _paths(state):
                break
        torch.save(state, path)
        rc, err = run_cli(["--resume", "--out", str(out), "--epochs", "2", "--quiet", "--no-optimized-latency",
                           "--latency-time", "0.01"], capsys)
        check_outcome(rc, err)
        if rc == 2:
            assert "weights_only=False" not in err


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_fuzz_checkpoint(data, trained, capsys):
    _fuzz_checkpoint(data, trained, capsys)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_checkpoint_soak(data, trained, capsys):
    _fuzz_checkpoint(data, trained, capsys)


# ------------------------------------------------------------------ SIGKILL at a random step, then --resume

def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sepconv", "compare", *TINY, "--epochs", "3", "--out", str(out), *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fault") / "full"
    proc = subprocess.run(_cli(out), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _kill_and_resume(reference: Path, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    # a random epoch checkpoint to wait for, then a random moment within the following epoch
    variant, epoch = rng.choice([("standard", 1), ("standard", 2), ("separable", 1), ("separable", 2)])
    proc = subprocess.Popen(_cli(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoints" / f"{variant}.pt"
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= epoch:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
    except (RuntimeError, EOFError, KeyError):  # the checkpoint was being replaced: kill now
        pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert (out / "run.json").exists(), f"seed {seed}: killed before the run started"
    resumed = subprocess.run(_cli(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, f"seed {seed}: {resumed.stderr[-2000:]}"
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["status"] == "complete", seed
    for v in ("standard", "separable"):
        assert [{k: h[k] for k in METRICS} for h in a["variants"][v]["history"]] == \
               [{k: h[k] for k in METRICS} for h in b["variants"][v]["history"]], (seed, v)
        wa = torch.load(reference / "checkpoints" / f"{v}.pt", weights_only=True)
        wb = torch.load(out / "checkpoints" / f"{v}.pt", weights_only=True)
        for part in ("model",):
            assert all(torch.equal(wa[part][k], wb[part][k]) for k in wa[part]), (seed, v, part)
        assert all(torch.equal(x, y) for x, y in zip(_tensors(wa["optimizer"]), _tensors(wb["optimizer"]))), (seed, v)


def _tensors(tree) -> list:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree, key=str) for t in _tensors(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    return []


def test_sigkill_then_resume_is_bit_identical(uninterrupted, tmp_path):
    """kill -9 at a random moment of training (the lock is left behind, stale), then --resume: the same weights,
    optimizer state and metrics as the uninterrupted run."""
    seed = int(os.environ.get("SEPCONV_FAULT_SEED", random.randrange(2**31)))
    _kill_and_resume(uninterrupted, tmp_path / "killed", seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_then_resume_soak(uninterrupted, tmp_path, seed):
    _kill_and_resume(uninterrupted, tmp_path / "killed", 1000 + seed)
