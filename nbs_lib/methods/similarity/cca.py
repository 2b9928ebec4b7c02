"""How alike two layers' representations are: SVCCA mean canonical correlation and linear CKA.

Paper section "Difference between Fine-tuned Model and Standard Model: On the Learned
Knowledge" (Figure 3, eq. 1). Two layers L1 (n x d1) and L2 (n x d2) hold the
activations of the same n inputs, one row per input (data point), one column per
neuron.

* :func:`cca_similarity` follows SVCCA (Raghu et al. 2017): centre each side, keep
  the SVD directions that hold ``keep`` (99%) of its variance, then compute the
  canonical correlations rho_1 >= ... >= rho_k between the two reduced sides and
  return their mean over k = min(d1, d2) directions (after reduction). The
  canonical correlations are the singular values of Q1^T Q2, where Q1 and Q2 are
  orthonormal bases of the two centred column spaces (Bjorck and Golub 1973): no
  covariance matrix is inverted, so near-singular layers stay stable. All of it
  runs in float64 on the tensors' own device (CPU or CUDA).
* :func:`linear_cka` is linear centred kernel alignment (Kornblith et al. 2019),
  which the paper cites: ||L2^T L1||_F^2 / (||L1^T L1||_F ||L2^T L2||_F) on centred
  columns. Unlike CCA it is not invariant to every invertible linear map, only to
  orthogonal maps and isotropic scaling, and it weights directions by variance.

* :func:`debiased_linear_cka` replaces the HSIC estimates inside linear CKA by the
  unbiased estimator of Song et al. (2012), as Kornblith et al. suggest for few data
  points: biased CKA of two unrelated representations is well above 0 when n is not
  much larger than the widths, the debiased one is near 0 (it can be slightly negative).

The similarities are numbers in [0, 1] (debiased CKA up to rounding below 0); the
chapter scales them to [0, 100] as the paper does.

The variance convention of the SVD reduction: a direction's share of the variance is
its squared singular value over the sum of squares (the eigenvalues of the covariance).
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_KEEP = 0.99  # SVCCA: the SVD directions holding 99% of the variance


def _as_matrix(x, name: str) -> torch.Tensor:
    """A float64 2-D tensor on the input's device (numpy arrays go to the CPU)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (data points x neurons); got shape {tuple(t.shape)}. "
                         "Flatten or pool feature maps first (see nbs_lib.models.layers).")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return t.detach().to(torch.float64)


class UndefinedCCA(ValueError):
    """CCA asked of too few data points for the directions kept: every correlation would be 1."""


def _check_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_matrix(x, "L1"), _as_matrix(y, "L2")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"L1 has {a.shape[0]} data points and L2 has {b.shape[0]}: both must hold "
                         "the activations of the same inputs, in the same order.")
    if a.shape[0] < 2:
        raise ValueError("need at least two data points")
    if a.device != b.device:
        b = b.to(a.device)
    return a, b


def _check_widths(n: int, kept_a: int, kept_b: int) -> None:
    """Refuse CCA when a side keeps ``n - 1`` or more directions (after the SVD reduction).

    ``n`` centred data points span at most ``n - 1`` directions, so a side that keeps
    that many spans the whole data space and every canonical correlation with it is 1,
    whatever the other side holds. The guard is on the *kept* widths, as SVCCA reduces
    first: 1,456 raw neurons reduced to 370 directions are fine with 1,200 data points.
    """
    kept = max(kept_a, kept_b)
    if kept >= n - 1:
        raise UndefinedCCA(
            f"CCA of n={n} data points with {kept} directions kept (of at most n - 1 = {n - 1}) is trivially 1. "
            "Use more images, treat positions as data points (nbs_lib.models.layers, mode='positions'), "
            "or reduce further (a smaller keep).")


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0, keepdim=True)


def svd_reduce(x: torch.Tensor, keep: float = DEFAULT_KEEP) -> torch.Tensor:
    """Centred ``x`` projected on its top singular directions holding ``keep`` of the variance.

    The SV step of SVCCA: returns ``U_k * S_k`` (n x k), the coordinates of the
    data in the k directions, where k is the smallest number whose squared singular
    values sum to at least ``keep`` of the total.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep is a fraction of variance in (0, 1]; got {keep}")
    x = _centre(_as_matrix(x, "x"))
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    k = _directions_for(s, keep)
    return u[:, :k] * s[:k]


def _directions_for(singular_values: torch.Tensor, keep: float) -> int:
    """The fewest leading directions whose squared singular values hold ``keep`` of the total."""
    energy = torch.cumsum(singular_values**2, 0)
    total = energy[-1].clamp_min(torch.finfo(energy.dtype).tiny)
    k = int((energy < keep * total * (1 - 1e-12)).sum().item()) + 1
    return min(k, len(singular_values))


def _basis(x: torch.Tensor, keep: float | None, rtol: float) -> torch.Tensor:
    """An orthonormal basis (n x k) of the kept directions of centred ``x``, from one SVD.

    k is the numerical rank (singular values above ``rtol`` times the largest), cut
    further to the directions holding ``keep`` of the variance when ``keep`` is given.
    """
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    if len(s) == 0 or s[0] == 0:
        raise ValueError("a representation is constant over the data points: its CCA is undefined")
    k = int((s > rtol * s[0]).sum().item())
    if keep is not None:
        k = min(k, _directions_for(s, keep))
    return u[:, :k]


def canonical_correlations(x, y, keep: float | None = DEFAULT_KEEP, rtol: float = 1e-10) -> torch.Tensor:
    """The canonical correlations of L1 = ``x`` and L2 = ``y``, largest first (eq. 1).

    ``keep`` is the SVCCA variance fraction (``None``: no SVD reduction). Directions
    whose singular value is below ``rtol`` times the largest count as zero variance,
    so k = min(rank(L1), rank(L2)) correlations are returned, each in [0, 1]. The SVD
    that reduces each side also gives its orthonormal basis, so each side costs one SVD.
    Raises :class:`UndefinedCCA` when a side keeps ``n - 1`` directions or more.
    """
    if keep is not None and not 0 < keep <= 1:
        raise ValueError(f"keep is a fraction of variance in (0, 1]; got {keep}")
    a, b = _check_pair(x, y)
    qa, qb = _basis(_centre(a), keep, rtol), _basis(_centre(b), keep, rtol)
    _check_widths(a.shape[0], qa.shape[1], qb.shape[1])
    return torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)


def cca_similarity(x, y, keep: float | None = DEFAULT_KEEP, rtol: float = 1e-10) -> float:
    """SVCCA similarity: the mean canonical correlation (1/k) sum_a rho_a, in [0, 1]."""
    return float(canonical_correlations(x, y, keep, rtol).mean().item())


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) of L1 = ``x`` and L2 = ``y``, in [0, 1].

    Computed through the d x d cross-products, so n may be large (positions as data
    points); n < d is allowed.
    """
    a, b = _check_pair(x, y)
    a, b = _centre(a), _centre(b)
    cross = torch.linalg.matrix_norm(b.T @ a) ** 2
    norm_a = torch.linalg.matrix_norm(a.T @ a)
    norm_b = torch.linalg.matrix_norm(b.T @ b)
    if norm_a == 0 or norm_b == 0:
        raise ValueError("a representation is constant over the data points: its CKA is undefined")
    return float((cross / (norm_a * norm_b)).item())


def _unbiased_hsic(xty: torch.Tensor, row_x: torch.Tensor, row_y: torch.Tensor, n: int) -> torch.Tensor:
    """n(n-3) times Song et al.'s unbiased HSIC of the linear kernels of centred X and Y.

    With K = X X^T and L = Y Y^T with zeroed diagonals (K~, L~), the estimator is
    tr(K~L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1. For centred columns
    1'K~1 = -sum_i ||x_i||^2 and K~1 = -(||x_i||^2)_i, so every term comes from
    ``xty`` = ||X^T Y||_F^2 and the rows' squared norms, without an n x n matrix.
    """
    products = (row_x * row_y).sum()
    return xty - products + row_x.sum() * row_y.sum() / ((n - 1) * (n - 2)) - 2.0 * products / (n - 2)


def debiased_linear_cka(x, y) -> float:
    """Linear CKA with unbiased HSIC estimates (Song et al. 2012; Kornblith et al. 2019, sec. 3)."""
    a, b = _check_pair(x, y)
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 data points; got {n}")
    a, b = _centre(a), _centre(b)
    row_a, row_b = a.square().sum(1), b.square().sum(1)
    cross = _unbiased_hsic(torch.linalg.matrix_norm(b.T @ a) ** 2, row_a, row_b, n)
    self_a = _unbiased_hsic(torch.linalg.matrix_norm(a.T @ a) ** 2, row_a, row_a, n)
    self_b = _unbiased_hsic(torch.linalg.matrix_norm(b.T @ b) ** 2, row_b, row_b, n)
    if self_a <= 0 or self_b <= 0:
        raise ValueError("a representation is (nearly) constant over the data points: its debiased CKA "
                         "is undefined")
    return float((cross / torch.sqrt(self_a * self_b)).item())
