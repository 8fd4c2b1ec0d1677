"""Which factorization pays: convert a trained network with every scheme and measure it without fine-tuning.

    python benchmarks/bench_factorize.py [--threads 2] [--out benchmarks/results/factorize-schemes.json]

Trains the default `sepconv compare` standard network (digits, `vgg_blocks`,
15 epochs, seed 0) into a temporary directory, then converts every 3x3
convolution with `sepconv.factorize.convert` to each target (`separable` and
`blueprint` with M = 1, `cp` at its default rank, `spatial` at rank 16) and
records parameters, MACs, per-layer relative weight error, validation accuracy
before and after (ReLU-aware) calibration on 512 training images, and the conversion time.
This is a measurement, not a test. Needs the `experiments` and `tensorly` extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.cli import main as cli
from sepconv.data import load_dataset
from sepconv.factorize import calibrate, convert
from sepconv.models import load_model
from sepconv.train import evaluate

HERE = Path(__file__).resolve().parent
SCHEMES = (("separable", {"depth_multiplier": 1}), ("blueprint", {"depth_multiplier": 1}), ("cp", {}),
           ("spatial", {"rank": 16}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "factorize-schemes.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        code = cli(["compare", "--variants", "standard", "--threads", str(args.threads), "--quiet", "--out", str(run)])
        if code:
            return code
        model, _ = load_model(run / "models" / "standard.safetensors")
    model.eval()
    data = load_dataset("digits", None, val_fraction=0.2, split_seed=0)
    sample = data.train_x[:512]
    record = {"machine": machine_info(), "threads": args.threads,
              "standard": {"params": sum(p.numel() for p in model.parameters()),
                           "val_acc": evaluate(model, data.val_x, data.val_y)[1]},
              "schemes": []}
    for to, options in SCHEMES:
        start = time.perf_counter()
        new, report = convert(model, to=to, sample_input=sample, **options)
        seconds = time.perf_counter() - start  # the factorization; calibration below reuses it
        row = {"to": to, "options": options, "params": sum(p.numel() for p in new.parameters()),
               "conv_macs": sum(r.macs_after for r in report.layers),
               "weight_errors": [r.weight_error for r in report.layers],
               "output_errors": [r.output_error for r in report.layers],
               "val_acc": evaluate(new, data.val_x, data.val_y)[1], "convert_s": seconds, "val_acc_calibrated": None}
        calibrate(model, new, sample)
        row["val_acc_calibrated"] = evaluate(new, data.val_x, data.val_y)[1]
        record["schemes"].append(row)
        print(f"{to:10s} params {row['params']:,}  conv MACs {row['conv_macs']:,}  weight errors "
              f"{[round(e, 2) for e in row['weight_errors']]}  val acc {row['val_acc']:.3f}  calibrated "
              f"{row['val_acc_calibrated']}  {seconds:.1f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(record, indent=1).encode())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
