"""Exact operation, parameter and byte counts for convolutions.

Units
-----
* **MACs** (multiply-accumulates): one multiplication of a weight by an input
  value, added into an output. A convolution does
  ``outputs x (C_in / groups) x prod(kernel_size)`` MACs, where ``outputs`` is
  ``batch x C_out x prod(output_size)``.
* **multiplications** = MACs (every MAC has one multiplication). This is the
  quantity the seed articles count.
* **additions**: summing ``K = (C_in / groups) x prod(kernel)`` products into
  one output takes ``K - 1`` additions, plus one for the bias if there is one.
* **FLOPs** = 2 x MACs, the usual convention (it counts the bias-free sum as
  ``K`` additions instead of ``K - 1``). Tools that print "GFLOPs" for CNNs
  often mean GMACs; sepconv always says which.
* Every tap is counted, including taps that fall on zero padding: that is
  what dense implementations compute. **in-bounds MACs** leave those taps
  out: what kernels that skip the padding compute (oneDNN's direct
  convolutions on the CPU do: its 3x3 convolution with padding 1 on an 8x8
  map takes 0.85 of the time of the same MACs on a 10x10 map without
  padding, ``benchmarks/bench_padding.py``). Roofline bounds use them, since
  a lower bound counts only the work a kernel cannot avoid.
* **bytes**: a lower bound on memory traffic: the input read once, the
  weights and biases read once, the output written once, at ``dtype``'s size.
  **arithmetic intensity** = FLOPs / bytes (the roofline convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..geometry import ConvSpec, blueprint_stage_specs, cp_stage_specs, separable_stage_specs, spatial_stage_specs


def dtype_size(dtype: Union[torch.dtype, str]) -> int:
    """Size in bytes of one element of ``dtype`` (a ``torch.dtype`` or a name like ``'float16'``)."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype must be a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class ConvCost:
    """Counts for one convolution applied to a batch of inputs. See the module docstring for units."""

    name: str
    spec: ConvSpec
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    batch: int
    dtype_bytes: int
    macs: int
    additions: int
    in_bounds_macs: int

    @property
    def multiplications(self) -> int:
        """Scalar multiplications (= MACs)."""
        return self.macs

    @property
    def flops(self) -> int:
        """FLOPs, defined as 2 x MACs."""
        return 2 * self.macs

    @property
    def in_bounds_flops(self) -> int:
        """2 x :attr:`in_bounds_macs`: the FLOPs of a kernel that skips the taps on zero padding."""
        return 2 * self.in_bounds_macs

    @property
    def weights(self) -> int:
        return self.spec.weight_count

    @property
    def biases(self) -> int:
        return self.spec.bias_count

    @property
    def params(self) -> int:
        """Weights plus biases."""
        return self.spec.param_count

    @property
    def input_bytes(self) -> int:
        return self.batch * self.spec.in_channels * math.prod(self.input_size) * self.dtype_bytes

    @property
    def output_bytes(self) -> int:
        return self.batch * self.spec.out_channels * math.prod(self.output_size) * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights and biases."""
        return self.params * self.dtype_bytes

    @property
    def bytes(self) -> int:
        """Minimum memory traffic: input read + weights read + output written, in bytes."""
        return self.input_bytes + self.weight_bytes + self.output_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of minimum memory traffic."""
        return self.flops / self.bytes

    def as_dict(self) -> dict:
        """All counts as a flat dict of numbers (for JSON/CSV)."""
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "output_shape": [self.batch, self.spec.out_channels, *self.output_size],
            "multiplications": self.multiplications,
            "additions": self.additions,
            "macs": self.macs,
            "flops": self.flops,
            "in_bounds_macs": self.in_bounds_macs,
            "weights": self.weights,
            "biases": self.biases,
            "params": self.params,
            "input_bytes": self.input_bytes,
            "weight_bytes": self.weight_bytes,
            "output_bytes": self.output_bytes,
            "bytes": self.bytes,
            "arithmetic_intensity": self.arithmetic_intensity,
        }


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return batch


def conv_cost(
    spec: ConvSpec,
    input_size: Sequence[int],
    *,
    batch: int = 1,
    dtype: Union[torch.dtype, str] = torch.float32,
    name: str = "conv",
) -> ConvCost:
    """Exact counts for the convolution ``spec`` on inputs of spatial size ``input_size``.

    ``input_size`` is the spatial size only (``(H, W)`` for 2D). Raises
    ``ValueError`` if the kernel does not fit the (padded) input.
    """
    b = _check_batch(batch)
    out = spec.output_size(input_size)
    outputs = b * spec.out_channels * math.prod(out)
    taps = (spec.in_channels // spec.groups) * spec.kernel_volume
    channel_pairs = b * spec.out_channels * (spec.in_channels // spec.groups)
    return ConvCost(
        name=name,
        spec=spec,
        input_size=tuple(int(n) for n in input_size),
        output_size=out,
        batch=b,
        dtype_bytes=dtype_size(dtype),
        macs=outputs * taps,
        additions=outputs * (taps - 1 + (1 if spec.bias else 0)),
        in_bounds_macs=channel_pairs * spec.in_bounds_taps(input_size),
    )


@dataclass(frozen=True)
class CompositeCost:
    """Counts for a chain of convolutions (the stages of a separable layer) and their totals.

    The intermediate tensor between two stages is written by one and read by
    the next, so it counts twice in :attr:`bytes`, which is what an unfused
    implementation moves.
    """

    name: str
    stages: tuple[ConvCost, ...] = field(default_factory=tuple)

    def _sum(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.stages)

    macs = property(lambda self: self._sum("macs"), doc="Total MACs.")
    multiplications = property(lambda self: self._sum("multiplications"), doc="Total multiplications (= MACs).")
    additions = property(lambda self: self._sum("additions"), doc="Total additions.")
    flops = property(lambda self: self._sum("flops"), doc="Total FLOPs (2 x MACs).")
    in_bounds_macs = property(lambda self: self._sum("in_bounds_macs"), doc="Total MACs on taps inside the input.")
    in_bounds_flops = property(lambda self: self._sum("in_bounds_flops"), doc="2 x :attr:`in_bounds_macs`.")
    weights = property(lambda self: self._sum("weights"))
    biases = property(lambda self: self._sum("biases"))
    params = property(lambda self: self._sum("params"), doc="Total weights plus biases.")
    input_bytes = property(lambda self: self.stages[0].input_bytes)
    output_bytes = property(lambda self: self.stages[-1].output_bytes)
    weight_bytes = property(lambda self: self._sum("weight_bytes"))
    bytes = property(lambda self: self._sum("bytes"), doc="Memory traffic of the unfused stages, in bytes.")

    @property
    def output_size(self) -> tuple[int, ...]:
        return self.stages[-1].output_size

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops / self.bytes

    def as_dict(self) -> dict:
        keys = ["multiplications", "additions", "macs", "flops", "in_bounds_macs", "weights", "biases", "params",
                "input_bytes", "weight_bytes", "output_bytes", "bytes", "arithmetic_intensity"]
        d: dict = {"name": self.name, "output_size": list(self.output_size)}
        d.update({k: getattr(self, k) for k in keys})
        d["stages"] = [s.as_dict() for s in self.stages]
        return d


def separable_cost(
    spec: ConvSpec,
    input_size: Sequence[int],
    *,
    depth_multiplier: int = 1,
    depthwise_bias: bool = False,
    batch: int = 1,
    dtype: Union[torch.dtype, str] = torch.float32,
) -> CompositeCost:
    """Counts for the depthwise separable replacement of ``spec`` (depthwise, then pointwise)."""
    dw, pw = separable_stage_specs(spec, depth_multiplier, depthwise_bias)
    dw_cost = conv_cost(dw, input_size, batch=batch, dtype=dtype, name="depthwise")
    pw_cost = conv_cost(pw, dw_cost.output_size, batch=batch, dtype=dtype, name="pointwise")
    return CompositeCost("depthwise separable", (dw_cost, pw_cost))


def spatial_cost(
    spec: ConvSpec,
    input_size: Sequence[int],
    *,
    rank: Optional[int] = None,
    batch: int = 1,
    dtype: Union[torch.dtype, str] = torch.float32,
) -> CompositeCost:
    """Counts for the spatially separable replacement of a 2D ``spec``: ``k_h x 1`` then ``1 x k_w``.

    The horizontal pass runs on the vertical pass's output (fewer rows when
    the padding is 'valid'), which is what the layer computes.
    """
    v, h = spatial_stage_specs(spec, rank)
    v_cost = conv_cost(v, input_size, batch=batch, dtype=dtype, name="vertical")
    h_cost = conv_cost(h, v_cost.output_size, batch=batch, dtype=dtype, name="horizontal")
    return CompositeCost("spatially separable", (v_cost, h_cost))


def _chain(name: str, specs: Sequence[ConvSpec], names: Sequence[str], input_size: Sequence[int], batch: int,
           dtype: Union[torch.dtype, str]) -> CompositeCost:
    """Counts for convolutions applied one after the other, each on the previous one's output size."""
    stages, size = [], input_size
    for stage_spec, stage_name in zip(specs, names):
        cost = conv_cost(stage_spec, size, batch=batch, dtype=dtype, name=stage_name)
        stages.append(cost)
        size = cost.output_size
    return CompositeCost(name, tuple(stages))


def blueprint_cost(
    spec: ConvSpec,
    input_size: Sequence[int],
    *,
    depth_multiplier: int = 1,
    batch: int = 1,
    dtype: Union[torch.dtype, str] = torch.float32,
) -> CompositeCost:
    """Counts for the pointwise-then-depthwise (blueprint) replacement of ``spec``.

    The pointwise step runs at the *input* resolution (before any stride),
    so with stride > 1 it costs more than in the depthwise-first order.
    """
    return _chain("pointwise-depthwise", blueprint_stage_specs(spec, depth_multiplier), ("pointwise", "depthwise"),
                  input_size, batch, dtype)


def cp_cost(
    spec: ConvSpec,
    input_size: Sequence[int],
    *,
    rank: int,
    batch: int = 1,
    dtype: Union[torch.dtype, str] = torch.float32,
) -> CompositeCost:
    """Counts for the rank-``rank`` CP-decomposed replacement of a 2D ``spec`` (four stages)."""
    return _chain("CP", cp_stage_specs(spec, rank), ("first", "vertical", "horizontal", "last"), input_size, batch,
                  dtype)


def closed_form_ratio(out_channels: int, kernel_size: Sequence[int]) -> float:
    """The textbook MAC ratio separable / standard = ``1 / C_out + 1 / prod(k)``.

    It is exact for any padding, stride and dilation when the depth
    multiplier is 1 (the depthwise output has the standard output's size, and
    the pointwise step keeps it), biases aside; with a multiplier M both terms
    scale by M. The exact ratio of any configuration is
    ``separable_cost(...).macs / conv_cost(...).macs``.
    """
    return 1.0 / out_channels + 1.0 / math.prod(kernel_size)
