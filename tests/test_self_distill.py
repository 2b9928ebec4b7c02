"""Adversarial self-distillation (robust sources made offline, chapters 5-7) and the DM terms."""

import pytest
import torch
from torch import nn

from nbs_lib.data.photos import HELD_OUT, missing_photos, photo_crops, split_photos
from nbs_lib.methods.train.self_distill import DistillConfig, agreement, distill
from nbs_lib.methods.train.terms import lambda_from_beta, mse_inner_max

SIZE = 8

needs_photos = pytest.mark.skipif(bool(missing_photos()), reason="the wallpaper photographs: run `make data`")


def tiny_teacher(seed: int = 0) -> nn.Module:
    """A linear 5-class model on 8x8 crops: a robust part (each channel's mean colour, large
    weights) plus a non-robust part (weights of random sign on every pixel, half of each
    sign per channel, so that it cancels on smooth crops while an L-inf perturbation of
    32/255 aligns it: 192 pixels * 0.2 * 32/255 = 4.8 logits)."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randn(5, 3, generator=g) * 12
    robust = colour[:, :, None].expand(5, 3, SIZE * SIZE).reshape(5, -1) / (SIZE * SIZE)
    signs = torch.tensor([1.0, -1.0]).repeat_interleave(SIZE * SIZE // 2)
    fragile = torch.stack([torch.cat([signs[torch.randperm(SIZE * SIZE, generator=g)] for _ in range(3)])
                           for _ in range(5)]) * 0.2
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 5))
    with torch.no_grad():
        model[1].weight.copy_(robust + fragile)
        model[1].bias.zero_()
    return model


@needs_photos
def test_photo_splits_are_disjoint_and_crops_deterministic():
    assert not set(split_photos("train")) & set(HELD_OUT)
    assert {"chelsea", "coffee"}.isdisjoint(split_photos("train") + HELD_OUT)
    a, b = photo_crops(6, SIZE, seed=3), photo_crops(6, SIZE, seed=3)
    assert a.shape == (6, 3, SIZE, SIZE) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, photo_crops(6, SIZE, seed=4))
    with pytest.raises(ValueError, match="train"):
        photo_crops(2, SIZE, 0, split="test")


@needs_photos
def test_self_distillation_buys_robust_agreement_and_keeps_clean_agreement():
    teacher = tiny_teacher()
    held = photo_crops(256, SIZE, seed=99, split="held_out")
    rungs = {}
    for eps in (0.0, 32.0):
        config = DistillConfig(eps_255=eps, steps=300, batch_size=32, image_size=SIZE, lr=1e-2, seed=0)
        student, history = distill(tiny_teacher(), config, "cpu", progress=False)
        rungs[eps] = agreement(student, teacher, held, radii_255=(0.0, 32.0), device="cpu")
    assert rungs[0.0][0.0] > 0.95  # the control stays the teacher ...
    assert rungs[0.0][32.0] < 0.6  # ... and as fragile as the teacher
    assert rungs[32.0][32.0] > rungs[0.0][32.0] + 0.25  # the robust rung keeps its predictions in the ball
    assert rungs[32.0][0.0] > 0.8  # while agreeing with the teacher on clean crops


def test_distill_config_checks_its_radius():
    with pytest.raises(ValueError, match="eps_255"):
        DistillConfig(eps_255=-1)
    assert DistillConfig(eps_255=1.0, attack_steps=3).spec == "PGD-3#1"


def test_lambda_from_beta_by_hand():
    # the authors' beta = 500, batch 128, 512 features, eps 0.5/255, every feature moved by 1
    assert lambda_from_beta() == pytest.approx(500 * (0.5 / 255) / (128 * 512))
    assert lambda_from_beta() == pytest.approx(1.496e-5, rel=1e-3)
    # the two terms agree at that operating point: a batch of 128 images, each feature moved by 1
    delta, eps = torch.ones(128, 512), 0.5 / 255
    authors = 500 * (1 / 128) * torch.nn.functional.mse_loss(delta, torch.zeros_like(delta))
    eq5 = lambda_from_beta() * (delta.abs().sum(1) / eps).mean()
    assert float(authors) == pytest.approx(float(eq5), rel=1e-6)
    assert lambda_from_beta(feature_change=2.0) == pytest.approx(2 * lambda_from_beta())


def test_mse_inner_max_as_released():
    """Eval mode is the caller's; the start is x + 0.001 N(0, 1); signed steps of 1.25 eps / k;
    the iterate stays in the ball and in [0, 1]; the feature distance grows."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 16))
    x = torch.rand(4, 3, SIZE, SIZE)
    eps = 2 / 255
    x_adv = mse_inner_max(f, x, eps, steps=10, generator=torch.Generator().manual_seed(1))
    assert (x_adv - x).abs().max() <= eps + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    start = mse_inner_max(f, x, eps, steps=1, generator=torch.Generator().manual_seed(1))
    distance = lambda z: float(((f(z) - f(x)) ** 2).sum())  # noqa: E731
    assert distance(x_adv) > distance(start) > 0
    # ten signed steps of 1.25 eps / 10 carry most pixels to the ball's edge (a linear f: 91% of them)
    moved = (x_adv - x).abs()[(x - eps > 0) & (x + eps < 1)]
    assert (moved > 0.9 * eps).float().mean() > 0.8 and moved.mean() > 0.9 * eps


@needs_photos
def test_a_rung_is_cached_validated_and_fine_tunable(tmp_path, monkeypatch):
    """robust_imagenet_source at smoke: trained once, validated, stored as an ImageNet-format file."""
    from nbs_lib.core.runs import RunCache
    from nbs_lib.models.registry import load_model
    from nbs_lib.studies import imagenet_sources

    torch.set_num_threads(1)
    cache = RunCache(tmp_path)
    rung = imagenet_sources.robust_imagenet_source(2.0, "smoke", device="cpu", cache=cache, progress=False)
    assert len(rung.trained.history) == 2 and rung.adversarial == "PGD-3#2"
    assert {"agreement@0", "agreement@2", "ll@0.5", "chelsea kept"} <= set(rung.validation)
    assert rung.label == "imagenet, self-distilled (PGD-3#2)"
    model = load_model("efficientnet_lite0", weights=rung.weights, num_classes=26).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.features(x), rung.trained.model.features(x))  # the file is the rung's f
    calls = []
    monkeypatch.setattr(imagenet_sources, "self_distill", lambda *a, **k: calls.append(1))
    again = imagenet_sources.robust_imagenet_source(2.0, "smoke", device="cpu", cache=cache, progress=False)
    assert not calls and again.validation == rung.validation  # from the cache, not retrained
    table = imagenet_sources.ladder_table({2.0: rung}, "smoke", device="cpu", cache=cache)
    assert list(table.source) == ["ImageNet (teacher)", "rung 2/255"]
    assert table.loc[0, "agreement@0"] == 1.0


def test_distillation_on_a_fixed_pool_teaches_what_the_teacher_says_of_the_matching_crop():
    """Section 4.3 of the second work: the student sees a stand-in crop and learns the teacher's
    output on the crop it stands for, so on the stand-ins it ends up agreeing with that output."""
    g = torch.Generator().manual_seed(0)
    originals = torch.rand(16, 3, 1, 1, generator=g).expand(16, 3, SIZE, SIZE).contiguous()  # flat colours
    stand_ins = originals.roll(1, dims=0)  # each crop stands for its neighbour
    teacher = tiny_teacher()
    config = DistillConfig(eps_255=0.0, steps=200, batch_size=8, image_size=SIZE, lr=1e-2, seed=0)
    student, history = distill(tiny_teacher(), config, "cpu", progress=False, pool=(stand_ins, originals))
    with torch.no_grad():
        taught = (student(stand_ins).argmax(1) == teacher(originals).argmax(1)).float().mean()
        untaught = (teacher(stand_ins).argmax(1) == teacher(originals).argmax(1)).float().mean()
    assert taught > untaught + 0.3, (taught, untaught)  # a linear student cannot fit every pair
    assert history[-1]["clean"] < history[0]["clean"] and history[0]["robust"] == history[0]["clean"]
    with pytest.raises(ValueError, match="pool"):
        distill(tiny_teacher(), config, "cpu", progress=False, pool=(stand_ins, originals[:4]))
