"""The fused layer against its two steps timed apart, per tile size: where the steps slow each other down.

    python benchmarks/bench_tile_parts.py [--tiles 96,510] [--threads 1] [--rounds 11]
                                          [--suite vgg_blocks | --layer C:COUT:SIZE:BATCH ...] [--out DIR]

For every suite shape (or `--layer`: 3x3 stride-1 layers of any channels, size and batch), `FusedSeparableConv2d`
runs with its shipped tile (the one `FusedSeparableConv2d.kernel_tile` names: `sepconv.backends.fused.default_tile`,
or `streamed_flat_tile` where that applies), with the module's own `tile` where that differs, and with each tile of
`--tiles` (output pixels; `streamed_flat_tile` off), three ways each, side by side in interleaved rounds
(`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread, else wall time), forward,
float32, channels-last, after `sepconv.keep_freed_memory()`: the layer (`layer`), its depthwise step alone into the
tile buffer (`depthwise`, the kernel's `parts=1`) and its 1x1 step alone on a tile of ones (`pointwise`, `parts=2`).
`layer_vs_parts` = layer / (depthwise + pointwise): below 1 where the kernel overlaps the steps (the 1x1 step hides
the prefetch of the next tile's input, or the depthwise step runs while a tile's streamed stores drain), above 1
where running them one after the other costs more than each alone. The kernel build is the one `SEPCONV_ISA` selects
(recorded as `kernel_isa`). Writes `tile_parts.json` (with the machine, per shape and tile the medians in ms and
layer_vs_parts) into --out (default `benchmarks/results/tile-parts-cpu-<threads>thread`).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

import sepconv
from sepconv.backends import native
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.backends.fused import FusedSeparableConv2d
from sepconv.bench.suites import SUITES, layer_case, parse_suite_args, separable_case, suite_parser
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent
PARTS = {"layer": 3, "depthwise": 1, "pointwise": 2}


def parse_tiles(text: str) -> list[int]:
    """``--tiles``: comma-separated tile sizes, each a whole number of output pixels >= 1 (none for an empty text)."""
    if not text.strip():
        return []
    try:
        tiles = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        tiles = []
    if not tiles or min(tiles) < 1:
        raise ValueError(f"--tiles must be comma-separated integers >= 1, got {text!r}")
    return tiles


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=11)
    p.set_defaults(suite="vgg_blocks")
    p.add_argument("--tiles", default="96,510", help="tile sizes (output pixels) besides the shipped one")
    p.add_argument("--layer", action="append", default=[], metavar="C:COUT:SIZE:BATCH",
                   help="instead of the suites (repeatable): a 3x3 stride-1 layer")
    args, suites = parse_suite_args(p, argv)
    try:
        extra = parse_tiles(args.tiles)
        layers = [layer_case(text) for text in args.layer]
    except ValueError as error:
        p.error(str(error))
    if not native.available():
        p.exit(2, f"bench_tile_parts: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    out = Path(args.out) if args.out else HERE / "results" / f"tile-parts-cpu-{args.threads}thread"
    rows = []
    for case in layers or [case for suite in suites for case in SUITES[suite]()]:
        layer, x = separable_case(case)
        shipped = FusedSeparableConv2d(layer.depthwise, layer.pointwise).eval()
        shipped_tile = shipped.kernel_tile(x.shape[0], x.shape[2], x.shape[3])
        modules = {shipped_tile: shipped}
        for tile in [shipped.tile, *extra]:  # the module's own tile first: what the kernel ran before the flat rule
            if tile not in modules:
                modules[tile] = copy.deepcopy(shipped)
                modules[tile].tile, modules[tile].streamed_flat_tile = tile, False

        def call(module, parts):
            with torch.no_grad():
                module._run(x, parts)

        candidates = {f"{tile}/{name}": (lambda m=module, k=parts: call(m, k))
                      for tile, module in modules.items() for name, parts in PARTS.items()}
        timings = time_candidates(candidates, x, args.rounds)
        tiles = []
        for tile in modules:
            ms = {name: 1e3 * timings[f"{tile}/{name}"].median for name in PARTS}
            ratio = ms["layer"] / (ms["depthwise"] + ms["pointwise"])
            tiles.append({"tile": tile, "shipped": tile == shipped_tile, "median_ms": ms,
                          "iqr_ms": {name: 1e3 * timings[f"{tile}/{name}"].iqr for name in PARTS},
                          "layer_vs_parts": ratio})
            print(f"{case.name:>28} tile {tile:5d}{' (shipped)' if tile == shipped_tile else '':10}: layer "
                  f"{ms['layer']:.3f} ms, depthwise {ms['depthwise']:.3f}, pointwise {ms['pointwise']:.3f}, "
                  f"layer / parts {ratio:.2f}", flush=True)
        rows.append({"shape": case.name, "batch": case.batch, "tiles": tiles})
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(), "shapes": rows}
    atomic_write_bytes(out / "tile_parts.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'tile_parts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
