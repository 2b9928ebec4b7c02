import pytest
import torch

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.report.tables import table5_layout
from nbs_lib.studies.ch06_dm_regularisation import (
    METHODS,
    best_method,
    feature_spread,
    lambda_sweep,
    method_settings,
    method_study,
    steepness_table,
    table5_claims,
)
from nbs_lib.studies.common import per_image_results, radius_floor
from nbs_lib.studies.sources import target_profile
from nbs_lib.studies.sources import pretrain_source


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("cache"))
    prof = get_profile("smoke", source_image_size=16, min_steps=4)
    kwargs = dict(device="cpu", cache=cache, progress=False)
    return prof, cache, pretrain_source("digits", prof, None, **kwargs), \
        pretrain_source("digits", prof, "PGD-2#8", **kwargs)


@pytest.mark.slow
def test_every_method_runs_and_the_table_has_the_papers_layout(sources):
    prof, cache, standard, robust = sources
    frame, models = method_study(["mnist"], standard, robust, prof, lipschitz_steps=1, device="cpu",
                                 cache=cache, progress=False)
    assert set(models) == {("mnist", m) for m in METHODS}
    assert frame.method.tolist() == list(METHODS)
    assert frame.lr_g.nunique() == 1  # every method reuses plain fine-tuning's learning rates
    assert list(table5_layout(frame).index) == list(METHODS)
    assert best_method(frame).loc["mnist", "most robust"] in METHODS
    per_image = per_image_results({0: models}, target_profile(prof), device="cpu", cache=cache, progress=False)
    claims = table5_claims(per_image, radius_floor(prof))
    assert len(claims) == 3 * (len(METHODS) - 1) and (claims["A"] == "DM@stage-1&2").all()
    assert set(claims["B"]) == set(METHODS) - {"DM@stage-1&2"}
    sweep = lambda_sweep("mnist", standard, robust, [0, 2.0], prof, lipschitz_steps=1, device="cpu",
                         cache=cache, progress=False)
    assert sweep.method.tolist() == ["AT@stage-1", "DM (eq. 5)"]  # the sweep is over eq. 5's lambda
    assert (sweep.feature_spread > 0).all() and (sweep.feature_l1 > 0).all()


def test_feature_spread_is_zero_for_a_flat_feature_map():
    class FlatFeatures(torch.nn.Module):
        def __init__(self, flat: bool):
            super().__init__()
            self.flat = flat

        def forward(self, x):
            base = torch.ones(len(x), 4)
            return base if self.flat else base + x.flatten(1)[:, :4]

    class Flat(torch.nn.Module):
        def __init__(self, flat: bool):
            super().__init__()
            self.features = FlatFeatures(flat)

    images = torch.rand(10, 3, 4, 4)
    flat = feature_spread(Flat(True), images, device="cpu")
    assert flat == {"feature_l1": 4.0, "feature_spread": 0.0}
    varied = feature_spread(Flat(False), images, device="cpu")
    assert varied["feature_spread"] == pytest.approx(images.flatten(1)[:, :4].std(0).mean().item(), rel=1e-6)


def test_methods_start_from_the_right_source(sources):
    _, _, standard, robust = sources
    at1 = method_settings("AT@stage-1", standard, robust, "PGD-3#2", 1, 1, 2, 3)
    kd = method_settings("KD@stage-2", standard, robust, "PGD-3#2", 1, 1, 2, 3)
    assert at1 == {"weights": robust.weights}
    assert kd["weights"] == standard.weights and kd["teacher"] == str(robust.weights)
    with pytest.raises(ValueError, match="Unknown method"):
        method_settings("TRADES", standard, robust, "PGD-3#2", 1, 1, 2, 3)


class _Linear(torch.nn.Module):
    """A feature extractor f(x) = scale * W x (flattened); its LL is scale times W's."""

    def __init__(self, scale):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4, bias=False))
        torch.nn.init.constant_(self.features[1].weight, 0.01 * scale)


def test_steepness_table_scales_with_the_features():
    images = torch.full((6, 3, 8, 8), 0.5)
    table = steepness_table({"f": _Linear(1.0), "2f": _Linear(2.0)}, images, eps_255=2, steps=5,
                            device="cpu").set_index("model")
    assert table.loc["2f", "ll"] == pytest.approx(2 * table.loc["f", "ll"], rel=1e-4)
    assert table.loc["f", "ll"] == pytest.approx(4 * 192 * 0.01, rel=1e-4)  # ||W||_1 of a 4 x 192 map


def test_table5_verdicts_count_the_papers_targets_and_tally_ours():
    import pandas as pd

    from nbs_lib.report.paper import table5
    from nbs_lib.studies.ch06_dm_regularisation import DM, table5_verdicts

    claims = pd.DataFrame({"A": DM, "B": "full", "relation": ["is more robust", "is more robust", "has higher AOI"],
                           "measure": ["radius", "radius", "AOI"], "dataset": ["alphabet", "digits", "alphabet"],
                           "verdict": ["reproduced", "no clear difference", "opposite"]})
    out = table5_verdicts(claims, table5()).set_index("measure")
    paper = table5().pivot(index="dataset", columns="method", values="aai")
    wins = int((paper[DM] > paper["full"]).sum())
    assert out.loc["radius", "paper"] == f"AAI higher on {wins} of 7 targets"
    assert out.loc["radius", "this book"] == "1 of 2 reproduced (1 no clear difference)"
    assert out.loc["AOI", "paper"].startswith("AOI higher on ")
    assert out.loc["AOI", "this book"] == "0 of 1 reproduced (1 opposite)"
