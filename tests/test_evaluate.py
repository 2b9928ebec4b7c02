"""Tests of nbs_lib.methods.evaluate: AOI, AAI, DR (Table 1) and the tidy robustness tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nbs_lib.methods.evaluate import (
    RobustnessResult,
    accuracy,
    accuracy_vs_epsilon,
    decline_ratio,
    evaluate_robustness,
    robust_accuracy,
    robustness_table,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _separable_data(n=240, d=2, classes=3, seed=0):
    """Gaussian blobs in a 1x{d}x{d} image in [0, 1]: linearly separable, margin about 0.15."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.rand(classes, d * d, generator=g) * 0.6 + 0.2
    x = centres[y] + 0.03 * torch.randn(n, d * d, generator=g)
    return x.clamp(0, 1).view(n, 1, d, d), y


def _linear_model(x, y, classes=3, steps=300, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), classes))
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def linear_setup():
    x, y = _separable_data()
    return _linear_model(x, y), x, y


def test_decline_ratio_values():
    # Table 1, Pets, standard model: AOI 60.62, AAI 40.23, DR 33.63 (from rounded inputs)
    assert decline_ratio(60.62, 40.23) == pytest.approx(33.63, abs=0.02)
    assert decline_ratio(95.54, 1.34) == pytest.approx(98.59, abs=0.01)  # CIFAR10, fine-tuned
    assert decline_ratio(100.0, 100.0) == 0.0
    assert decline_ratio(50.0, 0.0) == 100.0
    assert math.isnan(decline_ratio(0.0, 0.0))
    assert isinstance(decline_ratio(80, 40), float)
    arr = decline_ratio(np.array([80.0, 0.0]), np.array([40.0, 0.0]))
    assert arr[0] == 50.0 and np.isnan(arr[1])


def test_accuracy_matches_a_manual_count(linear_setup):
    model, x, y = linear_setup
    with torch.no_grad():
        manual = 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)
    for bs in (7, 256):
        assert accuracy(model, x, y, device="cpu", batch_size=bs, progress=False) == pytest.approx(manual)
    assert manual > 95


def test_accuracy_runs_in_eval_mode_and_restores_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(4, 3))
    x, y = _separable_data()
    model.train()
    a = accuracy(model, x, y, device="cpu", progress=False)
    b = accuracy(model, x, y, device="cpu", progress=False)
    assert a == b  # dropout off: deterministic
    assert model.training and model[1].training


def test_robust_accuracy_bounds(linear_setup):
    model, x, y = linear_setup
    aoi = accuracy(model, x, y, device="cpu", progress=False)
    assert robust_accuracy(model, x, y, "PGD-10#0", device="cpu", progress=False) == aoi
    small = robust_accuracy(model, x, y, "PGD-10#2.0", device="cpu", progress=False)
    large = robust_accuracy(model, x, y, "PGD-10#128", device="cpu", progress=False)
    assert large <= small <= aoi
    assert large < 5
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_robustness_shares_aoi(linear_setup):
    model, x, y = linear_setup
    attacks = ["PGD-10#8", "FGSM#8", "AA-10#8"]
    with pytest.warns(UserWarning, match="DLR"):  # 3 classes: AutoAttack skips APGD-T
        res = evaluate_robustness(model, x, y, attacks, device="cpu", batch_size=64, progress=False, n_queries=50)
    assert [r.attack for r in res] == ["PGD-10#8.0", "FGSM#8.0", "AA-10#8.0"]
    assert all(isinstance(r, RobustnessResult) for r in res)
    assert len({r.aoi for r in res}) == 1
    for r in res:
        assert r.n == len(x)
        assert 0 <= r.aai <= r.aoi
        assert r.dr == pytest.approx(100 * (r.aoi - r.aai) / r.aoi)
    single = evaluate_robustness(model, x, y, "PGD-10#8", device="cpu", progress=False)
    assert single[0].aai == res[0].aai
    with pytest.raises(ValueError, match="Accepted forms"):
        evaluate_robustness(model, x, y, ["PGD#8"], device="cpu", progress=False)


def test_robustness_table_shape_and_columns(linear_setup):
    model, x, y = linear_setup
    x2, y2 = _separable_data(n=90, seed=1)
    model2 = _linear_model(x2, y2, seed=1)
    models = {("blobs", "standard"): model, ("blobs", "other"): model2, ("blobs2", "standard"): model2}
    data = {"blobs": (x, y), "blobs2": (x2, y2)}
    attacks = ["PGD-10#0.5", "FGSM#2.0"]
    df = robustness_table(models, data, attacks, device="cpu", progress=False)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["dataset", "model", "attack", "aoi", "aai", "dr", "n"]
    assert len(df) == len(models) * len(attacks)
    assert list(df.n) == [len(x)] * 4 + [len(x2)] * 2
    assert (df.aai <= df.aoi).all()
    assert set(df.attack) == {"PGD-10#0.5", "FGSM#2.0"}
    with pytest.raises(ValueError, match="No data"):
        robustness_table({("missing", "m"): model}, data, attacks, device="cpu", progress=False)


def test_accuracy_vs_epsilon(linear_setup):
    model, x, y = linear_setup
    df = accuracy_vs_epsilon(model, x, y, [0, 2, 8, 32, 128], attack="PGD-10", device="cpu", progress=False)
    assert list(df.columns[:2]) == ["eps", "accuracy"]
    assert list(df.eps) == [0, 2, 8, 32, 128]
    assert df.accuracy.iloc[0] == accuracy(model, x, y, device="cpu", progress=False)
    assert (np.diff(df.accuracy.to_numpy()) <= 1e-9).all()
    assert df.accuracy.iloc[-1] < 5
    with pytest.raises(ValueError, match="without its epsilon"):
        accuracy_vs_epsilon(model, x, y, [1], attack="PGD-10#0.5")


def test_only_clean_correct_images_are_attacked(linear_setup, monkeypatch):
    """An image the model already gets wrong counts as broken and is never attacked
    (the clean-correct rule of AutoAttack and RobustBench)."""
    import nbs_lib.methods.evaluate as evaluate_module

    model, x, y = linear_setup
    wrong = y.clone()
    wrong[:40] = (y[:40] + 1) % 3  # 40 labels the model cannot match
    correct = evaluate_module.correct_mask(model, x, wrong, "cpu", progress=False)
    attacked = []
    real = evaluate_module.adversarial_batches

    def spy(model, data, *args, **kwargs):
        attacked.append(len(data[0]))
        yield from real(model, data, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "adversarial_batches", spy)
    result = evaluate_module.evaluate_robustness(model, x, wrong, ["PGD-5#8"], device="cpu", progress=False)[0]
    assert sum(attacked) == int(correct.sum()) < len(x)
    assert result.aai <= result.aoi == 100.0 * int(correct.sum()) / len(x)

