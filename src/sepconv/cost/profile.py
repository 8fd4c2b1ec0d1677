"""Per-layer profile of a model: parameters and MACs, from real input shapes.

The profiler runs one forward pass with hooks on every leaf module and
counts what each leaf computes from the shapes it actually sees:

* convolutions (``nn.Conv1d/2d/3d`` and subclasses, which includes sepconv's
  depthwise and pointwise layers and the sub-convolutions of its separable
  layers): MACs from :func:`sepconv.cost.conv_cost`, so grouped and depthwise
  convolutions are counted by the one formula;
* ``nn.Linear``: ``in_features x out_features`` MACs per input row.

Everything else (normalization, activations, pooling, padding, dropout,
reshapes) is listed with its parameters but its arithmetic is **not counted**
(``macs`` is None): it is elementwise or a reduction, small next to the
convolutions, and tools disagree on how to count it. A BatchNorm that is
folded into the preceding convolution for inference costs nothing.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..geometry import ConvSpec
from .formulas import conv_cost

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def spec_from_conv(module: nn.Module) -> ConvSpec:
    """The :class:`ConvSpec` of an ``nn.Conv*d`` module (its own padding, as PyTorch applies it)."""
    if not isinstance(module, CONV_TYPES):
        raise TypeError(f"expected an nn.Conv1d/2d/3d, got {type(module).__name__}")
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return ConvSpec.make(
        module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride), padding,
        tuple(module.dilation), groups=module.groups, bias=module.bias is not None, ndim=len(module.kernel_size),
    )


@dataclass(frozen=True)
class ProfileRow:
    """One leaf module. ``macs`` is per sample; None means "not counted" (see module docstring).

    ``in_bounds_macs``: the MACs on taps inside the input (zero padding left out, see
    :mod:`sepconv.cost.formulas`; padding applied by a separate module before the
    convolution counts as input); equal to ``macs`` for ``nn.Linear``."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: Optional[int]
    in_bounds_macs: Optional[int] = None


@dataclass(frozen=True)
class ModelProfile:
    """The rows of :func:`profile` and their totals (MACs per sample, parameters of the whole model)."""

    rows: tuple[ProfileRow, ...]
    input_shape: tuple[int, ...]
    total_params: int

    @property
    def total_macs(self) -> int:
        """MACs per sample of all counted layers (FLOPs = 2 x this)."""
        return sum(r.macs for r in self.rows if r.macs is not None)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def not_counted(self) -> list[str]:
        """Kinds of modules whose arithmetic is not counted."""
        return sorted({r.kind for r in self.rows if r.macs is None})

    def share(self, row: ProfileRow) -> tuple[Optional[float], float]:
        """(share of total MACs, share of total parameters) of ``row``."""
        macs = None if row.macs is None else (row.macs / self.total_macs if self.total_macs else 0.0)
        return macs, (row.params / self.total_params if self.total_params else 0.0)

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows:
            mac_share, param_share = self.share(r)
            rows.append({
                "name": r.name, "kind": r.kind, "input_shape": list(r.input_shape),
                "output_shape": list(r.output_shape), "params": r.params, "macs": r.macs,
                "in_bounds_macs": r.in_bounds_macs, "macs_share": mac_share, "params_share": param_share,
            })
        return {
            "input_shape": list(self.input_shape),
            "shape_convention": "N x C x H x W (input_shape, each row's input_shape and output_shape)",
            "units": "macs are multiply-accumulates per sample; FLOPs = 2 x MACs",
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "not_counted": self.not_counted,
            "rows": rows,
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        """The plain-text table (:meth:`to_table`), so ``print(profile(...))`` shows it."""
        return self.to_table()

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "kind", "input_shape", "output_shape", "params", "macs", "macs_share", "params_share"])
        for row in self.to_dict()["rows"]:
            writer.writerow([row["name"], row["kind"], "x".join(map(str, row["input_shape"])),
                             "x".join(map(str, row["output_shape"])), row["params"],
                             "" if row["macs"] is None else row["macs"],
                             "" if row["macs_share"] is None else f"{row['macs_share']:.6f}",
                             f"{row['params_share']:.6f}"])
        return buf.getvalue()

    def to_table(self, counted_only: bool = False) -> str:
        """A plain-text table with totals and a line saying what is not counted."""
        header = ("layer", "kind", "output", "params", "MACs", "%MACs", "%params")
        lines = []
        for r in self.rows:
            if counted_only and r.macs is None:
                continue
            mac_share, param_share = self.share(r)
            lines.append((
                r.name, r.kind, "x".join(map(str, r.output_shape[1:])), f"{r.params:,}",
                "-" if r.macs is None else f"{r.macs:,}",
                "-" if mac_share is None else f"{100 * mac_share:.1f}", f"{100 * param_share:.1f}",
            ))
        lines.append(("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}", "100.0", "100.0"))
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        fmt = lambda row: "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        out = [fmt(header), "  ".join("-" * w for w in widths)]
        out += [fmt(row) for row in lines[:-1]] + ["  ".join("-" * w for w in widths), fmt(lines[-1])]
        out.append(f"input {'x'.join(map(str, self.input_shape))}; MACs per sample (FLOPs = 2 x MACs); "
                   f"arithmetic not counted for: {', '.join(self.not_counted) or 'none'}")
        return "\n".join(out)


def _leaf_cost(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[Optional[int], Optional[int]]:
    """(MACs, in-bounds MACs) per sample of one leaf call, or (None, None) if its arithmetic is not counted."""
    if isinstance(module, CONV_TYPES):
        own = getattr(module, "spec", None)
        # a sepconv conv that pads in a child module (TF 'same' with uneven padding, reflect, ...) is called on the
        # unpadded input: its full spec, padding included, describes that call
        spec = own if isinstance(own, ConvSpec) and any(True for _ in module.children()) else spec_from_conv(module)
        cost = conv_cost(spec, inp.shape[-spec.ndim :], batch=1)
        if tuple(out.shape[-spec.ndim :]) != cost.output_size:  # a bug in geometry: fail loudly
            raise RuntimeError(f"geometry predicted {cost.output_size}, {type(module).__name__} produced {tuple(out.shape)}")
        return cost.macs, cost.in_bounds_macs
    if isinstance(module, nn.Linear):
        rows_per_sample = inp.numel() // inp.shape[-1] // (inp.shape[0] if inp.dim() > 1 else 1)
        macs = rows_per_sample * module.in_features * module.out_features
        return macs, macs
    return None, None


def profile(model: nn.Module, input_size: Sequence[int]) -> ModelProfile:
    """Profile ``model`` on one input of shape ``input_size``: ``(C, *spatial)`` or ``(N, C, *spatial)``.

    Runs one forward pass in eval mode under ``torch.no_grad()`` (the mode is
    restored afterwards) on zeros of the model's dtype and device, and returns
    a :class:`ModelProfile` with one row per leaf module (and per convolution
    that pads in a child module) that ran, in call
    order (a module called twice gives two rows; ``nn.Identity`` placeholders
    are left out). MACs are per sample.
    Raises ``ValueError`` naming the shape if the model fails on it.
    """
    shape = tuple(input_size)
    if len(shape) < 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"input_size must be (C, *spatial) or (N, C, *spatial) with positive ints, got {input_size!r}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    rows: list[ProfileRow] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        out = output if isinstance(output, torch.Tensor) else None
        if inp is None or out is None:
            return
        macs, in_bounds = _leaf_cost(module, inp, out)
        rows.append(ProfileRow(
            name=names.get(module, "?") or type(module).__name__, kind=type(module).__name__,
            input_shape=tuple(inp.shape), output_shape=tuple(out.shape),
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=macs, in_bounds_macs=in_bounds,
        ))

    # leaves, and convolutions that hold a padding child (their arithmetic is theirs, not the child's)
    leaves = [m for m in model.modules()
              if (not list(m.children()) or isinstance(m, CONV_TYPES)) and not isinstance(m, nn.Identity)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    used = (1, *shape) if _looks_unbatched(model, shape) else shape
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(used, device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ValueError(f"the model failed on input shape {input_size!r}: {error}") from error
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total_params = sum(p.numel() for p in model.parameters())
    return ModelProfile(rows=tuple(rows), input_shape=tuple(used), total_params=total_params)


def _looks_unbatched(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """True if ``shape`` is (C, *spatial) for the model's first convolution (so a batch dim is added)."""
    for m in model.modules():
        if isinstance(m, CONV_TYPES):
            return len(shape) == len(m.kernel_size) + 1
        if isinstance(m, nn.Linear):
            return len(shape) == 1
    return False
