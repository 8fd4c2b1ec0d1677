"""The fused kernel's tile at strided layers: the shipped schedule against the stride-1 tile and given tiles.

    python benchmarks/bench_tile.py [--threads 1] [--rounds 21] [--cold] [--tiles 112,224] [--suite ...] [--out DIR]

`sepconv.backends.fused.default_tile` sizes a tile (output pixels) so that its depthwise rows fill about 256 KiB.
`kernel_schedule` divides it by the stride's area where an image takes more than one tile, so that a strided tile
reads the input rows a stride-1 tile reads, and makes a tile of more than one row whole rows (`row_tile`). For
every strided suite shape, `FusedSeparableConv2d` runs with its shipped schedule (`shipped`), with the tile the same
output gets at stride 1 (`stride1`: `kernel_schedule` without the cut, whole rows and the channel split as shipped),
and with each `--tiles` size as given (one channel group, no balancing: tiles that end mid-row or leave a thread
idle are timed as they are), side by side in interleaved rounds (`sepconv.backends.clock.time_candidates`: the
calling thread's CPU time with one thread, else wall time), forward, float32, channels-last, after
`sepconv.keep_freed_memory()`. By default every call reads the same input, which stays in cache, as a layer's input
does at batch 1 when the layer before has just written it; with `--cold` the calls cycle through copies of the input
that together exceed 64 MiB, so each call reads its input from memory. The kernel build is the one `SEPCONV_ISA`
selects (recorded as `kernel_isa`); run once per build. Writes `tile.json` (with the machine, per shape each
candidate's tile, groups and median in ms, and each one's time over `shipped`'s) into --out (default
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
from sepconv.backends import fused
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import SUITES, cold_inputs, parse_suite_args, separable_case, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_tile_parts import parse_tiles  # noqa: E402


def scheduled_as(module: fused.FusedSeparableConv2d, x: torch.Tensor, tile: int, groups: int):
    """A copy of ``module`` whose kernel runs ``x``'s size with ``tile`` and ``groups`` exactly as given (its
    per-size plan edited), and the tile and groups it runs."""
    copied = copy.deepcopy(module)
    n, _, h, w = x.shape
    ho, wo, args = copied._plan(n, h, w, max(1, torch.get_num_threads()))
    args[fused._ARG_TILE], args[fused._ARG_GROUPS] = tile, groups
    args[fused._ARG_JOB_END] = copied._library().sepconv_fused_jobs(n, ho, wo, tile, groups)
    return copied


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=21)
    p.add_argument("--cold", action="store_true", help="each call reads its input from memory, not cache")
    p.add_argument("--tiles", default="", help="comma-separated tile sizes (output pixels) to run as given")
    args, suites = parse_suite_args(p, argv)
    try:
        extra = parse_tiles(args.tiles)
    except ValueError as error:
        p.error(str(error))
    if not native.available():
        p.exit(2, f"bench_tile: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    out = Path(args.out) if args.out else HERE / "results" / f"tile-cpu-{args.threads}thread"
    rows = []
    for suite in suites:
        for case in SUITES[suite]():
            if case.spec.stride[0] * case.spec.stride[1] == 1:
                continue  # a stride-1 shape: no cut to compare
            layer, x = separable_case(case)
            shipped = fused.FusedSeparableConv2d(layer.depthwise, layer.pointwise).eval()
            x = x.contiguous(memory_format=torch.channels_last)
            n, _, h, w = x.shape
            ho, wo = shipped.output_size(h, w)
            plan = shipped._plan(n, h, w, args.threads)[2]
            tile1, groups1, _ = fused.kernel_schedule(n, ho, wo, shipped.out_channels, shipped.tile, args.threads)
            schedules = {"shipped": (plan[fused._ARG_TILE], plan[fused._ARG_GROUPS]), "stride1": (tile1, groups1)}
            schedules.update({f"tile{t}": (t, 1) for t in extra})
            modules = {name: shipped if name == "shipped" else scheduled_as(shipped, x, *sched)
                       for name, sched in schedules.items()}
            next_input = cold_inputs(x) if args.cold else (lambda: x)

            def caller(module):
                def call():
                    with torch.no_grad():
                        module(next_input())
                return call

            timings = time_candidates({name: caller(m) for name, m in modules.items()}, x, args.rounds)
            ms = {k: 1e3 * v.median for k, v in timings.items()}
            row = {"shape": case.name, "batch": case.batch, "stride": list(case.spec.stride),
                   "schedules": {k: {"tile": t, "groups": g} for k, (t, g) in schedules.items()}, "median_ms": ms,
                   "iqr_ms": {k: 1e3 * v.iqr for k, v in timings.items()},
                   "vs_shipped": {k: v / ms["shipped"] for k, v in ms.items() if k != "shipped"}}
            rows.append(row)
            print(f"{case.name:>28}: " + ", ".join(f"{k} (tile {schedules[k][0]}) {v:.3f} ms" for k, v in ms.items()),
                  flush=True)
    if not rows:
        p.exit(2, f"bench_tile: no strided shape in --suite {args.suite}: nothing to compare\n")
    names = [k for k in rows[0]["vs_shipped"]]
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(), "cold": args.cold,
              "shapes": rows, "summary": {name: {
                  "median_vs_shipped": statistics.median(r["vs_shipped"][name] for r in rows),
                  "min": min(r["vs_shipped"][name] for r in rows), "max": max(r["vs_shipped"][name] for r in rows),
                  "shapes": len(rows)} for name in names}}
    atomic_write_bytes(out / "tile.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'tile.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
