"""A user's own model, end to end from the CLI: referenced by file or module, with its trained weights, profiled,
converted with calibration, fine-tuned and optimized; and every reference form, weights format and bad reference."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from sepconv.cli import main

pytest.importorskip("safetensors", reason="model files are safetensors (the experiments extra)")
pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (the experiments extra)")

USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(x + self.bn2(self.conv2(y)))  # the residual addition


    class TinyResNet(nn.Module):
        def __init__(self, num_classes=10, width=16, in_channels=1):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU())
            self.block = Block(width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(self.block(self.stem(x)).mean((2, 3)))


    def tiny_resnet(**kwargs):
        return TinyResNet(**kwargs)


    def not_a_model():
        return 42


    NOT_CALLABLE = 3
''')


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The model file (outside the repository), trained briefly on digits, its weights in three formats."""
    from safetensors.torch import save_file

    from sepconv.data import load_digits
    from sepconv.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("user")
    (root / "my_models.py").write_text(USER_MODEL)
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_models_for_training", root / "my_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    data = load_digits()
    model = fit(module.tiny_resnet(), data, TrainConfig(epochs=4, batch_size=32, lr=3e-3)).model.cpu().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "w.safetensors")
    torch.save(state, root / "w.pt")
    torch.save({"model": state, "epoch": 4}, root / "ckpt.pth")  # a training checkpoint
    torch.save({f"module.{k}": v for k, v in state.items()}, root / "ddp.pt")  # saved from DistributedDataParallel
    return root, module, model, data


def test_profile_convert_finetune_optimize_a_user_model_from_the_cli(user, capsys):
    from safetensors.torch import load_file
    from torch.utils.flop_counter import FlopCounterMode

    from sepconv.factorize import convert

    root, module, trained, data = user
    ref = f"{root / 'my_models.py'}:tiny_resnet"
    code, out, err = run(capsys, "profile", ref, "--weights", root / "w.pt", "--input", "1x8x8", "--format", "json")
    assert code == 0, err
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        trained(torch.zeros(1, 1, 8, 8))
    assert json.loads(out)["total_macs"] * 2 == counter.get_total_flops()

    out_file = root / "converted.safetensors"
    code, out, err = run(capsys, "convert", ref, out_file, "--weights", root / "w.safetensors", "--data", "digits",
                         "--calibrate", "--samples", "256", "--finetune-epochs", "2", "--batch-size", "64",
                         "--finetune-lr", "1e-3")
    assert code == 0, err
    assert "held-out, after conversion" in out and "the same architecture from scratch" in out
    # plain PyTorch: the converted architecture, then load_state_dict of the file
    arch, _ = convert(module.tiny_resnet(), init="fresh")
    arch.load_state_dict(load_file(out_file), strict=True)
    report = json.loads((root / "converted.report.json").read_text())
    assert [r["name"] for r in report["layers"]] == ["stem.0", "block.conv1", "block.conv2"]
    assert "After --calibrate" in report["note"] and (root / "converted.report.html").stat().st_size > 0
    # whole-network figures, recomputed independently on the same held-out images
    x, y = data.val_x[:2000], data.val_y[:2000]
    with torch.no_grad():
        ref_out, new_out = trained.eval()(x).numpy(), arch.eval()(x).numpy()
    figures = report["network_after_finetune"]
    import numpy as np

    assert figures["output_error"] == pytest.approx(np.linalg.norm(new_out - ref_out) / np.linalg.norm(ref_out),
                                                    rel=1e-4)
    assert figures["top1_agreement"] == pytest.approx(np.mean(new_out.argmax(1) == ref_out.argmax(1)))
    assert figures["accuracy_converted"] == pytest.approx(np.mean(new_out.argmax(1) == y.numpy()))
    assert figures["accuracy_original"] == pytest.approx(np.mean(ref_out.argmax(1) == y.numpy()))
    assert report["network"]["accuracy_original"] > 0.5  # trained: the comparison is not between random networks
    tune = report["finetune"]
    assert tune["accuracy_after"] == pytest.approx(figures["accuracy_converted"])
    assert 0 <= tune["scratch_accuracy"] <= 1 and tune["epochs"] == 2
    assert tune["temperature"] == 1.0 and "temperature 1" in tune["method"]  # soft targets by default

    # the converted file's metadata says how to rebuild it: optimize and profile take it as --weights
    code, out, err = run(capsys, "optimize", ref, "--weights", out_file, "--input", "1x8x8", "--rounds", "1")
    assert code == 0, err
    assert "kept:" in out
    code, out, err = run(capsys, "profile", ref, "--weights", out_file, "--input", "1x8x8")
    assert code == 0 and "block.conv1.depthwise" in out
    code, out, err = run(capsys, "convert", ref, root / "again.safetensors", "--weights", out_file)
    assert code == 2 and "already converted" in err

    # the top-1 method, and a temperature the CLI refuses
    hard_file = root / "hard.safetensors"
    code, out, err = run(capsys, "convert", ref, hard_file, "--weights", root / "w.safetensors", "--data", "digits",
                         "--finetune-epochs", "1", "--hard-labels", "--no-scratch")
    assert code == 0, err
    tune = json.loads((root / "hard.report.json").read_text())["finetune"]
    assert tune["temperature"] is None and tune["method"].startswith("hard-label")
    for extra, message in ((["--finetune-epochs", "1", "--distill-temperature", "0"], "must be a number in (0, 1000]"),
                           (["--hard-labels"], "--hard-labels applies to fine-tuning"),
                           (["--distill-temperature", "4"], "--distill-temperature applies to fine-tuning"),
                           (["--finetune-epochs", "1", "--hard-labels", "--distill-temperature", "4"], "one of them")):
        code, out, err = run(capsys, "convert", ref, root / "t0.safetensors", "--weights", root / "w.safetensors",
                             "--data", "digits", *extra)
        assert code == 2 and message in err and not (root / "t0.safetensors").exists(), (extra, err)


def test_each_reference_form_and_weights_format(user, capsys, monkeypatch):
    from sepconv.models import save_model
    from sepconv.models.reference import resolve_model

    root, module, trained, _ = user
    monkeypatch.syspath_prepend(str(root))
    expected = json.dumps({k: v.tolist() for k, v in trained.state_dict().items()})
    for ref in (f"{root / 'my_models.py'}:tiny_resnet", "my_models:tiny_resnet", "my_models:TinyResNet"):
        for weights in ("w.safetensors", "w.pt", "ckpt.pth", "ddp.pt"):
            code, out, err = run(capsys, "profile", ref, "--weights", root / weights, "--input", "1x8x8")
            assert code == 0 and "block.conv2" in out, (ref, weights, err)
    from sepconv.models.reference import load_weights

    for weights in ("w.safetensors", "w.pt", "ckpt.pth", "ddp.pt"):
        loaded = load_weights(module.tiny_resnet(), root / weights)
        assert json.dumps({k: v.tolist() for k, v in loaded.state_dict().items()}) == expected
    # factory keyword arguments as JSON
    code, out, err = run(capsys, "profile", "my_models:tiny_resnet", "--kwargs", '{"width": 4}', "--input", "1x8x8",
                         "--format", "json")
    assert code == 0 and json.loads(out)["rows"][0]["output_shape"] == [1, 4, 8, 8]
    # a zoo name, and a sepconv model file (its recipe rebuilds it from the zoo)
    zoo, source = resolve_model("vgg_blocks", variant="separable", kwargs={"width": 0.25})
    assert source.kind == "zoo" and source.default_input == (3, 32, 32)
    save_model(root / "zoo.safetensors", zoo, "vgg_blocks", "separable", width=0.25)
    code, out, err = run(capsys, "profile", root / "zoo.safetensors")
    assert code == 0 and "features.0.depthwise" in out and "input 1x3x32x32" in out


def test_hub_references_when_installed(capsys):
    pytest.importorskip("torchvision", reason="torchvision references are optional (an extra)")
    code, out, err = run(capsys, "profile", "torchvision:resnet18", "--format", "json")
    assert code == 0 and json.loads(out)["total_params"] == 11689512


@pytest.mark.parametrize("ref, extra, message", [
    ("no_such_module_xyz:factory", [], "cannot import 'no_such_module_xyz'"),
    ("{root}/my_models.py:NOT_CALLABLE", [], "names a int, not a callable"),
    ("{root}/my_models.py:not_a_model", [], "returned a int, not a torch.nn.Module"),
    ("{root}/my_models.py:missing", [], "has no attribute 'missing'"),
    ("{root}/nowhere.py:f", [], "does not exist"),
    ("{root}/broken.py:f", [], "importing"),
    ("{root}/my_models.py:tiny_resnet", ["--kwargs", "[1, 2]"], "--kwargs must be a JSON object"),
    ("{root}/my_models.py:tiny_resnet", ["--kwargs", '{"depth": 3}'], "unexpected keyword argument 'depth'"),
    ("{root}/my_models.py:tiny_resnet", ["--weights", "{root}/other.pt", "--input", "1x8x8"],
     "do not fit the model: 1 shape mismatch: fc.weight (file 3x16, model 10x16)"),
    ("{root}/my_models.py:tiny_resnet", ["--weights", "{root}/pickle.pt", "--input", "1x8x8"], "holds Python objects"),
    ("{root}/my_models.py:tiny_resnet", ["--weights", "{root}/junk.safetensors", "--input", "1x8x8"],
     "not a readable safetensors"),
    ("{root}/my_models.py:tiny_resnet", ["--input", "3x8x8"], "has 3 channels, but the model's first convolution "
                                                              "takes 1"),
    ("{root}/my_models.py:tiny_resnet", [], "its input size is not known; give --input"),
    ("bogus", [], "unknown model 'bogus'"),
    (":f", [], "must be package.module:factory"),
])
def test_bad_references_exit_2_with_one_line(user, capsys, ref, extra, message):
    root, module, trained, _ = user
    (root / "broken.py").write_text("def f(:\n")
    (root / "junk.safetensors").write_bytes(b"\xff" * 64)
    torch.save({k: (torch.zeros(3, 16) if k == "fc.weight" else v) for k, v in trained.state_dict().items()},
               root / "other.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, root / "pickle.pt")  # a pickled module, not a state_dict
    args = ["profile", ref.replace("{root}", str(root)), *[a.replace("{root}", str(root)) for a in extra]]
    code, out, err = run(capsys, *args)
    assert code == 2, (args, out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "weights_only=False" not in err
