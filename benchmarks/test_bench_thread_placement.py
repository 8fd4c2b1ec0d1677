"""bench_thread_placement.py: samples grouped by where the threads ran, the layer on the library's own tile, and
the C program it builds."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import bench_thread_placement as bench
from sepconv.backends import native
from sepconv.backends.fused import default_tile, kernel_schedule


def sample(hop, bandwidth, first, second):
    """A sample whose variants all time (first, second) per thread, bottom_alone with its first thread idle."""
    times = {v: [first, second, max(first, second) + 1] for v in bench.VARIANTS}
    times["bottom_alone"] = [0.0, second, second + 1]
    return {"hop_ns": hop, "bandwidth_gbs": bandwidth, **times}


def test_samples_are_grouped_by_the_hop_between_the_threads():
    samples = [sample(25, 40, 234, 235), sample(30, 41, 236, 237), sample(170, 65, 234, 250),
               sample(27, 39, 235, 236), sample(180, 60, 235, 252)]
    summary = bench.summarize(samples, near_ns=80)
    assert summary["near"]["samples"] == 3 and summary["far"]["samples"] == 2
    assert summary["near"]["hop_ns"] == 27 and summary["near"]["bandwidth_gbs"] == 40
    assert summary["far"]["rows"]["us"][:2] == [pytest.approx(234.5), pytest.approx(251)]
    assert summary["far"]["rows"]["second_over_first"] == pytest.approx(251 / 234.5)
    assert summary["near"]["bottom_alone"]["second_over_first"] is None
    # a threshold below every hop puts all samples in one group, and an empty group is left out
    assert set(bench.summarize(samples, near_ns=10)) == {"far"}


def test_the_layer_runs_on_the_tile_the_library_gives_it():
    assert bench.shared_tile(28, 28, 256, 512, 2) == kernel_schedule(1, 14, 14, 512, default_tile(256), 2, (2, 2))[0]
    assert bench.shared_tile(28, 28, 256, 512, 2) % 14 == 0  # whole rows
    with pytest.raises(ValueError, match="does not share a 14x14 image of 512 -> 512"):
        bench.shared_tile(14, 14, 512, 512, 1)  # split by output channels


@pytest.mark.parametrize("text", ["28,28,256,512", "28,28,256,512,0", "1,28,256,512,2", "a,b,c,d,e"])
def test_a_bad_layer_is_refused(text):
    with pytest.raises(Exception, match="H,W,C,COUT,STRIDE"):
        bench.parse_layer(text)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the C program runs two threads")
def test_the_c_program_times_each_thread_on_its_half(tmp_path):
    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    binary = tmp_path / "thread_placement"
    subprocess.run([cc, "-O1", "-std=gnu11", "-fopenmp", str(Path(bench.HERE) / "thread_placement.c"), "-o",
                    str(binary), "-lm"], check=True, capture_output=True)
    tile = bench.shared_tile(12, 12, 16, 128, 1)
    out = json.loads(subprocess.run([str(binary), "12", "12", "16", "128", "1", str(tile), "5"], check=True,
                                    capture_output=True, text=True).stdout)
    assert out["hop_ns"] > 0
    for variant in bench.VARIANTS:
        first, second, whole = out[variant]
        assert second > 0 and whole >= max(first, second) * 0.99
        assert (first == 0) == (variant == "bottom_alone")
    # a tile that does not make two tiles is refused with exit code 2
    done = subprocess.run([str(binary), "12", "12", "16", "128", "1", "24", "5"], capture_output=True, text=True)
    assert done.returncode == 2 and "not two" in done.stderr
