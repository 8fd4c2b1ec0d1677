"""Benchmark harness: correctness of what it computes (no timing assertions), and a CLI smoke run."""

import json
import platform
import subprocess
import sys

import pytest
import torch

from sepconv.bench import Roofline, interleaved, mobilenet_v1_suite, run_case, vgg_blocks_suite
from sepconv.bench.cli import parse_case
from sepconv.cli import main
from sepconv.cost import conv_cost, separable_cost
from sepconv.utils.memory import freed_memory_kept


def test_interleaved_times_every_candidate():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1
        return sum(range(100))

    t = interleaved({"a": a, "b": b}, rounds=4, target_s=0.001)
    assert set(t) == {"a", "b"} and all(len(v.samples) == 4 and v.q1 <= v.median <= v.q3 for v in t.values())
    assert calls["a"] > 4 and calls["b"] > 4
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved({"a": a}, rounds=0)


def test_roofline_bound():
    roof = Roofline(peak_flops=100e9, bandwidth=10e9)
    assert roof.ridge() == 10
    assert roof.bound_s(1e9, 1e6) == pytest.approx(1e-2)  # compute-bound
    assert roof.bound_s(1e6, 1e9) == pytest.approx(1e-1)  # memory-bound


@pytest.mark.parametrize("batch", [1, 3])
def test_model_bound_sums_each_layers_roofline_bound(batch):
    """Against the layer formulas: a conv (+ReLU), a separable layer, a pool and a linear layer, counted by hand."""
    from torch import nn

    import sepconv
    from sepconv.bench.roofline import model_bound_s
    from sepconv.cost import profile
    from sepconv.geometry import ConvSpec

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), sepconv.SeparableConv2d(8, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    prof = profile(model, (3, 8, 8))
    conv = conv_cost(ConvSpec.make(3, 8, 3, padding=1), (8, 8), batch=batch)
    dw, pw = separable_cost(ConvSpec.make(8, 16, 3, padding=1), (8, 8), batch=batch).stages
    # bounds count in-bounds FLOPs: a 3x3 kernel with padding 1 on 8 pixels has 8 * 3 - 2 = 22 taps per row
    # inside the input, 22 * 22 per channel pair in 2D (the 1x1 step reads no padding)
    conv_flops, dw_flops = 2 * batch * 8 * 3 * 22 * 22, 2 * batch * 8 * 22 * 22
    pool_bytes = 4 * batch * (16 * 8 * 8 + 16)
    fc_flops, fc_bytes = 2 * batch * 16 * 10, 4 * (batch * (16 + 10) + 16 * 10 + 10)
    for roof in (Roofline(peak_flops=1e9, bandwidth=1e18), Roofline(peak_flops=1e18, bandwidth=1e9),
                 Roofline(peak_flops=3e9, bandwidth=1e10)):
        unfused = sum(roof.bound_s(f, b) for f, b in [(conv_flops, conv.bytes), (dw_flops, dw.bytes),
                                                     (pw.flops, pw.bytes), (0, pool_bytes), (fc_flops, fc_bytes)])
        fused_pair = roof.bound_s(dw_flops + pw.flops, dw.bytes + pw.bytes - dw.output_bytes - pw.input_bytes)
        fused = unfused - roof.bound_s(dw_flops, dw.bytes) - roof.bound_s(pw.flops, pw.bytes) + fused_pair
        assert model_bound_s(prof, roof, batch=batch) == pytest.approx(unfused, rel=1e-12)
        assert model_bound_s(prof, roof, batch=batch, fuse_separable=True) == pytest.approx(fused, rel=1e-12)
    memory_bound = Roofline(peak_flops=1e18, bandwidth=1e9)  # fusing saves exactly the intermediate's round trip
    saved = model_bound_s(prof, memory_bound, batch=batch) - model_bound_s(prof, memory_bound, batch=batch,
                                                                             fuse_separable=True)
    assert saved == pytest.approx(2 * 4 * batch * 8 * 8 * 8 / 1e9, rel=1e-9)
    with pytest.raises(ValueError, match="batch and dtype_bytes must be >= 1, got batch=0"):
        model_bound_s(prof, memory_bound, batch=0)


def test_measured_roofline_takes_the_fastest_engine_and_records_each():
    from sepconv.bench import measure_roofline
    from sepconv.backends.onnxruntime import onnxruntime_available

    roof = measure_roofline(matmul_n=256, copy_mib=8, rounds=2)
    assert roof.peak_flops > 0 and roof.bandwidth > 0
    record = roof.as_dict()
    # torch.mm and the 3x3 convolution (and ONNX Runtime's MatMul when installed) are candidates: the fastest is the peak
    assert roof.torch_peak_flops is not None and roof.conv_peak_flops is not None
    assert roof.peak_flops >= max(roof.torch_peak_flops, roof.conv_peak_flops)
    assert record["torch_peak_gflops"] == pytest.approx(roof.torch_peak_flops / 1e9)
    assert record["conv_peak_gflops"] == pytest.approx(roof.conv_peak_flops / 1e9)
    if not onnxruntime_available():
        assert roof.peak_flops == max(roof.torch_peak_flops, roof.conv_peak_flops)
    gemm_only = measure_roofline(matmul_n=256, copy_mib=8, rounds=2, conv_batch=0)
    assert gemm_only.conv_peak_flops is None and "conv_peak_gflops" not in gemm_only.as_dict()
    if not onnxruntime_available():
        assert gemm_only.torch_peak_flops is None and gemm_only.peak_flops > 0
    with pytest.raises(ValueError, match="conv_batch must be >= 0, got -1"):
        measure_roofline(matmul_n=16, copy_mib=1, rounds=1, conv_batch=-1)


def test_measured_bandwidth_is_the_copy_rate_and_checks_its_arguments(monkeypatch):
    from sepconv.bench import measure_bandwidth
    from sepconv.bench import roofline as roofline_module
    from sepconv.utils.timing import Timing

    # the rate is the bytes copied (read + write) over the copy's median
    monkeypatch.setattr(roofline_module, "interleaved",
                        lambda calls, **kw: {name: Timing(0.004, 0.004, 0.004, (0.004,)) for name in calls})
    assert measure_bandwidth(copy_mib=8, rounds=1) == pytest.approx(2 * 8 * 2**20 / 0.004)
    monkeypatch.undo()
    assert measure_bandwidth(copy_mib=8, rounds=2) > 0
    for bad in ({"copy_mib": 0}, {"rounds": 0}):
        with pytest.raises(ValueError, match="copy_mib and rounds must be >= 1"):
            measure_bandwidth(**bad)


def test_suites_follow_the_zoo():
    mb = mobilenet_v1_suite()
    assert mb[0].spec.in_channels == 32 and mb[0].size == (112, 112) and mb[-1].size == (7, 7)
    assert len({(c.spec.in_channels, c.spec.out_channels, c.size, c.spec.stride) for c in mb}) == len(mb)
    vgg = vgg_blocks_suite()
    assert [c.spec.out_channels for c in vgg] == [64, 64, 128, 128, 256, 256] and vgg[0].batch == 32


def test_run_case_reports_consistent_ratios():
    case = parse_case("4x8x8x3x2", batch=2)
    result = run_case(case, Roofline(1e10, 1e9), rounds=2, backward=True, target_s=0.001)
    s = result.summary()
    expected = separable_cost(case.spec, case.size, batch=2).macs / conv_cost(case.spec, case.size, batch=2).macs
    assert s["mac_ratio"] == pytest.approx(expected)
    assert s["realized"] == pytest.approx(s["speedup"] * s["mac_ratio"])
    assert s["speedup"] == pytest.approx(s["standard_ms"] / s["separable_ms"])
    assert 0 < s["dw_time_share"] < 1 and "train_realized" in s
    if "realized_best" in s:  # oneDNN available: each side's best engine is the fastest of its timings
        assert s["best_separable_ms"] == pytest.approx(min(s["separable_ms"], s["onednn_separable_ms"],
                                                           s.get("fused_separable_ms", float("inf"))))
        assert s["best_standard_ms"] == pytest.approx(min(s["standard_ms"], s["onednn_standard_ms"]))
        assert s["realized_best"] == pytest.approx(s["best_speedup"] * s["mac_ratio"])
    # training: the best of eager and the layer after tune_training, never worse than eager's
    assert s["train_realized_best"] >= s["train_realized"] - 1e-12
    assert s["train_best_separable_engine"] in ("nchw", "nhwc", "tuned")
    # the roofline speedup: standard conv's bound over the sum of the separable stages' bounds, each with the
    # FLOPs of the taps inside the input: 3x3, stride 2, padding 1 on 8 pixels gives 4 outputs whose taps read
    # 2 + 3 + 3 + 3 = 11 input pixels per row, 11 * 11 per channel pair in 2D
    stages = separable_cost(case.spec, case.size, batch=2).stages
    in_bounds_flops = {"standard": 2 * 2 * 8 * 4 * 121, "depthwise": 2 * 2 * 4 * 121, "pointwise": stages[1].flops}
    std_bound = max(in_bounds_flops["standard"] / 1e10, conv_cost(case.spec, case.size, batch=2).bytes / 1e9)
    sep_bound = sum(max(in_bounds_flops[st.name] / 1e10, st.bytes / 1e9) for st in stages)
    assert s["roofline_speedup"] == pytest.approx(std_bound / sep_bound)
    # a fused kernel's bound: all the FLOPs, but only the input, output and weights moved (float32)
    spec = case.spec
    moved = 4 * (2 * 4 * 8 * 8 + 4 * 9 + 8 * 4 + 2 * 8 * 4 * 4)  # input 2x4x8x8, dw 4x3x3, pw 8x4, output 2x8x4x4
    fused_bound = max((in_bounds_flops["depthwise"] + in_bounds_flops["pointwise"]) / 1e10, moved / 1e9)
    assert (spec.in_channels, spec.out_channels, case.size) == (4, 8, (8, 8))
    assert s["fused_roofline_ceiling"] == pytest.approx(std_bound / fused_bound * s["mac_ratio"])
    # the GEMM ceiling: the fastest 1x1 step's MAC rate over the fastest standard convolution's (on its in-bounds
    # MACs), times the separable layer's MACs per 1x1 MAC and the standard's in-bounds share, recomputed from the
    # raw timings and the counts above
    stage = {st.name: st.macs for st in stages}
    t_pw = min(t.median for k, t in result.forward.items() if k.startswith("pointwise/"))
    t_std = min(t.median for k, t in result.forward.items() if k.startswith("standard/"))
    rate = (stage["pointwise"] / t_pw) / (in_bounds_flops["standard"] / 2 / t_std)
    share = in_bounds_flops["standard"] / 2 / conv_cost(case.spec, case.size, batch=2).macs
    assert s["pointwise_rate_vs_standard"] == pytest.approx(rate)
    assert s["standard_in_bounds_share"] == pytest.approx(share) and share == pytest.approx(121 / 144)
    assert s["gemm_ceiling"] == pytest.approx(rate * share * (stage["depthwise"] + stage["pointwise"])
                                              / stage["pointwise"])
    # the training GEMM ceiling: the fastest standard step over the fastest 1x1 step alone, times the MAC ratio
    t_std_train = min(t.median for k, t in result.backward.items() if k in ("standard/nchw", "standard/nhwc"))
    t_pw_train = min(t.median for k, t in result.backward.items() if k.startswith("pointwise/"))
    assert {k for k in result.backward if k.startswith("pointwise/")} == {"pointwise/nchw", "pointwise/nhwc",
                                                                           "pointwise/tuned"}
    assert s["train_gemm_ceiling"] == pytest.approx(t_std_train / t_pw_train * s["mac_ratio"])
    assert s["train_pw_ms"] == pytest.approx(1e3 * t_pw_train)


def test_bench_cli_smoke(tmp_path, capsys):
    assert main(["bench", "--suite", "none", "--shape", "4x8x8", "--rounds", "1", "--no-backward", "--quick",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["machine"]["torch"] == torch.__version__ and len(record["cases"]) == 1
    # the process's allocator state (False unless something in this process, e.g. `sepconv compare`, applied it)
    assert record["machine"]["freed_memory_kept"] is freed_memory_kept()
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert main(["bench", "--suite", "none", "--shape", "4x8"]) == 2
    assert "--shape must be CINxCOUTxSIZE" in capsys.readouterr().err
    assert main(["bench", "--suite", "none"]) == 2
    assert main(["bench", "--suite", "vgg_blocks", "--suite-batch", "0"]) == 2
    assert "--suite-batch must be >= 1, got 0" in capsys.readouterr().err


def test_bench_device_and_dtype_errors(capsys):
    assert main(["bench", "--suite", "none", "--shape", "4x8x8", "--device", "gpu"]) == 2
    assert "--device must be cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert main(["bench", "--suite", "none", "--shape", "4x8x8", "--dtype", "float16"]) == 2
    assert "--dtype float16 needs --device cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "none", "--shape", "4x8x8", "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err
    else:
        assert main(["bench", "--suite", "none", "--shape", "4x8x8", "--device", "cuda:99"]) == 2
        assert "CUDA device(s)" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_on_cuda_records_the_gpu_and_times_training_on_eager(tmp_path):
    assert main(["bench", "--suite", "none", "--shape", "32x64x28", "--batch", "8", "--rounds", "2", "--quick",
                 "--device", "cuda", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["machine"]["device"] == "cuda" and record["machine"]["gpu"]
    case = record["cases"][0]
    assert case["train_realized"] > 0 and "train_realized_best" not in case  # no CPU training engines on CUDA
    assert "fused_separable_ms" not in case  # the fused kernel is CPU-only


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_bench_keep_freed_memory_is_applied_and_recorded(tmp_path):
    """In its own process: the setting is process-wide and permanent."""
    subprocess.run([sys.executable, "-m", "sepconv", "bench", "--suite", "none", "--shape", "4x8x8", "--rounds", "1",
                    "--no-backward", "--quick", "--keep-freed-memory", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    assert json.loads((tmp_path / "bench.json").read_text())["machine"]["freed_memory_kept"] is True


def test_the_training_step_timed_is_one_layer_step_and_hands_the_input_gradient_on():
    """The timed step computes a fresh gradient for the input and weights each call (nothing accumulates)."""
    from torch import nn

    from sepconv.bench.suites import _train_step

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    step = _train_step(conv, x)
    step()
    first_x, first_w = x.grad.clone(), conv.weight.grad.clone()
    step()
    torch.testing.assert_close(x.grad, first_x)
    torch.testing.assert_close(conv.weight.grad, first_w)
    # the gradient of sum(conv(x)) with respect to x: the adjoint convolution of ones
    expected = torch.nn.functional.conv_transpose2d(torch.ones(2, 4, 5, 5), conv.weight.detach(), padding=1)
    torch.testing.assert_close(x.grad, expected)


def test_the_benchmarks_training_step_starts_each_call_from_no_gradients():
    from torch import nn

    from sepconv.bench.suites import training_step

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x, grad = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(2, 4, 5, 5)
    step = training_step(conv, x, grad)
    step()
    step()  # accumulating would double the gradients
    torch.testing.assert_close(x.grad, torch.nn.functional.conv_transpose2d(grad, conv.weight.detach(), padding=1))
    torch.testing.assert_close(conv.bias.grad, grad.sum((0, 2, 3)))


def test_bench_table_fits_100_columns_formats_and_model_cases(tmp_path, capsys):
    """One quick run (a layer and a model's convolutions) as JSON; the table and CSV are formatted from its rows."""
    from sepconv.bench.cli import format_table, rows_csv

    assert main(["bench", "--suite", "none", "--shape", "3x5x9x3x2", "--model", "vgg_blocks", "--kwargs",
                 '{"width": 0.125}', "--model-input", "3x8x8", "--rounds", "1", "--no-backward", "--quick",
                 "--format", "json", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["cases"]
    assert rows[0]["input_shape"] == [1, 3, 9, 9]  # N x C x H x W
    assert [c["case"].split()[0] for c in rows[1:]] == ["features.0", "features.2", "features.5", "features.7",
                                                       "features.10", "features.12"]
    assert rows[1]["input_shape"] == [1, 3, 8, 8] and rows[3]["input_shape"] == [1, 8, 4, 4]
    assert rows[0]["roofline_ceiling"] == pytest.approx(rows[0]["roofline_speedup"] * rows[0]["mac_ratio"])
    rows[0]["case"] = "a very long case name " * 5
    table = format_table(rows)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert table.splitlines()[0].split()[1:] == ["std", "ms", "sep", "ms", "speedup", "MAC", "ratio", "realized",
                                                 "roofline", "ceiling"]
    assert "GEMM ceiling" in format_table(rows, verbose=True) and "GEMM ceiling" not in table
    lines = rows_csv(rows).splitlines()
    assert len(lines) == len(rows) + 1 and "realized" in lines[0].split(",")


def test_suite_names_checks_every_name():
    from sepconv.bench.suites import SUITES, suite_names

    assert suite_names("vgg_blocks,mobilenet_v1") == ["vgg_blocks", "mobilenet_v1"]
    assert set(suite_names(",".join(SUITES))) == set(SUITES)
    with pytest.raises(ValueError, match=r"^--suite takes mobilenet_v1, vgg_blocks, got foo, bar$"):
        suite_names("vgg_blocks,foo,bar")


def test_suite_parser_defaults_and_errors(capsys):
    """The suite benchmarks' shared options: their defaults, and exit code 2 naming the option and its value."""
    from sepconv.bench.suites import SUITES, parse_suite_args, suite_parser

    parser = suite_parser("a benchmark", threads=2, rounds=9)
    args, suites = parse_suite_args(parser, [], min_threads=2, why=" (a reason)")
    assert (args.threads, args.rounds, args.out) == (2, 9, None) and suites == list(SUITES)
    args, suites = parse_suite_args(parser, ["--suite", "vgg_blocks", "--threads", "3", "--out", "d"])
    assert (args.threads, args.out, suites) == (3, "d", ["vgg_blocks"])
    for argv, message in ((["--threads", "1"], "--threads must be >= 2 (a reason), got 1"),
                          (["--rounds", "0"], "--rounds must be >= 1, got 0"),
                          (["--suite", "nope"], "--suite takes mobilenet_v1, vgg_blocks, got nope")):
        with pytest.raises(SystemExit) as exit_info:
            parse_suite_args(parser, argv, min_threads=2, why=" (a reason)")
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cold_inputs_cycles_through_copies_that_fill_the_byte_budget():
    from sepconv.bench.suites import cold_inputs

    x = torch.randn(2, 3, 4, 5)
    total = 10 * x.numel() * x.element_size() + 1  # just over ten inputs' bytes: eleven tensors
    next_input = cold_inputs(x, total_bytes=total)
    seen = [next_input() for _ in range(22)]
    storages = {t.data_ptr() for t in seen}
    assert len(storages) == 11 and x.data_ptr() in storages
    assert all(torch.equal(t, x) for t in seen)
    assert [t.data_ptr() for t in seen[:11]] == [t.data_ptr() for t in seen[11:]]  # the same cycle again
    hot = cold_inputs(x, total_bytes=0)
    assert all(hot() is x for _ in range(3))


def test_interleaved_shuffles_the_order_each_round_repeatably():
    log = []
    names = "abcdef"
    candidates = {n: (lambda n=n: log.append(n)) for n in names}

    def rounds_seen(**kw):
        log.clear()
        t = interleaved(candidates, rounds=6, target_s=0.0, **kw)
        assert all(len(t[n].samples) == 6 for n in names)
        warm = len(names) * 3  # calls_for's warm-up and probe: three calls per candidate, in insertion order
        assert log[:warm] == [n for n in names for _ in range(3)]
        timed = log[warm:]
        return [tuple(timed[k:k + len(names)]) for k in range(0, len(timed), len(names))]

    fixed = rounds_seen()
    assert set(fixed) == {tuple(names)}
    shuffled = rounds_seen(shuffle_seed=3)
    assert all(sorted(r) == list(names) for r in shuffled) and len(set(shuffled)) > 1
    assert rounds_seen(shuffle_seed=3) == shuffled
