"""Where the host runs two threads, and what that does to an image the fused kernel shares between them by rows.

    python benchmarks/bench_thread_placement.py [--seconds 600] [--layer 28,28,256,512,2] [--out DIR]

Builds `benchmarks/thread_placement.c` (the fused kernel included; `cc -O3 -march=native -fopenmp`), then for
`--seconds` takes samples one after the other, each: the memory bandwidth of a 64 MiB copy with two threads
(`sepconv.bench.roofline.measure_bandwidth`), then one run of the C program, with its threads bound to CPUs
(`OMP_PROC_BIND=true`): the time a cache line takes between the two threads (`hop_ns`), and each thread's
median time on its half of the layer's output rows (the tile `kernel_schedule` gives the layer): as the library
runs it, swapped, with the output streamed, the second half alone, and with the second half's output moved
128 KiB away from the first's (see the C file). Default layer: MobileNetV1's 256 -> 512 @28 s2, batch 1.

A sample is `near` where `hop_ns` is under `--near-ns` (default `NEAR_NS`, 80: cores that share an L3 take a few tens of
ns), else `far`. The record holds every sample and, per placement, the median bandwidth and each variant's
median times. On a virtual machine the host may move the two vCPUs between such placements within minutes;
the run shows whether a two-thread record's slow spells follow them. Writes `placement.json` (with the machine)
into --out (default `benchmarks/results/placement-cpu`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sepconv.backends import native
from sepconv.backends.fused import default_tile, kernel_schedule
from sepconv.bench.roofline import measure_bandwidth
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent
VARIANTS = ("rows", "rows_swapped", "rows_streamed", "bottom_alone", "rows_bottom_shifted")
#: A hop (ns) under this is two cores sharing an L3 (``near``); at or over it, ``far``. Near took 23.8-31.2 ns and
#: far 155-270 on the Zen 4 VM (``placement-zen4-avx512-2thread``).
NEAR_NS = 80.0


def placement(hop_ns: float, near_ns: float = NEAR_NS) -> str:
    """``"near"`` for a hop (ns) under ``near_ns``, else ``"far"``."""
    return "near" if hop_ns < near_ns else "far"


def build(cc: str, binary: Path) -> None:
    """``thread_placement.c`` into ``binary`` (``-O3 -march=native -fopenmp``); SystemExit with the compiler's
    message if that fails."""
    cmd = [cc, "-O3", "-march=native", "-std=gnu11", "-fopenmp", str(HERE / "thread_placement.c"), "-o", str(binary),
           "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_thread_placement: building with {' '.join(cmd)} failed:\n{done.stderr}")


def bound_env() -> dict:
    """The environment the C program runs in: its OpenMP threads bound to CPUs (``OMP_PROC_BIND=true``)."""
    return dict(os.environ, OMP_PROC_BIND="true")


#: Seconds :func:`hop_probe`'s function waits before it measures: long enough for the caller's idle threads to stop
#: spinning (an ONNX Runtime session's, right after its run, made the hop read twice as long on the Zen 4 VM).
HOP_SETTLE_S = 0.05


def hop_probe():
    """A function returning the hop between two threads (ns; ``thread_placement.c hop``, about 55-90 ms a call
    with :data:`HOP_SETTLE_S`), built once into a directory removed at exit; None where the machine has fewer than
    two CPUs or no C compiler. Other benchmarks record it beside their rounds (``bench_isa.py``)."""
    cc = native._compiler()  # the one the library builds its kernels with
    if cc is None or (os.cpu_count() or 1) < 2:
        return None
    directory = tempfile.TemporaryDirectory()
    atexit.register(directory.cleanup)
    binary = Path(directory.name) / "thread_placement"
    build(cc, binary)
    env = bound_env()

    def hop() -> float:
        time.sleep(HOP_SETTLE_S)
        return float(subprocess.run([str(binary), "hop"], capture_output=True, text=True, check=True,
                                    env=env).stdout)
    return hop


def parse_layer(text: str) -> tuple[int, int, int, int, int]:
    """``--layer``'s ``H,W,C,COUT,STRIDE``; ``argparse.ArgumentTypeError`` naming the value otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 5 or values[0] < 2 or min(values[1:]) < 1:
        raise argparse.ArgumentTypeError(f"--layer must be H,W,C,COUT,STRIDE (H >= 2, the others >= 1), got {text!r}")
    return values  # type: ignore[return-value]


def shared_tile(h: int, w: int, in_channels: int, out_channels: int, stride: int) -> int:
    """The tile (output pixels) :func:`~sepconv.backends.fused.kernel_schedule` gives one image of this layer
    (3x3, padding 1) on two threads; ``ValueError`` unless that is two tiles of rows, one a thread."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    tile, groups, _ = kernel_schedule(1, ho, wo, out_channels, default_tile(in_channels), 2, (stride, stride))
    if groups != 1 or -(-ho * wo // tile) != 2 or tile % wo:
        raise ValueError(f"the fused kernel does not share a {h}x{w} image of {in_channels} -> {out_channels} "
                         f"channels at stride {stride} by rows between two threads (tile {tile}, {groups} "
                         "channel groups); pick a layer it does, e.g. 28,28,256,512,2")
    return tile


def summarize(samples: list[dict], near_ns: float) -> dict:
    """Per placement (``near``: ``hop_ns`` under ``near_ns``, else ``far``) the number of samples, the median
    ``hop_ns`` and ``bandwidth_gbs``, and each variant's median ``[first thread, second thread, round]`` (us)
    with ``second_over_first``, the second thread's median over the first's (``None`` where the first ran
    nothing). Placements without samples are left out."""
    out = {}
    for name in ("near", "far"):
        group = [s for s in samples if placement(s["hop_ns"], near_ns) == name]
        if not group:
            continue
        entry = {"samples": len(group), "hop_ns": statistics.median(s["hop_ns"] for s in group),
                 "bandwidth_gbs": statistics.median(s["bandwidth_gbs"] for s in group)}
        for variant in VARIANTS:
            times = [statistics.median(s[variant][k] for s in group) for k in range(3)]
            entry[variant] = {"us": times, "second_over_first": times[1] / times[0] if times[0] > 0 else None}
        out[name] = entry
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--layer", type=parse_layer, default=(28, 28, 256, 512, 2))
    p.add_argument("--calls", type=int, default=300, help="rounds per variant and sample (default 300)")
    p.add_argument("--near-ns", type=float, default=NEAR_NS)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.calls < 1 or args.near_ns <= 0:
        p.error(f"--seconds and --near-ns must be > 0 and --calls >= 1, got {args.seconds}, {args.near_ns} and "
                f"{args.calls}")
    if (os.cpu_count() or 1) < 2:
        p.error("needs at least two CPUs")
    cc = native._compiler()
    if cc is None:
        p.error("no C compiler: set CC or install cc, gcc or clang")
    try:
        tile = shared_tile(*args.layer)
    except ValueError as e:
        p.error(f"--layer {','.join(map(str, args.layer))}: {e}")
    out = Path(args.out) if args.out else HERE / "results" / "placement-cpu"
    torch.set_num_threads(2)
    env = bound_env()
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "thread_placement"
        build(cc, binary)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            bandwidth = measure_bandwidth(copy_mib=64, rounds=5) / 1e9
            line = subprocess.run([str(binary), *map(str, args.layer), str(tile), str(args.calls)], capture_output=True,
                                  text=True, check=True, env=env).stdout
            sample = {"seconds": round(args.seconds - (end - time.monotonic()), 1), "bandwidth_gbs": bandwidth,
                      **json.loads(line)}
            samples.append(sample)
            print(f"{sample['seconds']:6.1f} s  {bandwidth:5.1f} GB/s  hop {sample['hop_ns']:6.1f} ns  "
                  + "  ".join(f"{v} {sample[v][0]:.1f}/{sample[v][1]:.1f}" for v in VARIANTS), flush=True)
    summary = summarize(samples, args.near_ns)
    for name, entry in summary.items():
        print(f"{name}: {entry['samples']} samples, hop {entry['hop_ns']:.0f} ns, {entry['bandwidth_gbs']:.1f} GB/s; "
              + ", ".join(f"{v} {entry[v]['us'][0]:.1f}/{entry[v]['us'][1]:.1f} us" for v in VARIANTS))
    h, w, c, cout, stride = args.layer
    record = {"machine": machine_info(), "compiler": cc, "layer": {"h": h, "w": w, "in_channels": c,
                                                                   "out_channels": cout, "stride": stride,
                                                                   "tile": tile},
              "calls": args.calls, "near_ns": args.near_ns, "summary": summary, "samples": samples}
    atomic_write_bytes(out / "placement.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'placement.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
