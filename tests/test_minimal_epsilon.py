"""Minimal adversarial radius: closed form on a linear model, ladder against bisection."""

import numpy as np
import pytest
import torch
from torch import nn

from nbs_lib.methods.attacks import pgd
from nbs_lib.methods.minimal_epsilon import (curve_area, median_minimal_epsilon, minimal_epsilon,
                                             minimal_epsilon_bisection, refine_floor, robust_curve)


def _linear_case(seed=0, n=40):
    """A two-class linear model and images near 0.5, where PGD's corner is the optimal attack."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 48, generator=g))
        model[1].bias.copy_(-model[1].weight.sum(1) * 0.5)  # both logits equal at the grey image
    images = 0.5 + 0.02 * torch.randn(n, 3, 4, 4, generator=g)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model.eval(), images, labels


def _closed_form(model, images, labels, dual_norm):
    """margin / ||w_y - w_other||_dual: the smallest radius that reaches the other class."""
    w = model[1].weight.detach()
    with torch.no_grad():
        logits = model(images)
    margin = (logits.gather(1, labels[:, None]) - logits.gather(1, 1 - labels[:, None])).squeeze(1)
    diff = w[labels] - w[1 - labels]
    return (margin / diff.norm(p=dual_norm, dim=1)).numpy()


def test_linf_ladder_and_bisection_match_the_closed_form():
    model, images, labels = _linear_case()
    exact = 255 * _closed_form(model, images, labels, dual_norm=1)  # paper units: 1/255
    assert exact.max() < 8, "the case must sit inside the grid"
    grid = np.round(np.arange(0.05, 8.0001, 0.05), 4)
    ladder = minimal_epsilon(model, images, labels, grid, progress=False, device="cpu")
    expected = np.array([grid[np.searchsorted(grid, e, side="right")] for e in exact])
    np.testing.assert_allclose(ladder, expected)
    bisect = minimal_epsilon_bisection(model, images, labels, high=8.0, iterations=12, device="cpu")
    assert np.all(bisect >= exact - 1e-3) and np.all(bisect <= exact + 8.0 / 2**12 + 1e-3)


def test_refine_floor_sharpens_only_the_images_censored_at_the_first_rung():
    model, images, labels = _linear_case()
    exact = 255 * _closed_form(model, images, labels, dual_norm=1)
    floor = float(np.quantile(exact, 0.5))  # half the images break below the first rung
    labels[0] = 1 - labels[0]  # one clean-misclassified image: radius 0, never bisected
    grid = [floor, 2 * floor, 8.0]
    ladder = minimal_epsilon(model, images, labels, grid, progress=False, device="cpu")
    censored = ladder == floor
    assert ladder[0] == 0 and censored.sum() >= 15
    refined = refine_floor(model, images, labels, ladder, floor, iterations=6, device="cpu")
    np.testing.assert_array_equal(refined[~censored], ladder[~censored])
    assert np.all(refined[censored] <= floor)
    assert np.all(np.abs(refined[censored] - exact[censored]) <= floor / 2**6 + 1e-3)
    assert len(np.unique(refined[censored])) > 5, "the refined radii must no longer share one value"
    np.testing.assert_array_equal(refine_floor(model, images, labels, ladder, floor, iterations=0), ladder)


def test_l2_minimal_radius_matches_the_closed_form():
    model, images, labels = _linear_case(seed=1)
    exact = _closed_form(model, images, labels, dual_norm=2)  # L2 radius on [0, 1]
    bisect = minimal_epsilon_bisection(model, images, labels, high=1.0, iterations=14, norm="L2", device="cpu")
    np.testing.assert_allclose(bisect, exact, atol=2 / 2**14)


def _trained_mlp():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 2))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x[:200], y[:200]


def test_ladder_and_bisection_agree_on_a_trained_model():
    model, images, labels = _trained_mlp()
    step = 1.0
    grid = np.arange(step, 64 + step, step)
    ladder = minimal_epsilon(model, images, labels, grid, progress=False, device="cpu")
    bisect = minimal_epsilon_bisection(model, images, labels, high=64.0, iterations=10, device="cpu")
    assert np.mean(ladder == 0) < 0.2, "the model must be trained"
    finite = np.isfinite(ladder) & np.isfinite(bisect)
    assert finite.mean() > 0.9
    close = np.abs(ladder[finite] - bisect[finite]) <= step + 64 / 2**10
    assert close.mean() >= 0.95
    assert abs(median_minimal_epsilon(ladder) - median_minimal_epsilon(bisect)) <= step
    curve = robust_curve(ladder, np.concatenate([[0], grid]))
    assert np.all(np.diff(curve) <= 0) and curve[-1] <= 5
    assert curve[0] == pytest.approx(100 * np.mean(ladder > 0))


def test_ladder_is_at_least_as_strong_as_pgd_at_each_radius():
    model, images, labels = _trained_mlp()
    grid = [4.0, 8.0, 16.0]
    ladder = minimal_epsilon(model, images, labels, grid, progress=False, device="cpu")
    for r in grid:
        with torch.no_grad():
            robust = (model(pgd(model, images, labels, r / 255, 10)).argmax(1) == labels) & \
                     (model(images).argmax(1) == labels)
        assert int(np.sum(ladder > r)) <= int(robust.sum())


def test_curve_area_and_median_closed_forms():
    m = np.array([0.0, 0.5, 1.0, np.inf])
    assert curve_area(m, 2.0) == pytest.approx(100 * (0 + 0.5 + 1 + 2) / 4 / 2)
    assert median_minimal_epsilon(m) == 1.0
    np.testing.assert_allclose(robust_curve(m, [0, 0.5, 1, 3]), [75, 50, 25, 25])
    assert np.isnan(median_minimal_epsilon([0.0, 0.0]))


def test_bad_grids_and_radii_fail_clearly():
    model, images, labels = _linear_case()
    with pytest.raises(ValueError, match="strictly increasing"):
        minimal_epsilon(model, images, labels, [1.0, 0.5], progress=False)
    with pytest.raises(ValueError, match="positive"):
        minimal_epsilon_bisection(model, images, labels, high=0.0)
    with pytest.raises(ValueError, match="one radius per image"):
        pgd(model, images, labels, torch.full((3,), 0.01), 5)


def test_per_image_pgd_equals_scalar_pgd_when_radii_are_equal():
    model, images, labels = _trained_mlp()
    for norm in ("Linf", "L2"):
        scalar = pgd(model, images, labels, 0.05, 7, norm=norm)
        tensor = pgd(model, images, labels, torch.full((len(images),), 0.05), 7, norm=norm)
        torch.testing.assert_close(tensor, scalar, atol=1e-6, rtol=0)


def test_gallop_rungs_double_up_to_the_last():
    from nbs_lib.methods.minimal_epsilon import gallop_rungs

    assert gallop_rungs(1) == [0]
    assert gallop_rungs(2) == [0, 1]
    assert gallop_rungs(23) == [0, 1, 3, 7, 15, 22]


def test_the_search_attacks_each_image_a_logarithmic_number_of_times(monkeypatch):
    """The ladder's answer (first rung that breaks) at about 2 log2(k) PGD runs per image, not k."""
    import nbs_lib.methods.minimal_epsilon as me

    model, images, labels = _linear_case()
    exact = 255 * _closed_form(model, images, labels, dual_norm=1)
    grid = np.round(np.arange(0.05, 8.0001, 0.05), 4)
    rows = []
    real = me._broken
    monkeypatch.setattr(me, "_broken", lambda m, x, *a, **k: rows.append(len(x)) or real(m, x, *a, **k))
    radii = minimal_epsilon(model, images, labels, grid, progress=False, device="cpu")
    rungs = np.searchsorted(grid, exact, side="right")  # each image's first breaking rung
    np.testing.assert_allclose(radii, grid[rungs])
    linear = int((rungs + 1).sum())  # a ladder attacks an image at every rung up to its own
    assert sum(rows) <= len(images) * (2 * np.log2(len(grid)) + 2) < linear
