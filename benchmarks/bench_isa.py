"""The fused kernel per vector ISA, the separable layer's forward against its roofline ceiling, and ONNX Runtime
run alone against `sepconv.optimize`, on `sepconv bench`'s suite shapes, in one run.

    python benchmarks/bench_isa.py [--threads 1] [--rounds 5] [--clock wall|cpu] [--keep-freed-memory] [--parts]
                                   [--shuffle] [--passes N] [--suite ...] [--out DIR]

For every shape (float32, inference, one `SeparableConv2d` without bias), in the same interleaved rounds:

* `fused_<isa>`: `FusedSeparableConv2d` with the kernels built for each ISA this CPU can run
  (`SEPCONV_ISA`: the native build, `avx2` = `-mavx2 -mfma -mno-avx512f`; on an AVX-512 host the AVX2 build
  runs the AVX2 code path on an AVX-512 core: its kernel time, not an AVX2 machine's);
* `eager_nhwc`: plain PyTorch, channels-last;
* `onnxruntime_alone`: ONNX Runtime with the session options fastest alone
  (`sepconv.backends.onnxruntime.fastest_session_options`; raw `session.run`); with more than one thread in rounds
  of its own after the others, as its idle threads and PyTorch's slow each other when interleaved;
* `sepconv`: `sepconv.optimize(layer, x)`'s choice, input already in its layout, with the kernel variant the
  caller's `SEPCONV_ISA` names (the native build by default); where that choice runs on ONNX Runtime with more
  than one thread, in rounds of its own too, after ONNX Runtime alone's (`sepconv_timed_with_onnxruntime_alone`:
  interleaved, one session's spinning threads took a core from the other's runs);
* with `--parts`, `depthwise_part_<isa>`: each build's depthwise step alone (the kernel's `parts=1`: into its tile
  buffer, no output written; without the prefetch the 1x1 step issues for the next tile), and its share of the
  whole fused layer's median; and `pointwise_part_<isa>`: the 1x1 step alone on a tile of ones (`parts=2`: the
  output written and the next tile's input prefetched as in the whole kernel, the tile buffer zeroed once per
  call), so that `1 - pointwise_part / fused` is the depthwise step's share inside the kernel
  (`depthwise_in_kernel_share`), where its input arrives prefetched, which the step alone does not have;
* the standard convolution it replaces: eager NCHW, channels-last, and packed for oneDNN.

All of them run inside one `torch.no_grad()` entered around the rounds, as a network's forward pass enters it.

realized = (t_standard / t_separable) / (standard MACs / separable MACs), the standard convolution at its fastest of
the three; `ceiling` = the fused-layer roofline ceiling (`sepconv.bench.suites.fused_bound_s` against the standard
convolution's bound, with this machine's measured roofline); `of_ceiling` = realized / ceiling. Medians and, for
a loaded machine, the same from each candidate's fastest round (`*_min`); `--clock cpu` times the calling
thread's CPU time instead of wall time (one thread only; `sepconv.backends.clock.cpu_time_interleaved`), so
time preempted by other processes is not counted (the roofline is still measured in wall time; `optimize` itself
times on CPU time with one thread). `--keep-freed-memory` calls `sepconv.keep_freed_memory()` first: without it a
candidate timed right after another that freed a large output can page-fault its own output in fresh (recorded
as `freed_memory_kept` in the machine). `--shuffle` draws a new order of the candidates each round (without it,
each candidate follows the same one every round). Every candidate of a layout reads the same input tensor,
`optimize`'s model included: a copy of its own made it start each sample on an input the candidates before it
had not read, and its first calls ran slower (docs/design-notes.md). `--passes N` runs the whole suite N times
over, each pass with its own roofline: the first pass sits at the top level of the record, the others under
`passes`, and `summary_per_pass`
gives each pass's median realized, least fraction of the ceiling and shapes where `optimize` kept up with ONNX
Runtime alone, so the spread between passes is in the record. Each shape also records the memory bandwidth
measured just before and just after its rounds (`bandwidth_gbs_around`, `sepconv.bench.roofline.measure_bandwidth`:
on a shared host it moves within a pass, and a memory-bound layer's time with it, while the ceiling takes the
pass's first measurement) and the medians `optimize` chose by (`sepconv_timings_ms`, ms; `sepconv_timing_clock`).
`fused_roofline_ceiling_around` and `of_ceiling_around` are the ceiling and the fractions of it with the larger of
those two bandwidths in the pass's roofline, the bandwidth the shape's rounds ran at as near as the probes tell
(`speed_goals.py` checks a shape against it where the record has it). With more than one thread each shape also
records how long a cache line took between two threads just before and just after its rounds (`hop_ns_around`,
`bench_thread_placement.hop_probe`; None without a C compiler) and `placement`, `far` where either took
`bench_thread_placement.NEAR_NS` or more, else `near`: on a virtual machine the host moves the vCPUs
between cores that share an L3 and cores far apart, and some layers run slower far apart (docs/design-notes.md).
Writes `isa.json` (with the machine) into --out
(default `benchmarks/results/isa-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from sepconv import SeparableConv2d, optimize
from sepconv.backends import native
from sepconv.backends.fused import FusedSeparableConv2d
from sepconv.backends.onednn import PackedConv2d, onednn_available
from sepconv.backends.onnxruntime import fastest_session_options, onnxruntime_available
from sepconv.backends.clock import SPIN_WAIT_S, cpu_time_interleaved
from sepconv.bench.roofline import Roofline, measure_bandwidth, measure_roofline
from sepconv.bench.suites import SUITES, fused_bound_s, suite_names
from sepconv.cost import conv_cost, separable_cost
from sepconv.layers._common import conv_module
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.memory import keep_freed_memory
from sepconv.utils.timing import interleaved

from bench_thread_placement import hop_probe, placement  # benchmarks/, on the path as the script's own directory

HERE = Path(__file__).resolve().parent
#: The kernel variant the caller asked for (``SEPCONV_ISA``; e.g. ``avx2`` with the other libraries capped at AVX2,
#: benchmarks/README.md): what the candidates other than the per-build ones run, and what is set back after them.
CALLER_ISA = os.environ.get("SEPCONV_ISA") or "native"


def call(fn, *args):
    """``fn(*args)`` as a zero-argument candidate. The rounds run inside one ``torch.no_grad()``, entered once as
    a network's forward pass enters it, so a candidate's time holds no grad-mode switch of its own."""
    return lambda: fn(*args)


def fused_ceiling(case, roofline: Roofline, std_cost, mac_ratio: float) -> float:
    """The fused-layer roofline ceiling: the realized ratio a fused kernel could reach if it and the standard
    convolution (``std_cost``) both ran at ``roofline``'s bounds."""
    return (roofline.bound_s(std_cost.in_bounds_flops, std_cost.bytes) / fused_bound_s(case, roofline)) / mac_ratio


def isas() -> list[str]:
    """The kernel variants this CPU can run: the native build and, when narrower and different, avx2."""
    found = []
    for isa in ("native", "avx2"):
        os.environ["SEPCONV_ISA"] = isa
        name = native.isa()
        if name is not None and name not in [n for _, n in found]:
            found.append((isa, name))
    os.environ["SEPCONV_ISA"] = CALLER_ISA
    return found


def run_shape(case, roofline, variants, rounds: int, threads: int, clock: str = "wall", parts: bool = False,
              shuffle: bool = False, hop=None) -> dict:
    """One suite shape's row of the record. ``hop``: a function returning the hop between two threads (ns,
    :func:`bench_thread_placement.hop_probe`), called just before and just after the rounds; None records none."""
    torch.manual_seed(0)
    spec = case.spec
    x = torch.randn(case.batch, spec.in_channels, *case.size)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    sep = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                          bias=False).eval()
    std = conv_module(spec)[0].eval()
    std_nhwc = conv_module(spec)[0].eval().to(memory_format=torch.channels_last)
    candidates = {"standard_nchw": call(std, x), "standard_nhwc": call(std_nhwc, x_nhwc),
                  "eager_nhwc": call(sep.to(memory_format=torch.channels_last), x_nhwc)}
    if onednn_available():
        candidates["standard_onednn"] = call(PackedConv2d(std_nhwc), x_nhwc)
    for request, name in variants:
        os.environ["SEPCONV_ISA"] = request
        fused = FusedSeparableConv2d(sep.depthwise, sep.pointwise)
        candidates[f"fused_{name}"] = call(fused, x_nhwc)
        if parts:  # each step alone: the depthwise one into the tile buffer, the 1x1 one on a tile of ones
            candidates[f"depthwise_part_{name}"] = call(fused._run, x_nhwc, 1)
            candidates[f"pointwise_part_{name}"] = call(fused._run, x_nhwc, 2)
    os.environ["SEPCONV_ISA"] = CALLER_ISA
    session_options = None
    if onnxruntime_available():
        runner, session_options = fastest_session_options(sep, x, threads=threads)
        feed = {runner.input_name: x.numpy()}
        candidates["onnxruntime_alone"] = lambda: runner.session.run(None, feed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = optimize(sep, x)
    # the input tensor the other candidates of its layout read: on a copy of its own, each sample would start on an
    # input the candidates before it had not read, whose first calls run slower (docs/design-notes.md)
    fast_input = x_nhwc if fast.memory_format == torch.channels_last else x.contiguous(memory_format=fast.memory_format)
    candidates["sepconv"] = call(fast.model, fast_input)
    # With more than one thread ONNX Runtime alone is timed in rounds of its own: its idle threads (spinning, when
    # that is its fastest alone) would slow whichever candidate ran next, and PyTorch's would slow it. So is
    # `optimize`'s choice where that runs on ONNX Runtime: among the PyTorch candidates it ran far slower than ONNX
    # Runtime alone, and slowed the fused kernel timed beside it; interleaved with ONNX Runtime alone, a spinning
    # session's threads took a core from the other session's runs (docs/design-notes.md).
    alone = {}
    if threads > 1 and "onnxruntime_alone" in candidates:
        alone["onnxruntime_alone"] = candidates.pop("onnxruntime_alone")
        if fast.backend == "onnxruntime":
            alone["sepconv"] = candidates.pop("sepconv")
    seed = 0 if shuffle else None
    bandwidth_before = measure_bandwidth()
    hop_before = hop() if hop is not None else None
    with torch.no_grad():
        if clock == "cpu":
            timings = cpu_time_interleaved(candidates, rounds=rounds, shuffle_seed=seed)
        else:
            timings = interleaved(candidates, rounds=rounds, target_s=0.01, shuffle_seed=seed)
            for name, run in alone.items():  # each session by itself, after SPIN_WAIT_S of its own runs
                end = time.perf_counter() + SPIN_WAIT_S
                while time.perf_counter() < end:
                    run()
                timings.update(interleaved({name: run}, rounds=rounds, target_s=0.01))
    hop_around = [hop_before, hop()] if hop is not None else None
    bandwidth_around = [bandwidth_before / 1e9, measure_bandwidth() / 1e9]
    ms = {k: 1e3 * v.median for k, v in timings.items()}
    std_cost = conv_cost(spec, case.size, batch=case.batch)
    mac_ratio = std_cost.macs / separable_cost(spec, case.size, batch=case.batch).macs
    t_std = min(v for k, v in ms.items() if k.startswith("standard_"))
    ceiling = fused_ceiling(case, roofline, std_cost, mac_ratio)
    # the same with the bandwidth measured around this shape's rounds, the larger of the two probes
    ceiling_around = fused_ceiling(case, Roofline(roofline.peak_flops, 1e9 * max(bandwidth_around)), std_cost,
                                   mac_ratio)
    layers = [k for k in ms if not k.startswith(("standard_", "depthwise_part_", "pointwise_part_"))]
    realized = {k: (t_std / ms[k]) / mac_ratio for k in layers}
    best = max(realized, key=realized.get)
    mins = {k: 1e3 * min(v.samples) for k, v in timings.items()}
    t_std_min = min(v for k, v in mins.items() if k.startswith("standard_"))
    realized_min = {k: (t_std_min / mins[k]) / mac_ratio for k in layers}
    return {
        "shape": case.name, "batch": case.batch, "size": list(case.size), "in": spec.in_channels,
        "out": spec.out_channels, "stride": list(spec.stride), "median_ms": ms,
        "iqr_ms": {k: 1e3 * v.iqr for k, v in timings.items()},
        # the fastest round: on a loaded machine the least disturbed one (a preempted round only gets slower)
        "min_ms": {k: 1e3 * min(v.samples) for k, v in timings.items()},
        "realized_min": realized_min, "of_ceiling_min": {k: v / ceiling for k, v in realized_min.items()},
        "sepconv_vs_onnxruntime_alone_min": (min(timings["sepconv"].samples) / min(timings["onnxruntime_alone"].samples)
                                             if "onnxruntime_alone" in timings else None),
        "avx2_vs_avx512_fused_min": (min(timings["fused_avx2"].samples) / min(timings["fused_avx512"].samples)
                                     if "fused_avx2" in timings and "fused_avx512" in timings else None),
        "theoretical_speedup": mac_ratio, "realized": realized, "fused_roofline_ceiling": ceiling,
        "of_ceiling": {k: v / ceiling for k, v in realized.items()}, "best_path": best,
        "bandwidth_gbs_around": bandwidth_around, "hop_ns_around": hop_around,
        "placement": None if hop_around is None else placement(max(hop_around)),
        "fused_roofline_ceiling_around": ceiling_around,
        "of_ceiling_around": {k: v / ceiling_around for k, v in realized.items()},
        "sepconv_backend": fast.backend, "sepconv_candidate": fast.candidate,
        "sepconv_timings_ms": dict(fast.timings_ms), "sepconv_timing_clock": fast.timing_clock,
        "sepconv_timed_with_onnxruntime_alone": "sepconv" in alone,
        "sepconv_layer_choices": fast.layer_choices, "onnxruntime_session_options": session_options,
        "sepconv_vs_onnxruntime_alone": ms["sepconv"] / ms["onnxruntime_alone"] if "onnxruntime_alone" in ms else None,
        "avx2_vs_avx512_fused": (ms["fused_avx2"] / ms["fused_avx512"]
                                 if "fused_avx2" in ms and "fused_avx512" in ms else None),
        # per ISA: the depthwise step alone over the whole fused layer (medians; with --parts)
        "depthwise_part_share": {k[len("depthwise_part_"):]: v / ms["fused_" + k[len("depthwise_part_"):]]
                                 for k, v in ms.items() if k.startswith("depthwise_part_")},
        # per ISA: what the whole layer takes beyond its 1x1 step alone, over the whole layer (medians; --parts)
        "depthwise_in_kernel_share": {k[len("pointwise_part_"):]: 1 - v / ms["fused_" + k[len("pointwise_part_"):]]
                                      for k, v in ms.items() if k.startswith("pointwise_part_")},
    }


def summarize(rows: list[dict]) -> dict:
    """One pass over the suite in a few numbers: per candidate the median realized and the least fraction of the
    ceiling over the shapes, and on how many shapes `optimize`'s choice took at most ONNX Runtime alone's time."""
    names = rows[0]["realized"]
    ort = [r["sepconv_vs_onnxruntime_alone"] for r in rows if r["sepconv_vs_onnxruntime_alone"] is not None]
    return {"shapes": len(rows),
            "realized_median": {k: statistics.median(r["realized"][k] for r in rows) for k in names},
            "of_ceiling_least": {k: min(r["of_ceiling"][k] for r in rows) for k in names},
            "sepconv_at_most_onnxruntime_alone": sum(v <= 1 for v in ort) if ort else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--suite", default="mobilenet_v1,vgg_blocks")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this thread's CPU time (one thread only), for a machine other processes load")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="call sepconv.keep_freed_memory() first, so candidates reuse freed memory instead of faulting")
    p.add_argument("--parts", action="store_true",
                   help="also time each kernel build's depthwise and 1x1 steps alone (depthwise_part_<isa>, "
                        "pointwise_part_<isa>)")
    p.add_argument("--shuffle", action="store_true",
                   help="time the candidates in a new order each round (seed 0) instead of the same order every round")
    p.add_argument("--passes", type=int, default=1,
                   help="run the whole suite this many times (each with its own roofline): the spread between passes")
    p.add_argument("--out")
    args = p.parse_args(argv)
    try:
        suites = suite_names(args.suite)
    except ValueError as error:
        p.error(str(error))
    if args.passes < 1 or args.rounds < 1 or args.threads < 1:
        p.error(f"--passes, --rounds and --threads must be >= 1, got {args.passes}, {args.rounds}, {args.threads}")
    if args.clock == "cpu" and args.threads != 1:
        p.error(f"--clock cpu needs --threads 1 (got {args.threads}): other threads' time is not on this thread")
    if args.keep_freed_memory and not keep_freed_memory():
        p.error("--keep-freed-memory needs glibc's malloc; this C library is not glibc")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else HERE / "results" / f"isa-cpu-{args.threads}thread"
    variants = isas()
    hop = hop_probe() if args.threads > 1 else None
    if args.threads > 1 and hop is None:
        print("bench_isa: no C compiler, or one CPU: the hop between threads is not recorded", flush=True)
    passes = []
    for number in range(1, args.passes + 1):
        load_before = list(os.getloadavg())
        roofline = measure_roofline(rounds=3)
        rows = []
        for suite in suites:
            for case in SUITES[suite]():
                row = run_shape(case, roofline, variants, args.rounds, args.threads, args.clock, args.parts,
                                args.shuffle, hop)
                rows.append(row)
                print(f"{row['shape']:>28}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["median_ms"].items())
                      + f" | sepconv/ort {row['sepconv_vs_onnxruntime_alone']}", flush=True)
        summary = summarize(rows)
        print(f"pass {number}/{args.passes}: realized median " + ", ".join(
            f"{k} {v:.2f}" for k, v in summary["realized_median"].items()), flush=True)
        measured = {"peak_gflops": roofline.peak_flops / 1e9, "bandwidth_gbs": roofline.bandwidth / 1e9}
        passes.append({"loadavg_before": load_before, "roofline": measured, "summary": summary, "shapes": rows})
    record = {"machine": machine_info(), "kernel_isas": [name for _, name in variants], "threads": args.threads,
              "rounds": args.rounds, "clock": args.clock, "order": "shuffled per round" if args.shuffle else "fixed",
              # the first pass at the top level, as a one-pass record has it
              "roofline": passes[0]["roofline"], "shapes": passes[0]["shapes"],
              "summary_per_pass": [p["summary"] for p in passes],
              "machine_after": {"loadavg_1_5_15": list(os.getloadavg())}}
    if args.passes > 1:
        record["passes"] = passes[1:]  # the second pass on, each as the first is at the top level
    atomic_write_bytes(out / "isa.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'isa.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
