"""Whole networks, training: theoretical vs realized saving of the separable variant per training set-up.

    python benchmarks/bench_train.py [--threads 1] [--rounds 5] [--out DIR]     # about 3 minutes

One training step (forward, cross-entropy, backward, Adam step; train mode with
BatchNorm; float32) of the standard and separable variants of the seed's
VGG-block network (CIFAR-10 shape 3x32x32, batch 64) and MobileNetV1
(3x128x128, batch 8, 10 classes). Two measurements:

1. `engines`: interleaved rounds in one process (ratios robust to load) of
   * `nchw`: eager PyTorch as built (contiguous NCHW);
   * `channels_last`: model and input converted to channels-last;
   * `tuned`: channels-last after `sepconv.tune_training(model, x)` (per
     convolution: eager or one of its engines, whichever timed fastest; per
     plain separable layer: that, or the 'fused' layer engine);
   * `tuned_convolutions`: the same with the layers' 'fused' choices undone
     (each convolution on its own chosen engine).
2. `loop`: a plain training loop of one model (the `tuned` set-up) alone in a
   fresh process, as a user runs it, with the C library's default malloc and
   after `sepconv.keep_freed_memory()` (process-wide and permanent, hence one
   process each): ms per step, page faults and system time per step. This
   is separate because the allocator's behaviour depends on the process's
   allocation history: interleaving several models changes it.

realized = (standard ms / separable ms) / (standard MACs / separable MACs),
the standard variant on its own fastest set-up. Writes `train.json` (with the
machine) into --out (default `benchmarks/results/train-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import sepconv
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved
from sepconv.cost import profile
from sepconv.models import build_model

HERE = Path(__file__).resolve().parent
NETWORKS = (
    ("vgg_blocks", {"num_classes": 10}, (64, 3, 32, 32)),
    ("mobilenet_v1", {"num_classes": 10}, (8, 3, 128, 128)),
)
SETUPS = ("nchw", "channels_last", "tuned", "tuned_convolutions")


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return run


def _candidates(name: str, kwargs: dict, shape: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """Training-step closures per 'variant/setup', MACs per sample, and tune_training's choices."""
    steps, macs, choices = {}, {}, {}
    torch.manual_seed(0)
    x = torch.randn(*shape)
    y = torch.randint(0, kwargs["num_classes"], (shape[0],))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for variant in ("standard", "separable"):
        torch.manual_seed(0)
        model = build_model(name, variant, **kwargs)
        macs[variant] = profile(model, shape[1:]).total_macs
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        tuned = copy.deepcopy(cl)
        picked = sepconv.tune_training(tuned, x_cl)
        choices[variant] = {k: v for k, v in picked.items() if v != "eager"}
        convolutions = copy.deepcopy(tuned)
        for module in convolutions.modules():
            module.__dict__.pop("_steps_engine", None)  # the layer engine's choice undone, its convolutions' kept
        for setup, m, xi in (("nchw", model, x), ("channels_last", cl, x_cl), ("tuned", tuned, x_cl),
                             ("tuned_convolutions", convolutions, x_cl)):
            steps[f"{variant}/{setup}"] = _step(m.train(), xi, y)
    return steps, macs, choices


def _phase(steps: dict, macs: dict, rounds: int) -> dict:
    t = interleaved(steps, rounds=rounds, target_s=0.2)
    ms = {k: 1e3 * v.median for k, v in t.items()}
    iqr = {k: 1e3 * v.iqr for k, v in t.items()}
    std_setup = min(SETUPS, key=lambda s: ms[f"standard/{s}"])
    theory = macs["standard"] / macs["separable"]
    std_ms = ms[f"standard/{std_setup}"]
    return {"median_ms": ms, "iqr_ms": iqr, "standard_setup": std_setup,
            "separable": {s: {"ms": ms[f"separable/{s}"], "speedup": std_ms / ms[f"separable/{s}"],
                              "realized": std_ms / ms[f"separable/{s}"] / theory} for s in SETUPS}}


def _loop(name: str, variant: str, steps: int) -> dict:
    """In this process: the tuned channels-last model's training loop; ms, page faults and system ms per step."""
    kwargs, shape = next((k, s) for n, k, s in NETWORKS if n == name)
    torch.manual_seed(0)
    model = build_model(name, variant, **kwargs).to(memory_format=torch.channels_last)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, kwargs["num_classes"], (shape[0],))
    sepconv.tune_training(model, x)
    step = _step(model.train(), x, y)
    for _ in range(3):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"ms": 1e3 * seconds / steps, "page_faults": (after.ru_minflt - before.ru_minflt) / steps,
            "system_ms": 1e3 * (after.ru_stime - before.ru_stime) / steps}


def _isolated(name: str, variant: str, keep: bool, threads: int, steps: int) -> dict:
    argv = [sys.executable, __file__, "--loop", name, variant, "--threads", str(threads), "--steps", str(steps)]
    done = subprocess.run(argv + (["--keep-freed-memory"] if keep else []), capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per isolated training loop")
    p.add_argument("--repeats", type=int, default=3, help="isolated loops per network, variant and malloc setting")
    p.add_argument("--out")
    p.add_argument("--loop", nargs=2, metavar=("NETWORK", "VARIANT"), help=argparse.SUPPRESS)  # one isolated loop
    p.add_argument("--keep-freed-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("threads", "rounds", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.loop:
        if args.keep_freed_memory and not sepconv.keep_freed_memory():
            p.error("--keep-freed-memory needs glibc's malloc (Linux)")
        print(json.dumps(_loop(*args.loop, args.steps)))
        return 0
    out = Path(args.out) if args.out else HERE / "results" / f"train-cpu-{args.threads}thread"
    rows = {}
    for name, kwargs, shape in NETWORKS:
        steps, macs, choices = _candidates(name, kwargs, shape)
        theory = macs["standard"] / macs["separable"]
        result = _phase(steps, macs, args.rounds)
        del steps
        loops = {}
        for keep in (False, True):
            runs = {v: [] for v in ("standard", "separable")}
            for _ in range(args.repeats):  # alternate, so a burst of load hits both variants
                for variant in runs:
                    runs[variant].append(_isolated(name, variant, keep, args.threads, args.steps))
            med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
            speedup = med["standard"]["ms"] / med["separable"]["ms"]
            loops["freed_memory_kept" if keep else "default_malloc"] = {
                **med, "runs": runs, "speedup": speedup, "realized": speedup / theory}
        rows[name] = {"input": list(shape), "macs_per_sample": macs, "theoretical_speedup": theory,
                      "tuned_engines": choices, "engines": result, "loop": loops}
        std_setup = result["standard_setup"]
        print(f"{name}: theoretical {theory:.2f}x; standard {result['median_ms']['standard/' + std_setup]:.1f} ms "
              f"({std_setup}); " + "; ".join(
                  f"separable {s} {v['ms']:.1f} ms = {v['speedup']:.2f}x (realized {v['realized']:.2f})"
                  for s, v in result["separable"].items()), flush=True)
        for setting, v in loops.items():
            print(f"  loop, tuned, {setting}: standard {v['standard']['ms']:.1f} ms "
                  f"({v['standard']['page_faults']:.0f} faults, {v['standard']['system_ms']:.1f} ms system), "
                  f"separable {v['separable']['ms']:.1f} ms ({v['separable']['page_faults']:.0f} faults, "
                  f"{v['separable']['system_ms']:.1f} ms system) = {v['speedup']:.2f}x (realized {v['realized']:.2f})",
                  flush=True)
    record = {"machine": machine_info(), "threads": args.threads, "dtype": "float32",
              "mode": "training step (forward, cross-entropy, backward, Adam step)", "rows": rows}
    atomic_write_bytes(out / "train.json", json.dumps(record, indent=1).encode())
    print(f"wrote {out / 'train.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
