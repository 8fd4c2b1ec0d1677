"""This machine's roofline, measured: peak compute (a large matmul) and memory bandwidth (a large copy).

The roofline model (Williams, Waterman & Patterson, 2009) bounds the time of
a kernel by ``max(FLOPs / peak_flops, bytes / bandwidth)``. sepconv measures
both ceilings instead of taking them from a data sheet, so the bound is what
PyTorch can reach on this machine with its thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .timing import interleaved


@dataclass(frozen=True)
class Roofline:
    """Measured ceilings: ``peak_flops`` in FLOP/s and ``bandwidth`` in bytes/s."""

    peak_flops: float
    bandwidth: float

    def bound_s(self, flops: float, nbytes: float) -> float:
        """Lower bound on the time (s) of a kernel doing ``flops`` FLOPs and moving ``nbytes`` bytes."""
        return max(flops / self.peak_flops, nbytes / self.bandwidth)

    def ridge(self) -> float:
        """Arithmetic intensity (FLOPs per byte) where compute and memory bounds meet."""
        return self.peak_flops / self.bandwidth

    def as_dict(self) -> dict:
        return {"peak_gflops": self.peak_flops / 1e9, "bandwidth_gbs": self.bandwidth / 1e9,
                "ridge_flops_per_byte": self.ridge()}


def measure_roofline(device: torch.device = torch.device("cpu"), matmul_n: int = 2048,
                     copy_mib: int = 256, rounds: int = 7) -> Roofline:
    """Measure peak float32 FLOP/s (``matmul_n``-square matmul) and bandwidth (copy of ``copy_mib`` MiB)."""
    a = torch.randn(matmul_n, matmul_n, device=device)
    b = torch.randn(matmul_n, matmul_n, device=device)
    out = torch.empty(matmul_n, matmul_n, device=device)
    src = torch.empty(copy_mib * 2**20 // 4, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = interleaved({"matmul": lambda: torch.mm(a, b, out=out), "copy": lambda: dst.copy_(src)},
                    rounds=rounds, target_s=0.05, device=device)
    flops = 2 * matmul_n**3
    moved = 2 * src.numel() * src.element_size()  # read + write
    return Roofline(peak_flops=flops / t["matmul"].median, bandwidth=moved / t["copy"].median)
