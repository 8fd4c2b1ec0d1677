"""A design choice of the 'fused' training engine against its alternative, in the layer's training step, per shape.

    python benchmarks/bench_step_options.py --option profiler-scope|recompute-depthwise|first-layer|stream-input-grad
                                            [--threads 1] [--rounds 21] [--suite ... | --network vgg_blocks]
                                            [--out DIR]

`--option`:

* `profiler-scope`: sepconv's C kernels are called through ctypes, which no profiler sees, so each call sits in a
  named scope (`sepconv.utils.timing.profiled`) entered only while a PyTorch profiler runs (`shipped`), against
  entering `torch.profiler.record_function` at every call (`alternative`).
* `recompute-depthwise`: the backward kernel recomputes the depthwise output for the 1x1 weight gradient where
  `sepconv.backends.training.recomputes_depthwise_output` says so, and the step keeps only the input and weights
  (`shipped`), against the forward kernel writing the depthwise output and the step keeping it (`alternative`).
* `first-layer`: the layer's input needs no gradient (a network's first layer) and the backward kernel skips the
  depthwise step's adjoint (`shipped`), against computing the input gradient and dropping it (`alternative`).
* `stream-input-grad`: the backward kernel writes an input gradient of `sepconv.backends.fused.STREAM_MIN_BYTES` or
  more with non-temporal stores (`shipped`), against plain stores whatever its size (`alternative`). What that
  saves in the kernel, the layer below may pay back reading the gradient from memory rather than cache, which a
  layer's step alone does not show: `--network` times it in a whole network.

For every suite shape the engine takes (float32, channels-last, no biases, a fixed output gradient, after
`sepconv.keep_freed_memory()`), the layer's training step (forward and backward) runs both ways side by side in
interleaved rounds (`sepconv.backends.clock.time_candidates`: the calling thread's CPU time with one thread, else
wall time). Also recorded: the bytes each way keeps for the backward pass (`torch.autograd.graph.saved_tensors_hooks`).
With `--network vgg_blocks`, instead: the seed's VGG-block network, separable variant, as `bench_train.py` builds it
(CIFAR-10 shape, batch 64, channels-last, train mode), every separable layer on the 'fused' engine, one training
step (forward, cross-entropy, backward, Adam step) each way.

Writes `step_options.json` (with the machine, per shape the medians in ms, shipped / alternative and the bytes kept)
into --out (default `benchmarks/results/step-<option>-cpu-<threads>thread`).
"""

from __future__ import annotations

import json
import statistics
import sys
import types
from pathlib import Path

import torch

import sepconv
from sepconv.backends import fused, native, training
from sepconv.backends.clock import time_candidates, timing_clock
from sepconv.bench.suites import SUITES, parse_suite_args, separable_case, suite_parser
from sepconv.models import build_model
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info

# this directory's script (sys.path[0] when run as a script): bench_train.py's networks and training step
from bench_train import NETWORKS as TRAIN_NETWORKS
from bench_train import _step as training_step

HERE = Path(__file__).resolve().parent

_SHIPPED_BACKWARD = training.depthwise_pointwise_backward


def _backward_with_input_grad(*args, **kwargs):
    """depthwise_pointwise_backward computing the input gradient even where it is not wanted, then dropping it."""
    wanted = kwargs.get("input_grad", True)
    grads = _SHIPPED_BACKWARD(*args, **{**kwargs, "input_grad": True})
    return (grads[0] if wanted else None, *grads[1:])


#: per option: the module attributes it sets and their values for the alternative
OPTIONS = {
    "profiler-scope": [(m, "profiled", torch.profiler.record_function) for m in (fused, training)],
    "recompute-depthwise": [(training, "recomputes_depthwise_output", lambda *tensors: False)],
    "first-layer": [(training, "depthwise_pointwise_backward", _backward_with_input_grad)],
    "stream-input-grad": [(training, "fused_kernels", types.SimpleNamespace(STREAM_MIN_BYTES=2**62))],
}
#: --network: bench_train.py's networks whose separable layers the 'fused' engine takes: keyword arguments, shape
NETWORKS = {name: (kwargs, shape) for name, kwargs, shape in TRAIN_NETWORKS if name == "vgg_blocks"}
#: options whose layer input needs no gradient
NO_INPUT_GRAD = ("first-layer",)


class Switch:
    """Sets an option's module attributes to the alternative's values or back to the shipped ones."""

    def __init__(self, option: str) -> None:
        self.targets = OPTIONS[option]
        self.shipped = [getattr(module, name) for module, name, _ in self.targets]

    def __call__(self, alternative: bool) -> None:
        for (module, name, value), shipped in zip(self.targets, self.shipped):
            setattr(module, name, value if alternative else shipped)


def saved_bytes(run) -> int:
    """Bytes of the tensors autograd keeps for the backward pass during ``run()``'s forward pass (each counted once
    per save)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total[0]


def network_row(name: str, switch: Switch, rounds: int) -> dict:
    """The separable ``name`` network's training step with the option shipped and with its alternative."""
    kwargs, shape = NETWORKS[name]
    torch.manual_seed(0)
    model = build_model(name, "separable", **kwargs).to(memory_format=torch.channels_last).train()
    fused_layers = 0
    for module in model.modules():
        if training.engine_applies(module, "fused"):
            training.use_engine(module, "fused")
            fused_layers += 1
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    train_step = training_step(model, x, torch.randint(0, kwargs["num_classes"], (shape[0],)))

    def step(alternative: bool):
        def run():
            switch(alternative)
            train_step()
        return run

    t = time_candidates({"shipped": step(False), "alternative": step(True)}, x, rounds=rounds, target_s=0.2)
    ms = {k: 1e3 * v.median for k, v in t.items()}
    ratio = ms["shipped"] / ms["alternative"]
    print(f"{name} (batch {shape[0]}, {fused_layers} fused layers): shipped {ms['shipped']:.2f} ms, alternative "
          f"{ms['alternative']:.2f} ms, ratio {ratio:.3f}", flush=True)
    return {"network": name, "batch": shape[0], "fused_layers": fused_layers, "median_ms": ms,
            "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()}, "shipped_vs_alternative": ratio}


def main(argv=None) -> int:
    p = suite_parser(__doc__.split("\n\n")[0], rounds=21)
    p.add_argument("--option", required=True, choices=sorted(OPTIONS))
    p.add_argument("--network", choices=sorted(NETWORKS),
                   help="time this whole network's training step instead of the suite's layers")
    args, suites = parse_suite_args(p, argv)
    if args.network and args.option in NO_INPUT_GRAD:
        p.error(f"--option {args.option} is about a network's first layer alone; --network times every layer")
    if not native.available():
        p.exit(2, f"bench_step_options: needs sepconv's C kernels ({native.unavailable_reason()})\n")
    torch.set_num_threads(args.threads)
    sepconv.keep_freed_memory()
    where = f"-{args.network}" if args.network else ""
    out = Path(args.out) if args.out else HERE / "results" / f"step-{args.option}{where}-cpu-{args.threads}thread"
    switch = Switch(args.option)
    rows = []
    try:
        if args.network:
            rows.append(network_row(args.network, switch, args.rounds))
        for suite in suites if not args.network else ():
            for case in SUITES[suite]():
                layer, x = separable_case(case)
                if not training.engine_applies(layer, "fused"):
                    continue
                training.use_engine(layer, "fused")
                with torch.no_grad():
                    grad = torch.randn_like(layer(x))
                x.requires_grad_(args.option not in NO_INPUT_GRAD)

                def step(alternative: bool):
                    def run():
                        switch(alternative)
                        layer.zero_grad(set_to_none=True)
                        x.grad = None
                        layer(x).backward(grad)
                    return run

                kept = {}
                for way, alternative in (("shipped", False), ("alternative", True)):
                    switch(alternative)
                    kept[way] = saved_bytes(lambda: layer(x))
                t = time_candidates({"shipped": step(False), "alternative": step(True)}, x, rounds=args.rounds)
                ms = {k: 1e3 * v.median for k, v in t.items()}
                ratio = ms["shipped"] / ms["alternative"]
                rows.append({"shape": case.name, "batch": case.batch, "median_ms": ms,
                             "iqr_ms": {k: 1e3 * v.iqr for k, v in t.items()}, "shipped_vs_alternative": ratio,
                             "saved_for_backward_bytes": kept})
                print(f"{case.name:>24}: shipped {ms['shipped']:.3f} ms, alternative {ms['alternative']:.3f} ms, "
                      f"ratio {ratio:.3f}; kept for backward {kept['shipped'] / 2**20:.2f} against "
                      f"{kept['alternative'] / 2**20:.2f} MiB", flush=True)
    finally:
        switch(False)
    ratios = [r["shipped_vs_alternative"] for r in rows]
    record = {"machine": machine_info(), "option": args.option, "network": args.network, "threads": args.threads,
              "rounds": args.rounds,
              "clock": timing_clock(torch.empty(0)), "kernel_isa": native.isa(),
              "shipped_vs_alternative": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
              "saved_us_median": statistics.median(1e3 * (r["median_ms"]["alternative"] - r["median_ms"]["shipped"])
                                                   for r in rows),
              "shapes": rows}
    atomic_write_bytes(out / "step_options.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"shipped / alternative: median {record['shipped_vs_alternative']['median']:.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}), {record['saved_us_median']:.0f} us a step at the median")
    print(f"wrote {out / 'step_options.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
