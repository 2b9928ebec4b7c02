"""Partial fine-tuning to convergence (L-BFGS head, BatchNorm re-estimated) and fresh samples per epoch."""

import pytest
import torch
from torch import nn

from nbs_lib.data.registry import fresh_training_images, load_dataset
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.head import fit_linear_head, reestimate_batchnorm
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.terms import config_key
from nbs_lib.models.registry import load_model


class Blobs:
    """Two classes of 32x32 images: a bright and a dark square, with noise."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        base = self.labels.float().view(-1, 1, 1, 1) * 0.6 + 0.2
        self.images = (base + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.labels)


def _separable(n=600, d=64, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, d, generator=g)
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, d, generator=g), labels


def test_the_converged_head_fits_separable_features():
    x, y = _separable()
    linear = nn.Linear(x.shape[1], 10)
    history = fit_linear_head(linear, x, y, l2=1e-4, rounds=50)
    assert history[-1]["train_acc"] >= 99.0
    assert history[-1]["objective"] <= history[0]["objective"]
    assert len(history) < 50  # stopped because it converged, not because the rounds ran out


def test_the_head_stops_at_the_optimum_of_the_penalised_objective():
    """Overlapping classes (no separating margin): the minimum of mean CE + l2 * ||W||^2 is
    interior, so at the end the objective's gradient vanishes and the last two rounds agree."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 32, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(400, generator=g) > 0).long() + 2 * (x[:, 1] > 0).long()
    l2 = 1e-2
    linear = nn.Linear(32, 4)
    history = fit_linear_head(linear, x, y, l2=l2, rounds=200)
    assert len(history) >= 2
    last, before = history[-1]["objective"], history[-2]["objective"]
    assert abs(last - before) <= 1e-6 * abs(before)  # converged, not cut off
    linear.zero_grad()
    objective = torch.nn.functional.cross_entropy(linear(x), y) + l2 * linear.weight.square().sum()
    objective.backward()
    gradient = torch.cat([linear.weight.grad.flatten(), linear.bias.grad])
    assert float(gradient.norm()) < 1e-4
    assert last == pytest.approx(float(objective.detach()), rel=1e-5)


def test_a_few_adam_epochs_stop_short_where_the_converged_head_does_not():
    """The defect the L-BFGS head fixes: a few epochs of Adam leave the head far from its optimum."""
    x, y = _separable(d=256, seed=1)
    adam_head = nn.Linear(x.shape[1], 10)
    optimizer = torch.optim.Adam(adam_head.parameters(), lr=1e-4)
    for _ in range(3):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(adam_head(x[i:i + 64]), y[i:i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    converged = nn.Linear(x.shape[1], 10)
    fit_linear_head(converged, x, y, l2=1e-4, rounds=50)
    ce = lambda m: float(nn.functional.cross_entropy(m(x), y).detach())  # noqa: E731
    assert ce(converged) < 0.5 * ce(adam_head)


def _bn_stats(model):
    return {k: v.clone() for k, v in model.features.state_dict().items() if "running" in k}


@pytest.mark.parametrize("target_bn", [False, True])
def test_the_bn_variant_changes_the_running_statistics_and_the_frozen_one_does_not(target_bn):
    model = load_model("resnet18", weights=None, num_classes=2, seed=0)
    weights = {k: v.clone() for k, v in model.features.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    before = _bn_stats(model)
    config = TrainConfig("partial", epochs=5, batch_size=16, lr_f=0.0, lr_g=0.0, head="lbfgs",
                         head_l2_grid=(1e-3,), target_bn=target_bn)
    data = Blobs()
    history = fit(model, data, config, val=data, device="cpu", progress=False)
    after = _bn_stats(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert bool(changed) == target_bn
    for k, v in model.features.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k  # f's weights are never trained
    assert history[-1]["val_acc"] == 100.0 and not model.training


def test_reestimated_statistics_are_the_targets_mean():
    """After re-estimation the first BatchNorm's running mean is the mean of its inputs on the data."""
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    data = Blobs(n=48)
    reestimate_batchnorm(features, data, "cpu", batch_size=16)
    with torch.no_grad():
        inputs = features[0](data.images)
    assert torch.allclose(features[1].running_mean, inputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert features[1].momentum == 0.1 and not features.training


def test_the_l2_strength_is_chosen_on_the_validation_split():
    model = load_model("resnet18", weights=None, num_classes=2, seed=0)
    config = TrainConfig("partial", epochs=5, batch_size=16, lr_f=0.0, lr_g=0.0, head="lbfgs",
                         head_l2_grid=(1e-3, 1e-1))
    history = fit(model, Blobs(), config, val=Blobs(seed=1), device="cpu", progress=False)
    assert set(history[-1]["head_l2_search"]) == {"0.001", "0.1"}
    assert history[-1]["head_l2"] in (1e-3, 1e-1)


@pytest.mark.parametrize("fields, fragment", [
    ({"regime": "full", "head": "lbfgs", "head_l2_grid": (1e-3,)}, "regime='partial'"),
    ({"regime": "partial", "head": "lbfgs"}, "head_l2_grid"),
    ({"regime": "partial", "head": "lbfgs", "head_l2_grid": (0.0,)}, "positive"),
    ({"regime": "partial", "head": "newton"}, "Unknown head"),
    ({"regime": "full", "target_bn": True}, "target_bn"),
])
def test_bad_head_settings_are_clear_errors(fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainConfig(epochs=1, batch_size=8, lr_f=0.0, lr_g=1e-3, **fields)


def test_cache_keys_of_models_trained_before_these_options_are_unchanged():
    key = config_key(TrainConfig("full", epochs=2, batch_size=8, lr_f=1e-4, lr_g=1e-3))
    assert not {"head", "head_l2_grid", "target_bn", "fresh_samples"} & set(key)
    converged = config_key(TrainConfig("partial", epochs=2, batch_size=8, lr_f=0.0, lr_g=0.0, head="lbfgs",
                                       head_l2_grid=(1e-3,), target_bn=True))
    assert converged["head"] == "lbfgs" and converged["target_bn"] is True


def test_fresh_alphabet_images_are_new_every_epoch_and_never_the_validation_split():
    train = load_dataset("alphabet", "train", "smoke", seed=0)
    first, second = (fresh_training_images("alphabet", e, 52, "smoke", 0) for e in (1, 2))
    assert len(first) == 52 and torch.equal(first.labels, torch.arange(52) % 26)
    seen = {img.numpy().tobytes() for img in train.images}
    assert not any(img.numpy().tobytes() in seen for img in torch.cat([first.images, second.images]))
    assert not torch.equal(first.images, second.images)
    assert torch.equal(first.images, fresh_training_images("alphabet", 1, 52, "smoke", 0).images)


def test_fresh_samples_of_a_fixed_dataset_name_the_fix():
    with pytest.raises(ValueError, match="fresh_samples"):
        fresh_training_images("mnist", 1, 10, "smoke", 0)


def test_fit_trains_each_later_epoch_on_its_fresh_images():
    model = load_model("resnet18", weights=None, num_classes=2, seed=0)
    config = TrainConfig("standard", epochs=3, batch_size=16, lr_f=0.0, lr_g=1e-3, fresh_samples=True)
    asked = []

    def epoch_data(epoch):
        asked.append(epoch)
        return Blobs(seed=10 + epoch)

    fit(model, Blobs(), config, device="cpu", progress=False, epoch_data=epoch_data)
    assert asked == [1, 2]
    with pytest.raises(ValueError, match="epoch_data"):
        fit(model, Blobs(), config, device="cpu", progress=False)
