"""Maximum mean discrepancy (MMD) between two samples, with a Gaussian kernel.

This module implements the measure of the paper's section "The factors affecting
the transfer of non-robust features" (Zhang et al., AAAI 2023, Figure 6): the MMD
of Gretton et al. (2012, "A Kernel Two-Sample Test", JMLR 13) between the embedding
of a source sample (the pre-trained model's features ``e_x`` of source images, the
distribution ``p``) and that of a target dataset (``q``). The paper then correlates
it with the fine-tuned model's decline ratio.

Definitions (Gretton et al. 2012, Lemma 6 and eq. (3)-(5)), for ``x`` with ``m``
rows, ``y`` with ``n`` rows and ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``:

* unbiased (U-statistic, the default)::

      MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1))
              + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n)

  It can be slightly negative when the two distributions are equal.
* biased (V-statistic, ``unbiased=False``): the same with the diagonals included
  and ``m^2``, ``n^2`` as denominators; it is always >= 0.

Bandwidth. ``bandwidth=None`` uses the median heuristic (:func:`median_bandwidth`:
sigma is the median Euclidean distance between distinct points of the pooled
sample, computed on a random subsample of at most 2,000 points drawn with a fixed
seed, so the result is deterministic). A sequence of bandwidths gives a
multi-bandwidth kernel: the **mean** of the Gaussian kernels, so that
``k(a, a) = 1`` and the values stay on the scale of a single kernel.

Computation. Inputs may be NumPy arrays or torch tensors (CPU or CUDA; all work
happens on the device of the first CUDA tensor given, else on the CPU). Everything
is computed in float64: squared distances by the expansion
``||a||^2 + ||b||^2 - 2 a.b`` clamped at 0 (exactly 0 on the diagonal of a
within-sample term), kernel sums block by block (``batch_size`` x ``batch_size``
blocks), so 10,000 x 10,000 pairs never need more than a few blocks in memory. The
within-sample terms only visit blocks on and above the diagonal (the kernel matrix
is symmetric).

Example::

    value = mmd(source_embeddings, target_embeddings)           # median heuristic
    value, p = mmd_permutation_test(source_embeddings, target_embeddings)
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["mmd", "median_bandwidth", "mmd_permutation_test"]

ArrayLike = Union[torch.Tensor, np.ndarray]
Bandwidth = Union[None, float, Sequence[float]]

#: Rows (and columns) per block of kernel values.
DEFAULT_BATCH_SIZE = 2048
#: Largest subsample on which the median heuristic computes pairwise distances.
MEDIAN_MAX_POINTS = 2000
#: Largest pooled sample whose kernel matrix the permutation test keeps in memory
#: (5,000 points: a 200 MB float64 matrix).
PERMUTATION_KERNEL_LIMIT = 5000


# --------------------------------------------------------------------------- input checks


def _device_of(*arrays) -> torch.device:
    """The device of the first CUDA tensor among ``arrays``, else the CPU."""
    for a in arrays:
        if isinstance(a, torch.Tensor) and a.device.type != "cpu":
            return a.device
    return torch.device("cpu")


def _as_matrix(a: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    """``a`` as a float64 (samples, features) tensor on ``device``; ValueError if unusable."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        t = torch.as_tensor(np.asarray(a))
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (samples, features); got shape {tuple(t.shape)}. "
            f"Flatten the features first, e.g. {name}.reshape(len({name}), -1)."
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty sample (0 rows); MMD needs at least one point per sample.")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 features per sample; pass embeddings with at least one feature.")
    t = t.to(device=device, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean the embeddings first.")
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> None:
    """Same feature dimension; at least two points per sample for the unbiased estimate."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} features per sample but y has {y.shape[1]}; both samples must "
            "be embedded in the same space (same feature dimension)."
        )
    if unbiased:
        for name, t in (("x", x), ("y", y)):
            if t.shape[0] < 2:
                raise ValueError(
                    f"The unbiased MMD estimate needs at least 2 points in each sample, but {name} "
                    "has 1; pass more points or unbiased=False for the biased estimate."
                )


def _as_pair(x: ArrayLike, y: ArrayLike, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    device = _device_of(x, y)
    xt, yt = _as_matrix(x, "x", device), _as_matrix(y, "y", device)
    _check_pair(xt, yt, unbiased)
    return xt, yt


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def _check_bandwidths(bandwidth: float | Sequence[float]) -> list[float]:
    """A list of positive, finite bandwidths from a number or a sequence of numbers."""
    if isinstance(bandwidth, (str, bytes)):
        raise ValueError(f"bandwidth must be a number or a sequence of numbers, got {bandwidth!r}.")
    if isinstance(bandwidth, (torch.Tensor, np.ndarray)):
        values = [float(b) for b in np.asarray(bandwidth.tolist(), dtype=float).ravel()]
    elif isinstance(bandwidth, Sequence):
        values = [float(b) for b in bandwidth]
    else:
        values = [float(bandwidth)]
    if not values:
        raise ValueError("bandwidth is an empty sequence; give at least one positive bandwidth.")
    bad = [b for b in values if not (math.isfinite(b) and b > 0)]
    if bad:
        raise ValueError(
            f"Every bandwidth must be a positive, finite number; got {bad}. "
            "Pass bandwidth=None for the median heuristic."
        )
    return values


# --------------------------------------------------------------------------- bandwidth


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` for all rows, by the norm expansion, clamped at 0."""
    a_sq = (a * a).sum(1, keepdim=True)
    b_sq = (b * b).sum(1).unsqueeze(0)
    return torch.addmm(a_sq + b_sq, a, b.T, alpha=-2.0).clamp_min_(0.0)


def _pooled_subsample(x: torch.Tensor, y: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """The pooled sample ``[x; y]``, or a seeded random subset of ``max_points`` of its rows."""
    total = len(x) + len(y)
    if total <= max_points:
        return torch.cat([x, y])
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))
    from_x = torch.as_tensor(chosen[chosen < len(x)], device=x.device)
    from_y = torch.as_tensor(chosen[chosen >= len(x)] - len(x), device=y.device)
    return torch.cat([x[from_x], y[from_y]])


def _median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int, seed: int) -> float:
    pooled = _pooled_subsample(x, y, max_points, seed)
    if len(pooled) < 2:
        raise ValueError("The median heuristic needs at least 2 points in total; pass a bandwidth.")
    d2 = _squared_distances(pooled, pooled)
    upper = torch.triu(torch.ones_like(d2, dtype=torch.bool), diagonal=1)
    sigma = float(np.median(d2[upper].sqrt_().cpu().numpy()))
    if not sigma > 0:
        raise ValueError(
            "The median distance between the pooled points is 0 (most points are identical), so "
            "the median heuristic gives no bandwidth; pass a positive bandwidth explicitly."
        )
    return sigma


def median_bandwidth(x: ArrayLike, y: ArrayLike, max_points: int = MEDIAN_MAX_POINTS,
                     seed: int = 0) -> float:
    """Median heuristic for the Gaussian kernel's bandwidth sigma (Gretton et al. 2012).

    Returns the median Euclidean distance ``||a - b||`` over pairs of distinct points
    of the pooled sample ``[x; y]``. When the pooled sample has more than
    ``max_points`` rows, the median is taken over a random subsample of
    ``max_points`` rows drawn without replacement by ``numpy.random.default_rng(seed)``,
    so the result is deterministic for a given ``seed``.

    Raises ``ValueError`` for unusable inputs (see :func:`mmd`) and when the median
    distance is 0.
    """
    if int(max_points) < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points!r}.")
    xt, yt = _as_pair(x, y, unbiased=False)
    return _median_bandwidth(xt, yt, int(max_points), seed)


def _resolve_bandwidths(x: torch.Tensor, y: torch.Tensor, bandwidth: Bandwidth) -> list[float]:
    if bandwidth is None:
        return [_median_bandwidth(x, y, MEDIAN_MAX_POINTS, seed=0)]
    return _check_bandwidths(bandwidth)


# --------------------------------------------------------------------------- kernel sums


def _kernel_block(a: torch.Tensor, b: torch.Tensor, bandwidths: list[float],
                  diagonal: float | None = None) -> torch.Tensor:
    """Mean-over-bandwidths Gaussian kernel values between the rows of ``a`` and ``b``.

    ``diagonal`` (for a block on the diagonal of a within-sample matrix) sets the
    squared distances on the diagonal: ``0.0`` gives kernel value 1 exactly,
    ``math.inf`` gives 0 (excludes the diagonal from the sum).
    """
    d2 = _squared_distances(a, b)
    if diagonal is not None:
        d2.diagonal().fill_(diagonal)
    if len(bandwidths) == 1:
        return d2.mul_(-0.5 / bandwidths[0] ** 2).exp_()
    kernel = torch.zeros_like(d2)
    for sigma in bandwidths:
        kernel += torch.exp(d2 * (-0.5 / sigma**2))
    return kernel.div_(len(bandwidths))


def _within_sum(a: torch.Tensor, bandwidths: list[float], batch_size: int,
                include_diagonal: bool) -> torch.Tensor:
    """``sum_{i, j} k(a_i, a_j)`` (without ``i == j`` unless ``include_diagonal``).

    Only blocks on and above the block diagonal are computed; off-diagonal blocks
    count twice because the kernel matrix is symmetric.
    """
    diagonal = 0.0 if include_diagonal else math.inf
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, len(a), batch_size):
        rows = a[start:start + batch_size]
        total += _kernel_block(rows, rows, bandwidths, diagonal).sum()
        for col_start in range(start + batch_size, len(a), batch_size):
            cols = a[col_start:col_start + batch_size]
            total += 2.0 * _kernel_block(rows, cols, bandwidths).sum()
    return total


def _cross_sum(a: torch.Tensor, b: torch.Tensor, bandwidths: list[float],
               batch_size: int) -> torch.Tensor:
    """``sum_{i, j} k(a_i, b_j)``, block by block."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, len(a), batch_size):
        rows = a[start:start + batch_size]
        for col_start in range(0, len(b), batch_size):
            total += _kernel_block(rows, b[col_start:col_start + batch_size], bandwidths).sum()
    return total


def _combine(s_xx, s_yy, s_xy, m: int, n: int, unbiased: bool):
    """MMD^2 from the three kernel sums (Gretton et al. 2012, eq. (3) and (5))."""
    if unbiased:
        return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * s_xy / (m * n)
    return s_xx / m**2 + s_yy / n**2 - 2.0 * s_xy / (m * n)


def _mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float], unbiased: bool,
         batch_size: int) -> float:
    s_xx = _within_sum(x, bandwidths, batch_size, include_diagonal=not unbiased)
    s_yy = _within_sum(y, bandwidths, batch_size, include_diagonal=not unbiased)
    s_xy = _cross_sum(x, y, bandwidths, batch_size)
    return float(_combine(s_xx, s_yy, s_xy, len(x), len(y), unbiased))


def mmd(x: ArrayLike, y: ArrayLike, bandwidth: Bandwidth = None, unbiased: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Squared maximum mean discrepancy between samples ``x`` and ``y`` (Gretton et al. 2012).

    Parameters
    ----------
    x, y:
        Samples as 2-D arrays or tensors of shape ``(m, d)`` and ``(n, d)`` (e.g. the
        source and target embeddings); NumPy or torch, CPU or CUDA.
    bandwidth:
        Gaussian kernel width sigma in ``exp(-||a - b||^2 / (2 sigma^2))``. ``None``:
        the median heuristic (:func:`median_bandwidth` with its defaults). A sequence:
        the mean of the kernels with these widths.
    unbiased:
        ``True``: the unbiased U-statistic ``MMD^2_u`` (diagonals of the
        within-sample terms excluded; may be slightly negative). ``False``: the biased
        V-statistic ``MMD^2_b`` (>= 0).
    batch_size:
        Rows and columns per block of kernel values; memory grows as
        ``batch_size**2`` float64 values, not with ``m * n``.

    Returns
    -------
    float
        The estimate of ``MMD^2``.

    Raises ``ValueError`` for non-2-D inputs, empty samples, different feature
    dimensions, a sample of one point with ``unbiased=True``, non-finite values and
    non-positive bandwidths.
    """
    batch_size = _check_batch_size(batch_size)
    xt, yt = _as_pair(x, y, unbiased)
    bandwidths = _resolve_bandwidths(xt, yt, bandwidth)
    return _mmd(xt, yt, bandwidths, unbiased, batch_size)


# --------------------------------------------------------------------------- permutation test


def _pooled_kernel_matrix(pooled: torch.Tensor, bandwidths: list[float], batch_size: int,
                          unbiased: bool) -> torch.Tensor:
    """The full kernel matrix of the pooled sample, row block by row block.

    Its diagonal is 0 for the unbiased statistic (excluded pairs) and 1 otherwise.
    """
    size = len(pooled)
    kernel = torch.empty((size, size), dtype=torch.float64, device=pooled.device)
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        kernel[start:stop] = _kernel_block(pooled[start:stop], pooled, bandwidths)
    kernel.fill_diagonal_(0.0 if unbiased else 1.0)
    return kernel


def _split_statistics(kernel: torch.Tensor, in_x: torch.Tensor, m: int, n: int,
                      unbiased: bool) -> torch.Tensor:
    """MMD^2 for each split of the pooled sample given by the columns of ``in_x``.

    ``in_x`` is an ``(m + n, splits)`` 0/1 matrix marking which pooled points form
    the first sample. With ``a`` a column and ``r = K 1``: ``S_xx = a'Ka``,
    ``S_xy = a'r - S_xx`` and ``S_yy = 1'K1 - 2 S_xy - S_xx``.
    """
    row_sums = kernel.sum(1)
    s_xx = (in_x * (kernel @ in_x)).sum(0)
    s_xy = row_sums @ in_x - s_xx
    s_yy = row_sums.sum() - 2.0 * s_xy - s_xx
    return _combine(s_xx, s_yy, s_xy, m, n, unbiased)


def _indicator(orders: list[torch.Tensor], m: int, device: torch.device) -> torch.Tensor:
    """0/1 matrix with one column per order, marking its first ``m`` points."""
    size = len(orders[0])
    in_x = torch.zeros((size, len(orders)), dtype=torch.float64, device=device)
    for column, order in enumerate(orders):
        in_x[order[:m].to(device), column] = 1.0
    return in_x


def _permuted_statistics_cached(pooled: torch.Tensor, m: int, orders: list[torch.Tensor],
                                bandwidths: list[float], unbiased: bool, batch_size: int,
                                chunk: int = 64) -> tuple[float, torch.Tensor]:
    """Observed and permuted statistics from one kernel matrix of the pooled sample."""
    n = len(pooled) - m
    kernel = _pooled_kernel_matrix(pooled, bandwidths, batch_size, unbiased)
    identity = torch.arange(len(pooled))
    observed = float(_split_statistics(kernel, _indicator([identity], m, pooled.device), m, n, unbiased)[0])
    stats = [
        _split_statistics(kernel, _indicator(orders[i:i + chunk], m, pooled.device), m, n, unbiased)
        for i in range(0, len(orders), chunk)
    ]
    return observed, torch.cat(stats).cpu()


def _permuted_statistics_blocked(pooled: torch.Tensor, m: int, orders: list[torch.Tensor],
                                 bandwidths: list[float], unbiased: bool,
                                 batch_size: int) -> tuple[float, torch.Tensor]:
    """Observed and permuted statistics, recomputing the kernel blocks for every split."""
    observed = _mmd(pooled[:m], pooled[m:], bandwidths, unbiased, batch_size)
    stats = []
    for order in orders:
        shuffled = pooled[order.to(pooled.device)]
        stats.append(_mmd(shuffled[:m], shuffled[m:], bandwidths, unbiased, batch_size))
    return observed, torch.tensor(stats, dtype=torch.float64)


def mmd_permutation_test(x: ArrayLike, y: ArrayLike, bandwidth: Bandwidth = None,
                         permutations: int = 200, seed: int = 0, *, unbiased: bool = True,
                         batch_size: int = DEFAULT_BATCH_SIZE,
                         max_kernel_points: int = PERMUTATION_KERNEL_LIMIT) -> tuple[float, float]:
    """Two-sample permutation test of ``p = q`` with the MMD statistic (Gretton et al. 2012).

    The bandwidth is fixed once from the unpermuted data (``None``: median
    heuristic). Each permutation shuffles the pooled sample ``[x; y]`` with
    ``torch.randperm`` seeded by ``seed``, takes its first ``m`` points as the new
    ``x`` and the rest as the new ``y``, and recomputes the statistic. When the pooled
    sample has at most ``max_kernel_points`` points its kernel matrix is computed
    once and reused for all permutations; otherwise the blocked computation of
    :func:`mmd` is repeated for every permutation (slow).

    Returns ``(mmd_value, p_value)`` with ``p_value = (1 + #{permuted >= observed}) /
    (1 + permutations)``; ties (to rounding) count as ``>=``.
    """
    if isinstance(permutations, bool) or int(permutations) != permutations or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}.")
    batch_size = _check_batch_size(batch_size)
    xt, yt = _as_pair(x, y, unbiased)
    bandwidths = _resolve_bandwidths(xt, yt, bandwidth)
    pooled, m = torch.cat([xt, yt]), len(xt)
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(pooled), generator=generator) for _ in range(int(permutations))]
    compute = (_permuted_statistics_cached if len(pooled) <= max_kernel_points
               else _permuted_statistics_blocked)
    observed, permuted = compute(pooled, m, orders, bandwidths, unbiased, batch_size)
    tolerance = 1e-12 * max(1.0, abs(observed))
    exceed = int((permuted >= observed - tolerance).sum())
    return observed, (1 + exceed) / (1 + int(permutations))
