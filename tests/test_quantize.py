"""sepconv.quantization: the float transforms preserve functions, equalization balances ranges, int8 works."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sepconv.cli import main
from sepconv.layers import SeparableConv2d
from sepconv.models import MobileNetV1, MobileNetV2
from sepconv.quantization import (
    absorb_high_biases,
    correct_bias,
    equalize,
    find_pairs,
    fold_batchnorm,
)
from sepconv.quantization.transforms import fake_quantize_weight

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _wild(model: nn.Module, gen: torch.Generator, decades: float = 2.0) -> None:
    """Random BatchNorm statistics and output-channel scales over ``2 decades`` decades, so ranges differ wildly."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.2, 3, generator=gen)
                m.weight.uniform_(0.1, 3, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
            elif isinstance(m, nn.Conv2d):
                scale = 10 ** torch.empty(m.out_channels, dtype=m.weight.dtype).uniform_(-decades, decades, generator=gen)
                m.weight.mul_(scale.view(-1, 1, 1, 1))
                if m.bias is not None:
                    m.bias.uniform_(-1, 1, generator=gen)


@st.composite
def networks(draw, activations=("relu", None)):
    """A random chain of convolutions and separable layers (BN, ReLU, pooling between), float64, eval mode."""
    cin = c = draw(st.integers(1, 3))
    layers: list[nn.Module] = []
    pooled = False
    for _ in range(draw(st.integers(1, 3))):
        cout = draw(st.integers(1, 5))
        if draw(st.booleans()):
            k = draw(st.sampled_from([1, 3]))
            layers += [nn.Conv2d(c, cout, k, padding=draw(st.sampled_from([0, k // 2])), bias=draw(st.booleans())),
                       nn.BatchNorm2d(cout)]
        else:
            layers.append(SeparableConv2d(
                c, cout, 3, padding=draw(st.sampled_from([0, 1, "same"])), depth_multiplier=draw(st.integers(1, 2)),
                depthwise_bias=draw(st.booleans()), bias=draw(st.booleans()),
                dw_norm=draw(st.sampled_from([None, "batchnorm"])), dw_act=draw(st.sampled_from(list(activations))),
                pw_norm=draw(st.sampled_from([None, "batchnorm"]))))
        act = draw(st.sampled_from(list(activations)))
        if act is not None:
            layers.append(nn.ReLU6() if act == "relu6" else nn.ReLU())
        if not pooled and draw(st.booleans()):
            layers.append(nn.MaxPool2d(2))
            pooled = True
        c = cout
    model = nn.Sequential(*layers).double().eval()
    _wild(model, torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return model, cin


def _inputs(cin: int, seed: int = 1, n: int = 16) -> torch.Tensor:
    return torch.randn(n, cin, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> None:
    assert a.shape == b.shape
    scale = max(float(b.detach().abs().max()), 1e-12)
    error = float((a - b).detach().abs().max())
    assert error <= rtol * scale, error / scale


@SETTINGS
@given(networks())
def test_fold_and_equalize_preserve_outputs(net):
    model, cin = net
    x = _inputs(cin)
    with torch.no_grad():
        expected = model(x)
        fold_batchnorm(model)
        _close(model(x), expected)
        equalize(model)
        _close(model(x), expected)


@SETTINGS
@given(networks(activations=("relu", "relu6", None)))
def test_relu6_policies(net):
    model, cin = net
    x = _inputs(cin)
    with torch.no_grad():
        fold_batchnorm(model)
        expected = model(x)
        skipped = copy.deepcopy(model)
        equalize(skipped, relu6="skip")
        _close(skipped(x), expected)  # pairs through ReLU6 left alone: the function is unchanged
        # 'relu' equalizes through them after replacing ReLU6 by ReLU (the paper): same as doing that by hand
        by_hand = copy.deepcopy(model)
        for pair in find_pairs(by_hand):
            for parent, name, m in pair.between:
                if isinstance(m, nn.ReLU6):
                    setattr(parent, name, nn.ReLU())
        expected_relu = by_hand(x)
        equalize(model, relu6="relu")
        _close(model(x), expected_relu)
        assert not any(isinstance(m, nn.ReLU6) for p in find_pairs(model) for _, _, m in p.between)


@SETTINGS
@given(networks())
def test_high_bias_absorption_preserves_outputs_on_calibration_data(net):
    model, cin = net
    x = _inputs(cin)
    with torch.no_grad():
        fold_batchnorm(model)
        equalize(model)
        expected = model(x)
        absorb_high_biases(model, [x[:8], x[8:]])
        _close(model(x), expected)


def test_high_bias_absorption_moves_bias_of_positive_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1)).double().eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([50.0, 0.0, -50.0], dtype=torch.float64))
        x = torch.randn(32, 2, 6, 6, dtype=torch.float64)
        pre = model[0](x)
        expected = model(x)
        assert absorb_high_biases(model, [x]) == 1
        _close(model(x), expected)
        lo = pre.transpose(0, 1).flatten(1).amin(1)
        # channel 0 never reaches zero: its minimum is absorbed; the others cross zero and keep their bias
        assert torch.allclose(model[0].bias, torch.tensor([50.0, 0.0, -50.0], dtype=torch.float64) - lo.clamp(min=0))
        assert float(model[0](x)[:, 0].min()) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("second", ["dense", "depthwise", "pointwise"])
def test_equalization_balances_ranges_as_the_paper_defines(second):
    """Nagel et al. eq. (5)-(8): after scaling, channel i's range in both layers is sqrt(r1[i] r2[i])."""
    torch.manual_seed(0)
    c = 6
    conv2 = {"dense": nn.Conv2d(c, 4, 3), "depthwise": nn.Conv2d(c, 2 * c, 3, groups=c),
             "pointwise": nn.Conv2d(c, 5, 1)}[second]
    model = nn.Sequential(nn.Conv2d(3, c, 3), nn.ReLU(), conv2).double().eval()
    _wild(model, torch.Generator().manual_seed(1))
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    r1 = torch.stack([w1[i].abs().max() for i in range(c)])
    if second == "depthwise":  # output channels 2i and 2i+1 read input channel i
        r2 = torch.stack([w2[2 * i:2 * i + 2].abs().max() for i in range(c)])
    else:
        r2 = torch.stack([w2[:, i].abs().max() for i in range(c)])
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    expected = model(x)
    assert equalize(model) == 1
    w1n, w2n = model[0].weight.detach(), model[2].weight.detach()
    r1n = torch.stack([w1n[i].abs().max() for i in range(c)])
    r2n = (torch.stack([w2n[2 * i:2 * i + 2].abs().max() for i in range(c)]) if second == "depthwise"
           else torch.stack([w2n[:, i].abs().max() for i in range(c)]))
    assert torch.allclose(r1n, (r1 * r2).sqrt(), rtol=1e-9)
    assert torch.allclose(r2n, (r1 * r2).sqrt(), rtol=1e-9)
    _close(model(x), expected)


@SETTINGS
@given(networks())
def test_equalization_converges_to_balanced_pairs(net):
    model, _ = net
    fold_batchnorm(model)
    equalize(model, tolerance=1e-12, max_iterations=2000)
    for pair in find_pairs(model):
        w1, w2 = pair.conv1.weight.detach(), pair.conv2.weight.detach()
        r1 = w1.flatten(1).abs().amax(1)
        per_group = w2.shape[1]
        r2 = torch.stack([w2[(i // per_group) * (w2.shape[0] // pair.conv2.groups):
                             (i // per_group + 1) * (w2.shape[0] // pair.conv2.groups), i % per_group].abs().max()
                          for i in range(pair.conv2.in_channels)])
        assert torch.allclose(r1, r2, rtol=1e-4), pair


@pytest.mark.parametrize("per_channel", [True, False])
def test_bias_correction_restores_channel_means(per_channel):
    """Against F.conv2d: after correction the rounded layer's output means equal the float layer's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1).double().eval()
    _wild(conv, torch.Generator().manual_seed(2))
    x = torch.randn(64, 3, 7, 7, dtype=torch.float64) + 2.0  # a non-zero mean input, so rounding biases outputs
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    wq = fake_quantize_weight(w, per_channel=per_channel)
    means = lambda y: y.transpose(0, 1).flatten(1).mean(1)
    float_means = means(F.conv2d(x, w, b, padding=1))
    before = means(F.conv2d(x, wq, b, padding=1))
    assert float((before - float_means).abs().max()) > 1e-6  # there is something to correct
    assert correct_bias(conv, [x[:32], x[32:]], per_channel=per_channel) == 1
    after = means(F.conv2d(x, wq, conv.bias.detach(), padding=1))
    assert torch.allclose(after, float_means, atol=1e-9)


def test_fake_quantize_weight_levels():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.01, 0.02, -0.03]])
    per_tensor = fake_quantize_weight(w, per_channel=False)
    assert torch.allclose(per_tensor[0], w[0], atol=1 / 254 + 1e-7)
    assert torch.equal(per_tensor[1], torch.tensor([1.0, 3.0, -4.0]) / 127)  # the small row gets three levels
    per_channel = fake_quantize_weight(w, per_channel=True)
    assert torch.allclose(per_channel[1], w[1], atol=0.03 / 254 + 1e-7)


def test_pairs_cross_separable_layers_not_residuals():
    model = MobileNetV1(num_classes=10, in_channels=1, alpha=0.25).eval()
    fold_batchnorm(model)
    # stem -> block 1 depthwise, then each block's depthwise -> pointwise and pointwise -> next depthwise
    assert len(find_pairs(model)) == 1 + 13 + 12

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return x + self.b(self.a(x))

    assert find_pairs(Residual()) == []
    v2 = MobileNetV2(num_classes=10, alpha=0.25).eval()
    fold_batchnorm(v2)
    # per inverted residual block: expansion -> depthwise (16 of 17 blocks expand) and depthwise -> projection
    assert len(find_pairs(v2)) == 16 + 17
    for parent in list(v2.modules()):  # ReLU everywhere: equalizing all 33 pairs must leave the function alone
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    v2.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = v2(x)
        assert equalize(v2) == 33
        _close(v2(x), expected)


# ---------------------------------------------------------------- int8 through ONNX Runtime


def _engine():
    pytest.importorskip("onnxruntime", reason="int8 needs onnxruntime (pip install 'sepconv[onnx]')")
    pytest.importorskip("onnx", reason="int8 needs onnx (pip install 'sepconv[onnx]')")
    from sepconv.quantization import quantize

    return quantize


def _wild_depthwise_net() -> nn.Module:
    """A separable block whose depthwise channels span five decades, compensated in the pointwise step.

    The float function is an ordinary, balanced one; only the split of the scale between the two steps is
    wild, exactly what cross-layer equalization undoes and what per-tensor weights cannot represent.
    """
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(SeparableConv2d(8, 16, 3, padding=1, depthwise_bias=True), nn.ReLU(),
                          SeparableConv2d(16, 10, 3, padding=1)).eval()
    with torch.no_grad():
        scale = 10 ** torch.linspace(-3, 2, 8)[torch.randperm(8, generator=gen)]
        block = model[0]
        block.depthwise.weight.mul_(scale.view(-1, 1, 1, 1))
        block.depthwise.bias.copy_(0.1 * torch.randn(8, generator=gen) * scale)
        block.pointwise.weight.div_(scale.view(1, -1, 1, 1))
    return model


def test_wild_depthwise_ranges_quantize_per_tensor_only_after_equalization():
    quantize = _engine()
    model = _wild_depthwise_net()
    gen = torch.Generator().manual_seed(1)
    calibration, test = torch.randn(128, 8, 8, 8, generator=gen), torch.randn(64, 8, 8, 8, generator=gen)
    with torch.no_grad():
        expected = model(test)

    def error(**options) -> float:
        qmodel, _ = quantize(model, calibration, per_channel=False, threads=1, **options)
        with torch.no_grad():
            return float((qmodel(test) - expected).norm() / expected.norm())

    naive = error(equalize=False, bias_correction=False)
    equalized = error(equalize=True, bias_correction=True)
    assert naive > 0.3, naive  # the small depthwise channels round to zero
    assert equalized < 0.05, equalized
    assert equalized < naive / 10


def test_quantize_returns_runnable_model_and_report(tmp_path):
    quantize = _engine()
    torch.manual_seed(0)
    model = MobileNetV1(num_classes=10, in_channels=1, alpha=0.25).eval()
    _wild(model, torch.Generator().manual_seed(0), decades=0.5)
    x = torch.randn(32, 1, 8, 8)
    state = copy.deepcopy(model.state_dict())
    qmodel, report = quantize(model, x, threads=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the input model is untouched
    with torch.no_grad():
        out, ref = qmodel(x[:5]), model(x[:5])
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert report.transforms["batchnorms_folded"] == 27 and report.transforms["pairs_equalized"] == 26
    assert report.scheme["per_channel"] and report.scheme["calibration_samples"] == 32
    assert report.int8_bytes < report.float_bytes / 2
    names = [r["name"] for r in report.layers]
    assert "features.1.depthwise" in names and "classifier.2" in names
    dw = next(r for r in report.layers if r["name"] == "features.1.depthwise")
    assert dw["kind"] == "Depthwise" and dw["output_min"] < dw["output_max"]
    assert "features.1.depthwise" in report.to_table()
    qmodel.save(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == qmodel.onnx


def test_shared_constants_do_not_keep_convolutions_in_float():
    """Equal biases are exported once and read through Identity nodes; every convolution must still get
    an int32 bias (a DequantizeLinear of its own) and with it an int8 kernel."""
    quantize = _engine()
    import onnx

    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
    qmodel, _ = quantize(model, torch.randn(16, 2, 8, 8), equalize=False, bias_correction=False, threads=1)
    graph = onnx.load_from_string(qmodel.onnx).graph
    assert not [n for n in graph.node if n.op_type == "Identity"]
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and all(len(n.input) == 3 and set(n.input) <= dequantized for n in convs)


def test_compare_schemes_rows():
    _engine()
    from sepconv.quantization import compare_schemes

    model = _wild_depthwise_net()
    head = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    gen = torch.Generator().manual_seed(2)
    calibration, test = torch.randn(64, 8, 8, 8, generator=gen), torch.randn(40, 8, 8, 8, generator=gen)
    labels = head(test).argmax(1)
    rows = compare_schemes(head, calibration, test, labels, rounds=2)
    assert [r["scheme"] for r in rows] == ["float", "per-tensor", "per-channel", "per-tensor+equalize+bias-correction"]
    assert rows[0]["accuracy"] == 1.0 and rows[0]["agreement"] == 1.0 and rows[0]["latency_ratio"] == 1.0
    for r in rows[1:]:
        assert r["report"]["int8_bytes"] == r["model_bytes"] and r["latency_ms"] > 0
        assert r["size_ratio"] == pytest.approx(r["model_bytes"] / rows[0]["model_bytes"])
    assert rows[3]["agreement"] >= rows[1]["agreement"]


def _input_scale(onnx_bytes: bytes) -> float:
    """The scale of the QuantizeLinear that reads the model's input ``x``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(inits[node.input[1]])


def test_percentile_calibration_clips_an_outlier_that_minmax_keeps(capsys):
    """One huge input value among 200 000: min/max calibration stretches the input range over it, percentile
    calibration does not; both give a runnable model, record their method and print nothing."""
    quantize = _engine()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    calibration = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    calibration[0, 0, 0, 0] = 1000.0
    scales = {}
    for method in ("minmax", "percentile"):
        qmodel, report = quantize(model, calibration, threads=1, calibration=method)
        assert report.scheme["calibration"] == method and f"{method} calibration" in report.to_table()
        assert qmodel(calibration[1:3]).shape == (2, 2, 16, 16)
        scales[method] = _input_scale(qmodel.onnx)
    assert scales["minmax"] > 1000 / 255 * 0.99  # the outlier sets the range
    assert scales["percentile"] < scales["minmax"] / 10, scales
    assert capsys.readouterr().out == ""  # ONNX Runtime's calibrators print progress; quantize keeps it quiet


def test_onnxruntime_entropy_calibration_gives_the_minmax_ranges(tmp_path):
    """Why quantize offers no entropy calibration: through quantize_static ONNX Runtime's entropy calibrator has
    as many histogram bins as quantized bins, so its one candidate range is min/max. If this starts failing,
    ONNX Runtime changed and entropy calibration may be worth offering."""
    _engine()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from sepconv.backends.onnxruntime import export_onnx
    from sepconv.quantization.engine import _Reader

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    batches = [torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    batches[0][0, 0, 0, 0] = 1000.0
    proto = onnx.load_from_string(export_onnx(model, batches[0][:1]))
    scales = {}
    for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy):
        path = tmp_path / f"{method.name}.onnx"
        quantize_static(proto, str(path), _Reader(batches), quant_format=QuantFormat.QDQ, calibrate_method=method)
        scales[method] = _input_scale(path.read_bytes())
    assert scales[CalibrationMethod.Entropy] == scales[CalibrationMethod.MinMax]


def test_bad_input_errors(monkeypatch):
    quantize = _engine()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="calibration_data is empty"):
        quantize(model, torch.empty(0, 1, 8, 8))
    with pytest.raises(ValueError, match="calibration_data is empty"):
        quantize(model, [])
    with pytest.raises(ValueError, match="calibration_data batch 0 must be a floating-point tensor"):
        quantize(model, [torch.zeros(2, 1, 8, 8, dtype=torch.long)])
    with pytest.raises(ValueError, match="has no convolution"):
        quantize(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match="relu6 must be one of"):
        quantize(model, torch.randn(4, 1, 8, 8), relu6="clip")
    with pytest.raises(ValueError, match="calibration must be one of minmax, percentile; got 'entropy'"):
        quantize(model, torch.randn(4, 1, 8, 8), calibration="entropy")
    from sepconv.quantization import engine

    monkeypatch.setattr(engine, "onnxruntime_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'sepconv\[onnx\]'"):
        quantize(model, torch.randn(4, 1, 8, 8))


def test_top_level_quantize_is_the_function():
    import sepconv
    from sepconv.quantization import quantize

    assert sepconv.quantize is quantize


def test_quantization_friendly_mobilenet():
    friendly = MobileNetV1(num_classes=10, alpha=0.25, quantization_friendly=True)
    blocks = [m for m in friendly.modules() if isinstance(m, SeparableConv2d)]
    assert len(blocks) == 13
    assert all(isinstance(b.dw_norm, nn.Identity) and isinstance(b.dw_act, nn.Identity) for b in blocks)
    assert all(isinstance(b.pw_norm, nn.BatchNorm2d) and isinstance(b.pw_act, nn.ReLU) for b in blocks)
    assert not any(isinstance(m, nn.ReLU6) for m in friendly.modules())
    assert friendly(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="quantization_friendly applies to the separable variant"):
        MobileNetV1("standard", quantization_friendly=True)


def test_int8_cost_bytes():
    from sepconv.cost import conv_cost
    from sepconv.geometry import ConvSpec

    spec = ConvSpec.make(32, 64, 3, padding=1)
    fp32, int8 = conv_cost(spec, (16, 16)), conv_cost(spec, (16, 16), dtype=torch.int8)
    assert int8.macs == fp32.macs and int8.dtype_bytes == 1
    assert int8.bytes * 4 == fp32.bytes


def test_cli_errors_exit_2(capsys, tmp_path):
    _engine()
    assert main(["quantize", "vgg_blocks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sepconv quantize: error:") and "--weights" in err[0]
    assert main(["quantize", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["quantize", "not_a_model"]) == 2
    assert "zoo name" in capsys.readouterr().err


def test_cli_quantizes_a_saved_model(capsys, tmp_path):
    _engine()
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    from sepconv.models import build_model, save_model

    model = build_model("vgg_blocks", "separable", num_classes=10, in_channels=1, image_size=8, width=0.1)
    save_model(tmp_path / "m.safetensors", model, "vgg_blocks", "separable", num_classes=10, in_channels=1,
               image_size=8, width=0.1)
    out = tmp_path / "m_int8.onnx"
    assert main(["quantize", str(tmp_path / "m.safetensors"), "--calibration", "32", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"digits validation \(\d+ images\): float", text) and "features.0.depthwise" in text and out.is_file()
    assert main(["quantize", str(tmp_path / "m.safetensors"), "--output", str(out)]) == 2  # exists, no --overwrite
    assert main(["quantize", str(tmp_path / "m.safetensors"), "--calibration", "32",
                 "--calibration-method", "percentile"]) == 0
    assert "percentile calibration on 32 samples" in capsys.readouterr().out
