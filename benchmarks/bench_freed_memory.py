"""Page faults per step with and without `sepconv.keep_freed_memory()`, each in fresh processes.

    python benchmarks/bench_freed_memory.py [--processes 20] [--warmup 10] [--steps 10] [--out DIR]

Each process imports torch and sepconv, then runs a step that makes two 8 MiB float32 tensors
(``torch.ones``) and frees them, as a training step does with its activations. It counts minor
page faults (``getrusage``) over ``--steps`` steps with glibc's default malloc settings, applies
``keep_freed_memory()`` and counts them over the next ``--warmup`` steps (``first``) and the
``--steps`` after those (``kept``): glibc's aligned allocations leave the heap growing for a few
steps before freed blocks are reused (``after_default``). Another ``--processes`` fresh
processes apply the setting before their first step, as the ``sepconv compare`` CLI does
(``from_start``). A fresh process per sample, because the setting is permanent and the heap's state
depends on the process's whole allocation history. Writes ``freed_memory.json`` (every process's
figures, the medians, how many processes still faulted with the setting on, the machine and the load
average) into --out (default ``benchmarks/results/freed-memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent

_PROBE = """
import resource, sys, torch
import sepconv

def step():
    a = torch.ones(2 * 1024 * 1024)
    b = torch.ones(2 * 1024 * 1024)
    del a, b

def faults_per_step(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps

warmup, steps = int(sys.argv[1]), int(sys.argv[2])
if sys.argv[3] == "from_start":
    default = float("nan")
else:
    step()
    default = faults_per_step(steps)
applied = sepconv.keep_freed_memory()
print(default, applied, faults_per_step(warmup), faults_per_step(steps))
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=_positive, default=20, help="fresh processes per mode (default 20)")
    parser.add_argument("--warmup", type=_positive, default=10, help="first steps with the setting on (default 10)")
    parser.add_argument("--steps", type=_positive, default=10, help="steps counted after them (default 10)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "freed-memory")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    modes = {}
    for mode in ("after_default", "from_start"):
        samples = []
        for i in range(args.processes):
            out = subprocess.run(
                [sys.executable, "-c", _PROBE, str(args.warmup), str(args.steps), mode],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            default, applied, first, kept = out.stdout.split()
            samples.append(
                {"default": float(default), "applied": applied == "True", "first": float(first), "kept": float(kept)}
            )
            print(f"{mode} {i + 1}/{args.processes}: {default} -> {float(first):.0f}, then {float(kept):.0f} faults per step")
        modes[mode] = {
            "samples": samples,
            "median_first": statistics.median(s["first"] for s in samples),
            "median_kept": statistics.median(s["kept"] for s in samples),
            "processes_still_faulting": sum(s["kept"] > 0 for s in samples),
        }
    defaults = [s["default"] for s in modes["after_default"]["samples"]]
    record = {
        "what": "minor page faults per step (two 8 MiB tensors made and freed), glibc defaults vs keep_freed_memory()",
        "warmup": args.warmup,
        "steps": args.steps,
        "processes": args.processes,
        "median_default": statistics.median(defaults),
        "modes": modes,
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        args.out / "freed_memory.json", (json.dumps(record, indent=2) + "\n").encode()
    )
    print(f"glibc defaults: median {record['median_default']:.0f} faults per step")
    for mode, summary in modes.items():
        print(
            f"keep_freed_memory() {mode}: median {summary['median_first']:.0f} faults per step in the first "
            f"{args.warmup} steps, then {summary['median_kept']:.0f}; "
            f"{summary['processes_still_faulting']} of {args.processes} processes still faulting then"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
