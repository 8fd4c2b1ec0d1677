"""Cost formulas against brute-force operation counts, the real layers, FlopCounterMode and the seeds."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sepconv
from sepconv.cli import main
from sepconv.cost import closed_form_ratio, conv_cost, profile, separable_cost, spatial_cost
from sepconv.geometry import ConvSpec

from reference import tf_same_pads


def brute_force_counts(cin, cout, size, kernel, stride, dilation, pads, groups, bias):
    """Walk a loop-based convolution, counting each multiplication and addition it performs, and the
    multiplications whose input value lies inside the input (not on the zero padding)."""
    padded = [n + a + b for n, (a, b) in zip(size, pads)]
    out = [(p - (k - 1) * d - 1) // s + 1 for p, k, d, s in zip(padded, kernel, dilation, stride)]
    mults = adds = inside = 0
    for _o in range(cout):
        for pos in itertools.product(*[range(o) for o in out]):
            terms = 0
            for _c in range(cin // groups):
                for tap in itertools.product(*[range(k) for k in kernel]):
                    mults += 1
                    terms += 1
                    index = [p * s - lo + t * d for p, s, (lo, _), t, d in zip(pos, stride, pads, tap, dilation)]
                    inside += all(0 <= i < n for i, n in zip(index, size))
            adds += terms - 1 + (1 if bias else 0)
    return mults, adds, tuple(out), inside


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_conv_cost_matches_brute_force(data):
    nd = data.draw(st.integers(1, 3))
    groups = data.draw(st.integers(1, 3))
    cin, cout = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(data.draw(st.integers(5, 7)) for _ in range(nd))
    padding = data.draw(st.sampled_from(["same", 0, 1, 2]))
    bias = data.draw(st.booleans())
    spec = ConvSpec.make(cin, cout, kernel, stride, padding, dilation, groups=groups, bias=bias, ndim=nd)
    pads = ([tf_same_pads(n, k, s, d) for n, k, s, d in zip(size, kernel, stride, dilation)] if padding == "same"
            else [(padding, padding)] * nd)
    mults, adds, out, inside = brute_force_counts(cin, cout, size, kernel, stride, dilation, pads, groups, bias)
    cost = conv_cost(spec, size, batch=3)
    assert cost.output_size == out
    assert cost.macs == cost.multiplications == 3 * mults
    assert cost.additions == 3 * adds
    assert cost.flops == 2 * cost.macs
    assert cost.in_bounds_macs == 3 * inside and cost.in_bounds_flops == 2 * cost.in_bounds_macs
    assert cost.as_dict()["in_bounds_macs"] == cost.in_bounds_macs
    assert cost.params == sum(p.numel() for p in nn.Conv1d(cin, cout, 1, groups=groups, bias=bias).parameters()) - cin // groups * cout + spec.weight_count
    assert cost.bytes == 4 * (3 * cin * math.prod(size) + spec.param_count + 3 * cout * math.prod(out))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(1, 5), st.integers(1, 3), st.integers(1, 2),
       st.sampled_from(["same", "valid", 1]), st.integers(1, 3), st.booleans())
def test_composite_costs_equal_what_the_layers_compute(cin, cout, k, m, s, padding, rank, bias):
    size = (9, 8)
    spec = ConvSpec.make(cin, cout, k, s, padding, bias=bias)
    sep = sepconv.SeparableConv2d(cin, cout, k, stride=s, padding=padding, depth_multiplier=m, bias=bias)
    spa = sepconv.SpatiallySeparableConv2d(cin, cout, k, stride=s, padding=padding, rank=rank, bias=bias)
    sep_cost = separable_cost(spec, size, depth_multiplier=m)
    spa_cost = spatial_cost(spec, size, rank=rank)
    for layer, cost in [(sep, sep_cost), (spa, spa_cost)]:
        prof = profile(layer, (cin, *size))
        assert prof.total_macs == cost.macs
        in_bounds = sum(r.in_bounds_macs for r in prof.rows if r.macs is not None)
        if all(lo == hi for lo, hi in spec.pads(size)):
            assert in_bounds == cost.in_bounds_macs
        else:  # asymmetric 'same' padding is a separate module: the convolution counts its zeros as input
            assert cost.in_bounds_macs <= in_bounds <= cost.macs
        assert cost.in_bounds_macs == sum(stage.in_bounds_macs for stage in cost.stages) <= cost.macs
        assert prof.total_params == cost.params == sum(p.numel() for p in layer.parameters())
        assert tuple(layer(torch.zeros(1, cin, *size)).shape[2:]) == cost.output_size
    if m == 1:  # the closed form is exact for a multiplier of 1, whatever the padding and stride
        assert sep_cost.macs / conv_cost(spec, size).macs == pytest.approx(closed_form_ratio(cout, (k, k)))


def test_seed_worked_examples():
    # Seed 000: 15x15x3 input, 10 kernels of 3x3x3, no padding -> 13x13 positions.
    spec = ConvSpec.make(3, 10, 3, padding="valid")
    assert conv_cost(spec, (15, 15)).multiplications == 3 * 3 * 3 * 10 * 13 * 13  # 45,630
    dw, pw = separable_cost(spec, (15, 15)).stages
    assert dw.multiplications == 13 * 13 * 3 * 3 * 3  # 4,563
    assert pw.multiplications == 13 * 13 * 10 * 3  # 5,070 (the seed writes "13 x 13 = 225" on the way)
    assert dw.multiplications + pw.multiplications == 9633
    # Seed 000, Sobel on 15x15x1: the 3x1 pass gives 13x15, the 1x3 pass runs on 13x15 and gives 13x13.
    sobel = ConvSpec.make(1, 1, 3, padding="valid", bias=False)
    assert conv_cost(sobel, (15, 15)).multiplications == 3 * 3 * 13 * 13  # 1,521
    v, h = spatial_cost(sobel, (15, 15), rank=1).stages
    assert (v.output_size, h.output_size) == ((13, 15), (13, 13))
    assert (v.multiplications, h.multiplications) == (3 * 13 * 15, 3 * 13 * 13)  # 585 + 507 = 1,092, not 1,170
    # Seed 001: 3 -> 64 filters of 3x3, with biases: 1792 vs 286 parameters.
    spec = ConvSpec.make(3, 64, 3, padding="same")
    assert conv_cost(spec, (32, 32)).params == 3 * 3 * 3 * 64 + 64
    assert separable_cost(spec, (32, 32), depthwise_bias=True).params == (3 * 3 * 3 + 3) + (3 * 64 + 64)
    # Seed 002: k=3, C_in = C_out = 256, no bias: 589,824 vs 67,840 parameters, ratio 1/256 + 1/9.
    spec = ConvSpec.make(256, 256, 3, padding="same", bias=False)
    assert conv_cost(spec, (8, 8)).params == 9 * 256 * 256
    sep = separable_cost(spec, (8, 8))
    assert sep.params == 9 * 256 + 256 * 256
    assert sep.macs / conv_cost(spec, (8, 8)).macs == pytest.approx(1 / 256 + 1 / 9)
    # Seed 003: 12x12x3, 256 kernels of 5x5, no padding -> 8x8x256 (the seed's summary line says 12x12x256).
    spec = ConvSpec.make(3, 256, 5, padding="valid")
    assert conv_cost(spec, (12, 12)).output_size == (8, 8)
    assert conv_cost(spec, (12, 12)).macs == 5 * 5 * 3 * 256 * 8 * 8
    assert separable_cost(spec, (12, 12)).macs == 5 * 5 * 3 * 8 * 8 + 3 * 256 * 8 * 8


def test_profile_agrees_with_flop_counter_mode():
    """FlopCounterMode counts FLOPs = 2 x MACs for convolutions and matmuls, and no bias additions."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, groups=3),
        sepconv.SeparableConv2d(12, 16, 3, stride=2, padding="same", depth_multiplier=2, dw_norm="bn", dw_act="relu"),
        sepconv.SpatiallySeparableConv2d(16, 8, (3, 5), padding="same", rank=4),
        sepconv.DepthwiseConv2d(8, 3, padding="valid", depth_multiplier=3),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(96, 10),
    ).eval()
    prof = profile(model, (3, 17, 15))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 17, 15))
    assert counter.get_total_flops() == 2 * prof.total_macs
    assert prof.total_params == sum(p.numel() for p in model.parameters())
    assert "BatchNorm2d" in prof.not_counted and "AdaptiveAvgPool2d" in prof.not_counted


def test_profile_outputs_and_errors():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    prof = profile(model, (1, 8, 8))
    assert [r.kind for r in prof.rows] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert prof.total_macs == 4 * 6 * 6 * 9 + 144 * 3
    assert profile(model, (5, 1, 8, 8)).total_macs == prof.total_macs  # per sample
    data = json.loads(prof.to_json())
    assert data["total_macs"] == prof.total_macs and data["rows"][0]["macs_share"] == pytest.approx(4 * 36 * 9 / prof.total_macs)
    assert prof.to_csv().splitlines()[1].startswith("0,Conv2d,1x1x8x8,1x4x6x6,40,1296,")
    assert "not counted for: Flatten, ReLU" in prof.to_table()
    with pytest.raises(ValueError, match=r"failed on input shape \(1, 9, 9\)"):
        profile(model, (1, 9, 9))
    with pytest.raises(ValueError, match="input_size must be"):
        profile(model, (0, 8, 8))


def run_cli(capsys, *args):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cost_cli_table_and_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "--input", "3x15x15", "--kernel", "3", "--filters", "10", "--padding", "valid")
    assert code == 0 and "45,630" in out and "9,633 (4,563 + 5,070)" in out and "0.2111" in out
    code, out, _ = run_cli(capsys, "cost", "--input", "hwc:15x15x3", "--kernel", "3", "--filters", "10", "--json")
    data = json.loads(out)
    assert data["input_shape"] == [1, 3, 15, 15] and data["standard"]["output_shape"] == [1, 10, 13, 13]
    for keras in (["hwc:15x15x3"], ["15x15x3", "--channels-last"]):  # the seeds' H x W x C, asked for explicitly
        assert run_cli(capsys, "cost", "--input", *keras, "--kernel", "3", "--filters", "10", "--json")[1] == out
    spec = ConvSpec.make(3, 10, 3, padding="valid")
    assert data["standard"]["macs"] == conv_cost(spec, (15, 15)).macs
    assert data["depthwise separable"]["macs"] == separable_cost(spec, (15, 15)).macs
    assert data["spatially separable (rank 3)"]["macs"] == spatial_cost(spec, (15, 15), rank=3).macs
    # with padding, the taps on it are left out of "MACs off the padding": 3x3, padding 1 on 8x8 -> 22 * 22 taps
    # per channel pair inside the input, here 4 -> 2 channels; the 1x1 step reads no padding
    code, out, _ = run_cli(capsys, "cost", "--input", "4x8x8", "--kernel", "3", "--filters", "2", "--padding", "1")
    line = next(row for row in out.splitlines() if row.startswith("MACs off the padding "))
    assert line.split()[4:6] == [f"{2 * 4 * 22 * 22:,}", f"{4 * 22 * 22 + 2 * 4 * 64:,}"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "15x15", "--kernel", "3", "--filters", "1"], "--input must be 3 sizes C x H x W"),
        (["--input", "3x0x15", "--kernel", "3", "--filters", "1"], "--input sizes must lie in"),
        (["--input=-1x15x3", "--kernel", "3", "--filters", "1"], "--input must be sizes joined by 'x'"),
        (["--input", "axbxc", "--kernel", "3", "--filters", "1"], "--input must be sizes joined by 'x'"),
        (["--input", "15x15x3", "--kernel", "3", "--filters", "1"], "is ambiguous"),
        (["--input", "chw:3x3x8", "--kernel", "3", "--filters", "1", "--channels-last"], "use one of them"),
        (["--input", "3x2x2", "--kernel", "3", "--filters", "1"], "does not fit input size"),
        (["--input", "3x8x8", "--kernel", "3", "--filters", "1", "--padding", "full"], "--padding must be"),
        (["--input", "3x8x8", "--kernel", "3", "--filters", "0"], "--filters: must be a positive integer"),
        (["--input", "3x8x8", "--kernel", "3", "--filters", "2", "--dtype", "float99"], "dtype must be a torch dtype"),
    ],
)
def test_cost_cli_bad_input_exits_2(capsys, args, message):
    try:
        code = main(["cost", *args])
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_profile_cli(capsys):
    code, out, _ = run_cli(capsys, "profile", "mobilenet_v2", "--format", "json")
    data = json.loads(out)
    from sepconv.models import build_model

    assert code == 0 and data["total_params"] == sum(p.numel() for p in build_model("mobilenet_v2").parameters())
    code, out, _ = run_cli(capsys, "profile", "vgg_blocks", "--variant", "separable", "--input", "1x8x8")
    assert code == 0 and "features.0.depthwise" in out and "input 1x1x8x8" in out
    code, _, err = run_cli(capsys, "profile", "vgg_blocks", "--variant", "bogus")
    assert code == 2 and "unknown variant 'bogus' of vgg_blocks" in err
    code, _, err = run_cli(capsys, "profile", "vgg_blocks", "--input", "3x4x4")
    assert code == 2 and "too small" in err


# ------------------------------------------------------------------ one shape convention (C x H x W)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sepconv.cost.shapes import parse_shape  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(1, 9))
def test_parse_shape_reads_chw_and_asks_for_hwc(c, h, w, n):
    """C x H x W by default, H x W x C with hwc: or channels_last; an A x A x B text is refused unprefixed."""
    text = f"{c}x{h}x{w}"
    if c == h != w:
        with pytest.raises(ValueError, match="ambiguous"):
            parse_shape(text)
    else:
        assert parse_shape(text) == (c, h, w)
    assert parse_shape(f"chw:{text}") == (c, h, w)
    assert parse_shape(f"hwc:{h}x{w}x{c}") == (c, h, w) == parse_shape(f"{h}x{w}x{c}", channels_last=True)
    assert parse_shape(f"chw:{n}x{text}", batch=True) == (n, c, h, w)
    assert parse_shape(f"hwc:{n}x{h}x{w}x{c}", batch=True) == (n, c, h, w)
    with pytest.raises(ValueError, match="--input must be 3 sizes C x H x W"):
        parse_shape(f"{n}x{text}")  # a batch where none is taken
    with pytest.raises(ValueError, match="must be 3 sizes H x W x C"):
        parse_shape(f"hwc:{h}x{w}")


@pytest.mark.parametrize("text, message", [
    ("", "sizes joined by 'x'"), ("3x", "sizes joined by 'x'"), ("3x-1x4", "sizes joined by 'x'"),
    ("nhwc:3x4x5", "unknown order prefix"), ("3x4x5x6x7", "must be 3 sizes"), ("3x0x4", "must lie in"),
    ("3x4x" + "9" * 30, "sizes joined by 'x'"), ("224x224x3", "ambiguous"),
])
def test_parse_shape_refuses_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shape(text)


def test_profile_totals_equal_flop_counter_over_two():
    """MACs from sepconv.cost equal torch.utils.flop_counter's FLOPs / 2 (convolutions and linear layers)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sepconv.models import build_model

    for name, variant, shape in [("vgg_blocks", "separable", (3, 32, 32)), ("vgg_blocks", "standard", (3, 32, 32)),
                                 ("mobilenet_v2", "separable", (3, 64, 64))]:
        kwargs = {"image_size": 32} if name == "vgg_blocks" else {"alpha": 0.5}
        model = build_model(name, variant, **kwargs).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, *shape))
        assert profile(model, shape).total_macs * 2 == counter.get_total_flops(), name


def test_print_profile_shows_a_table(capsys):
    from sepconv.models import build_model

    print(profile(build_model("vgg_blocks", image_size=8), (3, 8, 8)))
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["layer", "kind", "output"] and "total" in out


@pytest.mark.parametrize("args, message", [
    (["profile", "vgg_blocks", "--num-classes", "100000000"], "would need about 1.5 TiB"),
    (["profile", "vgg_blocks", "--input", "hwc:20000x20000x3"], "estimated by sepconv.cost without allocating"),
    (["profile", "vgg_blocks", "--input", "15x15"], "--input must be 3 sizes C x H x W, got '15x15'"),
    (["profile", "vgg_blocks", "--input", "15x15x3"], "ambiguous"),
    (["profile", "vgg_blocks", "--input", "chw:32x32x3"], "image_size=[32, 3] is too small"),
    (["profile"], "give a MODEL"),
])
def test_profile_refuses_absurd_and_inconsistent_input(capsys, args, message, monkeypatch):
    monkeypatch.setenv("SEPCONV_MAX_BYTES", str(16 << 30))  # the same limit on every machine
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out, err


def test_profile_reads_keras_order_only_when_asked(capsys):
    runs = [run_cli(capsys, "profile", "vgg_blocks", "--input", text, *extra, "--format", "json")
            for text, extra in [("3x16x16", []), ("hwc:16x16x3", []), ("16x16x3", ["--channels-last"])]]
    assert all(code == 0 for code, _, _ in runs) and runs[0][1] == runs[1][1] == runs[2][1]
    data = json.loads(runs[0][1])
    assert data["input_shape"] == [1, 3, 16, 16] and data["rows"][0]["output_shape"] == [1, 64, 16, 16]


@pytest.mark.parametrize("layer", [
    lambda: sepconv.DepthwiseConv2d(4, 3, stride=2, padding="same"),  # uneven TF 'same': a Pad child
    lambda: sepconv.DepthwiseConv2d(4, 3, padding=1, padding_mode="reflect"),
    lambda: sepconv.SeparableConv2d(4, 6, 3, stride=2, padding="same"),
])
def test_profile_counts_convolutions_that_pad_in_a_child(layer):
    from torch.utils.flop_counter import FlopCounterMode

    model = torch.nn.Sequential(layer())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 4, 9, 9))
    assert 2 * sepconv.profile(model, (4, 9, 9)).total_macs == counter.get_total_flops() > 0
