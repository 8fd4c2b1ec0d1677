"""Peers side by side: the same depthwise separable layer run by each CPU execution path, in one run.

    python benchmarks/bench_peers.py [--threads 1] [--suite mobilenet_v1,vgg_blocks] [--out DIR]

For every shape of `sepconv bench`'s suites (forward, inference, float32), one
`SeparableConv2d` (no bias, no norm/activation) is timed as:

* `eager_nchw`      plain PyTorch eager, NCHW;
* `eager_nhwc`      plain PyTorch eager, channels-last (input already channels-last);
* `compile`, `compile_nhwc`  `torch.compile` (inductor, default mode, `freezing` on), NCHW / channels-last;
* `onnxruntime`     the layer exported to ONNX (opset 17) in an ONNX Runtime session
                    (all graph optimizations, `intra_op_num_threads` = threads);
* `sepconv`         `sepconv.optimize(layer, sample)`, sepconv's own inference path (it measures
                    eager, packed oneDNN / the fused kernel and ONNX Runtime and keeps the fastest),
                    timed as the layer runs inside an optimized network (input already in the
                    layout it chose);

and, from ONNX Runtime's profiler, `onnxruntime_in_graph`: the sum of the
separable layer's node kernel times without the `ReorderInput`/`ReorderOutput`
nodes that convert to and from its blocked NCHWc layout at the graph's edges,
i.e. what the layer costs ONNX Runtime inside a network, which converts once
(no call overhead either; `sepconv_vs_onnxruntime_in_graph`; not a peer in
`best_peer`, since no caller can run one layer that way); and the standard
convolution it replaces, at its faster eager layout, in ONNX
Runtime and packed for oneDNN, for the realized ratios (`realized_best_path`
against the faster eager standard convolution, `realized_best_engines` against
the standard convolution's fastest engine, `realized_onnxruntime` with both in
ONNX Runtime). All candidates of a shape are timed in the same
interleaved rounds (medians), so ratios are side by side. Peers that are not
installed (onnxruntime) or fail (torch.compile without a C++ compiler) are
recorded as skipped with the reason. With `--keras-python PATH` (a Python that
has TensorFlow and Keras, e.g. a separate venv: `pip install tensorflow-cpu`),
Keras' `SeparableConv2D` and `Conv2D` (TensorFlow backend, channels-last,
`tf.function`) are timed too, by `keras_peer.py` in that Python, right after
the other candidates of each shape (their own process, so not interleaved).

Writes `peers.json` (with the machine) into --out (default
`benchmarks/results/peers-cpu-<threads>thread`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from sepconv import SeparableConv2d
from sepconv.utils.io import atomic_write_bytes
from sepconv.bench.suites import SUITES, suite_names
from sepconv.utils.machine import machine_info
from sepconv.utils.timing import interleaved
from sepconv.cost import conv_cost, separable_cost
from sepconv import optimize, to_onnxruntime
from sepconv.layers._common import conv_module
from sepconv.backends.onednn import PackedConv2d, onednn_available

HERE = Path(__file__).resolve().parent


def no_grad(fn, *args):
    def call():
        with torch.no_grad():
            return fn(*args)
    return call


def onnx_runner(module: nn.Module, x: torch.Tensor, threads: int):
    """The raw ``session.run`` of ``module`` in ONNX Runtime (export and output check by sepconv.to_onnxruntime)."""
    runner = to_onnxruntime(module, x, threads=threads)
    feed = {runner.input_name: x.numpy()}
    return lambda: runner.session.run(None, feed)


def onnx_kernels(module: nn.Module, x: torch.Tensor, threads: int, runs: int) -> dict[str, float]:
    """Median microseconds per node of ``module``'s ONNX Runtime graph over ``runs`` runs (its profiler's kernel times).

    ONNX Runtime runs convolutions in its blocked NCHWc layout and converts at the graph's edges
    (``ReorderInput``/``ReorderOutput`` nodes); inside a network it converts once, so the sum of the other nodes
    is the layer's cost there.
    """
    import os

    runner = to_onnxruntime(module, x, threads=threads, profile=True)
    feed = {runner.input_name: x.numpy()}
    for _ in range(runs):
        runner.session.run(None, feed)
    path = runner.session.end_profiling()
    try:
        events = json.loads(Path(path).read_text())
    finally:
        os.unlink(path)
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = f"{e['args'].get('op_name', '?')}:{e['name'][:-len('_kernel_time')]}"
            per_node.setdefault(name, []).append(e["dur"])
    return {name: statistics.median(durations[-runs:]) for name, durations in per_node.items()}


class KerasPeer:
    """Keras' SeparableConv2D and Conv2D timed by benchmarks/keras_peer.py under another Python (with TensorFlow)."""

    def __init__(self, python: str, threads: int):
        import subprocess

        self.proc = subprocess.Popen([python, str(HERE / "keras_peer.py"), str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def time(self, case, rounds: int) -> dict:
        spec = case.spec
        request = {"in": spec.in_channels, "out": spec.out_channels, "size": case.size[0],
                   "stride": spec.stride[0], "batch": case.batch, "rounds": rounds}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("keras_peer.py stopped (see its error output above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_shape(case, threads: int, rounds: int, keras: "KerasPeer | None" = None) -> dict:
    torch.manual_seed(0)
    spec = case.spec
    x = torch.randn(case.batch, spec.in_channels, *case.size)
    sep = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                          bias=False).eval()
    std = conv_module(spec)[0].eval()
    std_nhwc = conv_module(spec)[0].eval().to(memory_format=torch.channels_last)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    sep_nhwc = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                               bias=False).eval().to(memory_format=torch.channels_last)
    sep_nhwc.load_state_dict(sep.state_dict())
    candidates = {
        "standard_nchw": no_grad(std, x),
        "standard_nhwc": no_grad(std_nhwc, x_nhwc),
        "eager_nchw": no_grad(sep, x),
        "eager_nhwc": no_grad(sep_nhwc, x_nhwc),
    }
    skipped = {}
    try:
        import torch._inductor.config as inductor_config

        torch._dynamo.reset()  # a fresh compile per shape (else dynamo's recompile limit falls back to eager)
        compiled = torch.compile(sep)
        compiled_nhwc = torch.compile(sep_nhwc)
        # freezing (weights as constants, prepacked for oneDNN) is what makes inductor fast for CPU inference
        with torch.no_grad(), inductor_config.patch(freezing=True):
            torch.testing.assert_close(compiled(x), sep(x), rtol=1e-4, atol=1e-4)
            compiled_nhwc(x_nhwc)
        candidates["compile"] = no_grad(compiled, x)
        candidates["compile_nhwc"] = no_grad(compiled_nhwc, x_nhwc)
    except Exception as error:  # no compiler, unsupported op, ...
        skipped["compile"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    try:
        candidates["onnxruntime"] = onnx_runner(sep, x, threads)
        candidates["standard_onnxruntime"] = onnx_runner(std, x, threads)
    except Exception as error:
        skipped["onnxruntime"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if onednn_available():  # the standard convolution with its weight reordered once (what eager redoes every call)
        candidates["standard_onednn"] = no_grad(PackedConv2d(std_nhwc), x_nhwc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = optimize(sep, x)
    # the layer as it runs inside an optimized network: its input already in the chosen layout
    # (OptimizedModel converts the network's input once; timing that copy here would charge one layer with it)
    candidates["sepconv"] = no_grad(fast.model, x.contiguous(memory_format=fast.memory_format))
    timings = interleaved(candidates, rounds=rounds)
    ms = {k: 1e3 * v.median for k, v in timings.items()}
    nodes_us = {}
    if "onnxruntime" in ms:  # ONNX Runtime's nodes without the layout conversions: its cost inside a network
        nodes_us = onnx_kernels(sep, x, threads, runs=20 * rounds)
        ms["onnxruntime_in_graph"] = 1e-3 * sum(v for k, v in nodes_us.items() if not k.startswith("Reorder"))
    versions = {}
    if keras is not None:  # right after the others, in its own process (not interleaved with them)
        reply = keras.time(case, rounds)
        ms["keras"], ms["standard_keras"] = reply["separable_ms"], reply["standard_ms"]
        versions = reply["versions"]
    peers = {k: v for k, v in ms.items()
             if k in ("eager_nchw", "eager_nhwc", "compile", "compile_nhwc", "onnxruntime", "keras")}
    best_peer = min(peers, key=peers.get)
    t_std = min(ms["standard_nchw"], ms["standard_nhwc"])
    std_engines = [k for k in ms if k.startswith("standard_")]
    best_std = min(std_engines, key=ms.get)
    theoretical = conv_cost(spec, case.size).macs / separable_cost(spec, case.size).macs
    best_path = min(("sepconv", *peers), key=lambda k: ms[k])
    return {
        "shape": case.name, "batch": case.batch, "size": list(case.size), "in": spec.in_channels,
        "out": spec.out_channels, "stride": list(spec.stride), "median_ms": ms,
        "iqr_ms": {k: 1e3 * v.iqr for k, v in timings.items()}, "skipped": skipped,
        "best_peer": best_peer, "sepconv_vs_best_peer": ms["sepconv"] / ms[best_peer],
        "sepconv_backend": fast.backend, "sepconv_layer_choices": fast.layer_choices,
        "theoretical_speedup": theoretical, "best_path": best_path,
        "realized_best_path": (t_std / ms[best_path]) / theoretical,
        # each side on its fastest engine (the standard convolution too: eager, oneDNN-packed or ONNX Runtime)
        "best_standard": best_std, "realized_best_engines": (ms[best_std] / ms[best_path]) / theoretical,
        "realized_eager_nchw": (t_std / ms["eager_nchw"]) / theoretical,
        # both convolutions in ONNX Runtime: the saving realized within that engine
        "realized_onnxruntime": ((ms["standard_onnxruntime"] / ms["onnxruntime"]) / theoretical
                                 if "onnxruntime" in ms else None),
        # both convolutions in Keras (TensorFlow backend)
        "realized_keras": (ms["standard_keras"] / ms["keras"]) / theoretical if "keras" in ms else None,
        "keras_versions": versions,
        "onnxruntime_nodes_us": nodes_us,
        # against ONNX Runtime's nodes alone (profiler kernel times, no call overhead, input already in its layout)
        "sepconv_vs_onnxruntime_in_graph": (ms["sepconv"] / ms["onnxruntime_in_graph"]
                                            if "onnxruntime_in_graph" in ms else None),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--suite", default="mobilenet_v1,vgg_blocks")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out")
    p.add_argument("--keras-python", help="a Python with TensorFlow/Keras: time Keras' SeparableConv2D as a peer")
    args = p.parse_args(argv)
    try:
        suites = suite_names(args.suite)
    except ValueError as error:
        p.error(str(error))
    if args.keras_python and not Path(args.keras_python).is_file():
        p.error(f"--keras-python must be the path of a Python executable with TensorFlow, got {args.keras_python!r}")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else HERE / "results" / f"peers-cpu-{args.threads}thread"
    rows = []
    keras = KerasPeer(args.keras_python, args.threads) if args.keras_python else None
    for suite in suites:
        for case in SUITES[suite]():
            row = run_shape(case, args.threads, args.rounds, keras)
            row["suite"] = suite
            rows.append(row)
            ms = row["median_ms"]
            print(f"{suite:13s} {case.name:28s} " + "  ".join(f"{k} {v:8.3f}" for k, v in ms.items())
                  + f"  best peer {row['best_peer']}  sepconv/best {row['sepconv_vs_best_peer']:.2f}"
                  + (f"  sepconv/onnxruntime in graph {row['sepconv_vs_onnxruntime_in_graph']:.2f}"
                     if row["sepconv_vs_onnxruntime_in_graph"] else "")
                  + (f"  skipped {list(row['skipped'])}" if row["skipped"] else ""), flush=True)
    if keras is not None:
        keras.close()
    record = {"machine": machine_info(), "threads": args.threads, "dtype": "float32", "mode": "inference forward",
              "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "peers.json", json.dumps(record, indent=1).encode())
    print(f"wrote {out / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
