"""Summarize several ``sepconv compare`` runs of one setting that differ only in ``--seed``.

Usage: ``python benchmarks/summarize_compare_seeds.py RUN_DIR [RUN_DIR ...]`` (each holding results.json).
Prints a Markdown table: per variant its parameters and MACs with their ratio to ``standard``, the final
validation accuracy per seed, and the accuracy difference to ``standard`` per seed with its mean and
sample standard deviation, then the load averages recorded before each variant's latency measurement.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in argv]
    if not runs:
        print(__doc__)
        return 2
    runs.sort(key=lambda r: r["config"]["seed"])
    seeds = [r["config"]["seed"] for r in runs]
    rows = {r["variant"]: r for r in runs[0]["table"]}
    base = rows["standard"]
    acc = {v: [{x["variant"]: x for x in r["table"]}[v]["final_val_acc"] for r in runs] for v in rows}
    print("| variant | params (x standard) | MACs (x standard) | final val acc, seeds "
          + ", ".join(map(str, seeds)) + " | difference to standard, per seed | mean +- sd |")
    print("|---|---|---|---|---|---|")
    for v, row in rows.items():
        diffs = [a - s for a, s in zip(acc[v], acc["standard"])]
        spread = f"{statistics.mean(diffs):+.4f} +- {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else f"{diffs[0]:+.4f}"
        print(f"| {v} | {row['params']:,} ({row['params'] / base['params']:.3f}) | {row['macs']:,} "
              f"({row['macs'] / base['macs']:.3f}) | " + " / ".join(f"{a:.4f}" for a in acc[v])
              + " | " + " / ".join(f"{d:+.4f}" for d in diffs) + f" | {spread} |")
    for r in runs:
        loads = {v: e.get("load_average_before_latency") for v, e in r["variants"].items()}
        print(f"seed {r['config']['seed']}, threads {r['config']['threads']}: status {r['status']}, machine busy "
              f"{r['measurement'].get('machine_busy')}, 1-min load before each latency: "
              + ", ".join(f"{v} {la[0] if la else '-'}" for v, la in loads.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
