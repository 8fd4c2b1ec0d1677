"""Independent NumPy references for the tests: convolution, padding and TF 'same'.

Written from the definitions, sharing no code with sepconv, so that the
tests compare the library against something that could disagree with it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's documented rule: out = ceil(size / stride); the extra pixel goes at the end."""
    out = math.ceil(size / stride)
    needed = (out - 1) * stride + (kernel - 1) * dilation + 1
    total = max(needed - size, 0)
    before = total // 2
    return before, total - before


def np_pad(x: np.ndarray, pads: list[tuple[int, int]], mode: str) -> np.ndarray:
    """Pad the trailing len(pads) axes of x."""
    lead = [(0, 0)] * (x.ndim - len(pads))
    return np.pad(x, lead + list(pads), mode=NP_PAD_MODE[mode])


def np_conv(x: np.ndarray, w: np.ndarray, b, stride, dilation, groups: int = 1) -> np.ndarray:
    """Cross-correlation of an already padded x (N, C, *S) with w (O, C/groups, *k), float64."""
    n, c = x.shape[:2]
    o = w.shape[0]
    k = w.shape[2:]
    nd = len(k)
    out_size = [(x.shape[2 + i] - (k[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(nd)]
    assert all(s >= 1 for s in out_size), out_size
    out = np.zeros((n, o, *out_size))
    cg, og = c // groups, o // groups
    for offs in itertools.product(*[range(ki) for ki in k]):
        window = tuple(
            slice(off * d, off * d + (m - 1) * s + 1, s) for off, d, s, m in zip(offs, dilation, stride, out_size)
        )
        patch = x[(slice(None), slice(None)) + window]  # (N, C, *out)
        for g in range(groups):
            tap = w[(slice(g * og, (g + 1) * og), slice(None)) + offs]  # (og, cg)
            out[:, g * og : (g + 1) * og] += np.einsum("oc,nc...->no...", tap, patch[:, g * cg : (g + 1) * cg])
    if b is not None:
        out += np.asarray(b).reshape(1, -1, *([1] * nd))
    return out
