"""The geometry of a convolution, in one place.

Every part of sepconv asks the same questions about a convolution: how large
is its output, how much padding goes on each side, how many weights does it
have. This module answers them; layers use it to pad, the cost model to
count, the converter to build replacements and the benchmark to compute a
roofline. Nothing here depends on any other sepconv module.

Conventions
-----------
* Spatial sizes, kernels, strides and dilations are tuples with one entry per
  spatial dimension (1, 2 or 3), in PyTorch order (D, H, W).
* Resolved padding is a tuple of ``(before, after)`` pairs, one per spatial
  dimension.
* ``'same'`` follows TensorFlow/Keras: the output size is
  ``ceil(in / stride)`` for any stride, and when the total padding is odd the
  extra pixel goes at the end (bottom/right). For stride 1 this equals
  PyTorch's ``padding='same'``; for stride > 1 (which PyTorch refuses) the
  padding depends on the input size.
* ``'valid'`` means no padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

IntOrTuple = Union[int, Sequence[int]]
#: What a user may pass as ``padding``: ``'same'``, ``'valid'``, an int, one
#: int per spatial dimension, or one ``(before, after)`` pair per dimension.
PaddingArg = Union[str, int, Sequence[int], Sequence[Sequence[int]]]
Pads = tuple[tuple[int, int], ...]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ntuple(value: IntOrTuple, ndim: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Expand ``value`` to a tuple of ``ndim`` ints, each ``>= minimum``.

    Raises ``TypeError``/``ValueError`` naming ``name`` and the bad value.
    """
    if _is_int(value):
        values: tuple[int, ...] = (int(value),) * ndim  # type: ignore[arg-type]
    elif isinstance(value, (tuple, list)):
        if len(value) != ndim or not all(_is_int(v) for v in value):
            raise TypeError(
                f"{name} must be an int or a sequence of {ndim} ints for a {ndim}D "
                f"convolution, got {value!r}"
            )
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    for v in values:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return values


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")
    return int(value)  # type: ignore[arg-type]


def effective_kernel(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel in input pixels: ``(k - 1) * d + 1``."""
    return (kernel - 1) * dilation + 1


def same_pads_1d(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding for one dimension: ``(before, after)``.

    The output has ``ceil(size / stride)`` elements; when the total padding is
    odd the extra element goes after (TF/Keras convention).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def output_size_1d(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
    """Output length of a convolution along one dimension (PyTorch's formula)."""
    span = size + pads[0] + pads[1] - effective_kernel(kernel, dilation)
    if span < 0:
        return 0
    return span // stride + 1


def normalize_padding(padding: PaddingArg, ndim: int) -> Union[str, Pads]:
    """Validate ``padding`` and return ``'same'``, or per-dimension pairs.

    ``'valid'`` and ints become pairs; the returned value is hashable.
    """
    if isinstance(padding, str):
        p = padding.lower()
        if p == "same":
            return "same"
        if p == "valid":
            return ((0, 0),) * ndim
        raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
    if _is_int(padding):
        if padding < 0:  # type: ignore[operator]
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return ((int(padding), int(padding)),) * ndim  # type: ignore[arg-type]
    if isinstance(padding, (tuple, list)) and len(padding) == ndim:
        if all(_is_int(p) for p in padding):
            pairs = tuple((int(p), int(p)) for p in padding)  # type: ignore[arg-type]
        elif all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(q) for q in p) for p in padding
        ):
            pairs = tuple((int(p[0]), int(p[1])) for p in padding)  # type: ignore[index]
        else:
            pairs = ()
        if pairs:
            if any(q < 0 for pair in pairs for q in pair):
                raise ValueError(f"padding must be >= 0 everywhere, got {padding!r}")
            return pairs
    raise TypeError(
        f"padding must be 'same', 'valid', an int, {ndim} ints, or {ndim} (before, after) "
        f"pairs for a {ndim}D convolution, got {padding!r}"
    )


@dataclass(frozen=True)
class ConvSpec:
    """An immutable description of one convolution.

    Attributes
    ----------
    in_channels, out_channels:
        Channel counts (``C_in``, ``C_out``).
    kernel_size, stride, dilation:
        One int per spatial dimension.
    padding:
        ``'same'`` (TF semantics, may depend on the input size) or one
        ``(before, after)`` pair per spatial dimension.
    groups:
        Channel groups; ``groups == in_channels`` is a depthwise convolution.
    bias:
        Whether a bias is added to each output channel.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Union[str, Pads]
    groups: int = 1
    bias: bool = True

    @classmethod
    def make(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingArg = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        ndim: int = 2,
    ) -> "ConvSpec":
        """Validate arguments the way ``nn.Conv*d`` takes them and build a spec."""
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
        cin = check_positive_int(in_channels, "in_channels")
        cout = check_positive_int(out_channels, "out_channels")
        g = check_positive_int(groups, "groups")
        if cin % g or cout % g:
            raise ValueError(
                f"groups={g} must divide both in_channels={cin} and out_channels={cout}"
            )
        return cls(
            in_channels=cin,
            out_channels=cout,
            kernel_size=ntuple(kernel_size, ndim, "kernel_size"),
            stride=ntuple(stride, ndim, "stride"),
            dilation=ntuple(dilation, ndim, "dilation"),
            padding=normalize_padding(padding, ndim),
            groups=g,
            bias=bool(bias),
        )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.kernel_size)

    @property
    def kernel_volume(self) -> int:
        """Number of taps in one kernel plane: ``prod(kernel_size)``."""
        return math.prod(self.kernel_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the PyTorch weight: ``(C_out, C_in / groups, *kernel)``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def weight_count(self) -> int:
        """Number of weights (biases excluded)."""
        return math.prod(self.weight_shape)

    @property
    def bias_count(self) -> int:
        """Number of bias values: ``C_out`` if ``bias`` else 0."""
        return self.out_channels if self.bias else 0

    @property
    def param_count(self) -> int:
        """Weights plus biases."""
        return self.weight_count + self.bias_count

    @property
    def static_pads(self) -> Union[Pads, None]:
        """Per-side padding if it does not depend on the input size, else None.

        'same' is static when every stride is 1 (then the total padding is
        ``(k - 1) * d``).
        """
        if self.padding != "same":
            return self.padding  # type: ignore[return-value]
        if all(s == 1 for s in self.stride):
            return tuple(same_pads_1d(1, k, 1, d) for k, d in zip(self.kernel_size, self.dilation))
        return None

    def pads(self, input_size: Sequence[int]) -> Pads:
        """Per-side padding for an input of spatial size ``input_size``."""
        size = self._check_size(input_size)
        if self.padding == "same":
            return tuple(
                same_pads_1d(n, k, s, d)
                for n, k, s, d in zip(size, self.kernel_size, self.stride, self.dilation)
            )
        return self.padding  # type: ignore[return-value]

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for an input of spatial size ``input_size``.

        Raises ``ValueError`` if the (padded, dilated) kernel does not fit.
        """
        size = self._check_size(input_size)
        pads = self.pads(size)
        out = tuple(
            output_size_1d(n, k, s, d, p)
            for n, k, s, d, p in zip(size, self.kernel_size, self.stride, self.dilation, pads)
        )
        if any(o < 1 for o in out):
            raise ValueError(
                f"kernel_size={self.kernel_size} with dilation={self.dilation} does not fit "
                f"input size {size} padded by {pads}: the padded input must be at least "
                f"{tuple(effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation))}"
            )
        return out

    def output_shape(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """``(C_out, *spatial_out)`` for one sample."""
        return (self.out_channels, *self.output_size(input_size))

    def in_bounds_taps(self, input_size: Sequence[int]) -> int:
        """How many (output position, kernel tap) pairs read an input position rather than zero padding.

        Per pair of input and output channel, for an input of spatial size
        ``input_size``: ``prod(output_size) * kernel_volume`` when there is no
        padding, fewer when taps fall on the padding. A tap is in bounds exactly
        when it is in bounds in every dimension, so the count is the product of
        one sum per dimension. Kernels that skip the padding (oneDNN's direct
        convolutions do) compute only these taps.
        """
        size = self._check_size(input_size)
        out = self.output_size(size)
        total = 1
        for n, k, s, d, (lo, _), o in zip(size, self.kernel_size, self.stride, self.dilation, self.pads(size), out):
            taps = 0
            for tap in range(k):
                # output j reads input j * s - lo + tap * d: count j in [0, o) with that index in [0, n)
                shift = tap * d - lo
                first, last = max(0, -(shift // s)), min(o - 1, (n - 1 - shift) // s)  # floor division
                taps += max(0, last - first + 1)
            total *= taps
        return total

    def _check_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        size = tuple(int(n) for n in input_size)
        if len(size) != self.ndim:
            raise ValueError(
                f"input size {tuple(input_size)} has {len(size)} spatial dimensions, "
                f"this {self.ndim}D convolution needs {self.ndim}"
            )
        if any(n < 1 for n in size):
            raise ValueError(f"input size must be >= 1 in every dimension, got {size}")
        return size


def is_symmetric(pads: Pads) -> bool:
    """True if every dimension is padded equally on both sides."""
    return all(a == b for a, b in pads)


def torch_pad_arg(pads: Pads) -> list[int]:
    """Convert per-dimension pairs to the flat, last-dimension-first list of ``F.pad``."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


# ----------------------------------------------------------------------------- how separable convs split
# The layers build their sub-convolutions from these specs and the cost model
# counts them, so the two can never disagree about a stage's geometry.


def separable_stage_specs(
    spec: ConvSpec, depth_multiplier: int = 1, depthwise_bias: bool = False
) -> tuple[ConvSpec, ConvSpec]:
    """The depthwise and pointwise stages that replace the standard convolution ``spec``.

    The depthwise stage keeps the kernel, stride, dilation and padding and has
    ``groups = C_in`` and ``C_in * depth_multiplier`` outputs; the pointwise
    stage is a 1x1 convolution to ``C_out`` that carries ``spec.bias``.
    """
    m = check_positive_int(depth_multiplier, "depth_multiplier")
    mid = spec.in_channels * m
    depthwise = ConvSpec(
        spec.in_channels, mid, spec.kernel_size, spec.stride, spec.dilation, spec.padding,
        groups=spec.in_channels, bias=bool(depthwise_bias),
    )
    ones = (1,) * spec.ndim
    pointwise = ConvSpec(mid, spec.out_channels, ones, ones, ones, ((0, 0),) * spec.ndim, groups=1, bias=spec.bias)
    return depthwise, pointwise


def spatial_stage_specs(spec: ConvSpec, rank: Union[int, None] = None) -> tuple[ConvSpec, ConvSpec]:
    """The ``k_h x 1`` (vertical) and ``1 x k_w`` (horizontal) stages replacing a 2D ``spec``.

    The vertical stage maps ``C_in`` to ``rank`` channels (default
    ``min(C_in, C_out)``) and pads, strides and dilates along H only; the
    horizontal stage maps ``rank`` to ``C_out`` along W only and carries the
    bias. With 'same' padding each stage uses 'same' on its own axis, which
    gives exactly the padding of the dense kernel.
    """
    if spec.ndim != 2:
        raise ValueError(f"spatially separable convolutions are 2D; got a {spec.ndim}D kernel_size={spec.kernel_size}")
    if spec.groups != 1:
        raise ValueError(f"spatially separable convolutions need groups=1, got groups={spec.groups}")
    r = min(spec.in_channels, spec.out_channels) if rank is None else check_positive_int(rank, "rank")
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    if spec.padding == "same":
        pad_v: Union[str, Pads] = "same"
        pad_h: Union[str, Pads] = "same"
    else:
        (top, bottom), (left, right) = spec.padding  # type: ignore[misc]
        pad_v, pad_h = ((top, bottom), (0, 0)), ((0, 0), (left, right))
    vertical = ConvSpec(spec.in_channels, r, (kh, 1), (sh, 1), (dh, 1), pad_v, groups=1, bias=False)
    horizontal = ConvSpec(r, spec.out_channels, (1, kw), (1, sw), (1, dw), pad_h, groups=1, bias=spec.bias)
    return vertical, horizontal


def blueprint_stage_specs(spec: ConvSpec, depth_multiplier: int = 1) -> tuple[ConvSpec, ConvSpec]:
    """The pointwise-then-depthwise stages (the "blueprint" order, BSConv-U) that replace ``spec``.

    The pointwise stage maps ``C_in`` to ``C_out * depth_multiplier`` channels
    (1x1, no bias); the second stage is a grouped convolution with
    ``groups = C_out`` (each output channel sums its own ``depth_multiplier``
    filtered channels: depthwise when the multiplier is 1) that keeps the
    kernel, stride, dilation and padding and carries the bias.
    """
    if spec.groups != 1:
        raise ValueError(f"the pointwise-depthwise order needs groups=1, got groups={spec.groups}")
    m = check_positive_int(depth_multiplier, "depth_multiplier")
    mid = spec.out_channels * m
    ones = (1,) * spec.ndim
    pointwise = ConvSpec(spec.in_channels, mid, ones, ones, ones, ((0, 0),) * spec.ndim, groups=1, bias=False)
    grouped = ConvSpec(mid, spec.out_channels, spec.kernel_size, spec.stride, spec.dilation, spec.padding,
                       groups=spec.out_channels, bias=spec.bias)
    return pointwise, grouped


def cp_stage_specs(spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec, ConvSpec, ConvSpec]:
    """The four stages of a rank-``rank`` CP-decomposed 2D ``spec`` (Lebedev et al. 2015).

    ``1x1 (C_in -> R)``, ``k_h x 1`` depthwise on R channels (H padding, stride
    and dilation), ``1 x k_w`` depthwise on R channels (W geometry), ``1x1
    (R -> C_out)`` with the bias. The spatial pair splits the geometry as
    :func:`spatial_stage_specs` does.
    """
    r = check_positive_int(rank, "rank")
    vertical, horizontal = spatial_stage_specs(spec, r)
    ones = (1, 1)
    first = ConvSpec(spec.in_channels, r, ones, ones, ones, ((0, 0), (0, 0)), groups=1, bias=False)
    vertical = ConvSpec(r, r, vertical.kernel_size, vertical.stride, vertical.dilation, vertical.padding,
                        groups=r, bias=False)
    horizontal = ConvSpec(r, r, horizontal.kernel_size, horizontal.stride, horizontal.dilation, horizontal.padding,
                          groups=r, bias=False)
    last = ConvSpec(r, spec.out_channels, ones, ones, ones, ((0, 0), (0, 0)), groups=1, bias=spec.bias)
    return first, vertical, horizontal, last
