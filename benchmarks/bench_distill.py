"""Fine-tuning a converted network by distillation: top-1 labels against soft targets at several temperatures.

    python benchmarks/bench_distill.py [--weights standard.safetensors] [--epochs 3] [--seeds 0,1,2]
        [--temperatures 1,2,4] [--threads 1] [--out benchmarks/results/distill]

Takes a trained standard `vgg_blocks` network on digits (``--weights``, a `sepconv compare` run's
``models/standard.safetensors``; without it, trains the default `sepconv compare` standard network,
15 epochs, seed 0), converts every 3x3 convolution to a depthwise separable one (M = 1) with
calibration on 512 training images, and fine-tunes it for ``--epochs`` epochs with `sepconv convert`'s
fine-tuning (Adam, lr 3e-4, batch 64) once with ``--hard-labels`` and once per temperature, for each
seed. Records the held-out accuracy and top-1 agreement with the original after fine-tuning, per method
and seed, with the machine, in ``distill.json``. This is a measurement, not a test. Needs the
`experiments` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from sepconv.cli import main as cli
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

HERE = Path(__file__).resolve().parent


def _numbers(text: str, kind=float) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def _trained_standard(tmp: Path) -> Path:
    out = tmp / "compare"
    code = cli(["compare", "--variants", "standard", "--out", str(out), "--threads", str(torch.get_num_threads())])
    if code != 0:
        raise SystemExit(f"training the standard network failed (exit {code})")
    return out / "models" / "standard.safetensors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="a trained standard vgg_blocks network (.safetensors model file)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--seeds", type=lambda t: _numbers(t, int), default=[0, 1, 2])
    p.add_argument("--temperatures", type=_numbers, default=[1.0, 2.0, 4.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "distill")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or 0 in args.temperatures:
        p.error("--epochs and --threads must be >= 1 and every temperature > 0")
    torch.set_num_threads(args.threads)

    methods = [("hard", ["--hard-labels"])] + [(f"T={t:g}", ["--distill-temperature", str(t)])
                                                for t in args.temperatures]
    runs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = args.weights or _trained_standard(tmp)
        for seed in args.seeds:
            for name, flags in methods:
                out = tmp / f"{name}-{seed}.safetensors"
                code = cli(["convert", str(weights), str(out), "--data", "digits", "--calibrate",
                            "--finetune-epochs", str(args.epochs), "--seed", str(seed), "--no-scratch", *flags])
                if code != 0:
                    raise SystemExit(f"convert failed for {name}, seed {seed} (exit {code})")
                report = json.loads(out.with_suffix("").with_suffix(".report.json").read_text())
                after = report["network_after_finetune"]
                runs.append({"method": name, "seed": seed, "accuracy_before": report["finetune"]["accuracy_before"],
                             "accuracy_after": after["accuracy_converted"], "top1_agreement": after["top1_agreement"],
                             "accuracy_original": after["accuracy_original"]})
                print(f"{name:>6} seed {seed}: {runs[-1]['accuracy_before']:.4f} -> {runs[-1]['accuracy_after']:.4f} "
                      f"(agreement {runs[-1]['top1_agreement']:.4f})", flush=True)
    summary = {name: {"mean_accuracy_after": statistics.fmean(r["accuracy_after"] for r in runs if r["method"] == name),
                      "mean_top1_agreement": statistics.fmean(r["top1_agreement"] for r in runs if r["method"] == name)}
               for name, _ in methods}
    record = {"what": "sepconv convert --to separable --calibrate --finetune-epochs N on digits, per method and seed",
              "weights": str(args.weights) if args.weights else "trained by this script (sepconv compare default)",
              "epochs": args.epochs, "threads": args.threads, "runs": runs, "summary": summary,
              "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "distill.json", (json.dumps(record, indent=1) + "\n").encode())
    for name, figures in summary.items():
        print(f"{name:>6}: mean accuracy {figures['mean_accuracy_after']:.4f}, "
              f"agreement {figures['mean_top1_agreement']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
