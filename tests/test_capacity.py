import pytest

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.studies.ch05_capacity_difficulty import (
    capacity_claims,
    capacity_study,
    difficulty_claims,
    difficulty_study,
    table3_layout,
    table4_layout,
)
from nbs_lib.studies.common import per_image_results, radius_floor
from nbs_lib.studies.sources import target_profile


@pytest.mark.slow
def test_capacity_reuses_the_first_backbones_learning_rates(tmp_path):
    prof = get_profile("smoke", lr_grid_g=(1e-3, 3e-3))
    archs = ["efficientnet_lite0", "efficientnet_lite1"]
    cache = RunCache(tmp_path)
    frame, models = capacity_study(["digits"], prof, archs=archs, device="cpu", cache=cache, progress=False)
    assert frame.backbone.tolist() == ["efficientnet_lite0", "efficientnet_lite1"]
    assert frame.size_mb.is_monotonic_increasing and frame.lr_g.nunique() == 1
    table = table3_layout(frame)
    assert list(table.index) == ["size_mb", "aoi", "aai", "dr", "median_eps", "area"] and table.shape[1] == 2
    per_image = per_image_results({0: models}, prof, device="cpu", cache=cache, progress=False)
    assert set(per_image["model"]) == set(archs)
    claims = capacity_claims(per_image, archs, radius_floor(prof))
    assert claims["claim"].str.startswith("efficientnet_lite1 ").all() and len(claims) == 3
    assert set(claims["verdict"]) <= {"reproduced", "opposite", "no clear difference", "not testable"}


@pytest.mark.slow
def test_difficulty_study_pretrains_each_source_and_fine_tunes(tmp_path):
    cache = RunCache(tmp_path)
    frame, sources, finetuned = difficulty_study("smoke", sources=("digits", "digits-lowres"), targets=("mnist",),
                                                 device="cpu", cache=cache, progress=False)
    assert frame.source.tolist() == ["digits", "digits-lowres"] and (frame.dataset == "mnist").all()
    assert sources.source.tolist() == ["digits", "digits-lowres"]
    assert table4_layout(frame).shape == (2, 3)
    assert set(finetuned) == {("mnist", "digits"), ("mnist", "digits-lowres")}
    per_image = per_image_results({0: finetuned}, target_profile("smoke"), device="cpu", cache=cache, progress=False)
    claims = difficulty_claims(per_image, ("digits", "digits-lowres"), radius_floor(get_profile("smoke")))
    assert claims["claim"].tolist()[0] == "digits has higher AOI than digits-lowres" and len(claims) == 3


def _per_image(models_and_radii, n=100, seed=0):
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(seed)
    rows = []
    for dataset in ("x", "y"):
        for model, radius in models_and_radii:
            clean = rng.random(n) < 0.9
            rows.append(pd.DataFrame({"dataset": dataset, "model": model, "seed": 0, "image": np.arange(n),
                                      "clean": clean, "robust": clean & (radius > 0.5),
                                      "min_eps": np.where(clean, radius + 0.1 * rng.random(n), 0.0)}))
    return pd.concat(rows, ignore_index=True)


def test_tables_3_and_4_claims_and_verdicts_follow_the_rules():
    from nbs_lib.report import paper
    from nbs_lib.studies.ch05_capacity_difficulty import what_reproduced

    capacity = capacity_claims(_per_image([("small", 0.1), ("mid", 0.3), ("large", 0.35)]),
                               ["small", "mid", "large"], floor=0.015)
    radius = capacity[capacity["measure"].str.startswith("mean minimal radius")]
    assert len(capacity) == 12 and (radius["verdict"] == "reproduced").all()
    # the richer source's models break at smaller radii: "less robust" reproduces
    difficulty = difficulty_claims(_per_image([("rich", 0.1), ("poor", 0.3)]), ("rich", "poor"), floor=0.015)
    assert (difficulty[difficulty["relation"] == "is less robust"]["verdict"] != "opposite").all()
    assert (difficulty[difficulty["measure"].str.startswith("mean minimal")]["verdict"] == "reproduced").all()
    verdicts = what_reproduced(capacity, difficulty, paper.TABLE3, paper.TABLE4).set_index(["table", "measure"])
    assert verdicts.loc[("Table 3", "AOI (%)"), "paper"] == "mean AOI: 4 of 4 steps; 90.2 to 93.0"
    assert verdicts.loc[("Table 4", "AOI (%)"), "paper"] == "2 of 2 targets"
    assert verdicts.loc[("Table 3", radius["measure"].iloc[0]), "this book"] == "4 of 4 reproduced"
    # both models at the search's floor: not testable
    floored = difficulty_claims(_per_image([("rich", 0.0), ("poor", 0.0)]), ("rich", "poor"), floor=0.2)
    assert (floored[floored["measure"].str.startswith("mean minimal")]["verdict"] == "not testable").all()
