"""Intervals and paired tests for the book's robustness comparisons.

The papers report single numbers; with a few hundred test images a difference of a
few points can be noise. Every accuracy the book prints gets a 95% Wilson score
interval (Wilson 1927), every DR and curve area a percentile bootstrap interval over
images (Efron and Tibshirani 1993), and every "model A is more robust than model B"
a paired test on the same images: McNemar's exact test on per-image robust masks
(McNemar 1947) and, for continuous per-image scores (the minimal radius of
:mod:`nbs_lib.methods.minimal_epsilon`) or several training seeds, Fisher's sign-flip
permutation test on the per-image differences, with a paired bootstrap interval.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``, in percent."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"Need 0 <= successes <= n and n > 0; got {successes} of {n}.")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def mcnemar(a, b) -> dict:
    """McNemar's exact test of two paired boolean masks (e.g. robust images of two models).

    Returns ``a_only`` (images only ``a`` gets right), ``b_only`` and the two-sided exact
    binomial p-value of the discordant pairs (1.0 when there are none).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"Paired masks must have the same shape; got {a.shape} and {b.shape}.")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    if discordant == 0:
        return {"a_only": 0, "b_only": 0, "p": 1.0}
    tail = stats.binom.cdf(min(a_only, b_only), discordant, 0.5)
    return {"a_only": a_only, "b_only": b_only, "p": float(min(1.0, 2 * tail))}


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(statistic: Callable[..., float], *columns, confidence: float = 0.95,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*columns)``, resampling rows (images) jointly.

    Each column is an array whose first axis is the image; a resample that makes the
    statistic undefined (``nan``, e.g. a DR with no clean-correct image) is dropped.
    """
    columns = [np.asarray(c) for c in columns]
    n = len(columns[0])
    if n == 0 or any(len(c) != n for c in columns):
        raise ValueError("bootstrap_interval needs non-empty columns of one length.")
    values = np.array([statistic(*(c[i] for c in columns)) for i in _resample_indices(n, resamples, seed)])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def paired_bootstrap(a, b, statistic: Callable[[np.ndarray], float] = np.mean, confidence: float = 0.95,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """``statistic(a) - statistic(b)`` for paired per-image scores: interval by bootstrap, p by sign flips.

    ``a`` and ``b`` have one row per image (further axes, e.g. training seeds, are kept
    together with their image). The interval is the percentile bootstrap over images.
    The two-sided p-value is a sign-flip permutation test of "no difference" on the
    per-image differences of the row means (:func:`sign_flip_test`): a bootstrap p-value
    reads off where 0 falls in resamples centred on the observed difference, which is
    too liberal with few discordant images.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"Paired scores must have one non-empty shape; got {a.shape} and {b.shape}.")
    diff = float(statistic(a) - statistic(b))
    boot = np.array([statistic(a[i]) - statistic(b[i]) for i in _resample_indices(len(a), resamples, seed)])
    tail = 100 * (1 - confidence) / 2
    per_image = (a - b).reshape(len(a), -1).mean(1)
    return {"difference": diff, "ci_low": float(np.percentile(boot, tail)),
            "ci_high": float(np.percentile(boot, 100 - tail)),
            "p": sign_flip_test(per_image, resamples=max(resamples, 10_000), seed=seed)}


def sign_flip_test(differences, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of "the paired differences are symmetric about 0" (Fisher's sign-flip test).

    Under no difference, swapping the two models of an image flips the sign of its
    difference; the p-value is the share of random sign patterns whose mean is at least
    as far from 0 as the observed one, counting the observed pattern (so it is never 0;
    at least ``1 / (resamples + 1)``). For 0/1 scores of one seed it is McNemar's exact
    test up to Monte Carlo error.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]  # pairs without a difference carry no information on its sign
    if len(d) == 0:
        return 1.0
    observed = abs(d.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, len(d)))
    flipped = np.abs(signs @ d) / len(d)
    return float((1 + np.sum(flipped >= observed - 1e-12)) / (resamples + 1))
