"""Factorizations: exact where they must be, optimal against random competitors, honest errors."""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
import sepconv.cost
from sepconv.factorize import (
    blueprint_error_curve,
    blueprint_factorize,
    convert,
    cp_factorize,
    depth_multiplier_for,
    depthwise_error_curve,
    depthwise_factorize,
    is_separable,
    low_rank,
    pairwise_spatial,
    separate,
    spatial_factorize,
)
from sepconv.models import build_model, list_models

D = torch.float64


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_sobel_separates_into_the_seeds_vectors():
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=D)
    col, row, err = separate(sobel)
    assert is_separable(sobel) and err < 1e-12
    torch.testing.assert_close(torch.outer(col, row), sobel)
    # up to scale: col is proportional to [1, 2, 1] and row to [-1, 0, 1]
    torch.testing.assert_close(col / col[0], torch.tensor([1.0, 2, 1], dtype=D))
    torch.testing.assert_close(row / row[2], torch.tensor([-1.0, 0, 1], dtype=D))
    assert not is_separable(torch.eye(3, dtype=D))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**16))
def test_low_rank_is_exact_for_rank_r_kernels_and_optimal_otherwise(kh, kw, r, seed):
    g = torch.Generator().manual_seed(seed)
    exact = torch.randn(kh, r, generator=g, dtype=D) @ torch.randn(r, kw, generator=g, dtype=D)
    cols, rows, err = low_rank(exact, r)
    assert err < 1e-9 and rel(cols @ rows, exact) < 1e-9
    k = torch.randn(kh, kw, generator=g, dtype=D)
    cols, rows, err = low_rank(k, r)
    assert abs(rel(cols @ rows, k) - err) < 1e-9
    for _ in range(20):  # no random rank-r pair does better (Eckart-Young)
        a, b = torch.randn(kh, r, generator=g, dtype=D), torch.randn(r, kw, generator=g, dtype=D)
        scale = float((a @ b * k).sum() / (a @ b).pow(2).sum())  # best scale of the random pair
        assert rel(scale * a @ b, k) >= err - 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from([(3,), (3, 3), (2, 3), (2, 2, 2)]), st.integers(1, 4),
       st.integers(0, 2**16))
def test_depthwise_factorize_rank_condition_and_optimality(n, c, k, m, seed):
    g = torch.Generator().manual_seed(seed)
    kvol = math.prod(k)
    # A weight whose every input-channel slice W[:, c] has rank <= m is exactly depthwise separable.
    built = torch.einsum("cnm,cmk->nck", torch.randn(c, n, m, generator=g, dtype=D), torch.randn(c, m, kvol, generator=g, dtype=D))
    built = built.reshape(n, c, *k)
    dw, pw, err = depthwise_factorize(built, m)
    layer = sepconv.layers.separable.__dict__[f"SeparableConv{len(k)}d"](c, n, k, depth_multiplier=m, bias=False, dtype=D)
    with torch.no_grad():
        layer.depthwise.weight.copy_(dw)
        layer.pointwise.weight.copy_(pw)
    assert err < 1e-9 and rel(layer.to_dense_weight(), built) < 1e-9
    # Any weight: the reported error is the true one, and it is 0 once m >= min(n, prod(k)).
    w = torch.randn(n, c, *k, generator=g, dtype=D)
    dw, pw, err = depthwise_factorize(w, m)
    with torch.no_grad():
        layer.depthwise.weight.copy_(dw)
        layer.pointwise.weight.copy_(pw)
    assert abs(rel(layer.to_dense_weight(), w) - err) < 1e-9
    if m >= min(n, kvol):
        assert err < 1e-9
    for _ in range(10):  # no random DW/PW pair (optimally scaled) beats the SVD solution
        with torch.no_grad():
            layer.depthwise.weight.normal_(generator=g)
            layer.pointwise.weight.normal_(generator=g)
        approx = layer.to_dense_weight().detach()
        scale = float((approx * w).sum() / approx.pow(2).sum())
        assert rel(scale * approx, w) >= err - 1e-12


def test_the_seed_question_a_standard_conv_that_is_not_depthwise_separable():
    """Seed 000's comment thread: not every standard convolution is depthwise separable (with M = 1).

    Two output channels reading one input channel through two different 1D kernels: W[:, 0] is the
    2 x 2 identity, which has rank 2, so no single depthwise filter times pointwise weights gives it.
    """
    w = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=D)  # (N=2, C=1, k=2)
    _, _, err = depthwise_factorize(w, 1)
    assert err == pytest.approx(math.sqrt(0.5))  # the best M = 1 approximation is off by 71%
    assert depthwise_factorize(w, 2)[2] < 1e-12  # M = 2 = rank(W[:, 0]) is exact
    assert depth_multiplier_for(w, 0.0) == 2


def test_error_curve_and_multiplier_for_a_target():
    w = torch.randn(16, 4, 3, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    curve = depthwise_error_curve(w)
    assert len(curve) == 9 and curve[-1] < 1e-12 and all(a >= b for a, b in zip(curve, curve[1:]))
    m = depth_multiplier_for(w, 0.5)
    assert curve[m - 1] <= 0.5 < (curve[m - 2] if m > 1 else 1.0)
    with pytest.raises(ValueError, match="max_error must be a number in \\[0, 1\\), got 1.5"):
        depth_multiplier_for(w, 1.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**16))
def test_spatial_factorize_matches_the_layer(n, c, kh, kw, r, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, kh, kw, generator=g, dtype=D)
    v, h, err = spatial_factorize(w, r)
    layer = sepconv.SpatiallySeparableConv2d(c, n, (kh, kw), rank=r, bias=False, dtype=D)
    with torch.no_grad():
        layer.vertical.weight.copy_(v)
        layer.horizontal.weight.copy_(h)
    assert abs(rel(layer.to_dense_weight(), w) - err) < 1e-9
    if r >= min(c * kh, n * kw):
        assert err < 1e-9
    pair = pairwise_spatial(w, 1)
    assert pair.ranks.shape == (n, c) and 0 <= pair.error <= 1


def test_output_error_matches_weight_error_on_white_noise():
    """For i.i.d. input and no padding, E||dW * x||^2 = ||dW||^2 E||x||^2 per position: output error ~ weight error."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False).double()
    new, report = convert(nn.Sequential(conv), sample_input=torch.randn(4, 8, 64, 64, dtype=D))
    row = report.layers[0]
    assert row.output_error == pytest.approx(row.weight_error, rel=0.05)


def test_convert_is_exact_for_separable_weights_and_keeps_geometry():
    torch.manual_seed(0)
    source = sepconv.SeparableConv2d(4, 6, 3, stride=2, padding="same", bias=True, dtype=D)
    conv = source.to_conv()  # a dense conv whose kernel is exactly depthwise separable
    assert isinstance(conv, nn.Sequential)  # 'same' with stride 2: a Pad module, then the conv
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect").double(), conv, nn.ReLU())
    x = torch.randn(2, 4, 11, 9, dtype=D)
    with torch.no_grad():
        model[0].weight.copy_(sepconv.SeparableConv2d(4, 4, 3, dtype=D).to_dense_weight())
    new, report = convert(model, sample_input=x)
    assert {r.name for r in report.layers} == {"0", "1.1"}
    assert all(r.weight_error < 1e-9 and r.output_error < 1e-9 for r in report.layers)
    torch.testing.assert_close(new(x), model(x))
    assert isinstance(new[0], sepconv.SeparableConv2d) and new[0].padding_mode == "reflect"
    assert isinstance(model[0], nn.Conv2d)  # the original is untouched


@pytest.mark.parametrize("name", sorted(list_models()))
def test_convert_keeps_output_shapes_for_every_zoo_model(name):
    info = list_models()[name]
    variant = "standard" if "standard" in info.variants else info.variants[0]
    kwargs = {"image_size": 32} if "image_size" in info.options else {"alpha": 0.25} if "alpha" in info.options else {}
    model = build_model(name, variant, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, 80, 80) if name == "xception" else torch.randn(2, 3, 32, 32)
    for to in ("separable", "spatial", "blueprint"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new, report = convert(model, to=to, sample_input=x)
        assert new.eval()(x).shape == (2, 5)
        converted = {r.name for r in report.layers}
        for layer_name, module in model.named_modules():  # unconverted convolutions are unchanged
            if isinstance(module, nn.Conv2d) and layer_name not in converted and not any(
                    layer_name.startswith(c + ".") for c in converted):
                assert torch.equal(new.get_submodule(layer_name).weight, module.weight)
        assert report.params_after < report.params_before or not report.layers


def test_convert_filters_and_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 5))
    new, report = convert(model, include=r"^[03]$", exclude="3")
    assert [r.name for r in report.layers] == ["0"]
    assert "min_kernel" in report.skipped["1"] and "groups=8" in report.skipped["2"] and "exclude" in report.skipped["3"]
    with pytest.warns(UserWarning, match="no convolution is eligible"):
        same, report = convert(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    assert report.layers == () and isinstance(same[0], nn.Conv2d)
    bad = nn.Sequential(nn.Conv2d(3, 3, 3))
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="convolution '0' has NaN or inf weights"):
        convert(bad)
    for kwargs, match in [(dict(to="tucker"), "to must be one of"), (dict(depth_multiplier=0), "depth_multiplier must be"),
                          (dict(rank=0), "rank must be a positive int"), (dict(include="("), "not a valid regular"),
                          (dict(init="zeros"), "init must be")]:
        with pytest.raises(ValueError, match=match):
            convert(model, **kwargs)
    with pytest.raises(ValueError, match="kernel must be a 2D tensor"):
        separate(torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        low_rank(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        low_rank(torch.eye(3), 0)


def test_gradients_flow_through_converted_layers():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).double()
    new, _ = convert(model)
    x = torch.randn(1, 2, 5, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: new(t), (x,))
    assert F.mse_loss(new(x), torch.zeros(1, 3, 5, 5, dtype=D)).requires_grad


def test_convert_cli_round_trip(tmp_path, capsys):
    from sepconv.cli import main
    from sepconv.models import load_model, save_model

    torch.manual_seed(0)
    model = build_model("vgg_blocks", "standard", in_channels=1, image_size=8, width=0.25).eval()
    src, dst = tmp_path / "std.safetensors", tmp_path / "sep.safetensors"
    save_model(src, model, "vgg_blocks", "standard", in_channels=1, image_size=8, width=0.25)
    assert main(["convert", str(src), str(dst), "--depth-multiplier", "9", "--input", "1x8x8"]) == 0
    out = capsys.readouterr().out
    assert "converted 6 convolution(s)" in out and "features.0" in out
    converted, recipe = load_model(dst)
    assert recipe["conversion"]["depth_multiplier"] == 9
    assert isinstance(converted.features[0], sepconv.SeparableConv2d)
    x = torch.randn(3, 1, 8, 8)
    # M = 9 >= min(C_out, 3x3): every layer is exact, so the converted network computes the same function
    torch.testing.assert_close(converted.eval()(x), model(x), rtol=1e-4, atol=1e-5)
    assert main(["convert", str(src), str(dst)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(dst), str(tmp_path / "again.safetensors")]) == 2
    assert "already converted" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the other orders round-trip too: the recipe rebuilds the structure, the file holds the factorized weights
    kinds = [("blueprint", sepconv.BlueprintSeparableConv2d)]
    if importlib.util.find_spec("tensorly") is not None:
        kinds.append(("cp", sepconv.CPConv2d))
    for to, cls in kinds:
        out_path = tmp_path / f"{to}.safetensors"
        assert main(["convert", str(src), str(out_path), "--to", to]) == 0
        rebuilt, recipe = load_model(out_path)
        assert recipe["conversion"]["to"] == to and isinstance(rebuilt.features[0], cls)
        direct, _ = convert(model, to=to)
        torch.testing.assert_close(rebuilt.eval()(x), direct.eval()(x))


@pytest.mark.parametrize("extra, message", [
    (["--depth-multiplier", "100000000"], "would need about"),
    (["--rank", "3"], "--rank applies to --to spatial or cp"),
    (["--input", ""], "--input must be sizes joined by 'x'"),
    (["--input", "8x8x1"], "is ambiguous"),
    (["--calibrate"], "need --data"),
    (["--finetune-lr", "inf"], "--finetune-lr must be a finite number"),
    (["--seed", "99999999999999999999999"], "--seed must be in"),
    (["--data", "digits", "--input", "3x8x8"], "does not match the --data inputs, 1x8x8"),
])
def test_convert_cli_refuses_bad_options_before_work(tmp_path, capsys, extra, message, monkeypatch):
    from sepconv.cli import main
    from sepconv.models import save_model

    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(8 << 30))
    model = build_model("vgg_blocks", "standard", in_channels=1, image_size=8, width=0.25)
    save_model(tmp_path / "m.safetensors", model, "vgg_blocks", "standard", in_channels=1, image_size=8, width=0.25)
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o.safetensors"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_refuses_nan_biases_and_nan_calibration_samples():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with pytest.raises(ValueError, match="convolution '2' has NaN or inf bias"):
        convert(model)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    x = torch.randn(4, 3, 6, 6)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="sample_input holds NaN or inf"):
        convert(model, sample_input=x, calibrate=True)
    from sepconv.factorize import calibrate

    plain, _ = convert(model)
    with pytest.raises(ValueError, match="sample_input holds NaN or inf"):
        calibrate(model, plain, x)


def _stage_input_and_target(original, new, name, x):
    """The converted network's own input to layer ``name``'s last stage, and the original layer's output."""
    got = {}
    last = new.get_submodule(name)
    last = (last.horizontal if isinstance(last, sepconv.SpatiallySeparableConv2d)
            else last.depthwise if isinstance(last, sepconv.BlueprintSeparableConv2d) else last.pointwise)

    def grab_input(module, args):
        got.setdefault("z", args[0].detach().clone())

    def grab_output(module, args, output):
        got.setdefault("y", output.detach().clone())

    h1 = last.register_forward_pre_hook(grab_input)
    h2 = original.get_submodule(name).register_forward_hook(grab_output)
    with torch.no_grad():
        new(x), original(x)
    h1.remove(), h2.remove()
    return got["z"], got["y"]


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 3), ridge=st.sampled_from([0.0, 1e-3, 1e-1]),
       to=st.sampled_from(["separable", "spatial", "blueprint"]), seed=st.integers(0, 2**16))
def test_calibration_never_fits_worse_than_the_factorization(m, ridge, to, seed):
    """Calibrated last-stage weights minimize the layer's error on the converted network's own activations,
    so on the sample batch they are at least as good as the factorized weights fed the same activations.
    (The ReLU here is functional, so the fit is plain least squares on the conv output.)"""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), FunctionalReLU(), nn.Conv2d(6, 5, 3, stride=2),
                          FunctionalReLU()).double().eval()
    x = torch.randn(6, 3, 12, 12, dtype=D)
    plain, _ = convert(model, depth_multiplier=m, rank=m, to=to)
    calibrated, report = convert(model, depth_multiplier=m, rank=m, to=to, sample_input=x, calibrate=True, ridge=ridge)
    assert all(r.calibrated and r.calibration_target == "output" for r in report.layers)
    for name in ("0", "2"):
        z, y = _stage_input_and_target(model, calibrated, name, x)
        stage = lambda net: getattr(net.get_submodule(name),  # noqa: E731
                                    {"spatial": "horizontal", "blueprint": "depthwise"}.get(to, "pointwise"))
        with torch.no_grad():
            err_cal = float((stage(calibrated)(z) - y).norm())
            err_plain = float((stage(plain)(z) - y).norm())
        assert err_cal <= err_plain * (1 + 1e-9) + 1e-9


class FunctionalReLU(nn.Module):
    """The same function as nn.ReLU, but not an nn.ReLU: calibration does not see it."""

    def forward(self, x):
        return F.relu(x)


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 2), to=st.sampled_from(["separable", "spatial"]), seed=st.integers(0, 2**16))
def test_relu_aware_calibration_fits_what_the_relu_passes_on(m, to, seed):
    """A conv feeding an nn.ReLU is fitted for ||relu(y_hat) - relu(y)||: starting from the least-squares
    solution, the majorization steps can only lower that error (ridge 0 here, so the objective is just it)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    seen = nn.Sequential(conv, nn.ReLU()).eval()
    unseen = nn.Sequential(copy.deepcopy(conv), FunctionalReLU()).eval()
    x = torch.randn(5, 4, 9, 9, dtype=D)
    relu_fit, report = convert(seen, depth_multiplier=m, rank=m, to=to, sample_input=x, calibrate=True, ridge=0.0)
    ls_fit, ls_report = convert(unseen, depth_multiplier=m, rank=m, to=to, sample_input=x, calibrate=True, ridge=0.0)
    assert report.layers[0].calibration_target == "relu" and ls_report.layers[0].calibration_target == "output"
    with torch.no_grad():
        target = F.relu(conv(x))
        err_relu_fit = float((relu_fit(x) - target).norm())
        err_ls_fit = float((ls_fit(x) - target).norm())
    assert err_relu_fit <= err_ls_fit * (1 + 1e-9) + 1e-12


def test_calibration_keeps_exact_conversions_exact_despite_inplace_relu():
    """M = k^2 is exact; calibration must not move it (a hook that replaced the conv's output would let the
    in-place ReLU rewrite the targets: this caught that bug)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 3, padding=1),
                          nn.ReLU(inplace=True)).double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=D)
    new, report = convert(model, depth_multiplier=9, sample_input=x, calibrate=True)
    assert all(r.weight_error < 1e-6 and r.output_error < 1e-6 for r in report.layers)
    torch.testing.assert_close(new(x), model(x))


def test_calibration_recovers_a_trained_network():
    """On digits, a network trained for a few epochs and converted at M=1 keeps more accuracy calibrated than not."""
    pytest.importorskip("sklearn")
    from sepconv.data import load_dataset
    from sepconv.train import TrainConfig, evaluate, fit

    data = load_dataset("digits", None, val_fraction=0.2, split_seed=0)
    torch.manual_seed(0)
    model = build_model("vgg_blocks", "standard", num_classes=10, in_channels=1, image_size=8, width=0.25)
    model = fit(model, data, TrainConfig(epochs=3, batch_size=64, lr=3e-3)).model.eval()
    base = evaluate(model, data.val_x, data.val_y)[1]
    plain, _ = convert(model, depth_multiplier=2)
    calibrated, _ = convert(model, depth_multiplier=2, sample_input=data.train_x[:256], calibrate=True)
    acc_plain, acc_cal = evaluate(plain, data.val_x, data.val_y)[1], evaluate(calibrated, data.val_x, data.val_y)[1]
    assert base > 0.8
    assert acc_cal > acc_plain + 0.05, (base, acc_plain, acc_cal)


def test_calibration_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="calibrate=True needs sample_input"):
        convert(model, calibrate=True)
    with pytest.raises(ValueError, match="calibrate=True needs sample_input"):
        convert(model, calibrate=True, sample_input=torch.randn(1, 3, 5, 5), init="fresh")
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        convert(model, ridge=-1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from([(3,), (3, 3), (2, 3), (2, 2, 2)]), st.integers(1, 4),
       st.integers(0, 2**16))
def test_blueprint_factorize_rank_condition_and_optimality(n, c, k, m, seed):
    """Pointwise-then-depthwise: exact iff every output-channel slice W[n] (C x prod(k)) has rank <= M; SVD optimal."""
    g = torch.Generator().manual_seed(seed)
    kvol = math.prod(k)
    built = torch.einsum("nmc,nmk->nck", torch.randn(n, m, c, generator=g, dtype=D), torch.randn(n, m, kvol, generator=g, dtype=D))
    built = built.reshape(n, c, *k)
    layer = getattr(sepconv, f"BlueprintSeparableConv{len(k)}d")(c, n, k, depth_multiplier=m, bias=False, dtype=D)

    def load(pw, dw):
        with torch.no_grad():
            layer.pointwise.weight.copy_(pw)
            layer.depthwise.weight.copy_(dw)

    pw, dw, err = blueprint_factorize(built, m)
    load(pw, dw)
    assert err < 1e-9 and rel(layer.to_dense_weight(), built) < 1e-9
    w = torch.randn(n, c, *k, generator=g, dtype=D)
    pw, dw, err = blueprint_factorize(w, m)
    load(pw, dw)
    assert abs(rel(layer.to_dense_weight(), w) - err) < 1e-9
    assert err == pytest.approx(blueprint_error_curve(w)[min(m, c, kvol) - 1], abs=1e-12)
    if m >= min(c, kvol):
        assert err < 1e-9
    for _ in range(10):  # no random pair (optimally scaled) beats the SVD solution
        with torch.no_grad():
            layer.pointwise.weight.normal_(generator=g)
            layer.depthwise.weight.normal_(generator=g)
        approx = layer.to_dense_weight().detach()
        scale = float((approx * w).sum() / approx.pow(2).sum())
        assert rel(scale * approx, w) >= err - 1e-12


def test_the_two_orders_constrain_different_slices():
    """One input channel, two outputs with different filters: depthwise-first needs M=2, pointwise-first is exact
    with M=1 (each output channel has its own filter); transposed, it is the other way round."""
    w = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=D)  # (N=2, C=1, k=2)
    assert depthwise_factorize(w, 1)[2] == pytest.approx(math.sqrt(0.5))
    assert blueprint_factorize(w, 1)[2] < 1e-12
    wt = w.transpose(0, 1).contiguous()  # (N=1, C=2, k=2): one output mixing two differently filtered inputs
    assert depthwise_factorize(wt, 1)[2] < 1e-12
    assert blueprint_factorize(wt, 1)[2] == pytest.approx(math.sqrt(0.5))


def test_cp_factorize_recovers_a_cp_kernel_and_reports_its_error():
    pytest.importorskip("tensorly", reason="tensorly is not installed (pip install 'sepconv[tensorly]')")
    g = torch.Generator().manual_seed(0)
    a, b, v, h = (torch.randn(d, 3, generator=g, dtype=D) for d in (6, 5, 3, 3))
    w = torch.einsum("nr,cr,ir,jr->ncij", a, b, v, h)
    (first, vertical, horizontal, last), err = cp_factorize(w, 3)
    layer = sepconv.CPConv2d(5, 6, 3, rank=3, bias=False, dtype=D)
    with torch.no_grad():
        for conv, t in zip((layer.first, layer.vertical, layer.horizontal, layer.last), (first, vertical, horizontal, last)):
            conv.weight.copy_(t)
    assert err < 1e-6 and rel(layer.to_dense_weight(), w) < 1e-6
    noisy = torch.randn(8, 4, 3, 3, generator=g, dtype=D)
    weights, err = cp_factorize(noisy, 4)
    dense = torch.einsum("nr,rc,ri,rj->ncij", weights[3][:, :, 0, 0], weights[0][:, :, 0, 0], weights[1][:, 0, :, 0],
                         weights[2][:, 0, 0, :])
    assert abs(rel(dense, noisy) - err) < 1e-9 and 0 < err < 1
    zero, err0 = cp_factorize(torch.zeros(2, 2, 3, 3, dtype=D), 2)
    assert err0 == 0.0 and all(float(t.abs().sum()) == 0 for t in zero)
    with pytest.raises(ValueError, match="at least 4 dimensions"):
        cp_factorize(torch.randn(2, 2, 3, dtype=D), 2)
    with pytest.raises(ValueError, match="2D convolution weight"):
        cp_factorize(torch.randn(2, 2, 3, 3, 3, dtype=D), 2)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        cp_factorize(noisy, 0)


@pytest.mark.parametrize("to", ["blueprint", "cp"])
def test_convert_to_blueprint_and_cp_keeps_geometry_and_counts_cost(to):
    if to == "cp":
        pytest.importorskip("tensorly", reason="tensorly is not installed (pip install 'sepconv[tensorly]')")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nn.Conv2d(6, 5, (3, 2), stride=2, dilation=(1, 2), padding="valid")).double().eval()
    x = torch.randn(2, 4, 13, 11, dtype=D)
    exact, report = convert(model, to=to, depth_multiplier=9, rank=54, sample_input=x)
    torch.testing.assert_close(exact(x), model(x))  # M = k^2 / a CP rank >= the weight's: exact
    assert all(r.weight_error < 1e-6 for r in report.layers)
    small, report = convert(model, to=to, depth_multiplier=1, sample_input=x)
    assert small(x).shape == model(x).shape
    for row in report.layers:
        assert row.params_after == sum(p.numel() for p in small.get_submodule(row.name).parameters())
    # MACs from sepconv.cost's formulas agree with the profiler, which counts the replacement's own convolutions
    prof = sepconv.cost.profile(small, (4, 13, 11))
    assert sum(r.macs_after for r in report.layers) == sum(
        row.macs for row in prof.rows if row.kind.startswith("Conv"))


@pytest.mark.parametrize("to,options", [("spatial", {"rank": 12}), ("blueprint", {"depth_multiplier": 4})])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_calibration_of_padded_last_stages_keeps_exact_conversions_exact(to, options, mode):
    """The spatial (1 x k_w) and blueprint (grouped k x k) last stages pad: calibration must build their patches
    with the conv's own padding mode, or it would move weights that are already exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          ).double().eval()
    x = torch.randn(3, 4, 7, 6, dtype=D)
    new, report = convert(model, to=to, sample_input=x, calibrate=True, ridge=0.0, **options)
    assert report.layers[0].weight_error < 1e-6
    torch.testing.assert_close(new(x), model(x))


def test_blueprint_calibration_in_1d_and_the_3d_refusal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2), nn.ReLU()).double().eval()
    x = torch.randn(4, 3, 16, dtype=D)
    new, report = convert(model, to="blueprint", depth_multiplier=3, sample_input=x, calibrate=True, ridge=0.0)
    assert report.layers[0].weight_error < 1e-6 and report.layers[0].calibration_target == "relu"
    torch.testing.assert_close(new(x), model(x))
    with pytest.raises(ValueError, match="3D convolutions"):
        convert(nn.Sequential(nn.Conv3d(2, 2, 3)), to="blueprint", calibrate=True,
                sample_input=torch.randn(1, 2, 4, 4, 4))


def test_calibrate_after_convert_equals_convert_with_calibrate():
    """calibrate(original, converted, x) is the fit convert(..., calibrate=True) does, on an existing conversion."""
    from sepconv.factorize import calibrate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4)).double().eval()
    x = torch.randn(4, 3, 10, 10, dtype=D)
    together, report = convert(model, sample_input=x, calibrate=True)
    apart, _ = convert(model)
    fitted = calibrate(model, apart, x)
    assert fitted == {r.name: r.calibration_target for r in report.layers} == {"0": "relu", "2": "output"}
    for key, value in together.state_dict().items():
        torch.testing.assert_close(apart.state_dict()[key], value)
    with pytest.raises(ValueError, match="no layer that replaced a convolution"):
        calibrate(model, model, x)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        calibrate(model, apart, x, ridge=-1)
    with pytest.raises(TypeError, match="sample_input must be a torch.Tensor"):
        calibrate(model, apart, [1, 2])


def test_convert_cli_without_tensorly_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import sys

    from sepconv.cli import main
    from sepconv.models import save_model

    src = tmp_path / "std.safetensors"
    save_model(src, build_model("vgg_blocks", "standard", in_channels=1, image_size=8, width=0.125), "vgg_blocks",
               "standard", in_channels=1, image_size=8, width=0.125)
    monkeypatch.setitem(sys.modules, "tensorly", None)  # as if the tensorly extra were not installed
    assert main(["convert", str(src), str(tmp_path / "cp.safetensors"), "--to", "cp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'sepconv[tensorly]'" in err and "Traceback" not in err and "\n" not in err
    assert not (tmp_path / "cp.safetensors").exists()
