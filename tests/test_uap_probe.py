import numpy as np
import pandas as pd
import pytest
import torch

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.methods.threat_models import threat_model
from nbs_lib.studies.ch03_uap import (
    SuccessProbe,
    alignment_controls,
    budget_claims,
    budget_grid,
    fooling_budgets,
    glyph_mask,
    gradient_maps,
    letter_uaps,
    norm_matched_noise,
    pretrained_f_with_head,
    released_l2_budget,
    rms_per_pixel_255,
    source_uap_transfer,
    source_uaps,
    stroke_alignment,
    success_along_training,
    sweep_table,
    transplant_success,
    uap_results,
    what_reproduced,
)
from nbs_lib.studies.common import attack_sample, train_three


def test_the_released_l2_budget_converts_range_and_resolution():
    assert released_l2_budget(224) == pytest.approx(20.0)  # 40 on [-1, 1] is 20 on [0, 1]
    assert released_l2_budget(64) == pytest.approx(40 / 2 * 64 / 224)  # 5.71: L2 scales with the side
    assert rms_per_pixel_255("L2", released_l2_budget(64), 64) == pytest.approx(
        rms_per_pixel_255("L2", 20.0, 224))  # the same change per pixel at both sizes
    assert budget_grid(64, (1, 2), (8,)) == [("L2", 5.71), ("L2", 11.43), ("Linf", 8.0)]
    with pytest.raises(ValueError, match="must be in"):
        budget_grid(64, (0,), ())


def test_projection_onto_each_ball_keeps_the_budget():
    delta = torch.randn(2, 3, 8, 8)
    l2 = threat_model("L2").project_perturbation(delta.clone(), 0.5)
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((2,), 0.5), atol=1e-5)
    small = 0.01 * delta
    assert torch.equal(threat_model("L2").project_perturbation(small.clone(), 100.0), small)  # inside: unchanged
    assert threat_model("Linf").project_perturbation(delta.clone(), 0.1).abs().max() <= 0.1
    assert norm_matched_noise((1, 3, 8, 8), "L2", 2.0).norm() == pytest.approx(2.0, rel=1e-5)
    assert norm_matched_noise((1, 3, 8, 8), "Linf", 8.0).abs().eq(8 / 255).all()


def test_stroke_alignment_passes_its_positive_and_negative_controls():
    controls = alignment_controls([0, 10], [("L2", 5.71), ("Linf", 16.0)], 64, seed=0)
    assert (controls["template"] > 0.99).all()  # the glyph itself
    assert (controls["shifted template + equal noise"] > 0.5).all()  # found at an offset, through noise
    assert (controls["noise"] < 0.15).all()  # unrelated: near 0
    mask = glyph_mask(0, 64)
    assert stroke_alignment(torch.zeros(3, 64, 64), mask) == 0.0
    assert stroke_alignment(-mask.expand(3, 64, 64), mask) == pytest.approx(1.0, abs=1e-5)  # either polarity
    other = stroke_alignment(-glyph_mask(14, 64).expand(3, 64, 64), mask)  # "O" against "A"
    assert other < 0.9


def test_budget_claims_and_fooling_budgets_compare_the_models_on_the_same_images():
    hits = {("full", 0, "L2", 1.0): np.array([True] * 30 + [False] * 10),
            ("standard", 0, "L2", 1.0): np.array([True] * 5 + [False] * 35),
            ("full", 0, "L2", 4.0): np.ones(40, bool), ("standard", 0, "L2", 4.0): np.ones(40, bool)}
    claims = budget_claims(pd.DataFrame(), hits, ["A"]).set_index("eps")
    assert claims.loc[1.0, "verdict"] == "reproduced" and claims.loc[1.0, "difference"] == pytest.approx(62.5)
    assert claims.loc[4.0, "verdict"] == "no clear difference"
    table = pd.DataFrame({"model": ["full", "full", "standard", "standard"], "letter": "A", "norm": "L2",
                          "eps": [1.0, 4.0, 1.0, 4.0], "success %": [75.0, 100.0, 12.5, 100.0]})
    budgets = fooling_budgets(table).set_index("model").iloc[:, 2]
    assert budgets["full"] == 1.0 and budgets["standard"] == 4.0


class ChannelMean(torch.nn.Module):
    num_classes = 3

    def forward(self, x):
        return 10 * x.mean(dim=(2, 3))


def test_the_probe_never_measures_an_untrained_head():
    probe = SuccessProbe(torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(1, 3, 4, 4), 0,
                         every=3)
    for step in range(1, 7):
        probe(step, ChannelMean())
    assert [r["step"] for r in probe.rows] == [1, 3, 6]  # from the first update on, never step 0
    assert all(0 <= r["clean accuracy"] <= 100 for r in probe.rows)


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("cache"))
    prof = get_profile("smoke", uap_steps=3)
    models = train_three("digits", prof, regimes=("standard", "partial", "full"), device="cpu", cache=cache,
                         progress=False)
    return prof, cache, models


def test_the_transplanted_model_has_imagenet_f_and_the_fine_tuned_g(smoke_models):
    prof, _, models = smoke_models
    transplanted = pretrained_f_with_head(models["full"], prof.arch)
    assert torch.equal(transplanted.classifier[1].weight, models["full"].model.classifier[1].weight)
    partial_f = models["partial"].model.features.state_dict()  # partial fine-tuning keeps ImageNet's f
    for name, value in transplanted.features.state_dict().items():
        if value.dtype.is_floating_point and "running" not in name:
            assert torch.equal(value, partial_f[name]), name
    from nbs_lib.methods.uap import UAPResult
    test_x, test_y, _ = attack_sample("digits", prof, 0)
    rows = transplant_success(UAPResult(torch.zeros(1, *test_x.shape[1:]), 0, 1.0, "L2"), models, prof.arch,
                              test_x, test_y, device="cpu")
    assert ((rows["success low"] <= rows["success %"]) & (rows["success %"] <= rows["success high"])).all()
    assert rows["success high"].max() <= 100 and rows["clean accuracy %"].between(0, 100).all()


@pytest.mark.slow
def test_chapter_pipeline_on_smoke_models(smoke_models):
    prof, cache, models = smoke_models
    pair = {m: models[m] for m in ("full", "standard")}
    budgets = budget_grid(prof.image_size, (1.0,), (16.0,))
    test_x, test_y, classes = attack_sample("digits", prof, 0)
    uaps = letter_uaps(pair, "digits", [0, 1], budgets, prof, device="cpu", cache=cache)
    assert set(uaps) == {(m, t, n, e) for m in pair for t in (0, 1) for n, e in budgets}
    for (_, _, norm, eps), uap in uaps.items():
        assert float(threat_model(norm).size(uap.delta)[0]) <= threat_model(norm).pixels(eps) + 1e-5
    table, hits = sweep_table(pair, uaps, test_x, test_y, classes, device="cpu")
    assert table["success %"].between(0, 100).all() and table.alignment.between(0, 1).all()
    claims = budget_claims(table, hits, classes)
    grads = gradient_maps(pair, test_x, test_y, [0], device="cpu")
    assert grads[("full", 0)]["image"].shape == test_x.shape[1:]
    final = uaps[("full", 0, *budgets[0])]
    transplant = transplant_success(final, models, prof.arch, test_x, test_y, device="cpu")
    assert list(transplant.model) == ["fine-tuned (f and g)", "pre-trained f + fine-tuned g",
                                      "partial (pre-trained f, own g)"]
    curve = success_along_training("digits", models["full"], final, test_x, test_y, prof, every=1, device="cpu",
                                   cache=cache)
    assert curve.step.iloc[0] == 1 and curve.attrs["final_matches"]
    if torch.get_num_threads() == 1:  # one thread: the re-run is the cached training, bit for bit
        assert curve.attrs["final_gap"] < 1e-6
    sources = source_uaps(["digits"], prof, [prof.arch, "efficientnet_lite1"], "L2", 1.0, device="cpu", cache=cache)
    assert all(u.target is None for u in sources.values())
    transfer = source_uap_transfer({("digits", m): t for m, t in pair.items()}, sources, prof, prof.arch,
                                   device="cpu")
    assert len(transfer) == 3 and (transfer["gap low"] <= transfer["gap high"]).all()
    verdicts = what_reproduced(table, claims, transplant, curve, transfer)
    assert len(verdicts) == 7 and set(verdicts.verdict) <= {"reproduced", "partly", "no", "not testable"}
    long = uap_results(table, claims, transplant, curve, transfer, "digits")
    assert list(long.columns) == ["dataset", "model", "experiment", "value"] and len(long) > 10
