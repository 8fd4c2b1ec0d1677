"""The fused kernel's tile size at a strided layer: the shipped tile against one cut by the stride's area.

    python benchmarks/bench_tile.py [--threads 1] [--rounds 21] [--cold] [--suite ...] [--out DIR]

`sepconv.backends.fused.default_tile` sizes a tile (output pixels) so that its depthwise rows fill about 256 KiB,
whatever the stride. A stride-2 step reads four input pixels per output pixel, so its tile's input rows (and those
of the next tile, which the kernel fetches into L2 during the 1x1 step) take four times the room a stride-1 tile's
do. For every strided suite shape, `FusedSeparableConv2d` runs with the shipped tile (`shipped`) and with that tile
divided by the stride's area (`stride_area`, a multiple of 6), side by side in interleaved rounds
(`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread, else wall time), forward,
float32, channels-last, after `sepconv.keep_freed_memory()`. By default every call reads the same input, which stays
in cache, as a layer's input does at batch 1 when the layer before has just written it; with `--cold` the calls
cycle through copies of the input that together exceed 64 MiB, so each call reads its input from memory. The kernel
build is the one `SEPCONV_ISA` selects (recorded as `kernel_isa`); run once per build. Writes `tile.json` (with the
machine, per shape both tiles, the medians in ms and stride_area / shipped) into --out (default
`benchmarks/results/tile-cpu-<threads>thread`).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import torch

import sepconv
from sepconv.backends import native
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.backends.fused import FusedSeparableConv2d
from sepconv.bench.suites import SUITES, cold_inputs, parse_suite_args, separable_case, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=21)
    p.add_argument("--cold", action="store_true", help="each call reads its input from memory, not cache")
    args, suites = parse_suite_args(p, argv)
    if not native.available():
        p.exit(2, f"bench_tile: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    out = Path(args.out) if args.out else HERE / "results" / f"tile-cpu-{args.threads}thread"
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            layer, x = separable_case(case)
            shipped = FusedSeparableConv2d(layer.depthwise, layer.pointwise).eval()
            area = case.spec.stride[0] * case.spec.stride[1]
            if area == 1:
                continue  # a stride-1 shape: both tiles are the same
            cut = copy.deepcopy(shipped)
            cut.tile = max(6, shipped.tile // area // 6 * 6)
            x = x.contiguous(memory_format=torch.channels_last)
            next_input = cold_inputs(x) if args.cold else (lambda: x)

            def call(module):
                with torch.no_grad():
                    module(next_input())

            timings = time_candidates({"shipped": lambda: call(shipped), "stride_area": lambda: call(cut)}, x,
                                      args.rounds)
            ms = {k: 1e3 * v.median for k, v in timings.items()}
            row = {"shape": case.name, "batch": case.batch, "stride": list(case.spec.stride),
                   "tiles": {"shipped": shipped.tile, "stride_area": cut.tile}, "median_ms": ms,
                   "iqr_ms": {k: 1e3 * v.iqr for k, v in timings.items()},
                   "stride_area_vs_shipped": ms["stride_area"] / ms["shipped"]}
            rows.append(row)
            print(f"{case.name:>28}: tile {cut.tile} vs {shipped.tile}: {ms['stride_area']:.3f} vs "
                  f"{ms['shipped']:.3f} ms ({row['stride_area_vs_shipped']:.3f}x)", flush=True)
    if not rows:
        p.exit(2, f"bench_tile: no strided shape in --suite {args.suite}: nothing to compare\n")
    ratios = [r["stride_area_vs_shipped"] for r in rows]
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(), "cold": args.cold,
              "shapes": rows, "summary": {"stride_area_vs_shipped": {
                  "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "shapes": len(ratios)}}}
    atomic_write_bytes(out / "tile.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'tile.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
