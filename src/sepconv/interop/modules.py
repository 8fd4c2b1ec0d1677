"""Small torch modules that reproduce Keras layers with no direct ``torch.nn`` equivalent.

Every imported tensor of rank >= 3 (batch included) is kept channels-first
inside the model (Keras' ``(N, *spatial, C)`` becomes ``(N, C, *spatial)``);
tensors of rank 2 are ``(N, features)`` in both. The modules below take and
return tensors in that layout and convert to Keras' channels-last order only
where the order of elements matters (flattening, reshaping).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import same_pads_1d, torch_pad_arg


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial)`` -> ``(N, *spatial, C)``; rank-2 tensors are returned as they are."""
    if x.dim() < 3:
        return x
    # an explicit permutation: movedim's negative target is exported to ONNX as an invalid Transpose perm
    return x.permute(0, *range(2, x.dim()), 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """``(N, *spatial, C)`` -> ``(N, C, *spatial)``; rank-2 tensors are returned as they are."""
    if x.dim() < 3:
        return x
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


class ChannelsLastFlatten(nn.Module):
    """Keras' ``Flatten``: flattens in channels-last order, ``(N, C, H, W)`` -> ``(N, H*W*C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(x).flatten(1)


class KerasReshape(nn.Module):
    """Keras' ``Reshape(target_shape)``: reshape in channels-last order, then back to channels-first.

    ``target_shape`` excludes the batch dimension and may hold one ``-1``.
    """

    def __init__(self, target_shape: Sequence[int]):
        super().__init__()
        self.target_shape = tuple(int(n) for n in target_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = to_channels_last(x).reshape(x.shape[0], *self.target_shape)
        return to_channels_first(y)

    def extra_repr(self) -> str:
        return f"target_shape={self.target_shape}"


class KerasPool(nn.Module):
    """Keras' ``MaxPooling*D``/``AveragePooling*D`` with 'valid' or TF-style 'same' padding.

    'same' pads so the output has ``ceil(in / stride)`` elements, the extra one
    at the end; padded positions never win a maximum and are left out of an
    average (TensorFlow's convention).
    """

    def __init__(self, kind: str, pool_size: Sequence[int], strides: Sequence[int], padding: str):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.kind, self.padding = kind, padding
        self.pool_size, self.strides = tuple(pool_size), tuple(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.pool_size)
        pool = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d,
                ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d}[self.kind, nd]
        if self.padding == "valid":
            return pool(x, self.pool_size, self.strides)
        pads = tuple(same_pads_1d(int(n), k, s, 1) for n, k, s in zip(x.shape[2:], self.pool_size, self.strides))
        flat = torch_pad_arg(pads)
        if not any(flat):
            return pool(x, self.pool_size, self.strides)
        if self.kind == "max":
            return pool(F.pad(x, flat, value=float("-inf")), self.pool_size, self.strides)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        total = pool(F.pad(x, flat), self.pool_size, self.strides)
        count = pool(F.pad(ones, flat), self.pool_size, self.strides)
        return total / count

    def extra_repr(self) -> str:
        return f"{self.kind}, pool_size={self.pool_size}, strides={self.strides}, padding={self.padding!r}"


class GlobalPool(nn.Module):
    """Keras' ``GlobalAveragePooling*D``/``GlobalMaxPooling*D`` over every spatial dimension."""

    def __init__(self, kind: str, keepdims: bool = False):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.keepdims = kind, bool(keepdims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        if self.kind == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        return x.amax(dim=dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.kind}, keepdims={self.keepdims}"


class SpatialPad(nn.Module):
    """Zero padding (positive pads) or cropping (``crop=True``) of the spatial dimensions.

    ``pads`` holds one ``(before, after)`` pair per spatial dimension.
    """

    def __init__(self, pads: Sequence[Sequence[int]], crop: bool = False):
        super().__init__()
        self.pads = tuple((int(a), int(b)) for a, b in pads)
        self.crop = bool(crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.crop:
            return F.pad(x, torch_pad_arg(self.pads))
        index = [slice(None), slice(None)]
        for size, (before, after) in zip(x.shape[2:], self.pads):
            index.append(slice(before, int(size) - after))
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"{self.pads}, crop={self.crop}"


class KerasReLU(nn.Module):
    """Keras' ``ReLU(max_value, negative_slope, threshold)``.

    ``x`` for ``threshold <= x``, capped at ``max_value``;
    ``negative_slope * (x - threshold)`` below the threshold.
    """

    def __init__(self, max_value: Optional[float] = None, negative_slope: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = x if self.max_value is None else x.clamp(max=self.max_value)
        below = self.negative_slope * (x - self.threshold) if self.negative_slope else torch.zeros_like(x)
        return torch.where(x >= self.threshold, above, below)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


class Softmax(nn.Module):
    """Softmax over dimension ``dim`` (Keras' default axis -1 is dimension 1 in channels-first)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Rescaling(nn.Module):
    """Keras' ``Rescaling``: ``x * scale + offset``, each a scalar or one value per channel."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2) if x.dim() >= 2 else (-1,)
        return x * self.scale.reshape(shape) + self.offset.reshape(shape)


class Merge(nn.Module):
    """Keras' elementwise merge layers: ``add``, ``subtract``, ``multiply``, ``average``, ``maximum``, ``minimum``."""

    KINDS = ("add", "subtract", "multiply", "average", "maximum", "minimum")

    def __init__(self, kind: str):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.kind == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.kind in ("add", "average"):
                out = out + x
            elif self.kind == "multiply":
                out = out * x
            elif self.kind == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.kind == "average" else out

    def extra_repr(self) -> str:
        return self.kind


class Concatenate(nn.Module):
    """Keras' ``Concatenate`` along dimension ``dim`` of the channels-first tensors."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class UpsampleNearest(nn.Module):
    """Keras' ``UpSampling*D`` with ``interpolation='nearest'``: repeat each element ``size`` times."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, s in enumerate(self.size):
            if s != 1:
                x = x.repeat_interleave(s, dim=2 + axis)
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}"


class KerasGraph(nn.Module):
    """An imported Keras model: its layers in ``self.layers`` and the calls between them in a static list.

    A node is one Keras layer, or a run of them grouped by the importer (a
    convolution, its BatchNormalization, activation, next convolution, ...)
    as an ``nn.Sequential``.

    ``nodes`` holds ``(layer_key, input_slots)`` in execution order; slot
    ``i < n_inputs`` is the ``i``-th model input, slot ``n_inputs + j`` the
    output of node ``j``. ``outputs`` lists the slots returned. With
    ``channels_last`` the model takes and returns tensors of rank >= 3 in
    Keras' channels-last layout; without it, channels-first (NCHW).
    """

    def __init__(self, layers: dict[str, nn.Module], nodes: Sequence[tuple[str, Sequence[int]]], n_inputs: int,
                 outputs: Sequence[int], channels_last: bool = False):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.nodes = [(key, tuple(slots)) for key, slots in nodes]
        self.n_inputs = int(n_inputs)
        self.outputs = tuple(outputs)
        self.channels_last = bool(channels_last)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != self.n_inputs:
            raise ValueError(f"this model takes {self.n_inputs} input tensor(s), got {len(inputs)}")
        values = [to_channels_first(x) if self.channels_last else x for x in inputs]
        for key, slots in self.nodes:
            values.append(self.layers[key](*(values[s] for s in slots)))
        outs = [to_channels_last(values[s]) if self.channels_last else values[s] for s in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        return f"inputs={self.n_inputs}, nodes={len(self.nodes)}, channels_last={self.channels_last}"
