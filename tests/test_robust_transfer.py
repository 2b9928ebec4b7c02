import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data.images import LabeledImages
from nbs_lib.methods.attacks import pgd
from nbs_lib.models.registry import load_model
from nbs_lib.studies.ch07_robust_transfer import (
    active_components,
    anti_robust_images,
    anti_robust_splits,
    colour_spread,
    curve_summary,
    derangement,
    image_roughness,
    ladder_spec,
    noise_seed_images,
    random_other_classes,
    robustified_pair,
    robustify_images,
    source_eps,
    standard_target_model,
    target_datasets,
    transfer_curve,
    transfer_study,
    visualisation_grid,
    visualise_features,
)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return load_model("resnet18", weights=None, num_classes=4, seed=0).eval()


def _images(n=12, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_targeted_pgd_moves_towards_the_target(tiny_model, one_thread):
    x = _images()
    t = torch.full((len(x),), 2)
    before = F.cross_entropy(tiny_model(x), t)
    x_adv = pgd(tiny_model, x, t, 8 / 255, 10, targeted=True)
    after = F.cross_entropy(tiny_model(x_adv), t)
    untargeted = F.cross_entropy(tiny_model(pgd(tiny_model, x, t, 8 / 255, 10)), t)
    assert after < before < untargeted
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_random_other_classes_never_keep_the_label():
    labels = torch.arange(40) % 5
    t = random_other_classes(labels, 5, seed=1)
    assert (t != labels).all() and t.min() >= 0 and t.max() < 5
    assert len(set(t.tolist())) == 5  # all classes are drawn
    with pytest.raises(ValueError, match="two classes"):
        random_other_classes(torch.zeros(3, dtype=torch.long), 1, 0)


def test_anti_robust_images_change_labels_within_eps(tiny_model, one_thread):
    ds = LabeledImages("toy", "train", list("abcd"), torch.arange(16) % 4, images=_images(16))
    made = anti_robust_images(tiny_model, ds, "PGD-20#16", seed=0, device="cpu")
    assert (made.data.labels != ds.labels).all()
    assert torch.equal(made.original_labels, ds.labels)
    assert made.max_perturbation <= 16 / 255 + 1e-6
    assert ((made.data.images - ds.images).abs() > 1e-3).any()
    assert made.success_rate > 50  # C follows the non-robust label on most images
    with pytest.raises(ValueError, match="PGD spec"):
        anti_robust_images(tiny_model, ds, "FGSM#8", device="cpu")


def test_visualisation_raises_the_chosen_activation(tiny_model, one_thread):
    components = active_components([tiny_model], 16, 3, device="cpu")
    assert len(components) == 3
    vis = visualise_features(tiny_model, components, size=16, steps=15, step_size=1.0, device="cpu")
    assert vis.images.shape == (3, 3, 16, 16)
    assert vis.images.min() >= 0 and vis.images.max() <= 1
    assert (vis.final_activation > vis.start_activation).all()
    with pytest.raises(ValueError, match="components"):
        visualise_features(tiny_model, [512], size=16, steps=1, device="cpu")


def test_fourier_visualisation_raises_the_activation_with_smooth_images(tiny_model, one_thread):
    components = active_components([tiny_model], 16, 2, device="cpu")
    vis = visualise_features(tiny_model, components, size=16, steps=30, device="cpu", parametrisation="fourier")
    assert vis.images.shape == (2, 3, 16, 16) and vis.images.min() > 0 and vis.images.max() < 1
    assert (vis.final_activation > vis.start_activation).all()
    again = visualise_features(tiny_model, components, size=16, steps=30, device="cpu", parametrisation="fourier")
    assert torch.equal(again.images, vis.images)  # the start spectrum and the jitter come from the seed
    pixels = visualise_features(tiny_model, components, size=16, steps=30, device="cpu")
    assert (image_roughness(vis.images) < image_roughness(pixels.images)).all()  # the 1/f prior smooths
    with pytest.raises(ValueError, match="parametrisation"):
        visualise_features(tiny_model, components, size=16, steps=1, device="cpu", parametrisation="lucid")


def test_roughness_and_colour_of_known_images():
    flat = torch.full((1, 3, 8, 8), 0.3)
    checker = ((torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2).float().expand(1, 3, 8, 8)
    assert image_roughness(flat).item() == 0.0
    assert image_roughness(checker).item() == pytest.approx(1.0)
    noise = image_roughness(noise_seed_images(4, 32, seed=0))
    assert noise.shape == (4,) and noise.min() > 0.2 and noise.max() < 0.35
    assert colour_spread(checker).item() == 0.0
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    assert colour_spread(red).item() == pytest.approx((2 / 9) ** 0.5)
    with pytest.raises(ValueError, match="images"):
        image_roughness(torch.zeros(3, 8, 8))


def test_robustified_images_move_towards_their_targets_representation(tiny_model, one_thread):
    images = _images(8, seed=1)
    seeds = images[derangement(8, 0)]
    robust, start, final = robustify_images(tiny_model, images, seeds, steps=15, step_size=1.0, device="cpu")
    assert robust.shape == images.shape and robust.min() >= 0 and robust.max() <= 1
    assert (final < start).all()
    with pytest.raises(ValueError, match="seed"):
        robustify_images(tiny_model, images, seeds[:4], device="cpu")


def test_derangement_has_no_fixed_point():
    for seed in range(20):
        perm = derangement(7, seed)
        assert sorted(perm.tolist()) == list(range(7))
        assert (perm != torch.arange(7)).all()


def test_ladder_specs_and_errors():
    assert ladder_spec(0) is None and ladder_spec(8) == "PGD-3#8" and ladder_spec(0.5, 7) == "PGD-7#0.5"
    with pytest.raises(ValueError, match=">= 0"):
        ladder_spec(-1)


def test_curve_summary_reads_the_sign_of_the_trend():
    rows = []
    for eps, acc in ((0, 50), (2, 60), (8, 70)):
        rows += [{"dataset": "d", "variant": "standard", "mode": "full fine-tuning", "source_eps": eps,
                  "epoch": e, "accuracy": acc + e} for e in (1, 2)]
        rows += [{"dataset": "d", "variant": "anti-robust", "mode": "full fine-tuning", "source_eps": eps,
                  "epoch": e, "accuracy": 100 - acc + e} for e in (1, 2)]
    summary = curve_summary(pd.DataFrame(rows)).set_index("variant")
    assert summary.loc["standard", "early rho"] == pytest.approx(1.0)
    assert summary.loc["anti-robust", "final rho"] == pytest.approx(-1.0)
    assert summary.loc["standard", "final eps=8"] == 72
    # a second training seed: the summary reads the mean curve over seeds
    seeded = pd.concat([pd.DataFrame(rows).assign(seed=0),
                        pd.DataFrame(rows).assign(seed=1, accuracy=lambda f: f.accuracy + 10)])
    mean = curve_summary(seeded).set_index("variant")
    assert mean.loc["standard", "final eps=8"] == 77 and mean.loc["standard", "early rho"] == pytest.approx(1.0)


@pytest.mark.slow
def test_chapter_pipeline_at_smoke(tmp_path, one_thread):
    """The self-distilled ImageNet ladder, anti-robust splits, transfer curves over two seeds
    (cached) and the robustified pair, end to end at smoke."""
    from nbs_lib.studies.imagenet_sources import ladder
    from nbs_lib.studies.sources import target_profile

    cache = RunCache(tmp_path)
    prof = get_profile("smoke")
    kwargs = dict(device="cpu", cache=cache)
    rungs = list(ladder(prof, seed=0, progress=False, **kwargs).values())
    assert [source_eps(s) for s in rungs] == [0.0, 2.0]
    tprof = target_profile(prof, rungs[0])
    assert tprof.arch == prof.arch and tprof.image_size == prof.image_size  # chapter 1's targets
    visuals, table = visualisation_grid(rungs, count=2, size=tprof.image_size, steps=3, device="cpu")
    assert len(visuals) == 2 and len(table) == 2 * len(visuals[0].components) >= 2  # few are active at 32 px
    assert table.final_roughness.between(0, 1).all()
    assert (table.groupby("component").start_roughness.nunique() == 1).all()  # same noise for every source
    classifier = standard_target_model("mnist", tprof, progress=False, **kwargs)
    splits = anti_robust_splits("mnist", tprof, classifier, "PGD-5#16", **kwargs)
    assert set(splits) == {"train", "test"} and splits["train"].data.images.shape[-1] == tprof.image_size
    assert (splits["train"].data.labels != splits["train"].original_labels).all()
    again = anti_robust_splits("mnist", tprof, classifier, "PGD-5#16", **kwargs)
    assert torch.equal(again["test"].data.images, splits["test"].data.images)  # from the cache
    data = target_datasets(["mnist"], tprof, {"mnist": splits})
    assert set(data) == {("mnist", "standard"), ("mnist", "anti-robust")}
    standard_only = {("mnist", "standard"): data[("mnist", "standard")]}
    curves = transfer_study(rungs, standard_only, profile=tprof, epochs=2, seeds=(0, 1), progress=False, **kwargs)
    assert len(curves) == 2 * 2 * 2 * 2  # modes x sources x seeds x epochs
    assert curves.accuracy.between(0, 100).all() and set(curves.seed) == {0, 1}
    train, test = data[("mnist", "standard")]
    cached = transfer_curve(rungs[1], train, test, "full fine-tuning", tprof, 2, seed=1, progress=False, **kwargs)
    assert cached == curves[(curves.source_eps == 2) & (curves["mode"] == "full fine-tuning")
                            & (curves.seed == 1)][["epoch", "accuracy", "train_acc"]].to_dict("records")
    baseline, robustified, summary = robustified_pair(rungs[1], prof, seed=0, progress=False, **kwargs)
    assert summary["distance at the end"] < summary["distance from the seed crop"]
    assert summary["crops"] == prof.robustify_pool and summary["matching steps"] == prof.robustify_steps
    assert "original" in baseline.label and "robustified" in robustified.label
    assert baseline.weights.is_file() and robustified.weights.is_file() and baseline.weights != robustified.weights
    assert source_eps(robustified) == 0.0 and len(robustified.trained.history) == prof.pool_distill_steps
    with pytest.raises(ValueError, match="transfer mode"):
        transfer_curve(rungs[0], train, test, "linear probe", tprof, 1, **kwargs)
    with pytest.raises(ValueError, match="seeds"):
        transfer_study(rungs, standard_only, profile=tprof, epochs=1, seeds=0, **kwargs)


def test_anti_robust_splits_take_the_targets_profile_as_given(monkeypatch):
    """The caller passes the targets' profile (sources.target_profile of the ladder): for an
    ImageNet ladder that is the profile itself, chapter 1's backbone and size."""
    import nbs_lib.studies.ch07_robust_transfer as ch07

    seen = []

    def fake_load(name, split, prof, seed=0):
        seen.append(prof)
        raise StopIteration

    monkeypatch.setattr(ch07, "load_dataset", fake_load)
    with pytest.raises(StopIteration):
        ch07.anti_robust_splits("mnist", "smoke", None)
    base = get_profile("smoke")
    assert seen[0].image_size == base.image_size and seen[0].arch == base.arch


def test_robustified_examples_use_the_callers_cache(monkeypatch, tmp_path):
    import nbs_lib.studies.ch07_robust_transfer as ch07

    used = []

    def fake(robust, profile, step_size=1.0, seed=0, device="auto", cache=None):
        used.append(cache)
        raise StopIteration

    monkeypatch.setattr(ch07, "robustified_photos", fake)
    cache = RunCache(tmp_path)
    with pytest.raises(StopIteration):
        ch07.robustified_examples(None, "smoke", cache=cache)
    assert used == [cache]


def test_checkpoint_ladder_reads_papermills_string_radii(monkeypatch):
    import nbs_lib.studies.ch07_robust_transfer as rt

    monkeypatch.setattr(rt, "checkpoint_source", lambda path, spec, arch, name: (path, spec))
    ladder = rt.checkpoint_ladder({"8": "eps8.ckpt", "0": "eps0.ckpt", "0.5": "eps05.ckpt"})
    assert ladder == [("eps0.ckpt", None), ("eps05.ckpt", "PGD-3#0.5"), ("eps8.ckpt", "PGD-3#8")]
    with pytest.raises(ValueError, match="not a number"):
        rt.checkpoint_ladder({"zero": "a.ckpt", "4": "b.ckpt"})
    with pytest.raises(ValueError, match="at least two"):
        rt.checkpoint_ladder({"4": "b.ckpt"})


def test_what_reproduced_applies_its_stated_rules():
    from nbs_lib.report.verdicts import count_verdict
    from nbs_lib.studies.ch07_robust_transfer import what_reproduced

    assert [count_verdict(2, 2), count_verdict(1, 2), count_verdict(0, 2), count_verdict(0, 0)] == \
        ["reproduced", "partly", "no", "not testable"]
    activations = pd.DataFrame({"source_eps": [0, 0, 2, 2, 8, 8], "start_roughness": 0.3,
                                "final_roughness": [0.40, 0.38, 0.37, 0.35, 0.32, 0.30]})
    anti_table = pd.DataFrame({"dataset": ["mnist", "digits", "mnist"], "split": ["train", "train", "test"],
                               "C predicts t %": [96.0, 80.0, 10.0]})
    rows = []
    for variant, early, final in (("standard", [0.5, -1.0], [1.0, 1.0]), ("anti-robust", [0.5, 0.5], [-1.0, 0.0])):
        for mode, e, f in zip(("fixed-feature", "full fine-tuning"), early, final):
            rows.append({"dataset": "mnist", "variant": variant, "mode": mode, "early rho": e, "final rho": f,
                         "final eps=0": 50.0, "final eps=8": 15.0})
    summary = pd.DataFrame(rows)
    modified = pd.DataFrame({"dataset": "mnist", "mode": "full fine-tuning", "epoch": [1, 1, 2, 2],
                             "source": ["orig", "robust", "orig", "robust"], "accuracy": [60.0, 70.0, 90.0, 80.0]})
    out = what_reproduced(activations, anti_table, summary, modified, {"mnist": 10.0}, "orig", "robust")
    verdicts = dict(zip(out.claim.str[:24], out.verdict))
    assert out.verdict.tolist() == ["partly", "partly", "reproduced", "partly", "reproduced", "reproduced", "no"]
    assert out["count"].tolist()[:2] == ["2 of 2", "1 of 2"] and len(verdicts) >= 5
    harder = what_reproduced(activations.assign(final_roughness=activations.final_roughness - 0.1), anti_table,
                             summary, modified, {"mnist": 30.0}, "orig", "robust")
    assert harder.verdict.tolist()[:3] == ["reproduced", "partly", "no"]
    assert harder.verdict.tolist()[4] == "not testable"  # anti-robust labels at chance: rho means nothing
    flat = what_reproduced(activations.assign(final_roughness=0.3 - 0.001 * activations.source_eps / 8),
                           anti_table, summary, modified, {"mnist": 10.0}, "orig", "robust")
    assert flat.verdict.tolist()[0] == "no"  # a roughness change of 0.001 is no change


def _lazy(ds: LabeledImages) -> LabeledImages:
    """``ds`` decoded item by item, as a paper-size set is (``images`` is None)."""
    return LabeledImages(ds.name, ds.split, ds.classes, ds.labels, fetch=lambda i: ds.images[i])


def test_anti_robust_images_of_a_lazy_dataset_match_in_memory(tiny_model, one_thread):
    """At 224 px the targets are lazy; the construction raised for them (issue 21)."""
    ds = LabeledImages("toy", "train", list("abcd"), torch.arange(10) % 4, images=_images(10))
    eager = anti_robust_images(tiny_model, ds, "PGD-5#16", seed=0, device="cpu", batch_size=4)
    lazy = anti_robust_images(tiny_model, _lazy(ds), "PGD-5#16", seed=0, device="cpu", batch_size=4)
    assert torch.allclose(lazy.data.images, eager.data.images, atol=1e-6)
    assert torch.equal(lazy.data.labels, eager.data.labels)
    assert lazy.success_rate == eager.success_rate
    assert lazy.max_perturbation == pytest.approx(eager.max_perturbation)


def test_robustified_photos_match_the_robust_representation_and_are_cached(tiny_model, tmp_path, one_thread):
    import nbs_lib.studies.ch07_robust_transfer as rt
    from nbs_lib.methods.train.recipes import TrainedModel
    from nbs_lib.studies.sources import SourceModel

    robust = SourceModel("toy", "PGD-3#4", TrainedModel(tiny_model, {"id": 1}, [], 0.0), None, 0.0, 0.0, "x")
    prof = get_profile("smoke", robustify_steps=10, image_size=16)
    cache = RunCache(tmp_path)
    made = rt.robustified_photos(robust, prof, device="cpu", cache=cache)
    assert made["images"].shape == (prof.robustify_pool, 3, 16, 16)
    assert (made["final"] < made["start"]).all()
    assert not torch.equal(made["seeds"], made["original"])  # every crop starts from another one
    again = rt.robustified_photos(robust, prof, device="cpu", cache=cache)
    assert torch.equal(again["images"], made["images"])
    rows = rt.robustified_examples(robust, prof, device="cpu", count=3, cache=cache)
    assert [name for name, _ in rows] == ["original", "seed crop", "robustified"]
    assert torch.equal(rows[2][1][0][0], made["images"][0])


def test_anti_robust_examples_of_a_lazy_target(monkeypatch):
    import nbs_lib.studies.ch07_robust_transfer as rt

    ds = LabeledImages("toy", "train", list("abcd"), torch.arange(8) % 4, images=_images(8))
    monkeypatch.setattr(rt, "load_dataset", lambda *args, **kwargs: _lazy(ds))
    made = rt.AntiRobustSplit(LabeledImages("toy-antirobust", "train", ds.classes, (ds.labels + 1) % 4,
                                            images=_images(8, seed=3)), ds.labels, 100.0, 0.1)
    rows = rt.anti_robust_examples({"toy": {"train": made}}, "smoke", count=3)
    assert torch.equal(rows[0][1][0][0], ds.images[0]) and rows[0][1][1][1] == "y=b"
    assert rows[1][1][2][1] == "t=d"
