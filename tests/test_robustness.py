import pandas as pd
import pytest

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.report import paper
from nbs_lib.report.tables import compare_with_paper, paper_layout, table2_layout
from nbs_lib.studies.ch01_robustness import epsilon_curves, observations
from nbs_lib.studies.common import attack_sample, autoattack_budget, robustness_study


def test_attack_sample_is_balanced_and_deterministic():
    prof = get_profile("smoke", attack_samples=20)
    x, y, classes = attack_sample("digits", prof, seed=0)
    assert len(y) == 20 and y.bincount().tolist() == [2] * 10
    x2, y2, _ = attack_sample("digits", prof, seed=0)
    assert (x == x2).all() and (y == y2).all()


def test_autoattack_budget_follows_the_profile():
    assert autoattack_budget("AA#0.5", get_profile("paper")) == ("AA-100#0.5", {"n_queries": 5000}, "standard")
    run, options, label = autoattack_budget("AA#0.5", get_profile("mini"))
    assert run == "AA-10#0.5" and options == {"n_queries": 500} and "10 it." in label
    assert autoattack_budget("PGD-10#0.5", get_profile("mini")) == ("PGD-10#0.5", {}, "paper")


def test_study_table_and_result_cache(tmp_path, monkeypatch):
    cache = RunCache(tmp_path)
    kwargs = dict(datasets=["digits"], profile="smoke", attacks=["PGD-10#0.5", "FGSM#2.0"],
                  device="cpu", cache=cache, progress=False)
    table, models = robustness_study(**kwargs)
    assert list(table.columns) == ["dataset", "model", "seed", "attack", "aoi", "aai", "dr", "n", "budget"]
    assert len(table) == 3 * 2 and set(models) == {("digits", r) for r in ("standard", "partial", "full")}
    assert (table["aai"] <= table["aoi"]).all()
    # the second run reads every number from the cache
    import nbs_lib.studies.common as rob
    monkeypatch.setattr(rob, "robustness_masks", lambda *a, **k: pytest.fail("re-attacked"))
    again, _ = robustness_study(**kwargs)
    pd.testing.assert_frame_equal(table, again)
    curves = None
    with pytest.raises(pytest.fail.Exception):  # a new epsilon is a new config: computed
        curves = epsilon_curves(models, "smoke", [0, 3], cache=cache, device="cpu", progress=False)
    assert curves is None


def test_layouts_match_the_paper_tables():
    t1 = paper_layout(paper.table1())
    assert t1.loc[("full", "dr"), "cifar10"] == 98.59 and t1.shape == (9, 7)
    t2 = table2_layout(paper.table2())
    assert t2.loc[("AA#0.5", "standard"), "alphabet"] == 99.69 and t2.shape == (8, 7)


def test_observations_of_the_paper_hold_on_the_paper_numbers():
    checks = observations(paper.table1())
    assert checks["1: full has higher DR than standard"].all()
    assert checks["2: full has lower DR than partial"].all()
    third = checks.columns[-1]
    assert checks.loc["alphabet", third] and checks.loc["cifar10", third] and not checks.loc["pets", third]


def test_compare_with_paper_only_compares_common_attacks():
    ours = paper.table1().assign(aai=0.0)
    ours = pd.concat([ours, ours.assign(attack="FGSM#9.0")])
    frame = compare_with_paper(ours, paper.table1(), "aai")
    assert set(frame.index.get_level_values("attack")) == {"PGD-10#0.5"}


def test_attack_sanity_flags(tmp_path):
    from nbs_lib.studies.ch01_robustness import attack_sanity

    cache = RunCache(tmp_path)
    table, models = robustness_study(["digits"], "smoke", device="cpu", cache=cache, progress=False)
    checks = attack_sanity(models, table, "smoke", device="cpu", cache=cache, progress=False)
    assert len(checks) == 3
    assert checks["PGD at 2.0 <= PGD at 0.5"].all()
    assert "AA <= PGD at 0.5 (AA images)" in checks.columns


def test_a_missing_attack_is_not_a_failed_sanity_check():
    from nbs_lib.studies.ch01_robustness import at_most

    assert at_most(3.0, 5.0) is True and at_most(5.0, 3.0) is False
    assert at_most(float("nan"), 5.0) is None and at_most(5.0, float("nan")) is None

