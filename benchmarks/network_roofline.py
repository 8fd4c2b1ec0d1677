"""Whole networks' roofline bounds from a recorded roofline, set beside the measured times of a networks record.

    python benchmarks/network_roofline.py --roofline-from RECORD --networks RECORD [--networks RECORD ...] [--out FILE]

A derivation, not a measurement: the roofline (peak FLOP/s and bandwidth) is read from
a record that measured it (any JSON with a top-level ``roofline``, e.g. those of
``bench_gpu_graphs.py``), and each network of each ``bench_networks.py`` record
(its batch; records in another precision than the roofline's are skipped) gets the bounds ``bench_networks.py`` now records itself
(``roofline_bound``; ``sepconv.bench.model_bound_s``), with each variant's fastest
measured path as a fraction of its bound. For records taken before
``bench_networks.py`` recorded bounds; the roofline should come from the same machine
and session.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# this directory's script (sys.path[0] when run as a script)
from bench_networks import NETWORKS, roofline_bounds

from sepconv.utils.io import atomic_write_bytes
from sepconv.bench.roofline import Roofline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roofline-from", required=True, type=Path)
    p.add_argument("--networks", required=True, type=Path, action="append")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    def load(path: Path, key: str) -> dict:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            p.error(f"cannot read {path}: {error}")
        if not isinstance(record, dict) or key not in record:
            p.error(f"{path}: not a record with a top-level {key!r}")
        return record

    source = load(args.roofline_from, "roofline")
    r = source["roofline"]
    roof_dtype = source.get("dtype", source.get("machine", {}).get("dtype", "float32"))
    roof = Roofline(peak_flops=r["peak_gflops"] * 1e9, bandwidth=r["bandwidth_gbs"] * 1e9)
    kwargs = {name: kw for name, kw, _ in NETWORKS}
    rows = []
    for path in args.networks:
        record = load(path, "rows")
        if not all(isinstance(r, dict) and {"network", "input", "variants"} <= set(r) for r in record["rows"]):
            p.error(f"{path}: not a bench_networks.py record (rows need network, input and variants)")
        if record.get("dtype", "float32") != roof_dtype:  # the compute peak depends on the precision
            print(f"skipping {path}: {record.get('dtype', 'float32')}, the roofline was measured in {roof_dtype}")
            continue
        dtype = getattr(torch, roof_dtype)
        for row in record["rows"]:
            bound = roofline_bounds(row["network"], kwargs[row["network"]], tuple(row["input"]), roof, dtype)
            fastest = {v: min(t for k, t in row["variants"][v]["median_ms"].items() if k != "original")
                       for v in ("standard", "separable")}
            out = {"record": str(path), "network": row["network"], "batch": row["input"][0], "dtype": str(dtype),
                   "bound": bound, "fastest_ms": fastest,
                   "fraction_of_bound": {"standard": bound["standard_ms"] / fastest["standard"],
                                         "separable": bound["separable_ms"] / fastest["separable"]},
                   "realized": fastest["standard"] / fastest["separable"] / row["theoretical_speedup"]}
            rows.append(out)
            print(f"{row['network']:13s} b{out['batch']:<4d} {record.get('dtype', 'float32'):9s} bound std "
                  f"{bound['standard_ms']:.3f} sep {bound['separable_ms']:.3f} fused {bound['separable_fused_ms']:.3f} ms"
                  f" (realized ceiling {bound['realized_ceiling_unfused']:.2f} / fused "
                  f"{bound['realized_ceiling_fused']:.2f}); measured std {fastest['standard']:.3f} "
                  f"({out['fraction_of_bound']['standard']:.0%} of bound) sep {fastest['separable']:.3f} "
                  f"({out['fraction_of_bound']['separable']:.0%}), realized {out['realized']:.2f}")
    if args.out:
        atomic_write_bytes(args.out, json.dumps({"roofline": r, "roofline_from": str(args.roofline_from),
                                                 "rows": rows}, indent=1).encode())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
