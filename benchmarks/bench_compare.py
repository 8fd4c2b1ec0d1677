"""Benchmark: wall time and peak memory of the default ``sepconv compare`` run.

Runs ``sepconv compare`` (no data/model options, i.e. the defaults a new user
gets) in a child process, measures its wall time (``time.perf_counter``) and
peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), and writes
``benchmarks/bench_compare.json`` (and its accuracy/costs plots beside it) with the machine, the load average before
and after (other work on the machine inflates the times), the command and the
run's final table. This is a measurement, not a test: nothing is asserted.

    python benchmarks/bench_compare.py [--threads N] [--out-json PATH] [-- extra compare args]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info


def machine() -> dict:
    """``sepconv.utils.machine.machine_info`` (CPU family/model and vector ISA included) plus the cores this process
    may use and the memory size. Its ``torch_threads`` is this parent's; the run's own is in ``run_environment``."""
    info = machine_info()
    info["affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/meminfo") as handle:
            info["mem_total"] = handle.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the run (default: unset)")
    parser.add_argument("--out-json", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument("extra", nargs="*", help="extra arguments for sepconv compare (after --)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "sepconv", "compare", "--quiet", "--out", str(out), *args.extra]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results = json.loads((out / "results.json").read_text())
        stem = Path(args.out_json).with_suffix("")
        plots = {}
        for name in ("accuracy.png", "costs.png"):  # kept with the record, for the README and docs
            target = Path(f"{stem}_{name}")
            atomic_write_bytes(target, (out / name).read_bytes())
            plots[name] = target.name
    record = {
        "benchmark": "default `sepconv compare` run (embedded digits, vgg_blocks, all variants)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "sepconv compare --quiet --out TMP " + " ".join(args.extra),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "wall_time_s": round(wall, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "machine": machine(),
        "run_environment": results["environment"],
        "config": results["config"],
        "table": results["table"],
        "plots": plots,
    }
    atomic_write_bytes(args.out_json, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wall time {wall:.1f} s, peak RSS {peak_kib / 1024:.0f} MiB -> {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
