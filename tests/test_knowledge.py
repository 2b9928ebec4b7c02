import math

import pandas as pd
import pytest
import torch

from nbs_lib.core.runs import RunCache
from nbs_lib.models.registry import load_model
from nbs_lib.studies.ch02_cca_similarity import (
    CHANCE,
    MEASURES,
    PAIRS,
    compare_models,
    figure3_table,
    knowledge_observations,
    measure_similarity,
    shuffle_images,
    similarity_study,
)


def test_shuffle_moves_whole_images():
    m = torch.arange(12.0).reshape(6, 2)  # 3 images x 2 positions, 2 dims
    s = shuffle_images(m, 3, seed=0)
    blocks = {tuple(s[i:i + 2].flatten().tolist()) for i in (0, 2, 4)}
    assert blocks == {tuple(m[i:i + 2].flatten().tolist()) for i in (0, 2, 4)}


def test_cca_with_too_few_points_is_reported_not_faked():
    value, note = measure_similarity("cca", torch.randn(5, 8), torch.randn(5, 8))
    assert math.isnan(value) and "n=5 data points with 4 directions kept" in note
    # 1,000 raw neurons, but only 10 directions hold the variance: SVCCA is defined with n = 200
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(200, 10, generator=g) @ torch.randn(10, 1000, generator=g)
    value, note = measure_similarity("cca", low_rank, low_rank + 0.01 * torch.randn(200, 1000, generator=g))
    assert not math.isnan(value) and note == ""
    with pytest.raises(ValueError, match="measure"):
        measure_similarity("svcca", torch.randn(5, 2), torch.randn(5, 2))


def test_a_model_equals_itself_and_differs_from_another(one_thread):
    a = load_model("resnet18", weights=None, num_classes=3, seed=0).eval()
    b = load_model("resnet18", weights=None, num_classes=3, seed=1).eval()
    images = torch.rand(40, 3, 32, 32)
    rows = compare_models({"pretrained": a, "full": a, "standard": b}, images, modes=("positions",),
                          device="cpu")
    frame = pd.DataFrame(rows)
    same = frame[(frame.pair == "ft-pt") & (frame.measure == "cka")].similarity
    assert (same > 99.999).all()
    other = frame[(frame.pair == "ft-st") & (frame.measure == "cka")].similarity
    assert (other < 99).all()
    assert set(frame.pair) == {*PAIRS, CHANCE}


def test_study_on_trained_models_and_its_cache(tmp_path):
    cache = RunCache(tmp_path)
    kwargs = dict(datasets=["digits"], profile="smoke", device="cpu", cache=cache, progress=False)
    frame = similarity_study(**kwargs)
    assert set(frame.layers) == {"bottom", "stage2", "stage3", "stage4", "stages", "all"}
    assert set(frame.reduction) == {"positions", "pool"} and set(frame.measure) == set(MEASURES)
    per_stage = frame[frame.layers.isin(["bottom", "stage2", "stage3", "stage4"])]
    means = per_stage.groupby(["pair", "measure", "reduction"]).similarity.mean()
    stored = frame[frame.layers == "stages"].set_index(["pair", "measure", "reduction"]).similarity
    pd.testing.assert_series_equal(stored.sort_index(), means.sort_index(), check_names=False)
    cka = frame[frame.measure == "cka"].similarity
    assert ((cka >= 0) & (cka <= 100)).all()
    again = similarity_study(**kwargs)
    pd.testing.assert_frame_equal(frame, again)
    table = figure3_table(frame, "cka", "positions")
    assert list(table.columns.get_level_values(1)[:4]) == [*PAIRS, CHANCE]
    obs = knowledge_observations(frame, "cka", "positions")
    assert obs.index.tolist() == ["digits"] and obs.dtypes.eq("boolean").all()


def test_claims_count_only_datasets_with_values():
    rows = []
    for dataset, (ftpt, ftst_bottom, ftst_all) in {"a": (80, 40, 30), "b": (30, 50, math.nan)}.items():
        for layers, ftst in (("bottom", ftst_bottom), ("all", ftst_all)):
            for pair, value in (("ft-pt", ftpt), ("ft-st", ftst), ("pt-st", 20), (CHANCE, 5)):
                rows.append({"dataset": dataset, "pair": pair, "layers": layers, "measure": "cca",
                             "reduction": "pool", "similarity": value})
    from nbs_lib.studies.ch02_cca_similarity import claims_vs_paper
    table = claims_vs_paper(pd.DataFrame(rows), modes=("pool",))
    col = table["CCA, pool"]
    assert col["ft closer to pt than to st (bottom)"] == "1 of 2 datasets"
    assert col["ft closer to pt than to st (all)"] == "1 of 1 datasets"
    assert col["ft-st: bottom more alike than all"] == "1 of 1 datasets"
    assert table["verdict"].tolist() == ["no", "reproduced", "untested", "reproduced"]


@pytest.mark.parametrize("counts, verdict", [
    (["4 of 4 datasets", "3 of 4 datasets"], "reproduced"),
    (["2 of 4 datasets", "3 of 4 datasets"], "partly"),
    (["2 of 4 datasets", "0 of 4 datasets"], "no"),
    (["0 of 0 datasets"], "untested"),
])
def test_figure3_verdict_needs_a_majority_of_datasets_under_every_measure(counts, verdict):
    from nbs_lib.studies.ch02_cca_similarity import figure3_verdict
    assert figure3_verdict(counts) == verdict
