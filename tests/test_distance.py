import numpy as np
import pandas as pd
import pytest
import torch

from nbs_lib.core.runs import RunCache
from nbs_lib.studies.ch04_mmd_vs_dr import correlations, mmd_study, source_target_mmd


def test_correlations_of_a_monotone_relation():
    frame = pd.DataFrame({"mmd": [0.1, 0.2, 0.4, 0.8, 1.6], "dr": [10, 20, 50, 60, 99]})
    out = correlations(frame, n_boot=300).set_index("correlation")
    assert out.loc["Spearman", "r"] == pytest.approx(1.0)
    assert 0.8 < out.loc["Pearson", "r"] < 1.0
    assert out.loc["Pearson", "ci_low"] <= out.loc["Pearson", "r"] <= out.loc["Pearson", "ci_high"]
    reverse = correlations(frame.assign(dr=frame.dr[::-1].to_numpy()), n_boot=300)
    assert reverse.set_index("correlation").loc["Spearman", "r"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 3"):
        correlations(frame.head(2))


def test_mmd_separates_shifted_embeddings():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    near = source_target_mmd(a, b, permutations=100)
    far = source_target_mmd(a, b + 1.0, permutations=100)
    assert far["mmd"] > near["mmd"] and far["mmd_p"] < 0.05 < near["mmd_p"]


@pytest.mark.slow
def test_study_on_two_smoke_targets(tmp_path):
    cache = RunCache(tmp_path)
    kwargs = dict(datasets=["digits", "shapes"], profile="smoke", device="cpu", cache=cache,
                  n_source=40, n_target=40, progress=False)
    frame, models = mmd_study(**kwargs)
    assert frame.dataset.tolist() == ["digits", "shapes"]
    assert (frame.mmd_p > 0).all() and (frame.bandwidth > 0).all()
    assert frame.dr.between(0, 100).all() and not frame.mmd.isna().any()
    assert frame.area.between(0, 100).all() and (frame.area_ci_low <= frame.area).all()
    assert (frame.area <= frame.area_ci_high).all() and (frame.median_eps >= 0).all()
    assert set(models) == {(d, r) for d in ("digits", "shapes") for r in ("standard", "full")}
    again, _ = mmd_study(**kwargs)
    pd.testing.assert_frame_equal(frame, again)


def test_correlation_with_a_constant_column_is_undefined_not_an_error():
    frame = pd.DataFrame({"mmd": [0.1, 0.2, 0.4], "dr": [100.0, 100.0, 100.0]})
    out = correlations(frame, n_boot=50)
    assert out.r.isna().all() and out.ci_low.isna().all() and (out.n_boot == 0).all()


def test_mmd_claims_follow_the_verdict_rules():
    from nbs_lib.studies.ch04_mmd_vs_dr import mmd_claims
    mmd = np.linspace(0.1, 0.7, 7)
    frame = pd.DataFrame({"mmd": mmd, "dr": [100.0] * 7, "area": 60 - 80 * mmd,
                          "median_eps": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
                          "dr_standard": [10, 50, 20, 40, 30, 60, 5.0]})
    claims = mmd_claims(frame, n_boot=200).set_index(["model", "measure"])["verdict"]
    full = claims["full"]
    assert full.filter(like="DR").iloc[0] == "not testable"  # the same DR on every target
    assert full.filter(like="area").iloc[0] == "reproduced"
    assert full.filter(like="radius").iloc[0] == "reproduced"
    assert claims["standard"].iloc[0] == "no clear relation"
    reversed_frame = frame.assign(area=20 + 80 * mmd)
    assert mmd_claims(reversed_frame, n_boot=200).set_index("measure")["verdict"].filter(like="area").iloc[0] \
        == "opposite"
