"""The C kernels of another git revision against the working tree's, per suite shape, in the same rounds.

    python benchmarks/bench_kernel_ab.py --base REV [--isa native|avx2]
                                         [--part layer|depthwise|pointwise|wgrad|atb|gemm|backward]
                                         [--rounds 11] [--threads 1]
                                         [--suite ... | --channels C,C,... | --layer C:COUT:SIZE:BATCH ...]
                                         [--cold] [--keep-freed-memory] [--out DIR]

The C sources under `src/sepconv/backends/native/csrc` at `--base` (any git revision) and in the working tree are
built the way `sepconv.backends.native` builds them (same compiler, flags and `--isa` variant), and one process
runs `FusedSeparableConv2d` on every suite shape with each library in turn, in interleaved rounds (the calling
thread's CPU time with one thread, else wall time: `sepconv.backends.clock.time_candidates`). So a kernel change
is measured side by side with what it replaces, on one machine in one run, instead of from two runs that the
host's drift between them can swamp. `--part`: the whole layer, or the kernel's depthwise step alone (its
`parts=1`: into the tile buffer, no output written) or its 1x1 step alone on a tile of ones (`parts=2`); or a training
kernel: `wgrad`, the depthwise weight gradient (`sepconv.backends.training.depthwise_weight_grad`) of each
shape's depthwise step, `atb`, the 1x1 step's weight-gradient GEMM (`matmul_at_b`, grad_y^T x), or `gemm`, the
1x1 step's forward pass as the 'gemm' training engine runs it (`matmul_bt`, x W^T), or `backward`, the 'fused'
training engine's backward kernel (`depthwise_pointwise_backward`, all four gradients). `--channels` replaces the
suite shapes with 3x3 layers of the given input channel counts to 64 outputs at 32x32, batch 32; `--layer` with
3x3 layers of any channels, size and batch. `--cold`: the
fused kernel's parts take a different copy of the input at each call, 64 MiB of copies in all, so they read it
from memory (the case the kernel's prefetch of the next tile's input serves) instead of from cache.
`--keep-freed-memory` calls `sepconv.keep_freed_memory()` first, as `bench_isa.py` does for the goals: without it
each call's new output can be fresh pages, whose faults take part of every sample in both revisions (recorded as
`freed_memory_kept` in the machine). Both revisions must have the same kernel signatures (the library is bound
by the working tree's `sepconv.backends.native`).

Writes `kernel_ab.json` (with the machine, both revisions, per shape the medians in ms and head / base) into --out
(default `benchmarks/results/kernel-ab-cpu-<threads>thread`).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from sepconv import SeparableConv2d
from sepconv.backends import native
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.backends.fused import FusedSeparableConv2d
from sepconv.backends.training import (depthwise_pointwise_backward, depthwise_weight_grad, engine_applies,
                                       matmul_at_b, matmul_bt)
from sepconv.bench.suites import (SUITES, Case, cold_inputs, layer_case, parse_suite_args, separable_case,
                                  suite_parser)
from sepconv.geometry import ConvSpec
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.memory import keep_freed_memory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSRC = "src/sepconv/backends/native/csrc"
PARTS = {"layer": 3, "depthwise": 1, "pointwise": 2}  # the fused kernel's `parts`
TRAINING_PARTS = ("wgrad", "atb", "gemm", "backward")


def git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_kernel_ab: git {' '.join(args)} failed: {done.stderr.decode().strip()}")
    return done.stdout


def commit_of(parser, revision: str) -> str:
    """The commit ``revision`` names in this repository; exits with code 2 naming it where it names none."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", revision + "^{commit}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        parser.error(f"--base must name a commit of this repository, got {revision!r}")
    return found.stdout.strip()


def build(csrc: Path, isa: str):
    """The kernels from the sources in ``csrc``, built and loaded as sepconv.backends.native does for ``isa``."""
    saved = native._CSRC, native._SOURCES, native._HEADERS
    native._CSRC = csrc
    # a source file the base lacks (the argument-array entry points of csrc/calls.c, newer than the kernels they
    # call) comes from the working tree
    native._SOURCES = tuple(csrc / p.name if (csrc / p.name).exists() else p for p in saved[1])
    native._HEADERS = tuple(csrc / p.name for p in saved[2])
    try:
        lib, why = native.load_for.__wrapped__(native.MARCH, isa)  # not the cached working-tree build
    finally:
        native._CSRC, native._SOURCES, native._HEADERS = saved
    if lib is None:
        raise SystemExit(f"bench_kernel_ab: the kernels in {csrc} do not build or load: {why}")
    return lib


@contextlib.contextmanager
def kernels_from(current: list):
    """Within the block every kernel call runs the library ``current[0]`` holds at that moment: the training kernels
    find their library through ``native.load`` and `FusedSeparableConv2d` through ``native.load_for`` (the build it
    was constructed with), so both are replaced."""
    saved = native.load, native.load_for
    native.load = lambda: (current[0], None)
    native.load_for = lambda march, isa="native": (current[0], None)
    try:
        yield
    finally:
        native.load, native.load_for = saved


def part_call(part: str, layer: SeparableConv2d, x: torch.Tensor, cold: bool = False):
    """The kernel work ``--part`` names, for one suite layer and its input ``x`` (channels-last); None where that
    kernel does not run the layer. cold: the fused kernel's parts read a copy of ``x`` from memory at each call
    (:func:`sepconv.bench.suites.cold_inputs`)."""
    if part in PARTS:
        fused = FusedSeparableConv2d(layer.depthwise, layer.pointwise)
        next_input = cold_inputs(x) if cold else (lambda: x)
        return lambda: fused._run(next_input(), PARTS[part])
    dw = layer.depthwise
    with torch.no_grad():
        mid = dw(x)  # the depthwise step's output: the 1x1 step's input, and the shape of its gradient
    if part == "backward":
        if not engine_applies(layer, "fused"):
            return None
        grad = torch.randn(mid.shape[0], layer.out_channels, *mid.shape[2:]).contiguous(memory_format=torch.channels_last)
        mid = mid.contiguous(memory_format=torch.channels_last)
        dw_w, pw_w = dw.weight.detach(), layer.pointwise.weight.detach()
        return lambda: depthwise_pointwise_backward(x, dw_w, pw_w, grad, tuple(dw.padding), stride=tuple(dw.stride),
                                                    mid=mid)
    if part == "wgrad":
        grad = torch.randn_like(mid).contiguous(memory_format=torch.channels_last)
        return lambda: depthwise_weight_grad(x, grad, dw.kernel_size, dw.stride, dw.padding, dw.dilation)
    pixels = mid.shape[0] * mid.shape[2] * mid.shape[3]
    if part == "gemm":
        a, w = torch.randn(pixels, mid.shape[1]), torch.randn(layer.out_channels, mid.shape[1])
        return lambda: matmul_bt(a, w)
    a, b = torch.randn(pixels, layer.out_channels), torch.randn(pixels, mid.shape[1])
    return lambda: matmul_at_b(a, b)


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the git revision to compare the working tree's kernels against")
    p.add_argument("--isa", choices=("native", "avx2"), default="native")
    p.add_argument("--part", choices=tuple(PARTS) + TRAINING_PARTS, default="layer")
    p.add_argument("--channels", help="instead of the suites: 3x3 layers of these input channel counts "
                                      "(comma-separated) to 64 outputs at 32x32, batch 32")
    p.add_argument("--layer", action="append", default=[], metavar="C:COUT:SIZE:BATCH",
                   help="instead of the suites (repeatable): a 3x3 stride-1 layer of C input and COUT output "
                        "channels at SIZE x SIZE pixels, batch BATCH")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="call sepconv.keep_freed_memory() first, so each call's output reuses freed memory")
    p.add_argument("--cold", action="store_true",
                   help="the fused kernel's parts read their input from memory at each call, not from cache")
    args, suites = parse_suite_args(p, argv)
    try:
        layers = [layer_case(text) for text in args.layer]
    except ValueError as error:
        p.error(str(error))
    if args.cold and args.part not in PARTS:
        p.error(f"--cold applies to --part {', '.join(PARTS)}, got --part {args.part}")
    try:
        channels = [int(c) for c in args.channels.split(",")] if args.channels else []
    except ValueError:
        p.error(f"--channels takes comma-separated channel counts, got {args.channels!r}")
    if any(c < 1 for c in channels):
        p.error(f"--channels must be >= 1 each, got {args.channels!r}")
    cases = ([Case(f"{c}->64 @32", ConvSpec.make(c, 64, 3, 1, 1, bias=False), (32, 32), 32) for c in channels]
             + layers or [case for suite in suites for case in SUITES[suite]()])
    base_commit = commit_of(p, args.base)
    if args.keep_freed_memory and not keep_freed_memory():
        p.error("--keep-freed-memory needs glibc's malloc; this C library is not glibc")
    torch.set_num_threads(args.threads)
    head_commit = git("rev-parse", "HEAD").decode().strip()
    dirty = bool(git("status", "--porcelain", "--", CSRC).strip())
    with tempfile.TemporaryDirectory() as tmp:
        tarfile.open(fileobj=io.BytesIO(git("archive", base_commit, CSRC))).extractall(tmp, filter="data")
        libs = {"base": build(Path(tmp) / CSRC, args.isa), "head": build(ROOT / CSRC, args.isa)}
    current = [libs["head"]]
    out = Path(args.out) if args.out else HERE / "results" / f"kernel-ab-cpu-{args.threads}thread"
    rows = []
    with kernels_from(current):
        for case in cases:
            layer, x = separable_case(case)
            layer.eval()
            work = part_call(args.part, layer, x, args.cold)
            if work is None:
                print(f"{case.name:>24}: not run by --part {args.part}", flush=True)
                continue

            def call(which: str):
                def run():
                    current[0] = libs[which]
                    with torch.inference_mode():
                        work()
                return run

            t = time_candidates({"base": call("base"), "head": call("head")}, x, rounds=args.rounds)
            ms = {k: 1e3 * v.median for k, v in t.items()}
            rows.append({"shape": case.name, "batch": case.batch, "median_ms": ms,
                         "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()}, "head_vs_base": ms["head"] / ms["base"]})
            print(f"{case.name:>24}: base {ms['base']:.3f} ms, head {ms['head']:.3f} ms, "
                  f"head / base {ms['head'] / ms['base']:.2f}", flush=True)
    ratios = [r["head_vs_base"] for r in rows]
    print(f"head / base: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    record = {"machine": machine_info(), "base": base_commit, "head": head_commit, "head_csrc_modified": dirty,
              "isa": args.isa, "kernel_isa": libs["head"].sepconv_isa().decode(), "part": args.part, "cold": args.cold,
              "threads": args.threads, "rounds": args.rounds, "clock": timing_clock(torch.empty(0)),
              "head_vs_base_median": statistics.median(ratios), "shapes": rows}
    atomic_write_bytes(out / "kernel_ab.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'kernel_ab.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
