"""bench_isa.py: a shape's row holds what explains it (the bandwidth around its rounds, optimize's own timings)."""

import pytest

import bench_isa
from sepconv.bench.roofline import Roofline
from sepconv.bench.suites import Case
from sepconv.geometry import ConvSpec


def test_a_row_records_the_bandwidth_around_it_and_what_optimize_timed(monkeypatch):
    monkeypatch.setenv("SEPCONV_ISA", bench_isa.CALLER_ISA)  # run_shape sets it; restored after the test
    probes = iter([11e9, 13e9])  # before and after the rounds, in that order
    monkeypatch.setattr(bench_isa, "measure_bandwidth", lambda: next(probes))
    case = Case("tiny", ConvSpec.make(8, 16, 3, padding=1, bias=False), (6, 6), 1)
    row = bench_isa.run_shape(case, Roofline(1e10, 1e9), [], rounds=1, threads=1)
    assert row["bandwidth_gbs_around"] == pytest.approx([11.0, 13.0])
    timed = row["sepconv_timings_ms"]
    assert "original" in timed and all(v > 0 for v in timed.values())
    # optimize keeps the candidate its own medians ranked first (a close call is confirmed by a second timing)
    confirmed = {k[:-len(" (confirmation)")]: v for k, v in timed.items() if k.endswith(" (confirmation)")}
    ranked = confirmed or {k: v for k, v in timed.items() if k != "original"}
    assert row["sepconv_candidate"] == min(ranked, key=ranked.get)
    assert row["sepconv_timing_clock"] in ("wall", "cpu")
