"""What a call of the fused inference layer costs besides its kernel, on the small layers where that shows.

    python benchmarks/bench_call_overhead.py [--threads 1] [--rounds 7] [--out DIR]     # about 20 seconds

For each layer (float32, channels-last, batch 1 unless named), side by side in interleaved rounds, in microseconds:

* `kernel_array`: the C kernel alone, called through ctypes with its arguments in one prepared int64 array
  (`sepconv_fused_dwpw_args`, `csrc/calls.c`), the output tensor allocated once;
* `kernel_31_args`: the same kernel with its 31 arguments passed one by one (`sepconv_fused_dwpw_f32`), each
  converted by ctypes at every call: what `FusedSeparableConv2d` called before it took the array;
* `layer_run`: `FusedSeparableConv2d._run` (plan lookup, output allocation, argument array, kernel);
* `layer_forward`: the module's `forward` (input checks and layout as well), what a network runs.

All four run inside one `torch.inference_mode()`, entered once as for a network's forward pass. `python_us`
(`layer_forward` - `kernel_array`) is what a call costs in Python; `array_saves_us` (`kernel_31_args` -
`kernel_array`) what passing the array saves per call. The 2x2 layer is the floor: its kernel does almost nothing.
The layers are those of a batch-1 network on small images (8x8 digits, 32x32 CIFAR); on larger ones the
difference drowns in the noise and in the cache state of the output (the direct calls rewrite one output tensor,
the layer writes a new one at each call). Writes `call_overhead.json` (with the machine) into --out (default
`benchmarks/results/call-overhead-cpu-<threads>thread`).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from sepconv import SeparableConv2d
from sepconv.backends import native
from sepconv.backends.fused import FusedSeparableConv2d, fused_available, fused_unavailable_reason
from sepconv.utils.io import atomic_write_bytes
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import cpu_args  # noqa: E402

#: (name, in channels, out channels, image side, stride, batch)
LAYERS = (
    ("64->64 @2 (floor)", 64, 64, 2, 1, 1),
    ("32->64 @8 (digits)", 32, 64, 8, 1, 1),
    ("64->128 @4 (digits)", 64, 128, 4, 1, 1),
    ("128->128 @16 (CIFAR)", 128, 128, 16, 1, 1),
    ("64->64 @32 (CIFAR)", 64, 64, 32, 1, 1),
)


def layer_calls(cin: int, cout: int, side: int, stride: int, batch: int) -> dict:
    """The four ways of calling one fused layer on a random input (see the module docstring)."""
    torch.manual_seed(0)
    sep = SeparableConv2d(cin, cout, 3, stride, 1, bias=True).eval()
    fused = FusedSeparableConv2d(sep.depthwise, sep.pointwise)
    x = torch.randn(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
    ho, wo, plan_args = fused._plan(batch, side, side, max(1, torch.get_num_threads()))
    y = torch.empty((batch, cout, ho, wo)).contiguous(memory_format=torch.channels_last)
    args = fused._kernel_args(plan_args, x, y)
    lib = native.load()[0]
    one_by_one = tuple(args)
    array_call, direct_call = lib.sepconv_fused_dwpw_args, lib.sepconv_fused_dwpw_f32
    with torch.inference_mode():
        expected = fused(x)
    if array_call(args.buffer_info()[0]) or direct_call(*one_by_one) or not torch.equal(y, expected):
        raise SystemExit("bench_call_overhead: the direct kernel calls do not compute the layer")

    def forward():
        return fused(x)

    def run():
        return fused._run(x)

    def kernel_array():
        return array_call(args.buffer_info()[0])

    def kernel_31_args():
        return direct_call(*one_by_one)

    kernel_array.keeps = kernel_31_args.keeps = (x, y)  # passed by address: they must live as long as the calls
    return {"kernel_array": kernel_array, "kernel_31_args": kernel_31_args, "layer_run": run, "layer_forward": forward}

def main(argv=None) -> int:
    args, out = cpu_args(__doc__.split("\n\n")[0], "call-overhead", argv)
    if not fused_available():
        print(f"bench_call_overhead: the fused kernel is not available: {fused_unavailable_reason()}")
        return 1
    rows = []
    for name, cin, cout, side, stride, batch in LAYERS:
        with torch.inference_mode():  # entered once, as for a whole network's forward pass
            t = interleaved(layer_calls(cin, cout, side, stride, batch), rounds=args.rounds, target_s=0.02)
        us = {k: 1e6 * v.median for k, v in t.items()}
        row = {"layer": name, "in": cin, "out": cout, "size": side, "stride": stride, "batch": batch,
               "median_us": us, "iqr_us": {k: 1e6 * v.iqr for k, v in t.items()},
               "python_us": us["layer_forward"] - us["kernel_array"],
               "array_saves_us": us["kernel_31_args"] - us["kernel_array"]}
        rows.append(row)
        print(f"{name:>28}: kernel {us['kernel_array']:8.1f} us (31 args {us['kernel_31_args']:8.1f}), "
              f"_run {us['layer_run']:8.1f}, forward {us['layer_forward']:8.1f}; "
              f"Python {row['python_us']:.1f} us, the array saves {row['array_saves_us']:.1f} us", flush=True)
    record = {"machine": machine_info(), "kernel_isa": native.isa(), "threads": args.threads,
              "rounds": args.rounds, "clock": "wall",
              "python_us_median": statistics.median(r["python_us"] for r in rows),
              "array_saves_us_median": statistics.median(r["array_saves_us"] for r in rows), "layers": rows}
    atomic_write_bytes(out / "call_overhead.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {out / 'call_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
