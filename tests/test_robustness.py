import pandas as pd
import pytest

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.report import paper
from nbs_lib.report.tables import compare_with_paper, paper_layout, table2_layout
from nbs_lib.studies.ch01_robustness import observations
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
    with pytest.raises(pytest.fail.Exception):  # a new epsilon is a new config: computed
        robustness_study(**{**kwargs, "attacks": ["PGD-10#3.0"]})


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



def _constructed_per_image(n=200, seeds=(0, 1, 2)):
    """Per-image results where full is clearly less robust than standard and partial, all saturated at 0.5."""
    import numpy as np
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for model, clean_rate, radius in (("standard", 0.95, 0.375), ("partial", 0.80, 0.375), ("full", 0.96, 0.125)):
            clean = rng.random(n) < clean_rate
            radii = np.where(clean, radius + rng.choice([0, 0.125], n), 0.0)
            rows.append(pd.DataFrame({"dataset": "d", "model": model, "seed": seed, "image": np.arange(n),
                                      "clean": clean, "robust": radii > 0.5, "min_eps": radii}))
    return pd.concat(rows, ignore_index=True)


def test_table1_claims_follow_the_rules_on_constructed_results():
    from nbs_lib.studies.ch01_robustness import claim_tally, table1_claims
    claims = table1_claims(_constructed_per_image(), floor=0.125)
    get = lambda claim, measure: claims[(claims["claim"] == claim)  # noqa: E731
                                        & claims["measure"].str.startswith(measure)].iloc[0]
    less_robust = get("full is less robust than standard", "mean minimal radius")
    assert less_robust["verdict"] == "reproduced" and less_robust["difference"] < 0 and less_robust["seeds"] == 3
    # at 0.5/255 every model has lost every image: both sides saturated, not testable
    assert get("full is less robust than standard", "robust at 0.5")["verdict"] == "not testable"
    assert get("full is more robust than partial", "mean minimal radius")["verdict"] == "opposite"
    assert get("full has higher AOI than partial", "AOI")["verdict"] == "reproduced"
    # observation 3: the premise holds (AOI 95 against 96); less robust by the radius, but the
    # DR of both is 100 at 0.5/255, so not "severely" by the paper's rule
    third = claims[claims["observation"] == "3"].iloc[0]
    assert "gain +" in third["premise"] and third["verdict"] == "no clear difference"
    assert "of 1 reproduced" in claim_tally(claims).iloc[0]["verdict over the datasets"]


def test_observation_three_is_not_testable_below_its_premise():
    from nbs_lib.studies.ch01_robustness import table1_claims
    per_image = _constructed_per_image()
    standard = per_image["model"] == "standard"
    per_image.loc[standard & (per_image["image"] < 60), ["clean", "robust"]] = False
    per_image.loc[standard & (per_image["image"] < 60), "min_eps"] = 0.0
    claims = table1_claims(per_image, floor=0.125)
    assert claims[claims["observation"] == "3"].iloc[0]["verdict"] == "not testable"
    # a large AOI gain also breaks the premise ("pre-training adds little AOI")
    gained = _constructed_per_image()
    low = (gained["model"] == "standard") & (gained["image"] < 8)  # standard about 91%, gain about 5
    gained.loc[low, ["clean", "robust"]] = False
    gained.loc[low, "min_eps"] = 0.0
    third = table1_claims(gained, floor=0.125).query("observation == '3'").iloc[0]
    assert third["verdict"] == "not testable", third["premise"]


def test_views_print_intervals_and_seed_spread():
    from nbs_lib.report.tables import claims_view, interval_view, radius_view
    from nbs_lib.studies.ch01_robustness import table1_claims
    from nbs_lib.studies.common import interval_table
    per_image = _constructed_per_image()
    intervals = interval_table(per_image)
    assert set(intervals["seed"]) == {0, 1, 2} and (intervals["aoi_ci_low"] <= intervals["aoi"]).all()
    spread = radius_view(intervals).data
    assert spread["seeds"].tolist() == [3, 3, 3] and "±" in spread["AOI (%)"].iloc[0]
    single = radius_view(intervals[intervals["seed"] == 0]).data  # one seed: no spread to print
    assert single["seeds"].tolist() == [1, 1, 1] and not single["AOI (%)"].str.contains("±").any()
    table = intervals.assign(attack="PGD-10#0.5")
    view = interval_view(table).data
    assert view["AOI [95% interval]"].str.match(r"^\d+\.\d \[\d+\.\d, \d+\.\d\]$").all()
    claims = claims_view(table1_claims(per_image, floor=0.125)).data
    assert {"A - B [95% interval]", "p", "verdict"} <= set(claims.columns)
    assert claims["measure"].str.contains("premise|standard AOI").any()


def test_table2_claims_count_each_attack_once():
    import numpy as np
    from nbs_lib.studies.ch01_robustness import table2_claims
    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "model": m, "seed": 0, "attack": a, "budget": "paper",
             "robust": rng.random(100) < (0.6 if m == "standard" else 0.1)}
            for m in ("standard", "full") for a in ("PGD-10#2.0", "AA#0.5", "AA#0.25")]
    claims = table2_claims(pd.DataFrame(rows))
    assert sorted(claims["attack"]) == ["AA#0.25", "AA#0.5", "PGD-10#2.0"]
    assert (claims["verdict"] == "reproduced").all() and (claims["test"] == "McNemar (exact)").all()


def test_curve_radii_reach_below_the_first_rung_to_the_bisections_resolution():
    from nbs_lib.core.profiles import get_profile
    from nbs_lib.studies.common import curve_radii, radius_floor
    prof = get_profile("mini", {"radius_grid": (0.125, 0.25, 2.0), "radius_floor_iterations": 3})
    assert radius_floor(prof) == 0.125 / 8
    assert curve_radii(prof) == (0.0, *(0.125 * i / 8 for i in range(1, 8)), 0.125, 0.25, 2.0)
    flat = prof.replace(radius_floor_iterations=0)
    assert radius_floor(flat) == 0.125 and curve_radii(flat) == (0.0, 0.125, 0.25, 2.0)


def test_plain_table_prints_small_rates_and_no_index():
    import pandas as pd

    from nbs_lib.report.tables import plain_table
    html = plain_table(pd.DataFrame({"source": ["x"], "lr": [0.0005], "acc": [84.0], "n": [3],
                                     "gap": [float("nan")]}), 2).to_html()
    assert "5.0e-04" in html and "84.00" in html and "84.000000" not in html  # not "0.00" or six decimals
    assert ">3<" in html and "nan" not in html
    assert "row_heading" not in html  # the index column is hidden
    large = plain_table(pd.DataFrame({"source": ["teacher"], "ll": [404298.969]}), 3).to_html()
    assert "404,299" in large and "404298" not in large  # large values as whole numbers
    claims = plain_table(pd.DataFrame({"claim": ["a", "b"], "p": [8.2e-143, 0.0349], "mcnemar p": [0.5, None],
                                       "n": [500.0, 500.0]}), 1).to_html()
    assert ">8.2e-143<" in claims and ">0.035<" in claims and ">0.5<" in claims  # p-values at 2 digits
    assert ">500.0<" in claims and ">0.0<" not in claims  # other floats keep the table's digits


def test_autoattack_beside_table_2s_radius_runs_on_the_models_table_2_compares(monkeypatch):
    """Issue 23's cut: AA#0.25 and AA#1.0 on standard and full only; every model keeps AA#0.5
    (the gradient-masking check) and Tables 1-2's attacks; later seeds get Table 1's attack."""
    from nbs_lib.studies import ch01_robustness as ch1
    calls = []

    def fake_study(datasets, profile, attacks, arch, weights, seed, device, cache, progress, regimes, train_seed,
                   masks):
        calls.append((train_seed, tuple(regimes), tuple(attacks)))
        rows = [{"dataset": "digits", "model": r, "seed": train_seed, "attack": a, "aoi": 90.0, "aai": 10.0,
                 "dr": 88.9, "n": 2, "budget": "", "clean": [True, True], "robust": [True, False]}
                for r in regimes for a in attacks]
        return pd.DataFrame(rows), {("digits", r): f"{r}@{train_seed}" for r in regimes}

    monkeypatch.setattr(ch1, "robustness_study", fake_study)
    table, by_seed = ch1.seeded_study(["digits"], "smoke", train_seeds=(0, 1))
    aa = table[table["attack"].isin(["AA#0.25", "AA#1.0"])]
    assert set(aa["model"]) == {"standard", "full"} and set(aa["seed"]) == {0}
    assert set(table.loc[table["attack"] == "AA#0.5", "model"]) == set(ch1.CH1_MODELS)
    assert set(table.loc[table["seed"] == 1, "attack"]) == {paper.TABLE1_ATTACK}
    assert list(by_seed[0]) == [("digits", r) for r in ch1.CH1_MODELS] and len(by_seed[1]) == 4


def test_short_cells_stay_on_one_line_and_long_text_wraps():
    """A p-value like 8.2e-143 or an interval broken across two lines is hard to read (issue 22)."""
    from nbs_lib.report.tables import plain_table
    frame = pd.DataFrame({"claim": ["DM@stage-1&2 is more robust than full by the mean minimal radius"] * 2,
                          "p": ["8.2e-143", "0.03"], "A - B [95% interval]": ["0.21 [0.17, 0.24]"] * 2,
                          "aoi": [93.25, 90.0]})
    html = plain_table(frame).to_html()
    nowrap = {rule.split("{")[0].strip() for rule in html.split("</style>")[0].split("}") if "nowrap" in rule}
    cells = " ".join(nowrap)
    assert "col1" in cells and "col2" in cells and "col3" in cells and "col0" not in cells
    empty = plain_table(pd.DataFrame({("aoi", "full"): [1.0]}))  # MultiIndex columns work too
    assert "nowrap" in empty.to_html()
