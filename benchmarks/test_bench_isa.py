"""bench_isa.py: a shape's row holds what explains it (the bandwidth around its rounds, optimize's own timings)."""

import pytest
import torch

import bench_isa
from sepconv.bench.roofline import Roofline
from sepconv.bench.suites import Case
from sepconv.cost import conv_cost, separable_cost
from sepconv.geometry import ConvSpec
from sepconv.utils.timing import Timing


def test_a_row_records_the_bandwidth_around_it_and_what_optimize_timed(monkeypatch):
    monkeypatch.setenv("SEPCONV_ISA", bench_isa.CALLER_ISA)  # run_shape sets it; restored after the test
    probes = iter([11e9, 13e9])  # before and after the rounds, in that order
    monkeypatch.setattr(bench_isa, "measure_bandwidth", lambda: next(probes))
    case = Case("tiny", ConvSpec.make(8, 16, 3, padding=1, bias=False), (6, 6), 1)
    row = bench_isa.run_shape(case, Roofline(1e10, 1e9), [], rounds=1, threads=1)
    assert row["bandwidth_gbs_around"] == pytest.approx([11.0, 13.0])
    # the ceiling again with the larger bandwidth around the rounds in the pass's roofline
    std_cost = conv_cost(case.spec, case.size, batch=1)
    mac_ratio = std_cost.macs / separable_cost(case.spec, case.size, batch=1).macs
    assert row["fused_roofline_ceiling"] == pytest.approx(bench_isa.fused_ceiling(case, Roofline(1e10, 1e9), std_cost,
                                                                                 mac_ratio))
    assert row["fused_roofline_ceiling_around"] == pytest.approx(
        bench_isa.fused_ceiling(case, Roofline(1e10, 13e9), std_cost, mac_ratio))
    assert row["fused_roofline_ceiling_around"] != pytest.approx(row["fused_roofline_ceiling"])
    assert row["of_ceiling_around"]["sepconv"] == pytest.approx(
        row["realized"]["sepconv"] / row["fused_roofline_ceiling_around"])
    timed = row["sepconv_timings_ms"]
    assert "original" in timed and all(v > 0 for v in timed.values())
    # optimize keeps the candidate its own medians ranked first (a close call is confirmed by a second timing)
    confirmed = {k[:-len(" (confirmation)")]: v for k, v in timed.items() if k.endswith(" (confirmation)")}
    ranked = confirmed or {k: v for k, v in timed.items() if k != "original"}
    assert row["sepconv_candidate"] == min(ranked, key=ranked.get)
    assert row["sepconv_timing_clock"] in ("wall", "cpu")


def test_a_row_records_the_hop_between_threads_around_its_rounds_where_given_a_probe(monkeypatch):
    monkeypatch.setenv("SEPCONV_ISA", bench_isa.CALLER_ISA)
    monkeypatch.setattr(bench_isa, "measure_bandwidth", lambda: 1e10)
    case = Case("tiny", ConvSpec.make(8, 16, 3, padding=1, bias=False), (6, 6), 1)
    hops = iter([27.0, 168.0])  # before and after the rounds, in that order
    row = bench_isa.run_shape(case, Roofline(1e10, 1e9), [], rounds=1, threads=1, hop=lambda: next(hops))
    assert row["hop_ns_around"] == [27.0, 168.0] and row["placement"] == "far"  # either hop far: far
    hops = iter([27.0, 30.0])
    assert bench_isa.run_shape(case, Roofline(1e10, 1e9), [], rounds=1, threads=1,
                               hop=lambda: next(hops))["placement"] == "near"
    row = bench_isa.run_shape(case, Roofline(1e10, 1e9), [], rounds=1, threads=1)
    assert row["hop_ns_around"] is None and row["placement"] is None


def test_every_candidate_is_timed_without_grad_and_each_build_runs_its_own_kernels(monkeypatch):
    monkeypatch.setenv("SEPCONV_ISA", bench_isa.CALLER_ISA)
    monkeypatch.setattr(bench_isa, "measure_bandwidth", lambda: 1e10)
    seen = {}

    def fake_interleaved(candidates, rounds, target_s, shuffle_seed=None):
        for name, fn in candidates.items():
            fn()
            seen[name] = torch.is_grad_enabled()
        return {name: Timing(1e-3, 1e-3, 1e-3, (1e-3,)) for name in candidates}

    monkeypatch.setattr(bench_isa, "interleaved", fake_interleaved)
    built = []
    real_init = bench_isa.FusedSeparableConv2d.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self._isa)

    monkeypatch.setattr(bench_isa.FusedSeparableConv2d, "__init__", recording_init)
    variants = bench_isa.isas()
    case = Case("tiny", ConvSpec.make(8, 16, 3, padding=1, bias=False), (6, 6), 1)
    row = bench_isa.run_shape(case, Roofline(1e10, 1e9), variants, rounds=1, threads=1, parts=True)
    assert seen and not any(seen.values()), seen
    assert {f"fused_{name}" for _, name in variants} <= set(row["median_ms"])
    # each build's candidate was constructed under its own request, and the caller's variant is set back after
    assert built[:len(variants)] == [request for request, _ in variants]
    assert bench_isa.os.environ["SEPCONV_ISA"] == bench_isa.CALLER_ISA
