"""The training engines' pieces against PyTorch's, on the suite shapes: what `tune_training` builds on.

    python benchmarks/bench_kernels.py [--threads 1] [--rounds 7] [--out DIR]     # about a minute

For every shape of `sepconv bench`'s suites (float32, channels-last), side by side in
interleaved rounds:

* the 1x1 step's weight gradient, grad_y^T x over all pixels: `sepconv.backends.training.matmul_at_b`
  (sepconv's C kernel where it builds) against `torch.mm`, in GFLOP/s;
* the depthwise step's input gradient (stride-1 shapes): PyTorch's own
  (`aten.convolution_backward`, input only) against the 'flip' engine's (a forward
  convolution of the output gradient with the flipped kernel), in ms;
* the depthwise step's weight gradient (stride-1 shapes): PyTorch's (oneDNN) against
  sepconv's kernel (`depthwise_weight_grad`, the 'dwgrad' engine's), in ms; PyTorch's
  forward pass beside them for scale;
* the fused inference kernel (`FusedSeparableConv2d`, every shape) writing its output with
  non-temporal stores against plain stores (`sepconv.backends.fused.STREAM_MIN_BYTES` set to 0 and
  to never), in ms: what the 4 MiB threshold is chosen from, with `bench_networks.py`'s
  whole-network A/B;
* the fused kernel's two parts apart (default stores): the whole layer, its depthwise step
  alone (into the tile buffer, no output written) and its 1x1 step alone (the GEMM on a
  tile of ones, output written), in ms, and the 1x1 part's GFLOP/s: where a fused layer's
  time goes. The depthwise part alone reads its input without the kernel's prefetch of the
  next tile's input (issued during the 1x1 part), so it is the part as a separate pass
  would run it.

Each step allocates its output, as in a training step; the inputs are reused, so a
shape whose tensors fit the last-level cache runs from it.

Writes `kernels.json` (with the machine) into --out (default
`benchmarks/results/kernels-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sepconv.backends.fused
from sepconv.utils.io import atomic_write_bytes
from sepconv.bench import mobilenet_v1_suite, vgg_blocks_suite
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved
from sepconv.geometry import output_size_1d
from sepconv.layers import SeparableConv2d
from sepconv.backends.training import depthwise_weight_grad, matmul_at_b

HERE = Path(__file__).resolve().parent


def time_output_stores(module, x: torch.Tensor, limits: dict[str, int], rounds: int,
                       target_s: float) -> dict[str, float]:
    """``module(x)`` (inference) in interleaved rounds with ``sepconv.backends.fused.STREAM_MIN_BYTES`` set to each of
    ``limits`` (name -> bytes; 0: every fused output streamed, 2**62: none), median ms per name; the
    threshold is restored afterwards. Also used by bench_networks.py."""
    default = sepconv.backends.fused.STREAM_MIN_BYTES

    def run(limit: int):
        def call():
            sepconv.backends.fused.STREAM_MIN_BYTES = limit
            with torch.inference_mode():
                module(x)
        return call

    try:
        t = interleaved({name: run(limit) for name, limit in limits.items()}, rounds=rounds, target_s=target_s)
    finally:
        sepconv.backends.fused.STREAM_MIN_BYTES = default
    return {k: 1e3 * v.median for k, v in t.items()}


def _fused_layer(case):
    spec = case.spec
    layer = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                            bias=False)
    fused = sepconv.backends.fused.FusedSeparableConv2d(layer.depthwise, layer.pointwise, pad=layer.pad)
    x = torch.randn(case.batch, spec.in_channels, *case.size).contiguous(memory_format=torch.channels_last)
    return fused, x


def _stores_ab(case, rounds: int) -> dict[str, float]:
    """The case's separable layer on the fused kernel, output on non-temporal vs plain stores (ms)."""
    fused, x = _fused_layer(case)
    return time_output_stores(fused, x, {"streamed": 0, "plain": 2**62}, rounds, 0.02)


def _fused_parts(case, rounds: int) -> dict[str, float]:
    """The fused kernel on the case's layer: whole, depthwise part alone, 1x1 part alone (ms, interleaved)."""
    fused, x = _fused_layer(case)
    if fused.pad is not None:
        raise ValueError(f"{case.name}: the suites' layers pad inside the depthwise step, got {fused.pad}")

    def part(parts: int):
        def call():
            with torch.inference_mode():
                fused._run(x, parts)
        return call

    t = interleaved({"layer": part(3), "depthwise": part(1), "pointwise": part(2)}, rounds=rounds, target_s=0.02)
    return {k: 1e3 * v.median for k, v in t.items()}


def cpu_args(description: str, record: str, argv=None, more=None) -> tuple[argparse.Namespace, Path]:
    """``--threads``, ``--rounds`` and ``--out`` of a CPU benchmark (values below 1: exit 2), with torch's thread
    count set; returns the arguments and the record's directory (default ``results/<record>-cpu-<threads>thread``).
    ``more(parser)`` adds a script's own arguments (it checks them after parsing). Also used by bench_padding.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out")
    if more is not None:
        more(p)
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        p.error(f"--threads and --rounds must be >= 1, got {args.threads} and {args.rounds}")
    torch.set_num_threads(args.threads)
    return args, Path(args.out) if args.out else HERE / "results" / f"{record}-cpu-{args.threads}thread"


def main(argv=None) -> int:
    args, out = cpu_args(__doc__.split("\n\n")[0], "kernels", argv)
    rows = []
    for case in mobilenet_v1_suite() + vgg_blocks_suite():
        spec, (h, w) = case.spec, case.size
        cin, cout, (sh, sw) = spec.in_channels, spec.out_channels, spec.stride
        (pads_h, pads_w), (ph, pw) = spec.padding, (spec.padding[0][0], spec.padding[1][0])
        ho, wo = output_size_1d(h, 3, sh, 1, pads_h), output_size_1d(w, 3, sw, 1, pads_w)
        torch.manual_seed(0)
        pixels = case.batch * ho * wo
        x, gy = torch.randn(pixels, cin), torch.randn(pixels, cout)  # the 1x1 step's input and output gradient
        t = interleaved({"matmul_at_b": lambda: matmul_at_b(gy, x), "torch_mm": lambda: torch.mm(gy.t(), x)},
                        rounds=args.rounds, target_s=0.02)
        gflop = 2 * pixels * cin * cout / 1e9
        row = {"case": case.name, "weight_grad_gflops": {k: gflop / v.median for k, v in t.items()}}
        if sh == 1:
            weight = torch.randn(cin, 1, 3, 3)
            g = torch.randn(case.batch, cin, ho, wo).contiguous(memory_format=torch.channels_last)
            xin = torch.randn(case.batch, cin, h, w).contiguous(memory_format=torch.channels_last)
            flipped = weight.flip(2, 3)
            backward = torch.ops.aten.convolution_backward
            t = interleaved({
                "input_grad/pytorch": lambda: backward(g, xin, weight, None, [1, 1], [ph, pw], [1, 1], False, [0, 0],
                                                       cin, [True, False, False]),
                "input_grad/flip": lambda: F.conv2d(g, flipped, None, 1, (2 - ph, 2 - pw), 1, cin),
                "forward/pytorch": lambda: F.conv2d(xin, weight, None, 1, (ph, pw), 1, cin),
                "weight_grad/pytorch": lambda: backward(g, xin, weight, None, [1, 1], [ph, pw], [1, 1], False,
                                                        [0, 0], cin, [False, True, False]),
                "weight_grad/sepconv": lambda: depthwise_weight_grad(xin, g, (3, 3), (1, 1), (ph, pw)),
            }, rounds=args.rounds, target_s=0.02)
            for step in ("input_grad", "forward", "weight_grad"):
                row[f"depthwise_{step}_ms"] = {k.split("/")[1]: 1e3 * v.median for k, v in t.items()
                                               if k.startswith(step + "/")}
        if sepconv.backends.fused.fused_available():
            row["fused_output_stores_ms"] = _stores_ab(case, args.rounds)
            row["fused_parts_ms"] = _fused_parts(case, args.rounds)
            row["fused_pointwise_part_gflops"] = gflop / (1e-3 * row["fused_parts_ms"]["pointwise"])
        rows.append(row)
        dw = row.get("depthwise_input_grad_ms")
        print(f"{case.name:24s} weight grad GFLOP/s: matmul_at_b {row['weight_grad_gflops']['matmul_at_b']:6.1f}, "
              f"torch.mm {row['weight_grad_gflops']['torch_mm']:6.1f}"
              + (f"; depthwise ms: forward {row['depthwise_forward_ms']['pytorch']:.3f}, input grad pytorch "
                 f"{dw['pytorch']:.3f} flip {dw['flip']:.3f}, weight grad pytorch "
                 f"{row['depthwise_weight_grad_ms']['pytorch']:.3f} sepconv "
                 f"{row['depthwise_weight_grad_ms']['sepconv']:.3f}" if dw else "")
              + (f"; fused kernel ms: streamed {row['fused_output_stores_ms']['streamed']:.3f}, plain "
                 f"{row['fused_output_stores_ms']['plain']:.3f}; layer {row['fused_parts_ms']['layer']:.3f} = "
                 f"depthwise part {row['fused_parts_ms']['depthwise']:.3f} + 1x1 part "
                 f"{row['fused_parts_ms']['pointwise']:.3f} ({row['fused_pointwise_part_gflops']:.0f} GFLOP/s)"
                 if "fused_output_stores_ms" in row else ""),
              flush=True)
    record = {"machine": machine_info(), "threads": args.threads, "dtype": "float32", "rows": rows}
    atomic_write_bytes(out / "kernels.json", json.dumps(record, indent=1).encode())
    print(f"wrote {out / 'kernels.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
