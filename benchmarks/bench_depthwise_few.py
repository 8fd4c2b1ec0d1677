"""Depthwise steps with few channels (a network's first layer on RGB or grey images): sepconv's flat kernels
against PyTorch's, per shape.

    python benchmarks/bench_depthwise_few.py [--threads 1] [--rounds 21] [--channels 1,3,4,5,6,8,12] [--out DIR]

For each channel count, at batch 32 on 32x32 images (CIFAR-10, MNIST-sized) and, up to 4 channels, at batch 1 on
224x224 (an ImageNet input): a 3x3 depthwise convolution, stride 1, padding 1, float32, channels-last. Side by side
in interleaved rounds (`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread,
else wall time), after `sepconv.keep_freed_memory()`:

* `forward`: `sepconv.backends.training.depthwise_conv` (the flat kernel, `sepconv_depthwise_f32`, whatever the
  channel count here) against `F.conv2d` (oneDNN);
* `weight_grad`: `depthwise_weight_grad` (sepconv's kernel: its flat form where `csrc/depthwise_wgrad.c` takes it,
  else channel vectors) against `aten.convolution_backward` (oneDNN);
* `step`: forward and backward with the input's gradient on the 'dwgrad' engine (`FlippedDepthwise`: the forward
  pass and input gradient through `depthwise_conv`, flat up to `FLAT_MAX_CHANNELS` channels) against eager
  PyTorch.

Writes `depthwise_few.json` (with the machine, the kernels' ISA, per shape the medians in us and sepconv / PyTorch)
into --out (default `benchmarks/results/depthwise-few-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sepconv
from sepconv.backends import native, training
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import training_step
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent


def _shapes(channels: list[int]) -> list[tuple[int, int, int]]:
    """(channels, batch, size) per measured shape."""
    return [(c, 32, 32) for c in channels] + [(c, 1, 224) for c in channels if c <= 4]


def _measure(c: int, batch: int, size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
    x = torch.randn(batch, c, size, size).contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    w = conv.weight.detach()
    engine = copy.deepcopy(conv)
    training.use_engine(engine, "dwgrad")
    xg = x.clone().requires_grad_(True)

    flat_bound = training.FLAT_MAX_CHANNELS
    training.FLAT_MAX_CHANNELS = max(flat_bound, c)  # the flat forward kernel at every measured channel count
    try:
        calls = {"forward_sepconv": lambda: training.depthwise_conv(x, w, None, (1, 1)),
                 "forward_pytorch": lambda: F.conv2d(x, w, None, 1, 1, 1, c),
                 "weight_grad_sepconv": lambda: training.depthwise_weight_grad(x, gy, (3, 3), (1, 1), (1, 1)),
                 "weight_grad_pytorch": lambda: torch.ops.aten.convolution_backward(
                     gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], c, [False, True, False])}
        t = time_candidates(calls, x, rounds=rounds)
    finally:
        training.FLAT_MAX_CHANNELS = flat_bound
    t.update(time_candidates({"step_sepconv": training_step(engine, xg, gy), "step_pytorch": training_step(conv, xg, gy)}, x, rounds=rounds))
    us = {k: 1e6 * v.median for k, v in t.items()}
    ratios = {part: us[f"{part}_sepconv"] / us[f"{part}_pytorch"] for part in ("forward", "weight_grad", "step")}
    return {"channels": c, "batch": batch, "size": size, "median_us": us,
            "iqr_us": {k: 1e6 * v.iqr for k, v in t.items()}, "sepconv_vs_pytorch": ratios}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--channels", default="1,3,4,5,6,8,12", help="comma-separated channel counts")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        channels = [int(v) for v in args.channels.split(",")]
    except ValueError:
        p.error(f"--channels takes comma-separated positive integers, got {args.channels!r}")
    if any(c < 1 for c in channels):
        p.error(f"--channels takes comma-separated positive integers, got {args.channels!r}")
    if not native.available():
        p.exit(2, f"bench_depthwise_few: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    out = Path(args.out) if args.out else HERE / "results" / f"depthwise-few-cpu-{args.threads}thread"
    rows = []
    for c, batch, size in _shapes(channels):
        row = _measure(c, batch, size, args.rounds)
        rows.append(row)
        us, r = row["median_us"], row["sepconv_vs_pytorch"]
        print(f"{c:>3} channels, batch {batch:>2} @{size:>3}: " + ", ".join(
            f"{part} {us[part + '_sepconv']:.0f} / {us[part + '_pytorch']:.0f} us ({r[part]:.2f})"
            for part in ("forward", "weight_grad", "step")), flush=True)
    few = [r for r in rows if r["channels"] <= training.FLAT_MAX_CHANNELS]
    summary = {part: statistics.median(r["sepconv_vs_pytorch"][part] for r in few)
               for part in ("forward", "weight_grad", "step")} if few else {}
    record = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(),
              "flat_max_channels": training.FLAT_MAX_CHANNELS,
              "median_ratio_up_to_flat_max_channels": summary, "shapes": rows}
    atomic_write_bytes(out / "depthwise_few.json", (json.dumps(record, indent=1) + "\n").encode())
    if summary:
        print("sepconv / PyTorch, median over the shapes of at most "
              f"{training.FLAT_MAX_CHANNELS} channels: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    print(f"wrote {out / 'depthwise_few.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
