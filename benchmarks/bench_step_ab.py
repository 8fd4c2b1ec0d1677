"""A separable layer's training step at another git revision of sepconv against the working tree's, per suite shape.

    python benchmarks/bench_step_ab.py --base REV [--engine fused|gemm|flip|dwgrad|eager] [--forward]
                                       [--rounds 21] [--threads 1] [--suite ...] [--out DIR]

`bench_kernel_ab.py` swaps the C kernels only; a change to the Python around them (argument checks, tensor set-up,
the autograd Function) needs the whole package of each revision. Here the package under `src/sepconv` at `--base`
is extracted to a temporary directory and imported as `sepconv_base` beside the working tree's `sepconv` (its
modules import one another relatively; each revision builds and loads its own C kernels, as
`sepconv.backends.native` does). For every suite shape, each revision builds the layer (`separable_case`: the same
weights and input), puts it on `--engine` (`fused`: the whole layer; `gemm`: its 1x1 step; `flip`, `dwgrad`: its
depthwise step; `eager`: nothing), and its training step (gradients set to None, forward, backward with a fixed
output gradient, the input needing a gradient as in a network's inner layer) runs both ways in interleaved rounds
(`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread, else wall time), after
`sepconv.keep_freed_memory()`. `--forward` times the layer's forward pass without gradients instead (inference:
on the 'fused' engine, the fused kernel without the depthwise output written out). Shapes the engine does not take
at either revision are skipped. The base revision
must have what this script calls: `sepconv.bench.suites.separable_case` and the training engines' `engine_applies`
and `use_engine`.

Writes `step_ab.json` (with the machine, both revisions, per shape the medians in ms and head / base) into --out
(default `benchmarks/results/step-ab-cpu-<threads>thread`).
"""

from __future__ import annotations

import importlib
import io
import json
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import sepconv
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import SUITES, parse_suite_args, suite_parser, training_step
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

# this directory's script (sys.path[0] when run as a script)
from bench_kernel_ab import commit_of, git

HERE = Path(__file__).resolve().parent
ENGINES = ("fused", "gemm", "flip", "dwgrad", "eager")
BASE_PACKAGE = "sepconv_base"


def import_base(commit: str, into: Path):
    """The package ``src/sepconv`` at ``commit``, extracted under ``into`` and imported as :data:`BASE_PACKAGE`."""
    tarfile.open(fileobj=io.BytesIO(git("archive", commit, "src/sepconv"))).extractall(into, filter="data")
    (into / "src" / "sepconv").rename(into / "src" / BASE_PACKAGE)
    sys.path.insert(0, str(into / "src"))
    try:
        return importlib.import_module(BASE_PACKAGE)
    finally:
        sys.path.remove(str(into / "src"))


def build(package: str, case, engine: str):
    """``(layer, x)``: ``case``'s layer as ``package`` (``sepconv`` or :data:`BASE_PACKAGE`) builds it, on ``engine``,
    and its input (needing a gradient); None where that engine does not take the layer."""
    suites = importlib.import_module(f"{package}.bench.suites")
    training = importlib.import_module(f"{package}.backends.training")
    layer, x = suites.separable_case(case)
    if engine != "eager":
        conv = {"fused": layer, "gemm": layer.pointwise}.get(engine, layer.depthwise)
        if not training.engine_applies(conv, engine):
            return None
        training.use_engine(conv, engine)
    return layer, x.requires_grad_(True)


def forward_call(layer, x):
    """A call running ``layer``'s forward pass on ``x`` without gradients (what ``--forward`` times)."""
    def run():
        with torch.no_grad():
            return layer(x)
    return run


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=21)
    p.add_argument("--base", required=True, help="the git revision to compare the working tree's package against")
    p.add_argument("--engine", choices=ENGINES, default="fused")
    p.add_argument("--forward", action="store_true",
                   help="time the forward pass without gradients (inference) instead of the training step")
    args, suites = parse_suite_args(p, argv)
    base_commit = commit_of(p, args.base)
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    head_commit = git("rev-parse", "HEAD").decode().strip()
    modified = bool(git("status", "--porcelain", "--", "src/sepconv").strip())
    out = Path(args.out) if args.out else HERE / "results" / f"step-ab-cpu-{args.threads}thread"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import_base(base_commit, Path(tmp))
        for suite in suites:
            for case in SUITES[suite]():
                built = {"base": build(BASE_PACKAGE, case, args.engine), "head": build("sepconv", case, args.engine)}
                if None in built.values():
                    print(f"{case.name:>24}: not taken by --engine {args.engine}", flush=True)
                    continue
                layer, x = built["head"]
                with torch.no_grad():
                    grad = torch.randn_like(layer(x)).contiguous(memory_format=torch.channels_last)
                calls = {k: forward_call(*v) if args.forward else training_step(*v, grad) for k, v in built.items()}
                t = time_candidates(calls, x, rounds=args.rounds)
                ms = {k: 1e3 * v.median for k, v in t.items()}
                rows.append({"shape": case.name, "batch": case.batch, "median_ms": ms,
                             "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()}, "head_vs_base": ms["head"] / ms["base"]})
                print(f"{case.name:>24}: base {ms['base']:.3f} ms, head {ms['head']:.3f} ms, "
                      f"head / base {ms['head'] / ms['base']:.2f}", flush=True)
    if not rows:
        p.exit(2, f"bench_step_ab: --engine {args.engine} takes no shape of --suite {args.suite}\n")
    ratios = [r["head_vs_base"] for r in rows]
    print(f"head / base: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    record = {"machine": machine_info(), "base": base_commit, "head": head_commit, "head_package_modified": modified,
              "engine": args.engine, "mode": "forward" if args.forward else "training step", "threads": args.threads, "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "head_vs_base_median": statistics.median(ratios), "shapes": rows}
    atomic_write_bytes(out / "step_ab.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'step_ab.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
