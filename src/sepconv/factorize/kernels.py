"""Optimal separable factorizations of convolution kernels (truncated SVDs), with their exact errors.

Three structures, each optimal in the least-squares (Frobenius) sense by the
Eckart–Young theorem because each is a rank constraint on some unfolding of
the kernel:

* **Spatially separable, one 2D kernel**: ``K (k_h x k_w) ~ sum_r col_r row_r^T``;
  the best rank-``r`` approximation keeps the top ``r`` singular triplets.
  :func:`separate` and :func:`low_rank`; :func:`pairwise_spatial` does it for
  every (output, input) channel pair of a conv weight at once.
* **Spatially separable layer** (:class:`sepconv.SpatiallySeparableConv2d`):
  ``W[n, c, i, j] = sum_r H[n, r, j] V[r, c, i]``, i.e. the unfolding
  ``M[(c, i), (n, j)]`` of size ``(C_in k_h) x (C_out k_w)`` has rank <= R
  (Jaderberg, Vedaldi & Zisserman 2014, scheme 2). :func:`spatial_factorize`.
* **Depthwise separable layer** (:class:`sepconv.SeparableConv2d`, depth
  multiplier M): ``W[n, c] = sum_m PW[n, cM+m] DW[cM+m]``, i.e. for each
  input channel c the ``C_out x prod(k)`` slice ``W[:, c]`` has rank <= M.
  The slices are independent, so a truncated SVD per input channel is
  optimal. :func:`depthwise_factorize`.

Relative errors are ``||W - W_approx||_F / ||W||_F`` (0 for an all-zero
kernel), computed from the discarded singular values. Computations run in
float64 and results are cast back to the input's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _check_weight(weight: torch.Tensor, name: str = "weight", min_dim: int = 2) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains NaN or inf values; a factorization of it would be meaningless")
    return weight.detach().to(torch.float64)


def _check_rank(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _rel_error(discarded_sq: torch.Tensor, total_sq: torch.Tensor) -> float:
    total = float(total_sq)
    return 0.0 if total == 0.0 else math.sqrt(max(float(discarded_sq), 0.0) / total)


def _check_2d_kernel(kernel: torch.Tensor) -> torch.Tensor:
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2:
        shape = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
        raise ValueError(f"kernel must be a 2D tensor (k_h x k_w), got {shape}")
    return _check_weight(kernel, "kernel")


def singular_values(kernel: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2D kernel, largest first (float64)."""
    return torch.linalg.svdvals(_check_2d_kernel(kernel))


def is_separable(kernel: torch.Tensor, rtol: float = 1e-6) -> bool:
    """True if the 2D ``kernel`` has numerical rank <= 1: ``s_2 <= rtol * s_1``.

    An all-zero kernel counts as separable (0 = 0 x 0^T).
    """
    s = singular_values(kernel)
    return s.numel() < 2 or float(s[1]) <= rtol * float(s[0])


def separate(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-1 factorization ``kernel ~ outer(col, row)``: returns ``(col, row, relative_error)``.

    The scale is shared equally (``||col|| = ||row||``) and the sign makes the
    largest-magnitude entry of ``col`` positive; for Sobel
    ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` this gives ``col ∝ [1, 2, 1]`` and
    ``row ∝ [-1, 0, 1]`` with error 0.
    """
    cols, rows, err = low_rank(kernel, 1)
    return cols[:, 0], rows[0], err


def low_rank(kernel: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best sum of ``rank`` separable terms: ``kernel ~ cols @ rows`` with ``cols (k_h, r)``, ``rows (r, k_w)``.

    Returns ``(cols, rows, relative_error)``. A rank above ``min(k_h, k_w)``
    is exact (the extra terms are zero).
    """
    k = _check_2d_kernel(kernel)
    r = _check_rank(rank, "rank")
    u, s, vh = torch.linalg.svd(k, full_matrices=False)
    keep = min(r, s.numel())
    root = s[:keep].sqrt()
    cols, rows = u[:, :keep] * root, root[:, None] * vh[:keep]
    # sign convention: the largest |entry| of each column factor is positive
    flip = torch.sign(cols.gather(0, cols.abs().argmax(0, keepdim=True))).squeeze(0)
    flip[flip == 0] = 1
    cols, rows = cols * flip, rows * flip[:, None]
    if keep < r:
        cols = torch.cat([cols, cols.new_zeros(k.shape[0], r - keep)], 1)
        rows = torch.cat([rows, rows.new_zeros(r - keep, k.shape[1])], 0)
    err = _rel_error((s[keep:] ** 2).sum(), (s**2).sum())
    return cols.to(kernel.dtype), rows.to(kernel.dtype), err


@dataclass(frozen=True)
class PairwiseSpatial:
    """Per (output, input) channel pair of a 2D conv weight ``(N, C, k_h, k_w)``.

    ``ranks[n, c]`` is each kernel's numerical rank; ``errors[n, c]`` the
    relative error of its best rank-``rank`` approximation; ``error`` the
    relative error over the whole weight.
    """

    ranks: torch.Tensor
    errors: torch.Tensor
    error: float
    rank: int

    @property
    def separable_fraction(self) -> float:
        """Share of the kernels that are numerically rank <= ``rank``."""
        return float((self.ranks <= self.rank).double().mean())


def pairwise_spatial(weight: torch.Tensor, rank: int = 1, rtol: float = 1e-6) -> PairwiseSpatial:
    """Spatial separability of every 2D kernel ``weight[n, c]`` of a 2D conv weight."""
    w = _check_weight(weight, min_dim=4)
    if w.dim() != 4:
        raise ValueError(f"weight must be a 2D convolution weight (N, C, k_h, k_w), got shape {tuple(weight.shape)}")
    r = _check_rank(rank, "rank")
    s = torch.linalg.svdvals(w)  # (N, C, min(kh, kw))
    ranks = (s > rtol * s[..., :1]).sum(-1)
    ranks[s[..., 0] == 0] = 0
    total = (s**2).sum(-1)
    discarded = (s[..., r:] ** 2).sum(-1)
    errors = torch.where(total > 0, (discarded / total.clamp_min(1e-300)).sqrt(), torch.zeros_like(total))
    return PairwiseSpatial(ranks=ranks, errors=errors, error=_rel_error(discarded.sum(), total.sum()), rank=r)


def spatial_factorize(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Optimal weights for :class:`sepconv.SpatiallySeparableConv2d` with ``rank`` intermediate channels.

    Returns ``(vertical (R, C, k_h, 1), horizontal (N, R, 1, k_w), relative_error)``
    from the truncated SVD of the ``(C k_h) x (N k_w)`` unfolding. ``rank``
    beyond the unfolding's rank pads with zeros (exact).
    """
    w = _check_weight(weight, min_dim=4)
    if w.dim() != 4:
        raise ValueError(f"weight must be a 2D convolution weight (N, C, k_h, k_w), got shape {tuple(weight.shape)}")
    r = _check_rank(rank, "rank")
    n, c, kh, kw = w.shape
    unfolded = w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    u, s, vh = torch.linalg.svd(unfolded, full_matrices=False)
    keep = min(r, s.numel())
    root = s[:keep].sqrt()
    a = torch.zeros(c * kh, r, dtype=w.dtype)
    b = torch.zeros(r, n * kw, dtype=w.dtype)
    a[:, :keep] = u[:, :keep] * root
    b[:keep] = root[:, None] * vh[:keep]
    vertical = a.reshape(c, kh, r).permute(2, 0, 1).unsqueeze(-1)  # (R, C, kh, 1)
    horizontal = b.reshape(r, n, kw).permute(1, 0, 2).unsqueeze(2)  # (N, R, 1, kw)
    err = _rel_error((s[keep:] ** 2).sum(), (s**2).sum())
    return vertical.to(weight.dtype).contiguous(), horizontal.to(weight.dtype).contiguous(), err


def depthwise_factorize(weight: torch.Tensor, depth_multiplier: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Optimal depthwise + pointwise weights for a standard conv weight ``(N, C, *k)`` (1D, 2D or 3D).

    Returns ``(depthwise (C*M, 1, *k), pointwise (N, C*M, 1, ...), relative_error)``
    in the layout of :class:`sepconv.SeparableConv2d` (channel ``c*M + m``).
    Exact when every slice ``W[:, c]`` has rank <= M, in particular when
    ``M >= min(N, prod(k))``.
    """
    w = _check_weight(weight, min_dim=3)
    m = _check_rank(depth_multiplier, "depth_multiplier")
    n, c, *k = w.shape
    slices = w.permute(1, 0, *range(2, w.dim())).reshape(c, n, math.prod(k))  # (C, N, K)
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)  # (C, N, q), (C, q), (C, q, K)
    keep = min(m, s.shape[-1])
    dw = torch.zeros(c, m, math.prod(k), dtype=w.dtype)
    pw = torch.zeros(n, c, m, dtype=w.dtype)
    dw[:, :keep] = vh[:, :keep]
    pw[:, :, :keep] = (u[:, :, :keep] * s[:, None, :keep]).permute(1, 0, 2)
    ones = [1] * len(k)
    depthwise = dw.reshape(c * m, 1, *k)
    pointwise = pw.reshape(n, c * m, *ones)
    err = _rel_error((s[:, keep:] ** 2).sum(), (s**2).sum())
    return depthwise.to(weight.dtype).contiguous(), pointwise.to(weight.dtype).contiguous(), err


def depthwise_error_curve(weight: torch.Tensor) -> list[float]:
    """Relative error of the optimal depthwise separable approximation for M = 1, 2, ..., min(N, prod(k))."""
    w = _check_weight(weight, min_dim=3)
    n, c, *k = w.shape
    s = torch.linalg.svdvals(w.permute(1, 0, *range(2, w.dim())).reshape(c, n, math.prod(k)))
    total = (s**2).sum()
    return [_rel_error((s[:, m:] ** 2).sum(), total) for m in range(1, s.shape[-1] + 1)]


def depth_multiplier_for(weight: torch.Tensor, max_error: float) -> int:
    """The smallest depth multiplier whose optimal approximation has relative error <= ``max_error``.

    ``max_error`` is in [0, 1); for a retained *energy* fraction e use
    ``max_error = sqrt(1 - e)``.
    """
    if not isinstance(max_error, (int, float)) or not 0 <= max_error < 1:
        raise ValueError(f"max_error must be a number in [0, 1), got {max_error!r}")
    curve = depthwise_error_curve(weight)
    for m, err in enumerate(curve, start=1):
        if err <= max_error + 1e-12:
            return m
    return len(curve)


def blueprint_factorize(weight: torch.Tensor, depth_multiplier: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Optimal pointwise-then-depthwise weights (:class:`sepconv.BlueprintSeparableConv2d`) for ``(N, C, *k)``.

    ``W[n, c] = sum_m PW[n*M + m, c] DW[n, m]``: for each output channel n the
    ``C x prod(k)`` slice ``W[n]`` must have rank <= M, and a truncated SVD per
    output channel is optimal. Returns ``(pointwise (N*M, C, 1, ...),
    depthwise (N, M, *k), relative_error)``; exact when every slice has rank
    <= M, in particular when ``M >= min(C, prod(k))``.
    """
    w = _check_weight(weight, min_dim=3)
    m = _check_rank(depth_multiplier, "depth_multiplier")
    n, c, *k = w.shape
    u, s, vh = torch.linalg.svd(w.reshape(n, c, math.prod(k)), full_matrices=False)  # (N, C, q), (N, q), (N, q, K)
    keep = min(m, s.shape[-1])
    pw = torch.zeros(n, m, c, dtype=w.dtype)
    dw = torch.zeros(n, m, math.prod(k), dtype=w.dtype)
    pw[:, :keep] = (u[:, :, :keep] * s[:, None, :keep]).transpose(1, 2)
    dw[:, :keep] = vh[:, :keep]
    ones = [1] * len(k)
    err = _rel_error((s[:, keep:] ** 2).sum(), (s**2).sum())
    return (pw.reshape(n * m, c, *ones).to(weight.dtype).contiguous(),
            dw.reshape(n, m, *k).to(weight.dtype).contiguous(), err)


def blueprint_error_curve(weight: torch.Tensor) -> list[float]:
    """Relative error of the optimal pointwise-then-depthwise approximation for M = 1, ..., min(C, prod(k))."""
    w = _check_weight(weight, min_dim=3)
    n, c, *k = w.shape
    s = torch.linalg.svdvals(w.reshape(n, c, math.prod(k)))
    total = (s**2).sum()
    return [_rel_error((s[:, m:] ** 2).sum(), total) for m in range(1, s.shape[-1] + 1)]


def cp_factorize(weight: torch.Tensor, rank: int, *, n_iter_max: int = 100, tol: float = 1e-6,
                 seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], float]:
    """Rank-``rank`` CP decomposition of a 2D conv weight ``(N, C, k_h, k_w)`` for :class:`sepconv.CPConv2d`.

    Uses ``tensorly.decomposition.parafac`` (alternating least squares,
    SVD initialization, ``n_iter_max`` iterations, relative tolerance
    ``tol``; ``seed`` for tensorly's random state) in float64. Unlike the SVD
    factorizations, ALS is not guaranteed to find the best rank-R
    approximation (and a best one need not exist); the returned error is the
    achieved one, ``||W - W_cp||_F / ||W||_F``. Returns
    ``((first (R, C, 1, 1), vertical (R, 1, k_h, 1), horizontal (R, 1, 1, k_w),
    last (N, R, 1, 1)), relative_error)``; the CP weights are folded into
    ``last`` and the factor norms balanced across the four stages. Needs
    ``pip install 'sepconv[tensorly]'``.
    """
    try:
        import tensorly as tl
        from tensorly.decomposition import parafac
    except ImportError as error:
        raise ImportError("cp_factorize needs tensorly: pip install 'sepconv[tensorly]'") from error
    w = _check_weight(weight, min_dim=4)
    if w.dim() != 4:
        raise ValueError(f"weight must be a 2D convolution weight (N, C, k_h, k_w), got shape {tuple(weight.shape)}")
    r = _check_rank(rank, "rank")
    if float(w.norm()) == 0.0:
        n, c, kh, kw = w.shape
        zeros = (torch.zeros(r, c, 1, 1), torch.zeros(r, 1, kh, 1), torch.zeros(r, 1, 1, kw), torch.zeros(n, r, 1, 1))
        return tuple(z.to(weight.dtype) for z in zeros), 0.0
    import warnings

    with tl.backend_context("numpy"), warnings.catch_warnings():
        # the SVD initialization of a mode smaller than the rank fills the missing columns at random (seeded);
        # tensorly says so in a warning on every such call, which is expected here
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        cp = parafac(w.numpy(), rank=r, n_iter_max=n_iter_max, tol=tol, init="svd", random_state=seed,
                     normalize_factors=True)
    lam = torch.as_tensor(cp.weights, dtype=torch.float64)
    a, b, v, h = (torch.as_tensor(f, dtype=torch.float64) for f in cp.factors)  # (N,R) (C,R) (kh,R) (kw,R)
    # factors have unit columns: spread each component's weight evenly over the four stages
    scale = lam.abs().pow(0.25)
    a, b, v, h = a * (scale * torch.sign(lam)), b * scale, v * scale, h * scale
    approx = torch.einsum("nr,cr,ir,jr->ncij", a, b, v, h)
    err = float((approx - w).norm() / w.norm())
    first = b.T[:, :, None, None]
    vertical = v.T[:, None, :, None]
    horizontal = h.T[:, None, None, :]
    last = a[:, :, None, None]
    return tuple(t.to(weight.dtype).contiguous() for t in (first, vertical, horizontal, last)), err
