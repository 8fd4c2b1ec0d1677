"""``sepconv compare``: its options (derived from :mod:`sepconv.experiments.config`) and what it prints."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .config import CompareConfig, RunOptions, add_options, given_options, run_options_from_args

#: The default run's wall time, quoted in ``--help`` and docs/compare.md (record in benchmarks/results/).
DEFAULT_RUN_TIME = ("55 s on an idle 2-core AMD EPYC (Zen 4, AVX-512) at its default 2 threads; use --threads 1 on a "
                    "shared machine (record: benchmarks/results/compare-default-zen4-avx512-2thread/compare.json)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command; its options come from the fields of ``CompareConfig`` and ``RunOptions``."""
    parser = subparsers.add_parser(
        "compare",
        help="train standard vs separable variants of one architecture and compare cost and accuracy",
        description=(
            "Train the same architecture in several convolution variants (standard, depthwise separable, grouped, "
            "spatially separable) with identical seeds, data order and schedule; print and save a table of "
            "parameters, MACs, train time per epoch, inference latency (eager and through sepconv.optimize), "
            "best/final validation accuracy and train/val gap, with plots and an HTML report. With no arguments: "
            f"scikit-learn's digits (no download), vgg_blocks in all its variants: {DEFAULT_RUN_TIME}."
        ),
    )
    add_options(parser.add_argument_group("what to compare (recorded in run.json; --resume reuses it)"),
                CompareConfig)
    add_options(parser.add_argument_group("how to run"), RunOptions)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The options given on the command line over the defaults or, with ``--resume``, over the saved
    run's settings (so ``--resume --out DIR`` alone continues that run)."""
    from .outdir import RUN_MARKER, read_run_file

    base = asdict(CompareConfig())
    if getattr(args, "resume", False) and args.out and (Path(args.out) / RUN_MARKER).is_file():
        base = asdict(read_run_file(Path(args.out)))
    base.update(given_options(args, CompareConfig))
    return CompareConfig(**base)


def run(args: argparse.Namespace) -> int:
    """``sepconv compare``: run, print the table and where the results are; return the exit status."""
    from ..train import TrainingDiverged, TrainingInterrupted
    from ..train import distributed as dist_utils
    from ..utils.memory import keep_freed_memory
    from .outdir import default_out
    from .report import format_table
    from .run import run_compare

    options = run_options_from_args(args)
    config = config_from_args(args)
    if not options.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun every process must write to the same place: give --out DIR")
    out = Path(options.out) if options.out else default_out()
    log = (lambda msg: None) if options.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    keep_freed_memory()  # this process trains: reuse freed tensor memory instead of page-faulting fresh memory
    main_process = True
    try:
        results = run_compare(config, out, resume=options.resume, overwrite=options.overwrite,
                              progress=not options.quiet and sys.stderr.isatty(), log=log,
                              latency_min_run_time=options.latency_time, optimized_latency=options.optimized_latency,
                              tensorboard=options.tensorboard, dry_run=options.dry_run,
                              quantize=options.quantize)
    except TrainingDiverged as error:
        print(f"sepconv compare: error: {error}; partial results in {out}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        print(f"sepconv compare: interrupted after {error.completed_epochs} completed epoch(s) of the current variant; "
              f"checkpoints are in {out / 'checkpoints'}; continue with: sepconv compare --out {out} --resume",
              file=sys.stderr)
        return 130
    finally:
        main_process = dist_utils.is_main_process()
        if dist_utils.world_size() > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not main_process:
        return 0
    print(format_table(results["table"]))
    for variant, entry in results["variants"].items():
        if entry.get("int8"):
            from ..quantization import schemes_table

            print(f"\nint8, {variant}:\n{schemes_table(entry['int8'])}")
    if options.dry_run:
        sizes = results["variants"]
        print("dry run: nothing trained or written; estimated training memory per variant: "
              + ", ".join(f"{v} {s['train_bytes'] / 2**20:.1f} MiB" for v, s in sizes.items()))
    else:
        print(f"results: {out / 'results.json'}  report: {out / 'report.html'}  plots: {out / 'accuracy.png'}")
    return 0
