"""Benchmark suites (layer shapes from the zoo) and the standard-vs-separable measurement.

For each case the standard 3x3 convolution and its depthwise separable
replacement run side by side, forward (and forward+backward), each in NCHW
and channels-last; the standard convolution is credited with its faster
layout, so the speedup is honest. The depthwise and pointwise stages are
also timed alone, and each is compared with its roofline bound.

Forward passes are also timed on the ``onednn`` engine (both convolutions as
:class:`~sepconv.backends.onednn.PackedConv2d`, the path ``sepconv.optimize`` can
choose) and, for the separable layer, on the ``fused`` kernel
(:class:`~sepconv.backends.fused.FusedSeparableConv2d`), so three realized ratios
come out: eager PyTorch against itself,
oneDNN-packed against itself, and the best engine of each (what a user of
``sepconv.optimize`` gets). The roofline gives one more yardstick: the
speedup the two roofline bounds allow (``roofline_speedup``), which is below
the MAC ratio where a stage is memory-bound. The roofline draws one compute
peak for both convolutions; ``gemm_ceiling`` measures what that hides: the
realized ratio the separable layer would reach if its depthwise step took no
time and its 1x1 step ran at its measured rate, i.e. (1x1 step's FLOP rate /
standard convolution's FLOP rate) x (separable MACs / 1x1 MACs). A 1x1
convolution is a GEMM whose inner dimension is C_in where the standard
convolution's is 9 C_in, and it can run at a lower rate. ``train_gemm_ceiling``
is the same for a training step: the realized ratio if the depthwise step's
forward and backward took no time and the 1x1 step's (forward, input and
weight gradients; its fastest engine) took what it takes alone.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..backends.fused import FusedSeparableConv2d, fused_available
from ..backends.onednn import PackedConv2d, onednn_available
from ..backends.training import tune_training
from ..cost import conv_cost, separable_cost
from ..geometry import ConvSpec
from ..layers import SeparableConv2d, conv_module
from .roofline import Roofline
from ..utils.timing import Timing, inference_call, interleaved


@dataclass(frozen=True)
class Case:
    """One layer shape: the standard convolution ``spec`` on ``batch`` inputs of spatial size ``size``."""

    name: str
    spec: ConvSpec
    size: tuple[int, int]
    batch: int


def layer_case(text: str) -> Case:
    """A :class:`Case` from ``C:COUT:SIZE:BATCH`` (a benchmark's ``--layer``): a 3x3, stride-1, 'same' layer of
    ``C`` input and ``COUT`` output channels on ``batch`` inputs of ``SIZE`` x ``SIZE`` pixels. ``ValueError``
    naming the text unless it is four integers >= 1."""
    try:
        c, cout, size, batch = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--layer takes C:COUT:SIZE:BATCH (four integers), got {text!r}") from None
    if min(c, cout, size, batch) < 1:
        raise ValueError(f"--layer values must be >= 1 each, got {text!r}")
    return Case(f"{c}->{cout} @{size} b{batch}", ConvSpec.make(c, cout, 3, 1, 1, bias=False), (size, size), batch)


def separable_case(case: Case, seed: int = 0) -> tuple[SeparableConv2d, torch.Tensor]:
    """``case``'s separable layer (no biases, weights drawn after ``torch.manual_seed(seed)``) and a random
    channels-last float32 input of its batch and size, drawn after them: what the kernel benchmarks run."""
    spec = case.spec
    torch.manual_seed(seed)
    layer = SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                            bias=False)
    x = torch.randn(case.batch, spec.in_channels, *case.size).contiguous(memory_format=torch.channels_last)
    return layer, x


#: Bytes of inputs that :func:`cold_inputs` cycles through: twice a 32 MiB L3, so that each call's input has left
#: the caches since its last use.
COLD_BYTES = 64 * 2**20


def cold_inputs(x: torch.Tensor, total_bytes: int = COLD_BYTES) -> Callable[[], torch.Tensor]:
    """A callable returning ``x`` and copies of it in turn, the copies together at least ``total_bytes``: a
    benchmark that takes its input from it reads the input from memory at each call instead of from the caches
    (as a layer does whose input an earlier, larger layer pushed out). ``total_bytes`` <= 0: ``x`` every time."""
    copies = [x] + [x.clone() for _ in range(-(-total_bytes // max(1, x.numel() * x.element_size())) - 1)]
    turn = [0]

    def next_input() -> torch.Tensor:
        turn[0] = (turn[0] + 1) % len(copies)
        return copies[turn[0]]
    return next_input


def _case(name: str, cin: int, cout: int, size: int, stride: int, batch: int, k: int = 3) -> Case:
    return Case(name, ConvSpec.make(cin, cout, k, stride, k // 2, bias=False), (size, size), batch)


def mobilenet_v1_suite(batch: int = 1, resolution: int = 224) -> list[Case]:
    """The 13 separable blocks of MobileNetV1 at ``resolution`` (repeated shapes once), batch 1 by default."""
    from ..models.mobilenet import V1_BLOCKS

    cases, seen = [], set()
    cin, size = 32, -(-resolution // 2)
    for cout, stride in V1_BLOCKS:
        key = (cin, cout, size, stride)
        if key not in seen:
            seen.add(key)
            cases.append(_case(f"mbv1 {cin}->{cout} @{size} s{stride}", cin, cout, size, stride, batch))
        size = -(-size // stride)
        cin = cout
    return cases


def vgg_blocks_suite(batch: int = 32, resolution: int = 32) -> list[Case]:
    """The six 3x3 convolutions of the seeds' CIFAR-10 VGG-block network, batch 32 by default."""
    cases, cin, size = [], 3, resolution
    for cout in (64, 128, 256):
        for _ in range(2):
            cases.append(_case(f"vgg {cin}->{cout} @{size}", cin, cout, size, 1, batch))
            cin = cout
        size //= 2
    return cases


#: The built-in suites by name (what the benchmarks' ``--suite`` takes).
SUITES: dict[str, Callable[..., list[Case]]] = {"mobilenet_v1": mobilenet_v1_suite, "vgg_blocks": vgg_blocks_suite}


def suite_parser(description: str, *, threads: int = 1, rounds: int = 11) -> argparse.ArgumentParser:
    """An argument parser with the options the suite benchmarks share: ``--threads``, ``--rounds``, ``--suite``
    (comma-separated names of :data:`SUITES`, default both) and ``--out``; read it with :func:`parse_suite_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--suite", default=",".join(SUITES))
    parser.add_argument("--out")
    return parser


def parse_suite_args(parser: argparse.ArgumentParser, argv=None, *, min_threads: int = 1,
                     why: str = "") -> tuple[argparse.Namespace, list[str]]:
    """``(args, suite names)`` from ``argv``; exits with code 2 and a message naming the option and its value for
    ``--threads`` below ``min_threads`` (``why`` says why, where that is above 1), ``--rounds`` below 1 or an
    unknown ``--suite``."""
    args = parser.parse_args(argv)
    if args.threads < min_threads:
        parser.error(f"--threads must be >= {min_threads}{why}, got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        return args, suite_names(args.suite)
    except ValueError as error:
        parser.error(str(error))


def suite_names(text: str) -> list[str]:
    """The suite names in ``text``, comma-separated (the benchmarks' ``--suite``); ``ValueError`` naming the unknown
    ones and the valid names."""
    names = text.split(",")
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise ValueError(f"--suite takes {', '.join(SUITES)}, got {', '.join(unknown)}")
    return names


def training_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], object]:
    """A call running one training step of ``module`` on ``x``: gradients set to None (``x``'s too), forward, and
    backward from the output gradient ``grad`` (the benchmarks' per-layer step; ``x`` needs a gradient where the
    layer stands inside a network)."""
    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)
    return run


def _train_step(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One forward+backward of ``module`` on ``x`` (which requires grad), as the layer runs inside a network: the
    output gradient is made once (a next layer would supply it) and the input gradient is handed on, not added
    into ``x.grad`` (either would be a pass over a tensor the size of the output or input that the layer itself
    does not make: a fixed tax that hides the faster side's saving)."""
    upstream: list[torch.Tensor] = []

    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        if not upstream:
            upstream.append(torch.ones_like(out))
        out.backward(upstream[0])
    return run


def _layouts(module_factory: Callable[[], nn.Module], x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    nchw = module_factory()
    nhwc = module_factory().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    return {"nchw": (nchw, x), "nhwc": (nhwc, x.contiguous(memory_format=torch.channels_last))}


#: Eager PyTorch layouts, and the inference engine of packed oneDNN convolutions (forward only).
EAGER_LAYOUTS = ("nchw", "nhwc")
ONEDNN = "onednn"
FUSED = "fused"  # sepconv.backends.fused.FusedSeparableConv2d: the separable layer only
TUNED = "tuned"  # training: the separable layer (channels-last) after sepconv.tune_training


@dataclass(frozen=True)
class CaseResult:
    case: Case
    mac_ratio: float  # separable MACs / standard MACs
    forward: dict[str, Timing]
    backward: Optional[dict[str, Timing]]
    stage_bounds_s: dict[str, float]
    standard_bound_s: float = float("nan")  # roofline bound of the standard convolution
    macs: Optional[dict[str, int]] = None  # 'standard', 'standard_in_bounds', 'depthwise', 'pointwise'
    fused_bound_s: float = float("nan")  # roofline bound of a fused separable layer (fused_bound_s)

    def _best(self, timings: dict[str, Timing], prefix: str, engines=None) -> tuple[str, float]:
        layout, t = min(((k.split("/")[1], v.median) for k, v in timings.items()
                         if k.startswith(prefix + "/") and (engines is None or k.split("/")[1] in engines)),
                        key=lambda kv: kv[1])
        return layout, t

    def summary(self) -> dict:
        """Times in ms, ratios, and stage shares; ``realized`` is eager PyTorch's (best layout of each side)."""
        std_layout, t_std = self._best(self.forward, "standard", EAGER_LAYOUTS)
        sep_layout, t_sep = self._best(self.forward, "separable", EAGER_LAYOUTS)
        dw, pw = self.forward[f"depthwise/{sep_layout}"].median, self.forward[f"pointwise/{sep_layout}"].median
        sep_bound = sum(self.stage_bounds_s.values())
        out = {
            "case": self.case.name, "batch": self.case.batch,
            "mac_ratio": self.mac_ratio, "theoretical_speedup": 1 / self.mac_ratio,
            "roofline_speedup": self.standard_bound_s / sep_bound,
            "fused_roofline_ceiling": self.standard_bound_s / self.fused_bound_s * self.mac_ratio,
            "standard_ms": 1e3 * t_std, "standard_layout": std_layout,
            "separable_ms": 1e3 * t_sep, "separable_layout": sep_layout,
            "speedup": t_std / t_sep, "realized": (t_std / t_sep) * self.mac_ratio,
            "dw_ms": 1e3 * dw, "pw_ms": 1e3 * pw, "dw_time_share": dw / (dw + pw),
            "dw_roofline_fraction": self.stage_bounds_s["depthwise"] / dw,
            "pw_roofline_fraction": self.stage_bounds_s["pointwise"] / pw,
        }
        if f"standard/{ONEDNN}" in self.forward:
            o_std, o_sep = self.forward[f"standard/{ONEDNN}"].median, self.forward[f"separable/{ONEDNN}"].median
            o_dw, o_pw = self.forward[f"depthwise/{ONEDNN}"].median, self.forward[f"pointwise/{ONEDNN}"].median
            out.update({
                "onednn_standard_ms": 1e3 * o_std, "onednn_separable_ms": 1e3 * o_sep,
                "onednn_speedup": o_std / o_sep, "realized_onednn": (o_std / o_sep) * self.mac_ratio,
                "onednn_dw_ms": 1e3 * o_dw, "onednn_pw_ms": 1e3 * o_pw,
                "onednn_dw_roofline_fraction": self.stage_bounds_s["depthwise"] / o_dw,
                "onednn_pw_roofline_fraction": self.stage_bounds_s["pointwise"] / o_pw,
            })
        if f"separable/{FUSED}" in self.forward:
            out["fused_separable_ms"] = 1e3 * self.forward[f"separable/{FUSED}"].median
        if f"standard/{ONEDNN}" in self.forward or f"separable/{FUSED}" in self.forward:
            best_std_engine, b_std = self._best(self.forward, "standard")
            best_sep_engine, b_sep = self._best(self.forward, "separable")
            out.update({
                "best_standard_ms": 1e3 * b_std, "best_standard_engine": best_std_engine,
                "best_separable_ms": 1e3 * b_sep, "best_separable_engine": best_sep_engine,
                "best_speedup": b_std / b_sep, "realized_best": (b_std / b_sep) * self.mac_ratio,
            })
        if self.macs:
            _, t_pw = self._best(self.forward, "pointwise")
            _, t_std_best = self._best(self.forward, "standard")
            # rates of the work each computes: the standard convolution's taps on zero padding are skipped by
            # oneDNN (benchmarks/bench_padding.py), so its in-bounds MACs (those of the 1x1 step are all of them)
            std_work = self.macs["standard_in_bounds"]
            out["pointwise_rate_vs_standard"] = (self.macs["pointwise"] / t_pw) / (std_work / t_std_best)
            out["standard_in_bounds_share"] = std_work / self.macs["standard"]
            out["gemm_ceiling"] = (t_std_best / t_pw) * self.mac_ratio
        if self.backward:
            _, b_std = self._best(self.backward, "standard", EAGER_LAYOUTS)
            _, b_sep = self._best(self.backward, "separable", EAGER_LAYOUTS)
            out.update({"train_standard_ms": 1e3 * b_std, "train_separable_ms": 1e3 * b_sep,
                        "train_speedup": b_std / b_sep, "train_realized": (b_std / b_sep) * self.mac_ratio})
            if f"separable/{TUNED}" in self.backward:  # the steps on the engines sepconv.tune_training chose
                sep_engine, t_sep = self._best(self.backward, "separable")
                out.update({"train_tuned_separable_ms": 1e3 * self.backward[f"separable/{TUNED}"].median,
                            "train_best_separable_engine": sep_engine,
                            "train_realized_best": (b_std / t_sep) * self.mac_ratio})
            if any(k.startswith("pointwise/") for k in self.backward):
                pw_engine, t_pw = self._best(self.backward, "pointwise")
                out.update({"train_pw_ms": 1e3 * t_pw, "train_pw_engine": pw_engine,
                            "train_gemm_ceiling": (b_std / t_pw) * self.mac_ratio})
        return out


def run_case(case: Case, roofline: Roofline, rounds: int = 11, backward: bool = True, target_s: float = 0.02,
             onednn: Optional[bool] = None, fused: Optional[bool] = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> CaseResult:
    """Time the standard and separable convolutions of ``case`` side by side on ``device`` in ``dtype``.

    ``onednn`` adds the packed-oneDNN inference engine to the forward timings
    (CPU only; default: when :func:`sepconv.backends.onednn.onednn_available`),
    ``fused`` the fused depthwise->pointwise CPU kernel for the separable layer
    (default: on the CPU in float32 when :func:`sepconv.backends.fused.fused_available`).
    On CUDA the training step is timed on eager PyTorch only
    (:func:`sepconv.tune_training`'s engines are CPU kernels).
    """
    device = torch.device(device)
    cpu = device.type == "cpu"
    if onednn is None:
        onednn = cpu and onednn_available()
    if onednn and not (cpu and dtype == torch.float32):
        raise ValueError(f"run_case: the onednn engine needs float32 on the CPU, got {dtype} on {device}")
    spec = case.spec
    torch.manual_seed(0)
    x = torch.randn(case.batch, spec.in_channels, *case.size).to(device, dtype)
    std = _layouts(lambda: conv_module(spec)[0].to(device, dtype), x)
    sep = _layouts(lambda: SeparableConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride,
                                           spec.padding, bias=False).to(device, dtype), x)
    forward: dict[str, Callable[[], object]] = {}
    mids: dict[str, torch.Tensor] = {}  # the depthwise output per layout: the 1x1 step's input
    for layout in EAGER_LAYOUTS:
        m, xi = std[layout]
        forward[f"standard/{layout}"] = inference_call(m.eval(), xi)
        m, xi = sep[layout]
        forward[f"separable/{layout}"] = inference_call(m.eval(), xi)
        with torch.no_grad():
            mid = mids[layout] = m.depthwise(m.pad(xi))
        forward[f"depthwise/{layout}"] = inference_call(nn.Sequential(m.pad, m.depthwise), xi)
        forward[f"pointwise/{layout}"] = inference_call(m.pointwise, mid)
    if onednn:
        m, xi = sep["nhwc"]
        packed_dw, packed_pw = PackedConv2d(m.depthwise), PackedConv2d(m.pointwise)
        forward[f"standard/{ONEDNN}"] = inference_call(PackedConv2d(std["nhwc"][0]), xi)
        forward[f"separable/{ONEDNN}"] = inference_call(nn.Sequential(m.pad, packed_dw, packed_pw), xi)
        forward[f"depthwise/{ONEDNN}"] = inference_call(nn.Sequential(m.pad, packed_dw), xi)
        forward[f"pointwise/{ONEDNN}"] = inference_call(packed_pw, mid)
    if fused is None:
        fused = cpu and dtype == torch.float32 and fused_available()
    if fused:
        if not cpu:
            raise ValueError("fused=True needs a CPU device: the fused depthwise->pointwise kernel is a CPU kernel")
        m, xi = sep["nhwc"]
        forward[f"separable/{FUSED}"] = inference_call(FusedSeparableConv2d(m.depthwise, m.pointwise, pad=m.pad), xi)
    fwd = interleaved(forward, rounds=rounds, target_s=target_s, device=device)
    bwd = None
    if backward:
        train: dict[str, Callable[[], object]] = {}
        for layout in ("nchw", "nhwc"):
            for label, pair in (("standard", std), ("separable", sep)):
                m, xi = pair[layout]
                train[f"{label}/{layout}"] = _train_step(m.train(), xi.detach().clone().requires_grad_(True))
        m, xi = sep["nhwc"]
        pointwise_steps = [("nchw", sep["nchw"][0].pointwise, mids["nchw"]), ("nhwc", m.pointwise, mids["nhwc"])]
        if cpu:
            tuned = copy.deepcopy(m).train()
            tune_training(tuned, xi)
            train[f"separable/{TUNED}"] = _train_step(tuned, xi.detach().clone().requires_grad_(True))
            pointwise_steps.append((TUNED, tuned.pointwise, mids["nhwc"]))
        # the 1x1 step's forward+backward alone, on the depthwise output (its input gradient included, as in the
        # layer): what training would cost if the depthwise step were free (train_gemm_ceiling)
        for layout, pointwise, mid in pointwise_steps:
            train[f"pointwise/{layout}"] = _train_step(pointwise.train(), mid.detach().clone().requires_grad_(True))
        bwd = interleaved(train, rounds=rounds, target_s=target_s, device=device)
    std_cost = conv_cost(spec, case.size, batch=case.batch, dtype=dtype)
    sep_cost = separable_cost(spec, case.size, batch=case.batch, dtype=dtype)
    bounds = {stage.name: roofline.bound_s(stage.in_bounds_flops, stage.bytes) for stage in sep_cost.stages}
    std_bound = roofline.bound_s(std_cost.in_bounds_flops, std_cost.bytes)
    macs = {"standard": std_cost.macs, "standard_in_bounds": std_cost.in_bounds_macs,
            **{stage.name: stage.macs for stage in sep_cost.stages}}
    return CaseResult(case, sep_cost.macs / std_cost.macs, fwd, bwd, bounds, std_bound, macs,
                      fused_bound_s(case, roofline, dtype))


def fused_bound_s(case: Case, roofline: Roofline, dtype: torch.dtype = torch.float32) -> float:
    """Roofline bound (s) of the separable layer run as one fused kernel: all its FLOPs, but only the input, the
    output and the two weights through memory (the depthwise output never leaves the chip); like every bound here,
    with the in-bounds FLOPs (taps on zero padding skipped). Against the standard
    convolution's bound this gives ``fused_roofline_ceiling``, the realized ratio a fused kernel could reach if both
    ran at their bounds: where the standard convolution is itself near the memory roof (few channels, or a GPU
    whose tensor cores make its arithmetic cheap) even a perfect fused kernel saves little time."""
    dw, pw = separable_cost(case.spec, case.size, batch=case.batch, dtype=dtype).stages
    return roofline.bound_s(dw.in_bounds_flops + pw.in_bounds_flops, dw.input_bytes + dw.weight_bytes + pw.weight_bytes + pw.output_bytes)
