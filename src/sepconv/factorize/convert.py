"""Replace a model's standard convolutions by separable ones initialized from the optimal factorization."""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..cost import blueprint_cost, conv_cost, cp_cost, separable_cost, spatial_cost, spec_from_conv
from ..layers import (
    BlueprintSeparableConv1d,
    BlueprintSeparableConv2d,
    BlueprintSeparableConv3d,
    CPConv2d,
    SeparableConv1d,
    SeparableConv2d,
    SeparableConv3d,
    SpatiallySeparableConv2d,
)
from .kernels import blueprint_factorize, cp_factorize, depthwise_factorize, spatial_factorize

#: What :func:`convert` can replace a convolution with.
TARGETS = ("separable", "spatial", "blueprint", "cp")
_SEPARABLE = {1: SeparableConv1d, 2: SeparableConv2d, 3: SeparableConv3d}
_BLUEPRINT = {1: BlueprintSeparableConv1d, 2: BlueprintSeparableConv2d, 3: BlueprintSeparableConv3d}
_OWN_LAYERS = (SeparableConv1d, SeparableConv2d, SeparableConv3d, SpatiallySeparableConv2d, BlueprintSeparableConv1d,
               BlueprintSeparableConv2d, BlueprintSeparableConv3d, CPConv2d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerReport:
    """One converted convolution. MACs are per sample at the sample input's size (None without one)."""

    name: str
    kernel_size: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    weight_error: Optional[float]  # relative Frobenius error of the kernel (None for init='fresh')
    output_error: Optional[float]  # relative error of this layer's output on the sample batch
    calibrated: bool = False  # last stage refit on the sample batch (convert(..., calibrate=True))
    calibration_target: Optional[str] = None  # "output", or "relu" when an nn.ReLU consumes the conv's output


@dataclass(frozen=True)
class ConversionReport:
    """Per-layer results of :func:`convert` and what was skipped (name -> reason)."""

    layers: tuple[LayerReport, ...]
    skipped: dict = field(default_factory=dict)

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    def to_table(self) -> str:
        head = ("layer", "kernel", "params", "params after", "MACs", "MACs after", "weight err", "output err")
        f = lambda v: "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.4f}")  # noqa: E731
        rows = [(r.name, "x".join(map(str, r.kernel_size)), f(r.params_before), f(r.params_after), f(r.macs_before),
                 f(r.macs_after), f(r.weight_error), f(r.output_error)) for r in self.layers]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"converted {len(self.layers)} convolution(s); parameters in them {self.params_before:,} -> "
                     f"{self.params_after:,}; skipped {len(self.skipped)}; MACs per sample; errors are relative (Frobenius)")
        return "\n".join(lines)


def _eligible(name: str, conv: nn.Module, to: str, include: Optional[str], exclude: Optional[str],
              min_kernel: int) -> Optional[str]:
    """None if ``conv`` should be converted, else the reason it is skipped."""
    if conv.groups != 1:
        return f"groups={conv.groups} (already grouped or depthwise)"
    if max(conv.kernel_size) < min_kernel:
        return f"kernel {tuple(conv.kernel_size)} smaller than min_kernel={min_kernel}"
    if to in ("spatial", "cp") and len(conv.kernel_size) != 2:
        return f"{to!r} replacements are 2D only"
    if include is not None and not re.search(include, name):
        return f"name does not match include={include!r}"
    if exclude is not None and re.search(exclude, name):
        return f"name matches exclude={exclude!r}"
    if isinstance(conv.padding, str) and conv.padding == "same" and any(s != 1 for s in conv.stride):
        return "padding='same' with stride > 1 (not a valid nn.Conv)"
    return None


def _replacement(conv: nn.Module, to: str, depth_multiplier: int, rank: Optional[int], init: str):
    """Build the separable module for ``conv``; returns (module, weight_error or None)."""
    nd = len(conv.kernel_size)
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    kw = dict(stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation), bias=conv.bias is not None,
              padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    if to == "separable":
        module = _SEPARABLE[nd](conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                                depth_multiplier=depth_multiplier, **kw)
        targets = (module.depthwise, module.pointwise)
        factors = depthwise_factorize(conv.weight, depth_multiplier) if init == "factorize" else None
        bias_target = module.pointwise
    elif to == "spatial":
        module = SpatiallySeparableConv2d(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), rank=rank, **kw)
        targets = (module.vertical, module.horizontal)
        factors = spatial_factorize(conv.weight, module.rank) if init == "factorize" else None
        bias_target = module.horizontal
    elif to == "blueprint":
        module = _BLUEPRINT[nd](conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                                depth_multiplier=depth_multiplier, **kw)
        targets = (module.pointwise, module.depthwise)
        factors = blueprint_factorize(conv.weight, depth_multiplier) if init == "factorize" else None
        bias_target = module.depthwise
    else:
        module = CPConv2d(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), rank=_cp_rank(conv, rank), **kw)
        targets = (module.first, module.vertical, module.horizontal, module.last)
        factors = None
        if init == "factorize":
            weights, error = cp_factorize(conv.weight, module.rank)
            factors = (*weights, error)
        bias_target = module.last
    if factors is None:
        return module, None
    with torch.no_grad():
        for target, factor in zip(targets, factors[:-1]):
            target.weight.copy_(factor)
        if conv.bias is not None:
            bias_target.bias.copy_(conv.bias)
    return module, factors[-1]


def _cp_rank(conv: nn.Module, rank: Optional[int]) -> int:
    """The CP rank: ``rank``, or by default the largest whose weights do not exceed the depthwise separable layer's
    (``R (C_in + k_h + k_w + C_out) <= C_in (k_h k_w + C_out)``), at least 1."""
    if rank is not None:
        return rank
    c, n = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    return max(1, (c * (kh * kw + n)) // (c + kh + kw + n))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert(
    model: nn.Module,
    *,
    to: str = "separable",
    depth_multiplier: int = 1,
    rank: Optional[int] = None,
    init: str = "factorize",
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    min_kernel: int = 2,
    sample_input: Optional[torch.Tensor] = None,
    calibrate: bool = False,
    ridge: float = 1e-3,
    progress: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Return a copy of ``model`` with eligible convolutions replaced, and a per-layer report.

    Eligible: ``nn.Conv1d/2d/3d`` (and subclasses) with ``groups == 1``, a
    kernel of at least ``min_kernel`` in some dimension, a name matching the
    regular expression ``include`` (if given) and not ``exclude``; 2D only for
    ``to='spatial'`` and ``to='cp'``. Each is replaced, keeping stride,
    padding, padding mode, dilation, bias, device and dtype, by:

    * ``'separable'``: :class:`SeparableConv1d/2d/3d` (depthwise then
      pointwise, ``depth_multiplier``), optimal weights by SVD;
    * ``'spatial'``: :class:`SpatiallySeparableConv2d` (``rank``; default
      ``min(C_in, C_out)``), optimal by SVD;
    * ``'blueprint'``: :class:`BlueprintSeparableConv1d/2d/3d` (pointwise then
      depthwise, ``depth_multiplier``), optimal by SVD;
    * ``'cp'``: :class:`CPConv2d` (``rank``; default the largest rank with no
      more weights than the depthwise separable layer), weights by CP-ALS
      (tensorly; not guaranteed optimal). ``init='factorize'`` sets the weights to the
    optimal factorization (:mod:`sepconv.factorize.kernels`) and keeps the
    bias; ``init='fresh'`` keeps PyTorch's initialization (for training from
    scratch, or to rebuild the structure before loading saved weights).

    With ``sample_input`` the report has MACs (per sample, from
    :mod:`sepconv.cost`) and each converted layer's relative output error on
    that batch (original vs replacement, on the original layer's input).
    If nothing is eligible, a warning says why and the copy is unchanged.
    ``progress=True`` shows a progress bar over the layers (CP factorizations
    take seconds to minutes per layer).

    ``calibrate=True`` (needs ``sample_input`` and ``init='factorize'``) makes
    the conversion data-aware: layer by layer in execution order, the last
    stage of each replacement (pointwise; horizontal for ``'spatial'``; the last 1x1 for ``'cp'``;
    the per-output-channel filter for ``'blueprint'``, one small fit per channel)
    and its bias are refit by least squares so that, fed the *converted*
    network's own activations, the layer reproduces the original layer's
    output on the sample batch; a ridge term ``ridge * mean(diag(A^T A))``
    pulls the solution towards the factorized weights (which it keeps where
    they are already exact). When the original convolution's output goes
    straight into an ``nn.ReLU``/``nn.ReLU6`` module (detected on the sample
    forward pass), the fit targets what the ReLU passes on instead: it
    minimizes ``||relu(y_hat) - relu(y)||^2`` (plus the ridge term) by
    majorization from the least-squares solution, so negative outputs only
    need to stay negative. The weight-optimal factorization ignores that
    errors compound through the network and that ReLU networks lose
    activation scale when every layer keeps only part of its kernel's
    energy; calibration corrects both (see ``docs/factorize.md`` for the
    measured effect). Report errors are then those of the calibrated weights.
    """
    _check_options(to, init, depth_multiplier, rank, calibrate, sample_input, ridge, include, exclude)
    new = copy.deepcopy(model)
    chosen, skipped = _choose(new, to, include, exclude, min_kernel, check_finite=init == "factorize")
    if calibrate and to == "blueprint" and any(len(new.get_submodule(name).kernel_size) == 3 for name in chosen):
        raise ValueError("calibrate=True is not available for to='blueprint' with 3D convolutions (the last stage "
                         "would need 3D patches); use 'separable', or calibrate=False")
    if not chosen:
        warnings.warn(f"convert: no convolution is eligible; model returned unchanged (skipped: {skipped or 'none found'})",
                      stacklevel=2)
        return new, ConversionReport((), skipped)

    inputs = _capture_inputs(new, chosen, sample_input) if sample_input is not None else {}
    originals = {name: new.get_submodule(name) for name in chosen}
    weight_errors = {}
    for name, conv in _progress(originals.items(), progress, f"factorizing ({to})"):
        replacement, weight_errors[name] = _replacement(conv, to, depth_multiplier, rank, init)
        replacement.train(conv.training)
        _set_submodule(new, name, replacement)
    fitted = _calibrate(model, new, chosen, sample_input, ridge) if calibrate else {}
    reports = [_layer_report(name, conv, new.get_submodule(name), to, depth_multiplier, inputs.get(name),
                             weight_errors[name], calibrate, fitted.get(name)) for name, conv in originals.items()]
    return new, ConversionReport(tuple(reports), skipped)


def _check_options(to, init, depth_multiplier, rank, calibrate, sample_input, ridge, include, exclude) -> None:
    """``ValueError`` naming the first bad option of :func:`convert`."""
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    if init not in ("factorize", "fresh"):
        raise ValueError(f"init must be 'factorize' or 'fresh', got {init!r}")
    if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive int, got {depth_multiplier!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    if calibrate and (sample_input is None or init != "factorize"):
        raise ValueError(f"calibrate=True needs sample_input and init='factorize' (got sample_input="
                         f"{'None' if sample_input is None else 'a tensor'}, init={init!r})")
    if sample_input is not None:
        if not isinstance(sample_input, torch.Tensor):
            raise ValueError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
        if sample_input.numel() == 0:
            raise ValueError(f"sample_input is empty (shape {tuple(sample_input.shape)})")
        if sample_input.is_floating_point() and sample_input.device.type != "meta" and not torch.isfinite(sample_input).all():
            raise ValueError("sample_input holds NaN or inf values")
    if isinstance(ridge, bool) or not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    for pattern, label in ((include, "include"), (exclude, "exclude")):
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ValueError(f"{label}={pattern!r} is not a valid regular expression: {error}") from error


def _choose(model: nn.Module, to: str, include, exclude, min_kernel: int, check_finite: bool) -> tuple[list, dict]:
    """The names of the convolutions to convert, and the skipped ones with the reason."""
    skipped: dict[str, str] = {}
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, _CONVS) or _inside_sepconv_layer(model, name):
            continue
        reason = _eligible(name, module, to, include, exclude, min_kernel)
        if reason is not None:
            skipped[name] = reason
            continue
        if check_finite:  # a factorization of NaN/inf weights is garbage that looks like a result
            for label, tensor in (("weights", module.weight), ("bias", module.bias)):
                if tensor is not None and not bool(torch.isfinite(tensor).all()):
                    raise ValueError(f"convolution {name!r} has NaN or inf {label}; refusing to convert it")
        chosen.append(name)
    return chosen, skipped


def _progress(items, progress: bool, desc: str):
    if progress:  # tqdm comes with the experiments extra; without it, no bar
        try:
            from tqdm.auto import tqdm

            return tqdm(items, desc=desc, unit="conv", leave=False)
        except ImportError:
            pass
    return items


def _layer_report(name: str, conv: nn.Module, replacement: nn.Module, to: str, depth_multiplier: int,
                  x: Optional[torch.Tensor], weight_error: Optional[float], calibrated: bool,
                  target: Optional[str]) -> LayerReport:
    """The report row of one converted layer (MACs and output error on ``x``, its input in the sample run)."""
    if calibrated:
        with torch.no_grad():
            w = conv.weight.double()
            weight_error = float((replacement.to_dense_weight().double() - w).norm() / w.norm().clamp_min(1e-300))
    macs_before = macs_after = output_error = None
    if x is not None:
        spec = spec_from_conv(conv)
        size = x.shape[-spec.ndim:]
        macs_before = conv_cost(spec, size).macs
        if to == "separable":
            after = separable_cost(spec, size, depth_multiplier=depth_multiplier)
        elif to == "spatial":
            after = spatial_cost(spec, size, rank=replacement.rank)
        elif to == "blueprint":
            after = blueprint_cost(spec, size, depth_multiplier=depth_multiplier)
        else:
            after = cp_cost(spec, size, rank=replacement.rank)
        macs_after = after.macs
        if x.device.type != "meta":
            with torch.no_grad():
                ref, out = conv(x), replacement(x)
            denom = float(ref.norm())
            output_error = float((out - ref).norm()) / denom if denom else float((out - ref).norm())
    return LayerReport(
        name=name, kernel_size=tuple(conv.kernel_size),
        params_before=sum(p.numel() for p in conv.parameters()),
        params_after=sum(p.numel() for p in replacement.parameters()),
        macs_before=macs_before, macs_after=macs_after, weight_error=weight_error, output_error=output_error,
        calibrated=calibrated, calibration_target=target,
    )


def calibrate(original: nn.Module, converted: nn.Module, sample_input: torch.Tensor, *, ridge: float = 1e-3,
              names: Optional[Sequence[str]] = None) -> dict[str, str]:
    """Calibrate, in place, a model returned by :func:`convert` (without ``calibrate``) against its ``original``.

    The same fit as ``convert(..., calibrate=True)`` (see there), for when the
    uncalibrated model is wanted too, without factorizing twice. ``names``
    defaults to every sepconv layer of ``converted`` that replaced a
    convolution of ``original``. Returns each layer's fit target
    (``"output"`` or ``"relu"``).
    """
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a torch.Tensor, got {type(sample_input).__name__}")
    _check_options("separable", "factorize", 1, None, True, sample_input, ridge, None, None)
    if names is None:
        originals = dict(original.named_modules())
        names = [name for name, module in converted.named_modules()
                 if isinstance(module, _OWN_LAYERS) and isinstance(originals.get(name), _CONVS)]
    if not names:
        raise ValueError("calibrate: converted has no layer that replaced a convolution of original")
    return _calibrate(original, converted, list(names), sample_input, ridge)


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the wanted activation is captured."""


def _last_stage(module: nn.Module) -> nn.Conv1d | nn.Conv2d | nn.Conv3d:
    if isinstance(module, SpatiallySeparableConv2d):
        return module.horizontal
    if isinstance(module, (BlueprintSeparableConv1d, BlueprintSeparableConv2d, BlueprintSeparableConv3d)):
        return module.depthwise
    return module.last if isinstance(module, CPConv2d) else module.pointwise


def _patches(stage: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The ``(positions, in_channels * prod(kernel))`` matrix ``A`` of the stage's input patches.

    For ``groups == 1``, ``stage(z) = A @ W.flatten(1).T (+ bias)``; columns are ordered (channel, tap), so
    group g of a grouped stage owns a contiguous block of them. 1D and 2D stages (and 1x1 of any rank).
    """
    if all(k == 1 for k in stage.kernel_size) and all(s == 1 for s in stage.stride) and not any(
            _as_tuple(stage.padding)):
        return z.movedim(1, -1).reshape(-1, z.shape[1])
    nd = len(stage.kernel_size)
    if nd > 2:
        raise ValueError("calibration of a 3D stage with a kernel larger than 1 is not supported")
    padding = tuple(stage.padding)
    if stage.padding_mode != "zeros" and any(padding):  # pad as the conv itself would, then unfold unpadded
        z = F.pad(z, stage._reversed_padding_repeated_twice, mode=stage.padding_mode)
        padding = (0,) * nd
    def lift(t: Sequence[int], pad: int) -> tuple[int, ...]:  # 1D as 2D with a height of 1
        return (pad, *t) if nd == 1 else tuple(t)

    z4 = z.unsqueeze(2) if nd == 1 else z
    cols = F.unfold(z4, lift(stage.kernel_size, 1), dilation=lift(stage.dilation, 1), padding=lift(padding, 0),
                    stride=lift(stage.stride, 1))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _fit(a: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, ridge: float, relu: bool) -> torch.Tensor:
    """Ridge least squares ``min ||A w - y||^2 + lam ||w - w0||^2`` (``lam = ridge * mean(diag(A^T A))``), or with
    ``relu`` the same for ``||relu(A w) - relu(y)||^2``, by majorization from the least-squares solution."""
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    factor = torch.linalg.cholesky(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype))
    solution = torch.cholesky_solve(a.T @ y + lam * w0, factor)
    if relu:
        # entries where y <= 0 only need A w <= 0, so their target becomes min(A w, 0): each step re-solves with
        # the same factor and cannot increase the objective
        positive = y > 0
        for _ in range(RELU_FIT_STEPS):
            target = torch.where(positive, y, (a @ solution).clamp(max=0))
            solution = torch.cholesky_solve(a.T @ target + lam * w0, factor)
    return solution


def _as_tuple(padding: object) -> tuple:
    return tuple(padding) if isinstance(padding, (tuple, list)) else (padding,)


#: Majorization steps of the ReLU-aware fit (each is one solve with the same factorized Gram matrix).
RELU_FIT_STEPS = 30


@torch.no_grad()
def _calibrate(original: nn.Module, new: nn.Module, names: Sequence[str], sample_input: torch.Tensor,
               ridge: float) -> dict[str, str]:
    """Refit each replacement's last stage on the converted network's own activations (see :func:`convert`).

    Returns, per layer, what was fitted: ``"output"`` (least squares on the conv output) or ``"relu"``
    (the output as seen through the ``nn.ReLU`` that directly consumes it).
    """
    targets: dict[str, torch.Tensor] = {}  # cloned: an in-place ReLU after the conv would overwrite them
    output_ids: dict[int, str] = {}
    relu_after: set[str] = set()

    def keep(module, args, output, _targets=targets):
        name = module_names[module]
        _targets.setdefault(name, output.detach().clone())  # returns None: output unchanged
        output_ids[id(output)] = name

    def seen_by_relu(module, args):
        name = output_ids.get(id(args[0]))
        if name is not None:
            relu_after.add(name)

    module_names = {original.get_submodule(name): name for name in names}
    handles = [original.get_submodule(name).register_forward_hook(keep) for name in names]
    handles += [m.register_forward_pre_hook(seen_by_relu) for m in original.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    was_training = (original.training, new.training)
    try:
        original.eval()
        new.eval()
        original(sample_input)
        for name in sorted(names, key=list(targets).index):  # execution order
            stage = _last_stage(new.get_submodule(name))
            captured: list[torch.Tensor] = []

            def grab(module, args, _captured=captured):
                _captured.append(args[0].detach())
                raise _Captured

            handle = stage.register_forward_pre_hook(grab)
            try:
                new(sample_input)
            except _Captured:
                pass
            finally:
                handle.remove()
            a_all = _patches(stage, captured[0]).double()
            y_all = targets[name].movedim(1, -1).reshape(-1, targets[name].shape[1]).double()
            groups, out_per_group = stage.groups, stage.out_channels // stage.groups
            cols = a_all.shape[1] // groups
            weight = stage.weight.detach().double().flatten(1)  # (C_out, C_in/groups * prod(k))
            for g in range(groups):  # the output channels of a group see only that group's inputs
                rows = slice(g * out_per_group, (g + 1) * out_per_group)
                a, y, w0 = a_all[:, g * cols:(g + 1) * cols], y_all[:, rows], weight[rows].T
                if stage.bias is not None:
                    a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
                    w0 = torch.cat([w0, stage.bias.detach().double()[rows][None]], 0)
                if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(y).all())):
                    raise ValueError(f"calibration of {name!r}: the activations on the sample input hold NaN or inf")
                try:
                    solution = _fit(a, y, w0, ridge, name in relu_after)
                except torch.linalg.LinAlgError as error:
                    raise ValueError(f"calibration of {name!r} failed: {str(error).splitlines()[0]}") from None
                if stage.bias is not None:
                    stage.bias[rows] = solution[-1]
                    solution = solution[:-1]
                stage.weight[rows] = solution.T.reshape(stage.weight[rows].shape)
    finally:
        for h in handles:
            h.remove()
        original.train(was_training[0])
        new.train(was_training[1])
    return {name: "relu" if name in relu_after else "output" for name in names}


def _inside_sepconv_layer(model: nn.Module, name: str) -> bool:
    """True for the sub-convolutions of sepconv's own separable layers (already factorized)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), _OWN_LAYERS):
            return True
    return False


def _capture_inputs(model: nn.Module, names: Sequence[str], sample_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` once (eval mode, no grad) and record the input each named conv receives."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(module, args, _name=name):
            captured.setdefault(_name, args[0].detach().clone())  # clone: later in-place ops (ReLU) must not change it
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample_input)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"sample_input of shape {tuple(sample_input.shape)} does not run through the model: {error}") from error
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured

