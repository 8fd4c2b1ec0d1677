"""One shape convention for every command: PyTorch's ``C x H x W`` (``N x C x H x W`` where the batch matters).

:func:`parse_shape` reads the text a user types (``3x224x224``). Keras order
(``H x W x C``) is read only when asked for: an ``hwc:`` prefix
(``hwc:15x15x3``) or ``channels_last=True`` (the CLI's ``--channels-last``).
``chw:`` forces PyTorch order. A shape whose two readings differ *and* which
looks like the other order is refused instead of silently misread: without a
prefix, ``15x15x3`` would be 15 channels of 15 x 3 pixels in PyTorch order and
a 15 x 15 image of 3 channels in Keras order. The rule: an unprefixed shape
whose first two sizes are equal while the last differs (``A x A x B``) is
ambiguous; ``3x32x32``, ``32x32x32`` and ``3x32x64`` are not.
"""

from __future__ import annotations

import re
from typing import Optional

#: Prefixes that name the order explicitly.
ORDERS = ("chw", "hwc")


def format_shape(shape) -> str:
    """``(3, 224, 224)`` -> ``'3x224x224'``."""
    return "x".join(str(int(s)) for s in shape)


def parse_shape(text: str, name: str = "--input", *, spatial_dims: Optional[int] = 2, batch: bool = False,
                channels_last: bool = False, max_size: int = 1 << 31) -> tuple[int, ...]:
    """Parse ``text`` into ``(C, *spatial)``, or ``(N, C, *spatial)`` when ``batch`` is True and a batch is given.

    ``spatial_dims`` is the number of spatial sizes the caller needs (None: 1 to 3).
    With ``batch=True`` a leading batch size is optional: ``3x32x32`` -> ``(3, 32, 32)``,
    ``8x3x32x32`` -> ``(8, 3, 32, 32)``. ``hwc:``/``channels_last`` read ``[N x] *spatial x C``.
    Every size must be an integer in ``[1, max_size]``. Raises ``ValueError`` naming ``name``,
    the text and what is valid; ambiguous shapes (see the module docstring) are refused.
    """
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a shape such as 3x224x224 (C x H x W), got {text!r}")
    body = text.strip().lower()
    order = None
    prefix, sep, rest = body.partition(":")
    if sep:
        if prefix not in ORDERS:
            raise ValueError(f"{name}: unknown order prefix {prefix!r} in {text!r}; valid: chw: (C x H x W) or "
                             f"hwc: (H x W x C)")
        order, body = prefix, rest.strip()
    if channels_last:
        if order == "chw":
            raise ValueError(f"{name} {text!r} says chw: but --channels-last asks for H x W x C; use one of them")
        order = "hwc"
    parts = re.split(r"\s*[x×,]\s*", body) if body else []
    if not parts or not all(re.fullmatch(r"\d{1,12}", p) for p in parts):
        raise ValueError(f"{name} must be sizes joined by 'x' in C x H x W order (e.g. 3x224x224), got {text!r}")
    dims = [int(p) for p in parts]
    allowed = _counts(spatial_dims, batch)
    if len(dims) not in allowed:
        what = " or ".join(_describe(n, spatial_dims, batch, order == "hwc") for n in sorted(allowed))
        raise ValueError(f"{name} must be {what}, got {text!r} ({len(dims)} size{'s' if len(dims) != 1 else ''})")
    if any(d < 1 or d > max_size for d in dims):
        raise ValueError(f"{name} sizes must lie in [1, {max_size}], got {text!r}")
    has_batch = batch and spatial_dims is not None and len(dims) == spatial_dims + 2
    lead, body_dims = (dims[:1], dims[1:]) if has_batch else ([], dims)
    if order == "hwc":
        return tuple(lead + [body_dims[-1]] + body_dims[:-1])
    if order is None and len(body_dims) == 3 and body_dims[0] == body_dims[1] != body_dims[2]:
        a, _, b = body_dims
        raise ValueError(
            f"{name} {text!r} is ambiguous: sepconv reads C x H x W ({a} channels of {a}x{b} pixels), but it looks "
            f"like H x W x C (a {a}x{a} image of {b} channels); write chw:{body} or hwc:{body} "
            f"(or {format_shape(lead + [b, a, a])} in C x H x W order)")
    return tuple(dims)


def _counts(spatial_dims: Optional[int], batch: bool) -> set[int]:
    if spatial_dims is None:
        return {2, 3, 4}
    return {spatial_dims + 1, spatial_dims + 2} if batch else {spatial_dims + 1}


def _describe(count: int, spatial_dims: Optional[int], batch: bool, hwc: bool) -> str:
    names = {1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}
    spatial = count - 1 if spatial_dims is None or count == spatial_dims + 1 else count - 2
    with_batch = spatial_dims is not None and batch and count == spatial_dims + 2
    parts = names.get(spatial, ["S"] * spatial)
    parts = [*parts, "C"] if hwc else ["C", *parts]
    if with_batch:
        parts = ["N", *parts]
    return f"{count} sizes {' x '.join(parts)}"
