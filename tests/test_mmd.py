"""Tests of nbs_lib.methods.similarity.discrepancy: the squared MMD of Gretton et al. (2012) against a
brute-force double loop and a closed form, its blocked computation, the median
heuristic, the permutation test and the input checks."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
import torch

from nbs_lib.methods.similarity.discrepancy import (
    median_bandwidth,
    mmd,
    mmd_permutation_test,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- references


def _kernel(a, b, bandwidths) -> float:
    """Mean of Gaussian kernels exp(-||a - b||^2 / (2 sigma^2)), one pair at a time."""
    d2 = sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))
    return sum(math.exp(-d2 / (2.0 * s * s)) for s in bandwidths) / len(bandwidths)


def _brute_mmd(x, y, bandwidths, unbiased: bool) -> float:
    """Gretton et al. (2012) eq. (3) / (5) by explicit double loops."""
    m, n = len(x), len(y)
    s_xx = sum(_kernel(x[i], x[j], bandwidths) for i in range(m) for j in range(m) if not unbiased or i != j)
    s_yy = sum(_kernel(y[i], y[j], bandwidths) for i in range(n) for j in range(n) if not unbiased or i != j)
    s_xy = sum(_kernel(x[i], y[j], bandwidths) for i in range(m) for j in range(n))
    if unbiased:
        return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2 * s_xy / (m * n)
    return s_xx / m**2 + s_yy / n**2 - 2 * s_xy / (m * n)


def _brute_median(x, y) -> float:
    pooled = list(x) + list(y)
    return statistics.median(
        math.dist(a, b) for a, b in itertools.combinations(pooled, 2)
    )


def _gaussians(m: int, n: int, dim: int, shift: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, dim))
    y = rng.normal(size=(n, dim))
    y[:, 0] += shift
    return x, y


@pytest.fixture(scope="module")
def small():
    """12 x 15 points in 3-D, y shifted a little."""
    return _gaussians(12, 15, 3, shift=0.4, seed=3)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("bandwidth", [0.7, [0.3, 1.0, 2.5]], ids=["single", "multi"])
def test_matches_brute_force_double_loop(small, unbiased, bandwidth):
    x, y = small
    widths = bandwidth if isinstance(bandwidth, list) else [bandwidth]
    expected = _brute_mmd(x, y, widths, unbiased)
    assert abs(expected) > 1e-3  # a non-trivial value
    assert mmd(x, y, bandwidth, unbiased=unbiased) == pytest.approx(expected, abs=1e-9, rel=0)


def test_median_heuristic_matches_brute_force(small):
    x, y = small
    sigma = _brute_median(x, y)
    assert median_bandwidth(x, y) == pytest.approx(sigma, abs=1e-12, rel=0)
    assert mmd(x, y) == pytest.approx(_brute_mmd(x, y, [sigma], True), abs=1e-9, rel=0)


def test_median_subsample_is_deterministic_and_close():
    x, y = _gaussians(1500, 1200, 4, seed=1)
    first = median_bandwidth(x, y)
    assert median_bandwidth(x, y) == first  # fixed seed
    assert median_bandwidth(x, y, seed=1) != first  # another subsample
    full = median_bandwidth(x, y, max_points=len(x) + len(y))
    assert first == pytest.approx(full, rel=0.02)
    assert first == pytest.approx(math.sqrt(2 * 4), rel=0.1)  # E||a - b||^2 = 2 d for N(0, I)


def test_biased_is_non_negative_and_zero_for_identical_samples(small):
    x, y = small
    assert mmd(x, y, 1.0, unbiased=False) >= 0.0
    assert mmd(x, x, 1.0, unbiased=False) == pytest.approx(0.0, abs=1e-12)


def test_multi_bandwidth_is_mean_of_single_kernels(small):
    x, y = small
    widths = [0.5, 1.5, 4.0]
    singles = [mmd(x, y, w) for w in widths]
    assert mmd(x, y, widths) == pytest.approx(sum(singles) / 3, abs=1e-12, rel=0)
    assert mmd(x, y, np.array(widths)) == pytest.approx(sum(singles) / 3, abs=1e-12, rel=0)


def test_symmetric(small):
    x, y = small
    for bandwidth in (None, 0.8, [0.5, 2.0]):
        for unbiased in (True, False):
            assert mmd(x, y, bandwidth, unbiased) == pytest.approx(
                mmd(y, x, bandwidth, unbiased), abs=1e-12, rel=0)


def test_matches_closed_form_for_shifted_gaussians():
    """For N(0, I) vs N(delta e1, I) in d dims and width sigma,
    MMD^2 = 2 c (1 - exp(-delta^2 / (2 (sigma^2 + 2)))), c = (sigma^2 / (sigma^2 + 2))^(d/2)."""
    x, y = _gaussians(1000, 1000, 2, shift=1.0, seed=0)
    c = (1.0 / 3.0) ** (2 / 2)
    expected = 2 * c * (1 - math.exp(-1.0 / 6.0))  # 0.1023
    assert mmd(x, y, 1.0) == pytest.approx(expected, abs=0.03)  # sd of the estimate ~ 0.009


def test_near_zero_for_one_distribution():
    x, y = _gaussians(300, 300, 10, seed=5)
    value = mmd(x, y)
    assert abs(value) < 0.01
    assert mmd(x, y + 1.0) > 0.1  # the same test detects a shift


def test_grows_with_mean_shift():
    x, y = _gaussians(200, 200, 8, seed=1)
    for bandwidth in (None, 1.0, 4.0):
        values = [mmd(x, y + shift, bandwidth) for shift in (0.0, 0.5, 1.0, 2.0)]
        assert all(a < b for a, b in zip(values, values[1:])), (bandwidth, values)
        assert abs(values[0]) < 0.01 and values[-1] > 0.02


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("bandwidth", [None, 1.3, [0.4, 2.0]], ids=["median", "single", "multi"])
def test_blocked_equals_unblocked(unbiased, bandwidth):
    x, y = _gaussians(23, 31, 4, shift=0.3, seed=2)
    whole = mmd(x, y, bandwidth, unbiased, batch_size=1000)
    for batch_size in (1, 5, 8, 23):
        assert mmd(x, y, bandwidth, unbiased, batch_size=batch_size) == pytest.approx(
            whole, abs=1e-10, rel=0)


def test_torch_and_numpy_inputs_agree(small):
    x, y = small
    expected = mmd(x, y, 0.9)
    assert mmd(torch.from_numpy(x), torch.from_numpy(y), 0.9) == pytest.approx(expected, abs=1e-12)
    assert mmd(torch.from_numpy(x), y, 0.9) == pytest.approx(expected, abs=1e-12)
    as32 = mmd(torch.from_numpy(x).float(), torch.from_numpy(y).float(), 0.9)
    assert as32 == pytest.approx(expected, abs=1e-6)  # only the float32 rounding of inputs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(small):
    x, y = small
    expected = mmd(x, y, [0.5, 1.0])
    got = mmd(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), [0.5, 1.0], batch_size=4)
    assert got == pytest.approx(expected, abs=1e-10)
    value, p = mmd_permutation_test(torch.from_numpy(x).cuda(), y, 1.0, permutations=20)
    assert value == pytest.approx(mmd(x, y, 1.0), abs=1e-10)


# --------------------------------------------------------------------------- permutation test


def test_permutation_test_same_distribution_has_large_p_value():
    x, y = _gaussians(100, 120, 5, seed=11)
    value, p = mmd_permutation_test(x, y, permutations=200, seed=0)
    assert value == pytest.approx(mmd(x, y), abs=1e-10)
    assert p > 0.05
    assert (p * 201) == pytest.approx(round(p * 201), abs=1e-9)  # (1 + count) / (1 + 200)


def test_permutation_test_shifted_distribution_has_small_p_value():
    x, y = _gaussians(100, 120, 5, shift=0.8, seed=11)
    value, p = mmd_permutation_test(x, y, permutations=200, seed=0)
    assert value > 0.02
    assert p == pytest.approx(1 / 201)  # no permuted split beats the real one


def test_permutation_test_cached_and_blocked_paths_agree():
    x, y = _gaussians(30, 25, 3, shift=0.3, seed=4)
    for unbiased in (True, False):
        cached = mmd_permutation_test(x, y, [0.5, 2.0], permutations=40, seed=7, unbiased=unbiased)
        blocked = mmd_permutation_test(x, y, [0.5, 2.0], permutations=40, seed=7, unbiased=unbiased,
                                       max_kernel_points=10, batch_size=8)
        assert cached[0] == pytest.approx(blocked[0], abs=1e-10)
        assert cached[1] == blocked[1]
        assert 1 / 41 <= cached[1] <= 1.0


def test_permutation_test_is_seeded():
    x, y = _gaussians(40, 40, 3, shift=0.2, seed=9)
    assert mmd_permutation_test(x, y, seed=3, permutations=50) == mmd_permutation_test(
        x, y, seed=3, permutations=50)


# --------------------------------------------------------------------------- errors


def test_mismatched_feature_dimension_is_an_error():
    with pytest.raises(ValueError, match="x has 3 features per sample but y has 4"):
        mmd(np.zeros((5, 3)), np.ones((6, 4)))
    with pytest.raises(ValueError, match="same feature dimension"):
        mmd_permutation_test(np.zeros((5, 3)), np.ones((6, 4)))


def test_empty_sample_is_an_error():
    with pytest.raises(ValueError, match="y is an empty sample"):
        mmd(np.ones((5, 3)), np.ones((0, 3)))
    with pytest.raises(ValueError, match="x is an empty sample"):
        median_bandwidth(np.ones((0, 3)), np.ones((4, 3)))


def test_single_point_needs_biased_estimate():
    x, y = np.zeros((1, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match="at least 2 points.*unbiased=False"):
        mmd(x, y, 1.0)
    assert mmd(x, y, 1.0, unbiased=False) == pytest.approx(1 + 1 - 2 * math.exp(-1.0))


@pytest.mark.parametrize("bandwidth", [0.0, -1.0, [1.0, 0.0], [], float("nan")])
def test_non_positive_bandwidth_is_an_error(small, bandwidth):
    x, y = small
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidth)


def test_other_bad_inputs_are_errors(small):
    x, y = small
    with pytest.raises(ValueError, match="must be 2-D"):
        mmd(x.ravel(), y)
    with pytest.raises(ValueError, match="must be 2-D"):
        mmd(x, y[None])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mmd(bad, y)
    with pytest.raises(ValueError, match="batch_size"):
        mmd(x, y, batch_size=0)
    with pytest.raises(ValueError, match="permutations"):
        mmd_permutation_test(x, y, permutations=0)
    with pytest.raises(ValueError, match="median distance"):
        median_bandwidth(np.zeros((4, 2)), np.zeros((5, 2)))
