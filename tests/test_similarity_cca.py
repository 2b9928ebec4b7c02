import numpy as np
import pytest
import torch

from nbs_lib.methods.similarity import (
    UndefinedCCA,
    canonical_correlations,
    cca_similarity,
    debiased_linear_cka,
    linear_cka,
)
from nbs_lib.methods.similarity.cca import svd_reduce
from nbs_lib.methods.similarity.reference import cca_numpy, cka_numpy


def _pair(n=400, d1=12, d2=9, shared=5, noise=0.5, seed=0):
    """Two views sharing ``shared`` latent directions plus independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = z @ rng.normal(size=(shared, d1)) + noise * rng.normal(size=(n, d1))
    y = z @ rng.normal(size=(shared, d2)) + noise * rng.normal(size=(n, d2))
    return x, y


def test_identical_inputs_give_one():
    x, _ = _pair()
    assert cca_similarity(x, x) == pytest.approx(1.0, abs=1e-9)
    assert cca_similarity(x, x, keep=None) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cca_invariant_to_invertible_linear_maps():
    x, y = _pair()
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 12)) + 3 * np.eye(12)
    b = rng.normal(size=(9, 9)) + 3 * np.eye(9)
    base = cca_similarity(x, y, keep=None)
    assert cca_similarity(x @ a, y, keep=None) == pytest.approx(base, abs=1e-9)
    assert cca_similarity(x, y @ b + 5.0, keep=None) == pytest.approx(base, abs=1e-9)
    assert 0.2 < base < 0.9  # a partial relation, not a degenerate case


def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling_but_not_to_any_linear_map():
    x, y = _pair()
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
    base = linear_cka(x, y)
    assert linear_cka(3.7 * x @ q, y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, 0.1 * y) == pytest.approx(base, abs=1e-12)
    stretch = np.diag(np.r_[100.0, np.ones(11)])
    assert abs(linear_cka(x @ stretch, y) - base) > 1e-3


def test_independent_inputs_with_many_points_give_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20_000, 8)), rng.normal(size=(20_000, 6))
    assert cca_similarity(x, y, keep=None) < 0.02
    assert linear_cka(x, y) < 0.01


def test_agrees_with_numpy_reference():
    x, y = _pair(n=300, d1=20, d2=15)
    for keep in (None, 0.99, 0.9):
        assert cca_similarity(x, y, keep=keep) == pytest.approx(cca_numpy(x, y, keep), abs=1e-6)
    assert linear_cka(x, y) == pytest.approx(cka_numpy(x, y), abs=1e-10)


def test_canonical_correlations_sorted_in_unit_interval_and_count_min_rank():
    x, y = _pair(d1=12, d2=9)
    rho = canonical_correlations(x, y, keep=None)
    assert len(rho) == 9
    assert torch.all(rho[:-1] >= rho[1:]) and rho.min() >= 0 and rho.max() <= 1
    # a duplicated column adds no direction
    rho_dup = canonical_correlations(np.c_[x, x[:, :1]], y, keep=None)
    assert len(rho_dup) == 9 and torch.allclose(rho, rho_dup, atol=1e-9)


def test_svd_reduce_keeps_the_variance_asked_for():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 10)) * np.r_[10.0, 5.0, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1]
    reduced = svd_reduce(x, 0.9)
    total = ((x - x.mean(0)) ** 2).sum()
    kept = (reduced.numpy() ** 2).sum()
    assert kept / total >= 0.9 and reduced.shape[1] < 10
    assert svd_reduce(x, 1.0).shape[1] == 10


def test_float32_and_numpy_inputs_give_the_same_answer():
    x, y = _pair()
    a = cca_similarity(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert a == pytest.approx(cca_similarity(x, y), abs=1e-5)


@pytest.mark.parametrize("extra", [0, 1])
def test_the_guard_refuses_n_equal_to_d_and_d_plus_one(extra):
    rng = np.random.default_rng(0)
    d = 20
    x, y = rng.normal(size=(d + extra, d)), rng.normal(size=(d + extra, d))  # unrelated
    with pytest.raises(UndefinedCCA):
        cca_similarity(x, y, keep=None)
    x, y = rng.normal(size=(d + 2, d)), rng.normal(size=(d + 2, d))  # n - 1 > d: defined, not 1
    assert cca_similarity(x, y, keep=None) < 1 - 1e-6


def test_svcca_reduces_then_correlates_as_by_hand():
    # u1, u2, u3: orthonormal, centred directions over n data points
    rng = np.random.default_rng(1)
    n = 300
    z = rng.normal(size=(n, 3))
    u = np.linalg.qr(z - z.mean(0))[0]
    a = np.c_[10.0 * u[:, 0], 0.1 * u[:, 1]]  # u2 holds 0.01% of A's variance
    b = np.c_[u[:, 1], u[:, 2]]  # equal variances: B keeps both
    # reduced, A is span{u1}, orthogonal to span{u2, u3}: one correlation, 0
    assert canonical_correlations(a, b, keep=0.99).numpy() == pytest.approx([0.0], abs=1e-9)
    # unreduced, A spans {u1, u2}: correlations 1 (u2) and 0, mean 0.5
    assert canonical_correlations(a, b, keep=None).numpy() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert cca_similarity(a, b, keep=None) == pytest.approx(0.5, abs=1e-9)


def test_clear_errors():
    x, y = _pair()
    with pytest.raises(ValueError, match="same inputs"):
        cca_similarity(x, y[:-1])
    with pytest.raises(UndefinedCCA, match="n=5 data points"):
        cca_similarity(x[:5], y[:5])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x.reshape(400, 3, 4), y)
    with pytest.raises(ValueError, match="constant"):
        cca_similarity(np.ones((50, 3)), y[:50, :3])
    with pytest.raises(ValueError, match="keep"):
        cca_similarity(x, y, keep=1.5)


def _unbiased_hsic_by_gram_matrices(x, y):
    """Song et al.'s unbiased HSIC from explicit n x n linear kernels (the textbook formula)."""
    n = len(x)
    k, l_ = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ k @ l_ @ one) / (n * (n - 3))


def test_debiased_cka_equals_the_gram_matrix_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 9))
    y[:, 0] += 2.0 * x[:, 0]
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = _unbiased_hsic_by_gram_matrices(xc, yc) / np.sqrt(
        _unbiased_hsic_by_gram_matrices(xc, xc) * _unbiased_hsic_by_gram_matrices(yc, yc))
    assert debiased_linear_cka(x, y) == pytest.approx(expected, rel=1e-9)


def test_debiased_cka_of_unrelated_wide_layers_is_near_zero_where_biased_cka_is_not():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(150, 300)), rng.normal(size=(150, 300))  # n smaller than d
    assert linear_cka(x, y) > 0.5  # the bias the debiased estimator removes
    assert abs(debiased_linear_cka(x, y)) < 0.05
    assert debiased_linear_cka(x, x) == pytest.approx(1.0)
