"""The Triton fused kernel's block shapes, swept per layer, against cuDNN's depthwise + 1x1 pair (CUDA only).

For each suite layer (separable, no biases, channels-last input of
``--dtype``) this times, with ``triton.testing.do_bench`` (CUDA events,
medians, the L2 cache cleared before each call):

- ``pair``: the two eager convolutions (cuDNN), and each alone
  (``depthwise``, ``pointwise``), and the ``standard`` 3x3 convolution;
- ``fused``: :class:`triton_fused.TritonFusedSeparableConv2d` at every block
  shape of a grid (pixels x output channels x input channels x warps x
  pipeline stages, capped to the layer's channels), with 32-bit element offsets, and
  the best one again with 64-bit offsets (``fused_i64``), the layer as a
  module call with its own choice among ``CANDIDATES`` (``fused_chosen``:
  the host's launch cost included, which exceeds the GPU time of the
  smaller layers), and what each
  block shape's program uses (registers per thread, spilled registers,
  shared memory bytes);

then the pair and the best block shape once more as CUDA graphs of
``--repeat`` calls with the L2 cache warm (``graph_ms``), as
``bench_gpu_graphs.py`` times them. Bytes are the layer's input and output
(and, for the pair, the depthwise output written and read back), so
``*_gbs`` is the bandwidth each reached counted in the bytes a fused kernel
must move. ``--profile CASE:P,N,K,W,S[;P,N,K,W,S...]`` instead runs those
block shapes and the pair twice each on one layer, for ``ncu``.

    python benchmarks/bench_triton_blocks.py --dtype bfloat16 --out FILE.json

(record: ``results/gpu-h200/triton-blocks-bf16-b32.json``)
"""

from __future__ import annotations

import argparse
import itertools

import torch

from sepconv.bench import mobilenet_v1_suite, vgg_blocks_suite
from sepconv.bench.roofline import measure_roofline
from sepconv.bench.suites import fused_bound_s
from sepconv.cost import conv_cost, separable_cost
from sepconv.layers import SeparableConv2d
from sepconv.layers._common import conv_module
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved

from bench_gpu_graphs import graphed, measure_cases
from triton_fused import BlockConfig, TritonFusedSeparableConv2d


def block_grid(in_channels: int, out_channels: int) -> list[BlockConfig]:
    """Every block shape of the sweep that fits the layer (block widths capped as ``candidates_for`` caps them)."""
    widest_n = max(16, 1 << (out_channels - 1).bit_length())
    widest_k = max(16, 1 << (in_channels - 1).bit_length())
    seen, out = set(), []
    for p, n, k, warps, stages in itertools.product((32, 64, 128, 256), (64, 128, 256), (16, 32, 64), (4, 8), (1, 2)):
        c = BlockConfig(p, min(n, widest_n), min(k, widest_k), warps, stages)
        if c.pixels * c.out_channels > 64 * 256 or c in seen:  # an accumulator over 64 KiB of registers
            continue
        seen.add(c)
        out.append(c)
    return out


def layer(case, dtype):
    spec = case.spec
    torch.manual_seed(0)
    sep = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                          bias=False).to("cuda", dtype).eval().to(memory_format=torch.channels_last)
    std = conv_module(spec)[0].to("cuda", dtype).eval().to(memory_format=torch.channels_last)
    x = torch.randn(case.batch, spec.in_channels, *case.size, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    fused = TritonFusedSeparableConv2d(sep.depthwise, sep.pointwise, pad=sep.pad)
    return sep, std, fused, x


def bench(fn, rep_ms: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")


@torch.no_grad()
def run(case, dtype, rep_ms: int, repeat: int, roof) -> dict:
    sep, std, fused, x = layer(case, dtype)
    xp = sep.pad(x) if sep.pad is not None else x
    mid = sep.depthwise(xp)
    y = fused(x)  # the output buffer every fused launch writes
    precision = fused._precision()
    ms = {"pair": bench(lambda: sep(x), rep_ms), "depthwise": bench(lambda: sep.depthwise(xp), rep_ms),
          "pointwise": bench(lambda: sep.pointwise(mid), rep_ms), "standard": bench(lambda: std(x), rep_ms)}
    blocks, resources, errors = {}, {}, []
    for config in block_grid(case.spec.in_channels, case.spec.out_channels):
        try:
            kernel = fused._launch(xp, y, config, precision, True)
            resources[config] = [getattr(kernel, "n_regs", None), getattr(kernel, "n_spills", None),
                                 getattr(getattr(kernel, "metadata", None), "shared", None)]
            blocks[config] = bench(lambda: fused._launch(xp, y, config, precision, True), rep_ms)
        except Exception as error:  # a block shape this GPU cannot run (out of shared memory or registers)
            errors.append(f"{tuple(config)}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    best = min(blocks, key=blocks.get)
    ms["fused"] = blocks[best]
    ms["fused_i64"] = bench(lambda: fused._launch(xp, y, best, precision, False), rep_ms)
    ms["fused_chosen"] = bench(lambda: fused(x), rep_ms)  # the kernel's own choice among its CANDIDATES
    replays = {"pair": graphed(lambda: sep(x), repeat), "standard": graphed(lambda: std(x), repeat),
               "fused": graphed(lambda: fused._launch(xp, y, best, precision, True), repeat)}
    t = interleaved(replays, rounds=5, target_s=0.02, device=torch.device("cuda"))
    graph_ms = {name: 1e3 * v.median / repeat for name, v in t.items()}
    size = torch.finfo(dtype).bits // 8
    io_bytes = (x.numel() + y.numel()) * size
    mid_bytes = mid.numel() * size
    sep_cost = separable_cost(case.spec, case.size, batch=case.batch, dtype=dtype)
    std_cost = conv_cost(case.spec, case.size, batch=case.batch, dtype=dtype)
    return {
        "case": case.name, "batch": case.batch, "mac_ratio": sep_cost.macs / std_cost.macs, "ms": ms,
        "graph_ms": graph_ms, "best_block": list(best), "chosen_blocks": [list(c) for c in fused.configs.values()],
        "blocks_ms": {",".join(map(str, c)): v for c, v in sorted(blocks.items(), key=lambda kv: kv[1])},
        "blocks_regs_spills_shared": {",".join(map(str, c)): v for c, v in resources.items()},
        "failed_blocks": errors, "io_bytes": io_bytes, "pair_bytes": io_bytes + 2 * mid_bytes,
        "fused_gbs": io_bytes / ms["fused"] / 1e6, "pair_gbs": (io_bytes + 2 * mid_bytes) / ms["pair"] / 1e6,
        "fused_vs_pair": ms["pair"] / ms["fused"], "fused_vs_pair_graphs": graph_ms["pair"] / graph_ms["fused"],
        "fused_bound_ms": 1e3 * fused_bound_s(case, roof, dtype),
    }


def profile_target(cases, spec: str):
    """The layer and block shapes ``--profile CASE:P,N,K,W,S[;...]`` names; ValueError saying what is wrong."""
    name, _, blocks = spec.partition(":")
    matches = [c for c in cases if name in c.name]
    if len(matches) != 1:
        raise ValueError(f"{name!r} must name one layer, matches {[c.name for c in matches]}")
    try:
        configs = [BlockConfig(*map(int, block.split(","))) for block in blocks.split(";")]
    except (TypeError, ValueError):
        raise ValueError(f"block shapes must be P,N,K,W,S separated by ';', got {blocks!r}") from None
    return matches[0], configs


def profile(case, configs, dtype) -> None:
    torch.backends.cudnn.benchmark = False  # no algorithm search: only the kernels named run
    sep, _, fused, x = layer(case, dtype)
    xp = sep.pad(x) if sep.pad is not None else x
    y = torch.empty(x.shape[0], fused.out_channels, *fused.output_size(*xp.shape[2:]), device="cuda", dtype=dtype,
                    memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):
            for config in configs:
                fused._launch(xp, y, config, fused._precision(), True)
            sep(x)
    torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--suite", default="mobilenet_v1,vgg_blocks")
    p.add_argument("--case", action="append", help="only layers whose name contains this (repeatable)")
    p.add_argument("--rep-ms", type=int, default=40, help="do_bench's time per candidate, ms (default 40)")
    p.add_argument("--repeat", type=int, default=20, help="calls per CUDA graph (default 20)")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no new layer after this many seconds")
    p.add_argument("--profile", metavar="CASE:P,N,K,W,S")
    p.add_argument("--out")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    suites = {"mobilenet_v1": mobilenet_v1_suite, "vgg_blocks": vgg_blocks_suite}
    unknown = [s for s in args.suite.split(",") if s not in suites]
    if unknown or args.batch < 1 or args.rep_ms < 1 or args.repeat < 1:
        p.error(f"--suite takes {sorted(suites)} (got {unknown}); --batch, --rep-ms and --repeat must be >= 1")
    dtype = getattr(torch, args.dtype)
    cases = [c for s in args.suite.split(",") for c in suites[s](batch=args.batch)]
    cases = [c for c in cases if not args.case or any(f in c.name for f in args.case)]
    if args.profile:
        try:
            target = profile_target(cases, args.profile)
        except ValueError as error:
            p.error(f"--profile CASE:P,N,K,W,S[;P,N,K,W,S...]: {error}")
        profile(*target, dtype)
        return
    torch.backends.cudnn.benchmark = True
    roof = measure_roofline(torch.device("cuda"), matmul_n=8192, copy_mib=1024, rounds=5, dtype=dtype, conv_batch=0)
    info = machine_info("cuda")
    info.update(dtype=args.dtype, repeat=args.repeat, rep_ms=args.rep_ms)

    def describe(case, r):
        ms, g = r["ms"], r["graph_ms"]
        return (f"{case.name:22s} b{case.batch} pair {ms['pair']:.4f} (dw {ms['depthwise']:.4f} pw "
                f"{ms['pointwise']:.4f}) std {ms['standard']:.4f} fused {ms['fused']:.4f} {tuple(r['best_block'])} "
                f"i64 {ms['fused_i64']:.4f} chosen {ms['fused_chosen']:.4f} bound {r['fused_bound_ms']:.4f} | "
                f"graphs pair {g['pair']:.4f} fused {g['fused']:.4f} std {g['standard']:.4f} | fused "
                f"{r['fused_gbs']:.0f} GB/s, pair {r['pair_gbs']:.0f} GB/s")

    measure_cases(cases, lambda case: run(case, dtype, args.rep_ms, args.repeat, roof), describe,
                  {"machine": info, "roofline": roof.as_dict()}, args.out, args.budget_s)

if __name__ == "__main__":
    main()
