"""`sepconv compare`: outputs, cost columns against sepconv.cost, resume, bad input, interruption."""

from __future__ import annotations

import base64
import csv
import json
import platform
import re

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
models = pytest.importorskip("sepconv.models", reason="the model zoo (sepconv.models) is not installed yet")
cost = pytest.importorskip("sepconv.cost", reason="the cost module (sepconv.cost) is not installed yet")

from sepconv.cli import main  # noqa: E402
from sepconv.experiments import CompareConfig, run_compare  # noqa: E402
from sepconv.experiments.report import format_table  # noqa: E402
from sepconv.train import load_checkpoint  # noqa: E402

# one thread: on a shared machine, two threads per small operator wait on each other (see docs/compare.md)
TINY = ["--epochs", "1", "--variants", "standard,separable", "--width", "0.125", "--batch-size", "128", "--quiet",
        "--latency-time", "0.02", "--threads", "1"]
METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def tiny_config(**kw) -> CompareConfig:
    base = dict(epochs=2, variants=["standard", "separable"], width=0.125, batch_size=128, threads=1)
    base.update(kw)
    return CompareConfig(**base)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["compare", *TINY, "--out", str(out)])
    return rc, out


def test_cli_writes_every_output(cli_run, capsys):
    rc, out = cli_run
    assert rc == 0
    for name in ("run.json", "results.json", "metrics.csv", "accuracy.png", "loss.png", "costs.png", "report.html"):
        assert (out / name).is_file(), name
    for name in ("accuracy.png", "loss.png", "costs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert [r["variant"] for r in results["table"]] == ["standard", "separable"]
    assert results["data"]["train_size"] + results["data"]["val_size"] == 1797
    # the CLI's training process keeps freed memory (sepconv.keep_freed_memory), and says so
    expect_kept = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert results["environment"]["freed_memory_kept"] is expect_kept
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["epoch"]) for r in rows] == [("standard", "1"), ("separable", "1")]
    for row in rows:
        history = results["variants"][row["variant"]]["history"][0]
        assert float(row["val_acc"]) == pytest.approx(history["val_acc"])
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 3 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "src=\"http" not in html  # self-contained
    for row in results["table"]:
        assert 0.0 <= row["final_val_acc"] <= 1.0 and row["latency_ms"] > 0 and row["train_s_per_epoch"] > 0
        assert row["train_val_gap"] == pytest.approx(row["final_train_acc"] - row["final_val_acc"])
        assert f"{row['params']:,}" in html
    # the final weights are saved and load back through the zoo
    for variant in ("standard", "separable"):
        assert (out / "models" / f"{variant}.safetensors").is_file()
        assert load_checkpoint(out / "checkpoints" / f"{variant}.pt")["epoch"] == 1


def test_params_and_macs_equal_the_cost_module(cli_run):
    _, out = cli_run
    results = json.loads((out / "results.json").read_text())
    shape = tuple(results["data"]["input_shape"])
    kwargs = results["resolved"]["build_kwargs"]
    assert kwargs["width"] == 0.125
    for row in results["table"]:
        model = models.build_model("vgg_blocks", row["variant"], num_classes=10, in_channels=shape[0], **kwargs)
        prof = cost.profile(model, shape)
        assert row["params"] == prof.total_params
        assert row["macs"] == prof.total_macs
        assert row["params"] == sum(p.numel() for p in model.parameters())  # and it is the real model
    standard, separable = results["table"]
    assert separable["params"] < standard["params"] and separable["macs"] < standard["macs"]


def test_resume_continues_to_the_same_result(tmp_path):
    full = run_compare(tiny_config(), tmp_path / "full", log=lambda m: None, latency_min_run_time=0.01)
    part = run_compare(tiny_config(), tmp_path / "part", log=lambda m: None, latency_min_run_time=0.01,
                       stop_after_epoch=1)
    assert part["status"] == "stopped"
    resumed = run_compare(tiny_config(), tmp_path / "part", resume=True, log=lambda m: None, latency_min_run_time=0.01)
    assert resumed["status"] == "complete"
    for variant in ("standard", "separable"):
        a = [{k: h[k] for k in METRICS} for h in full["variants"][variant]["history"]]
        b = [{k: h[k] for k in METRICS} for h in resumed["variants"][variant]["history"]]
        assert a == b and len(a) == 2
        wa = load_checkpoint(tmp_path / "full" / "checkpoints" / f"{variant}.pt")["model"]
        wb = load_checkpoint(tmp_path / "part" / "checkpoints" / f"{variant}.pt")["model"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # variants share the seed: their data order is the same, so a resumed run is no different per variant
    assert resumed["variants"]["separable"]["resumed_from_epoch"] == 1


def test_resume_from_cli_uses_saved_settings_and_extends(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["compare", *TINY, "--variants", "separable", "--out", str(out)]) == 0
    assert main(["compare", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["width"] == 0.125 and results["config"]["epochs"] == 2
    assert [h["epoch"] for h in results["variants"]["separable"]["history"]] == [1, 2]
    capsys.readouterr()
    assert main(["compare", "--resume", "--out", str(out), "--lr", "0.5", "--quiet"]) == 2
    assert "lr=0.003" in capsys.readouterr().err


def one_line_error(capsys, argv, *fragments):
    rc = main(["compare", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("sepconv compare: error:") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_tune_training_records_the_engines(tmp_path):
    """--tune-training: each variant's engine choices are in results.json; it may change on --resume."""
    out = tmp_path / "tuned"
    assert main(["compare", *TINY, "--tune-training", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["tune_training"] is True
    separable = results["variants"]["separable"]["training_engines"]
    assert any(name.endswith("pointwise") for name in separable) and any(name.endswith("depthwise") for name in separable)
    assert set(separable.values()) <= {"eager", "gemm", "flip", "dwgrad", "fused"}
    assert main(["compare", "--out", str(out), "--resume", "--epochs", "2", "--no-tune-training", "--quiet",
                 "--latency-time", "0.02"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["config"]["tune_training"] is False and "training_engines" not in resumed["variants"]["separable"]
    with pytest.raises(ValueError, match="--tune-training must be true or false"):
        run_compare(tiny_config(tune_training="yes"), tmp_path / "bad")


def test_bad_names_and_numbers(tmp_path, capsys):
    one_line_error(capsys, ["--model", "resnet9000", "--out", str(tmp_path / "a")], "resnet9000", "vgg_blocks")
    one_line_error(capsys, ["--variants", "standard,octonion", "--out", str(tmp_path / "a")], "octonion", "separable")
    one_line_error(capsys, ["--epochs", "0", "--out", str(tmp_path / "a")], "epochs")
    one_line_error(capsys, ["--lr", "-1", "--out", str(tmp_path / "a")], "lr")
    one_line_error(capsys, ["--threads", "0", "--out", str(tmp_path / "a")], "--threads", "0")
    one_line_error(capsys, ["--device", "tpu", "--out", str(tmp_path / "a")], "--device", "tpu")
    if not torch.cuda.is_available():
        one_line_error(capsys, ["--amp", "--device", "cpu", "--out", str(tmp_path / "a")], "--amp", "CUDA")
        one_line_error(capsys, ["--device", "cuda", "--out", str(tmp_path / "a")], "CUDA is not available")
    one_line_error(capsys, ["--dataset", "cifar10", "--out", str(tmp_path / "a")], "--data-dir")
    one_line_error(capsys, ["--variants", "separable,converted", "--out", str(tmp_path / "a")], "converted", "standard")
    one_line_error(capsys, ["--variants", "standard,converted", "--finetune-epochs", "0", "--out", str(tmp_path / "a")],
                   "--finetune-epochs", "0")
    one_line_error(capsys, ["--variants", "standard,converted", "--finetune-lr", "0", "--out", str(tmp_path / "a")],
                   "--finetune-lr")
    one_line_error(capsys, ["--dataset", "svhn", "--out", str(tmp_path / "a")], "--dataset", "svhn", "digits")
    assert not (tmp_path / "a").exists()  # nothing written for bad input


def test_bad_data_directories(tmp_path, capsys):
    from PIL import Image

    out = str(tmp_path / "out")
    one_line_error(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"), "--out", out], "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "empty"), "--out", out], "holds no images")
    one_line_error(capsys, ["--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--out", out], "no CIFAR-10 batches")
    single = tmp_path / "single" / "cats"
    single.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(single / f"{i}.png")
    one_line_error(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "single"), "--out", out], "single class")
    (tmp_path / "single" / "dogs").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (0, i, 0)).save(tmp_path / "single" / "dogs" / f"{i}.png")
    (tmp_path / "single" / "dogs" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    one_line_error(capsys, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "single"), "--out", out], "bad.jpg")
    assert not (tmp_path / "out").exists()


def test_out_dir_guards(cli_run, tmp_path, capsys):
    _, previous = cli_run
    before = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    one_line_error(capsys, [*TINY, "--out", str(previous)], "previous sepconv run", "--resume", "--overwrite")
    one_line_error(capsys, [*TINY, "--out", str(previous), "--resume", "--overwrite"], "exclude")
    assert {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()} == before  # nothing lost

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    one_line_error(capsys, [*TINY, "--out", str(foreign), "--overwrite"], "not a sepconv run")
    one_line_error(capsys, [*TINY, "--out", str(foreign), "--resume"], "no sepconv run to resume")
    assert (foreign / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, [*TINY, "--out", str(tmp_path / "file")], "not a directory")


def test_overwrite_replaces_only_run_files(tmp_path, capsys):
    out = tmp_path / "o"
    args = [*TINY, "--variants", "standard", "--out", str(out)]
    assert main(["compare", *args]) == 0
    (out / "notes.txt").write_text("mine")
    stamp = json.loads((out / "run.json").read_text())["started"]
    assert main(["compare", *args, "--overwrite", "--seed", "1"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 1
    assert json.loads((out / "run.json").read_text())["started"] >= stamp


def test_ctrl_c_saves_and_exits_130(tmp_path, capsys, monkeypatch):
    import sepconv.train as train

    real_fit = train.fit
    calls = {"n": 0}

    def interrupting_fit(model, data, config, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second variant is interrupted before finishing its first epoch
            raise train.TrainingInterrupted(0, kw.get("checkpoint_path"))
        return real_fit(model, data, config, **kw)

    monkeypatch.setattr(train, "fit", interrupting_fit)
    out = tmp_path / "i"
    rc = main(["compare", *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and "--resume" in err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert len(results["variants"]["standard"]["history"]) == 1
    monkeypatch.setattr(train, "fit", real_fit)
    assert main(["compare", "--resume", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_format_table_aligns_and_marks_missing():
    rows = [{"variant": "standard", "params": 1234567, "macs": 10, "train_s_per_epoch": 0.5, "latency_ms": None,
             "best_val_acc": 0.9, "final_val_acc": 0.85, "train_val_gap": 0.1}]
    text = format_table(rows).splitlines()
    assert len(text) == 3 and "1,234,567" in text[2] and " - " in text[2] + " " and "+0.1000" in text[2]
    assert len(text[0]) == len(text[2])
    assert "converted" not in text[0]  # the optional column appears only when a row fills it
    rows.append(dict(rows[0], variant="converted", val_acc_converted=0.4596))
    text = format_table(rows).splitlines()
    assert text[0].endswith("val acc converted") and text[3].endswith("0.4596") and text[2].endswith("-")


def test_format_table_shows_the_optimized_latency_beside_eager():
    """What a deployment gets is in the table a user reads, right of the eager latency; without the
    measurement (--no-optimized-latency) the column is left out."""
    row = {"variant": "separable", "params": 10, "macs": 10, "train_s_per_epoch": 0.5, "latency_ms": 1.319,
           "best_val_acc": 0.9, "final_val_acc": 0.85, "train_val_gap": 0.1}
    assert "optimized" not in format_table([row])
    header, _, line = format_table([dict(row, latency_optimized_ms=0.251)]).splitlines()
    assert header.index("latency ms (b=1)") < header.index("optimized ms (b=1)")
    assert line.split()[4:6] == ["1.319", "0.251"]


def test_torchrun_two_cpu_processes(tmp_path):
    """The same command under torchrun: 2 gloo processes, one set of files, replicas identical."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sepconv", "compare", *TINY, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results:") == 1  # only rank 0 reports
    results = json.loads((out / "results.json").read_text())
    assert results["resolved"]["world_size"] == 2 and results["status"] == "complete"
    for variant in ("standard", "separable"):
        assert results["variants"][variant]["ranks_agree"] is True


def test_real_sigint_saves_checkpoint_and_resumes(tmp_path):
    """Ctrl-C (SIGINT) on a running `sepconv compare`: exit 130, a loadable checkpoint, --resume finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sig"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sepconv", "compare", *TINY, "--variants", "standard", "--epochs", "500", "--out", str(out)]
    # SIGINT with its default action in the child, as in an interactive terminal: a test run started as a
    # background job (`cmd &`) has SIGINT ignored, which the child would inherit (and Python then leaves alone)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = out / "checkpoints" / "standard.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    done = load_checkpoint(checkpoint)["epoch"]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert len(results["variants"]["standard"]["history"]) == done >= 1
    assert main(["compare", "--resume", "--out", str(out), "--epochs", str(done + 1), "--quiet"]) == 0
    assert load_checkpoint(checkpoint)["epoch"] == done + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_run(tmp_path):
    out = tmp_path / "gpu"
    assert main(["compare", *TINY, "--device", "cuda", "--amp", "--epochs", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["resolved"]["amp"] is True and results["resolved"]["device"].startswith("cuda")
    for row in results["table"]:
        assert row["final_val_acc"] > 0.1  # trained, not diverged, under autocast


def test_converted_variant_factorizes_the_trained_standard_network(tmp_path, capsys):
    """'converted' (listed first on purpose) runs after 'standard', starts from its trained weights factorized and
    calibrated, fine-tunes for --finetune-epochs, and saves a model that load_model rebuilds exactly."""
    from sepconv.models import load_model
    from sepconv.train import evaluate

    out = tmp_path / "conv"
    assert main(["compare", *TINY, "--variants", "converted,standard,separable", "--finetune-epochs", "2",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert [r["variant"] for r in results["table"]] == ["standard", "converted", "separable"]
    rows = {r["variant"]: r for r in results["table"]}
    entry = results["variants"]["converted"]
    assert len(entry["history"]) == 2 and len(results["variants"]["standard"]["history"]) == 1
    conversion = entry["conversion"]
    assert rows["converted"]["val_acc_converted"] == conversion["val_acc"]
    assert 0 <= conversion["val_acc_uncalibrated"] <= 1 and conversion["calibration_samples"] == 512
    assert [layer["name"] for layer in conversion["layers"]] == [f"features.{i}" for i in (0, 2, 5, 7, 10, 12)]
    assert all(layer["calibrated"] for layer in conversion["layers"])
    # same structure as the separable variant, so the same cost, and both equal to sepconv.cost's figures
    assert (rows["converted"]["params"], rows["converted"]["macs"]) == (rows["separable"]["params"], rows["separable"]["macs"])
    model, recipe = load_model(out / "models" / "converted.safetensors")
    assert recipe["variant"] == "standard" and recipe["conversion"] == {"to": "separable", "depth_multiplier": 1}
    assert sum(p.numel() for p in model.parameters()) == rows["converted"]["params"]
    from sepconv.data import load_dataset

    data = load_dataset("digits", None, val_fraction=0.2, split_seed=0)
    assert evaluate(model, data.val_x, data.val_y)[1] == pytest.approx(entry["history"][-1]["val_acc"])
    assert "val acc converted" in capsys.readouterr().out


def test_converted_variant_to_another_target(tmp_path, capsys):
    """--convert-to spatial: the trained standard network becomes spatially separable; its cost is profiled, and
    the saved model reloads as that structure."""
    from sepconv import SpatiallySeparableConv2d
    from sepconv.models import load_model

    out = tmp_path / "sp"
    assert main(["compare", *TINY, "--variants", "standard,converted", "--finetune-epochs", "1", "--convert-to", "spatial",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    row = {r["variant"]: r for r in results["table"]}["converted"]
    assert results["resolved"]["conversion"]["to"] == "spatial"
    model, recipe = load_model(out / "models" / "converted.safetensors")
    assert recipe["conversion"]["to"] == "spatial" and isinstance(model.features[0], SpatiallySeparableConv2d)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["macs"] == cost.profile(model, tuple(results["data"]["input_shape"])).total_macs
    one_line_error(capsys, ["--variants", "standard,converted", "--convert-to", "tucker", "--out", str(tmp_path / "b")],
                   "--convert-to", "tucker")


# ------------------------------------------------------------------ the split: one declaration, checks at entry

def test_every_config_field_is_an_option_and_round_trips():
    """CompareConfig and RunOptions are declared once: each field is a CLI option with its default in --help,
    and a config written to run.json reads back equal."""
    import argparse
    from dataclasses import fields

    from sepconv.experiments.cli import register
    from sepconv.experiments.config import RunOptions, config_from_record, record_of

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    parser = sub.choices["compare"]
    flags = {a.dest: a for a in parser._actions}
    for cls in (CompareConfig, RunOptions):
        for f in fields(cls):
            assert f.name in flags and "default:" in flags[f.name].help, f.name
    config = tiny_config(variants=["standard", "converted"], finetune_lr=0.01, threads=1)
    assert config_from_record(json.loads(json.dumps(record_of(config))), "x") == config
    import sepconv.experiments.compare as compare  # the old module still exports the public names

    assert compare.run_compare is run_compare and compare.DEFAULTS["epochs"] == CompareConfig().epochs


@pytest.mark.parametrize("argv, fragments", [
    (["--latency-time", "inf"], ["--latency-time", "inf"]),
    (["--latency-time", "nan"], ["--latency-time"]),
    (["--width", "inf"], ["--width", "inf"]),
    (["--width", "1e400"], ["--width"]),
    (["--width", "1000"], ["--width", "64"]),
    (["--lr", "nan"], ["--lr"]),
    (["--image-size", "0"], ["--image-size", "0"]),
    (["--image-size", "16"], ["--image-size", "does not apply", "digits"]),
    (["--val-fraction", "0.3", "--dataset", "cifar10", "--data-dir", "x"], ["--val-fraction", "cifar10"]),
    (["--finetune-lr", "inf", "--variants", "standard,converted"], ["--finetune-lr", "inf"]),
    (["--finetune-epochs", "3"], ["--finetune-epochs", "converted"]),
    (["--seed", "99999999999999999999999"], ["--seed", "99999999999999999999999"]),
    (["--seed", "-1"], ["--seed"]),
    (["--threads", "100000"], ["--threads"]),
    (["--device", "cuda:x"], ["--device", "cuda:x"]),
    (["--variants", ","], ["--variants"]),
    (["--model", ""], ["--model"]),
    (["--data-dir", "a" * 300, "--dataset", "imagefolder"], ["--data-dir", "255 bytes"]),
])
def test_every_value_is_checked_at_entry(tmp_path, capsys, argv, fragments):
    """Type, finiteness, bounds and applicability, refused in one line before anything is loaded or trained."""
    one_line_error(capsys, ["--out", str(tmp_path / "a"), *argv], *fragments)
    assert not (tmp_path / "a").exists()


def test_empty_out_is_refused(capsys):
    one_line_error(capsys, ["--out", ""], "--out", "non-empty")


def test_absurd_sizes_are_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    import sepconv.experiments.plan as plan

    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(2**30))
    err = one_line_error(capsys, ["--width", "16", "--out", str(tmp_path / "a")], "GiB", "parameters", "--width")
    assert re.search(r"about \d+\.\d GiB", err)
    monkeypatch.setattr(plan, "MAX_TRAINING_MACS", 10**9)
    one_line_error(capsys, ["--out", str(tmp_path / "a")], "multiply-accumulates", "--epochs")
    assert not (tmp_path / "a").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["compare", *TINY, "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dry run" in text and "standard" in text and "separable" in text and not out.exists()


# ------------------------------------------------------------------ resume: bad run.json and checkpoints

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "r"
    assert main(["compare", *TINY, "--variants", "standard", "--no-optimized-latency", "--out", str(out)]) == 0
    return out


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r["config"].update(variants="standard"), "--variants"),
    (lambda r: r["config"].update(bogus=1), "unknown key"),
    (lambda r: r["config"].pop("seed"), "seed"),
    (lambda r: r["config"].update(epochs="2"), "--epochs"),
    (lambda r: r["config"].update(width=float("inf")), "--width"),
    (lambda r: r.update(config=[1, 2]), "JSON object"),
    (lambda r: r.pop("config"), "no 'config'"),
])
def test_bad_run_json_is_one_line(one_epoch_run, tmp_path, capsys, edit, fragment):
    out = copy_run(one_epoch_run, tmp_path / "r")
    record = json.loads((out / "run.json").read_text())
    edit(record)
    (out / "run.json").write_text(json.dumps(record))
    one_line_error(capsys, ["--resume", "--out", str(out), "--quiet"], "run.json", fragment)


def test_unreadable_run_json_is_one_line(one_epoch_run, tmp_path, capsys):
    out = copy_run(one_epoch_run, tmp_path / "r")
    (out / "run.json").write_bytes(b"\xff\x00{not json")
    one_line_error(capsys, ["--resume", "--out", str(out), "--quiet"], "run.json")


def _edit_checkpoint(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]}), "model weights"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "model weights"),
    (lambda s: s.pop("order_rng"), "order_rng"),
    (lambda s: s.update(surprise=1), "surprise"),
    (lambda s: s.update(epoch="1"), "'epoch'"),
    (lambda s: s.update(history=[{"epoch": 1}]), "history"),
    (lambda s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8)), "random number generator"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)), "optimizer state"),
])
def test_bad_checkpoint_is_one_line(one_epoch_run, tmp_path, capsys, edit, fragment):
    out = copy_run(one_epoch_run, tmp_path / "r")
    _edit_checkpoint(out / "checkpoints" / "standard.pt", edit)
    err = one_line_error(capsys, ["--resume", "--out", str(out), "--epochs", "2", "--quiet"], "standard.pt", fragment)
    assert "weights_only=False" not in err


def test_checkpoint_with_code_is_refused(one_epoch_run, tmp_path, capsys):
    import pickle

    out = copy_run(one_epoch_run, tmp_path / "r")
    (out / "checkpoints" / "standard.pt").write_bytes(pickle.dumps(print))
    err = one_line_error(capsys, ["--resume", "--out", str(out), "--epochs", "2", "--quiet"], "cannot be read safely")
    assert "weights_only" not in err


# ------------------------------------------------------------------ locking, threads, optimized latency, tensorboard

def test_directory_lock_is_exclusive_and_breaks_when_stale(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from sepconv.utils.lock import LOCK_NAME, DirectoryBusy, DirectoryLock

    with DirectoryLock(tmp_path, "t") as lock:
        assert (tmp_path / LOCK_NAME).is_file() and lock.held
        code = ("import sys; from sepconv.utils.lock import DirectoryLock\n"
                "try:\n    DirectoryLock(sys.argv[1]).acquire()\nexcept ValueError as e:\n    print(e); sys.exit(3)")
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    assert not (tmp_path / LOCK_NAME).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0.0, "what": "t"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with DirectoryLock(tmp_path) as lock:  # the owner is gone: taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK_NAME).write_text(json.dumps(dict(stale, host="elsewhere.invalid")))
    with pytest.raises(DirectoryBusy, match="elsewhere.invalid"):
        DirectoryLock(tmp_path).acquire()


def test_concurrent_compare_on_one_out_is_refused(tmp_path, capsys):
    """A second compare on the --out a running one writes to fails with one line; after the first is killed
    (SIGKILL: no clean-up), its lock is stale and --resume takes over."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "busy"
    cmd = [sys.executable, "-m", "sepconv", "compare", *TINY, "--variants", "standard", "--epochs", "500",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "run.json").exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "timeout"
        one_line_error(capsys, ["--resume", "--out", str(out), "--quiet"], "in use by another", str(proc.pid))
        one_line_error(capsys, [*TINY, "--variants", "standard", "--overwrite", "--out", str(out)], "in use")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # the killed run may have checkpointed any number of epochs by then: resume to at least that many
    checkpoint = out / "checkpoints" / "standard.pt"
    done = load_checkpoint(checkpoint)["epoch"] if checkpoint.exists() else 0
    assert main(["compare", "--resume", "--out", str(out), "--epochs", str(max(1, done)), "--quiet",
                 "--latency-time", "0.02", "--no-optimized-latency"]) == 0


def test_threads_default_to_physical_cores_and_contention_warns_first(tmp_path, monkeypatch):
    import os

    from sepconv.experiments.measure import contention, physical_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert "--threads 1" in contention(2) and contention(1) is None
    lines: list[str] = []
    results = run_compare(tiny_config(epochs=1, variants=["standard"], threads=None), tmp_path / "t", log=lines.append,
                          latency_min_run_time=0.01, optimized_latency=False)
    assert results["measurement"]["torch_threads"] == cores
    if cores > 1:
        first_epoch = next(i for i, line in enumerate(lines) if "epoch 1/1" in line)
        warned = next(i for i, line in enumerate(lines) if "--threads 1" in line)
        assert warned < first_epoch
    assert results["measurement"]["load_average_before_training"] == [64.0, 64.0, 64.0]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_compare(tiny_config(variants=["standard"], threads=None), tmp_path / "u",
                       dry_run=True)["torch_threads"] == 1


def test_latency_is_measured_eager_and_optimized(cli_run):
    _, out = cli_run
    results = json.loads((out / "results.json").read_text())
    for row in results["table"]:
        assert row["latency_optimized_ms"] > 0 and row["latency_ms"] > 0
        optimized = results["variants"][row["variant"]]["optimized"]
        assert optimized["latency_ms"] == row["latency_optimized_ms"] and isinstance(optimized["engine"], str)
    assert "sepconv.optimize" in results["measurement"]["latency_optimized_ms"]


def test_tensorboard_scalars_per_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="the 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    assert main(["compare", *TINY, "--variants", "separable", "--epochs", "2", "--no-optimized-latency",
                 "--tensorboard", str(logdir), "--out", str(tmp_path / "o")]) == 0
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {"separable/val_acc", "separable/train_loss"} <= set(events.Tags()["scalars"])
    values = events.Scalars("separable/val_acc")
    assert [v.step for v in values] == [1, 2]
    history = json.loads((tmp_path / "o" / "results.json").read_text())["variants"]["separable"]["history"]
    assert [v.value for v in values] == pytest.approx([h["val_acc"] for h in history])


def test_quantize_adds_int8_schemes_to_results_and_report(tmp_path):
    pytest.importorskip("onnxruntime", reason="--quantize runs ONNX Runtime: pip install 'sepconv[onnx]'")
    pytest.importorskip("onnx", reason="--quantize exports to ONNX: pip install 'sepconv[onnx]'")
    results = run_compare(tiny_config(variants=["separable"]), tmp_path / "q", log=lambda m: None,
                          latency_min_run_time=0.01, optimized_latency=False, quantize=True)
    rows = results["variants"]["separable"]["int8"]
    assert [r["scheme"] for r in rows] == ["float", "per-tensor", "per-channel", "per-tensor+equalize+bias-correction"]
    float_row = rows[0]
    assert float_row["agreement"] == 1.0 and float_row["latency_ratio"] == 1.0
    # the float row scores the trained network itself: its accuracy is the run's final validation accuracy
    assert float_row["accuracy"] == pytest.approx(results["variants"]["separable"]["history"][-1]["val_acc"], abs=1e-6)
    for r in rows:
        assert r["size_ratio"] == pytest.approx(r["model_bytes"] / float_row["model_bytes"])
        assert 0 <= r["agreement"] <= 1 and r["latency_ms"] > 0
    assert "report" not in float_row
    saved = json.loads((tmp_path / "q" / "results.json").read_text())
    assert saved["variants"]["separable"]["int8"][1]["scheme"] == "per-tensor"
    page = (tmp_path / "q" / "report.html").read_text()
    assert "<h2>int8</h2>" in page and "per-tensor+equalize+bias-correction" in page


def test_without_quantize_the_report_has_no_int8_section(tmp_path):
    run_compare(tiny_config(variants=["separable"]), tmp_path / "p", log=lambda m: None, latency_min_run_time=0.01,
                optimized_latency=False)
    assert "<h2>int8</h2>" not in (tmp_path / "p" / "report.html").read_text()
