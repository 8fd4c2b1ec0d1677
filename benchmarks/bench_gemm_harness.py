"""The fused kernel's 1x1 step in C (benchmarks/fused_gemm_harness.c), built several ways and run alternately.

    python benchmarks/bench_gemm_harness.py [--variant NAME=FLAGS ...] [--couts 64,256,1024] [--repeats 4] [--out DIR]

Each variant is the harness compiled with `cc -O3 -march=native -std=c11` plus its own flags, e.g.
`avx2=-mno-avx512f` or `avx2-no-write-prefetch=-mno-avx512f -DWRITE_PREFETCH=0`. For every output-channel
count the variants run one after the other, `--repeats` times over (so a slow spell of the machine falls on all
of them); each run prints the best of 7 passes for 32, 64, 128 and 256 input channels, with the output rewritten
in place (`warm`: in L1/L2) and written through a 3-12 MB buffer (`through`). The record holds every run's
GFLOP/s and their medians per variant, and each variant's FMA-loop peak. Default variants: the AVX2 build with
and without the block's write prefetch (`WRITE_PREFETCH` in fused_dwpw.c), and the native build.

Writes `gemm.json` (with the machine) into --out (default `benchmarks/results/gemm-harness-cpu`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ("avx2=-mno-avx512f", "avx2-no-write-prefetch=-mno-avx512f -DWRITE_PREFETCH=0", "native=")
LINE = re.compile(r"^\s*(\d+) -> (\d+) channels, (warm|output written through): ([\d.]+) GFLOP/s")
PEAK = re.compile(r"FMA loop: ([\d.]+) GFLOP/s")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not re.fullmatch(r"[\w.-]+", name):
        raise argparse.ArgumentTypeError(f"--variant must be NAME=FLAGS with NAME of letters, digits, '.', '_' or "
                                         f"'-', got {text!r}")
    return name, shlex.split(flags)


def build(cc: str, flags: list[str], binary: Path) -> None:
    cmd = [cc, "-O3", "-march=native", "-std=c11", *flags, str(HERE / "fused_gemm_harness.c"), "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_gemm_harness: building with {' '.join(cmd)} failed:\n{done.stderr}")


def run(binary: Path, cout: int) -> tuple[float | None, dict[str, float]]:
    out = subprocess.run([str(binary), str(cout)], capture_output=True, text=True, check=True).stdout
    peak = PEAK.search(out)
    rows = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            where = "warm" if m.group(3) == "warm" else "through"
            rows[f"{m.group(1)}->{m.group(2)} {where}"] = float(m.group(4))
    return (float(peak.group(1)) if peak else None), rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", type=parse_variant, dest="variants")
    p.add_argument("--couts", default="64,256,1024")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out")
    args = p.parse_args(argv)
    variants = args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS]
    try:
        couts = [int(c) for c in args.couts.split(",")]
    except ValueError:
        p.error(f"--couts must be comma-separated integers, got {args.couts!r}")
    if args.repeats < 1 or any(c < 1 for c in couts):
        p.error(f"--repeats and every --couts value must be >= 1, got {args.repeats} and {couts}")
    if len({name for name, _ in variants}) != len(variants):
        p.error(f"--variant names must differ, got {[name for name, _ in variants]}")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        p.error("no C compiler: set CC or install cc/gcc")
    out = Path(args.out) if args.out else HERE / "results" / "gemm-harness-cpu"
    runs: dict[str, dict[str, list[float]]] = {name: {} for name, _ in variants}
    peaks: dict[str, list[float]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        binaries = {}
        for name, flags in variants:
            binaries[name] = Path(tmp) / name
            build(cc, flags, binaries[name])
        for cout in couts:
            for repeat in range(args.repeats):
                for name, _ in variants:
                    peak, rows = run(binaries[name], cout)
                    if peak is not None:
                        peaks[name].append(peak)
                    for key, gflops in rows.items():
                        runs[name].setdefault(key, []).append(gflops)
                print(f"Cout {cout}: repeat {repeat + 1}/{args.repeats} done", flush=True)
    medians = {name: {key: statistics.median(xs) for key, xs in rows.items()} for name, rows in runs.items()}
    first = variants[0][0]
    for key in medians[first]:
        print(f"{key:>22}: " + ", ".join(f"{name} {medians[name][key]:6.1f}" for name, _ in variants
                                         if key in medians[name]) + " GFLOP/s (medians)")
    record = {"machine": machine_info(), "compiler": cc, "repeats": args.repeats, "couts": couts,
              "variants": {name: flags for name, flags in variants},
              "fma_loop_gflops_median": {name: statistics.median(v) for name, v in peaks.items() if v},
              "gflops_median": medians, "gflops_runs": runs}
    atomic_write_bytes(out / "gemm.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'gemm.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
