"""Intervals and paired tests against SciPy, and the verdict rules on constructed cases."""

import numpy as np
import pytest
from scipy import stats

from nbs_lib.methods.statistics import bootstrap_interval, mcnemar, paired_bootstrap, sign_flip_test, wilson_interval
from nbs_lib.report.verdicts import tally, verdict


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (50, 100), (97, 100), (100, 100), (1, 780)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(100 * ci.low, abs=1e-9) and hi == pytest.approx(100 * ci.high, abs=1e-9)


@pytest.mark.parametrize("a_only,b_only,both,neither", [(10, 2, 50, 38), (5, 5, 1, 0), (0, 7, 3, 3), (30, 12, 0, 0)])
def test_mcnemar_matches_the_exact_binomial_test(a_only, b_only, both, neither):
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * neither, dtype=bool)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * neither, dtype=bool)
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (a_only, b_only)
    assert result["p"] == pytest.approx(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue, abs=1e-12)


def test_mcnemar_without_discordant_pairs_and_bad_shapes():
    assert mcnemar([True, False], [True, False])["p"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        mcnemar([True], [True, False])


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1, 1, 50), rng.normal(1, 1, 2000)
    lo_s, hi_s = bootstrap_interval(np.mean, small)
    lo_l, hi_l = bootstrap_interval(np.mean, large)
    assert lo_s < small.mean() < hi_s and lo_l < 1 < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    se = large.std(ddof=1) / np.sqrt(len(large))
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_bootstrap_sees_a_paired_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 5, 300)
    shifted = base + 0.3 + rng.normal(0, 0.3, 300)
    result = paired_bootstrap(shifted, base)
    assert result["difference"] == pytest.approx(np.mean(shifted - base))
    assert result["ci_low"] > 0 and result["p"] < 0.01
    same = paired_bootstrap(base, base)
    assert same["difference"] == 0 and same["p"] == 1.0
    two_seeds = paired_bootstrap(np.stack([shifted, shifted], 1), np.stack([base, base], 1))
    assert two_seeds["difference"] == pytest.approx(result["difference"])


@pytest.mark.parametrize("expected,difference,p,testable,word", [
    ("higher", 3.0, 0.01, True, "reproduced"),
    ("lower", -3.0, 0.001, True, "reproduced"),
    ("higher", -3.0, 0.01, True, "opposite"),
    ("lower", 2.0, 0.04, True, "opposite"),
    ("higher", 3.0, 0.2, True, "no clear difference"),
    ("higher", 3.0, 0.05, True, "no clear difference"),
    ("higher", 3.0, 0.001, False, "not testable"),
    ("higher", float("nan"), 0.001, True, "not testable"),
])
def test_verdict_rules(expected, difference, p, testable, word):
    assert verdict(expected, difference, p, testable) == word


def test_verdict_rejects_unknown_direction_and_tally_counts():
    with pytest.raises(ValueError, match="higher"):
        verdict("up", 1.0, 0.01)
    assert tally(["reproduced", "opposite", "reproduced"]) == "2 of 3 reproduced (1 opposite)"
    assert tally(["reproduced"]) == "1 of 1 reproduced"


@pytest.mark.parametrize("a_only,b_only", [(4, 0), (5, 0), (9, 3), (20, 12)])
def test_sign_flip_test_on_masks_is_mcnemar(a_only, b_only):
    a = np.array([1] * a_only + [0] * b_only + [1] * 300 + [0] * 96, dtype=float)
    b = np.array([0] * a_only + [1] * b_only + [1] * 300 + [0] * 96, dtype=float)
    exact = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert sign_flip_test(a - b, resamples=40_000) == pytest.approx(exact, abs=0.01)
    assert paired_bootstrap(a, b)["p"] == pytest.approx(exact, abs=0.015)


def test_sign_flip_test_is_never_zero_and_holds_its_level():
    assert sign_flip_test(np.ones(50), resamples=999) == pytest.approx(1 / 1000)
    assert sign_flip_test(np.zeros(10)) == 1.0
    rng = np.random.default_rng(3)
    null = [sign_flip_test(rng.normal(0, 1, 20), resamples=999, seed=i) < 0.05 for i in range(300)]
    shifted = [sign_flip_test(rng.normal(1, 1, 20), resamples=999, seed=i) < 0.05 for i in range(100)]
    assert np.mean(null) < 0.09 and np.mean(shifted) > 0.9
