"""Targeted UAPs, their measures, snapshots along training and input gradients (nbs_lib.methods.uap)."""

import math

import pytest
import torch
from torch import nn

from nbs_lib.core.runs import RunCache
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.uap import (
    ResnetGenerator,
    UAPGenerator,
    accuracy_under_perturbation,
    fooling_rate,
    gradient_image,
    input_gradient,
    perturbation_alone,
    perturbation_image,
    snapshot_every,
    success_along_training,
    targeted_success_rate,
    train_uap,
    uap_cached,
    uap_eps,
)
from nbs_lib.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


class ChannelMean(nn.Module):
    """Logit k = scale * mean of channel k: the brightest channel wins."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return self.scale * x.mean(dim=(2, 3))


def channel_images(per_class=4, size=8):
    """Images whose class is their bright channel (0.7 against 0.3), ``per_class`` of each."""
    labels = torch.arange(3 * per_class) % 3
    images = torch.full((len(labels), 3, size, size), 0.3)
    images[torch.arange(len(labels)), labels] = 0.7
    return images, labels


class Squares:
    """3 classes of 32x32 images: a red, green or blue 12x12 square at a random place on grey noise."""

    colours = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8]])

    def __init__(self, n=96, seed=0, size=32):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        images = 0.5 + 0.1 * torch.randn(n, 3, size, size, generator=g)
        for i in range(n):
            oy, ox = torch.randint(0, size - 12, (2,), generator=g).tolist()
            images[i, :, oy:oy + 12, ox:ox + 12] = (
                self.colours[self.labels[i]].view(3, 1, 1) + 0.05 * torch.randn(3, 12, 12, generator=g))
        self.images = images.clamp(0, 1)

    def __len__(self):
        return len(self.labels)


def tiny_cnn(num_classes=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))


@pytest.fixture(scope="module")
def squares_model():
    """A ResNet-18 trained from scratch for 3 epochs on the squares (a few seconds)."""
    train, test = Squares(seed=0), Squares(seed=1)
    model = load_model("resnet18", weights=None, num_classes=3, seed=0)
    fit(model, train, TrainConfig("standard", epochs=3, batch_size=16, lr_f=1e-3, lr_g=1e-3),
        device="cpu", progress=False)
    return model, train, test


# --------------------------------------------------------------------------- bounds


def _saturate(gen: UAPGenerator) -> UAPGenerator:
    """Blow up the last conv so tanh sits at +-1: the bound must still hold."""
    last = [m for m in gen.net.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1000.0)
    return gen


@pytest.mark.parametrize("eps_255", [0.5, 4.0, 10.0, 32.0, 255.0])
def test_linf_perturbation_never_exceeds_its_bound(eps_255):
    eps = uap_eps(eps_255, "Linf")
    assert eps == pytest.approx(eps_255 / 255)
    gen = _saturate(UAPGenerator((3, 16, 16), eps, "Linf", ngf=4, n_blocks=1, seed=1))
    delta = gen()
    assert delta.shape == (1, 3, 16, 16)
    assert delta.abs().max().item() <= eps + 1e-6
    assert delta.abs().max().item() >= 0.99 * eps  # saturated: the bound is reached, not just kept


@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_l2_perturbation_is_shrunk_to_its_radius(eps):
    gen = _saturate(UAPGenerator((3, 16, 16), uap_eps(eps, "L2"), "L2", ngf=4, n_blocks=1, seed=2))
    norm = gen().flatten().norm().item()
    assert norm <= eps + 1e-5
    assert norm == pytest.approx(eps, rel=1e-4)  # the raw output (norm ~ 27) was larger
    # a radius larger than the raw output leaves it unchanged
    big = UAPGenerator((3, 16, 16), 200.0, "L2", ngf=4, n_blocks=1, seed=2)
    raw = big.net(big.noise)
    assert torch.equal(big(), raw)


def test_trained_uaps_keep_their_bounds():
    images, _ = channel_images(size=8)
    model = ChannelMean()
    for eps, norm in [(2.0, "Linf"), (16.0, "Linf"), (0.5, "L2")]:
        r = train_uap(model, images, 2, eps=eps, norm=norm, steps=5, batch_size=4, lr=0.05,
                      ngf=4, n_blocks=1, device="cpu", progress=False)
        if norm == "Linf":
            assert r.delta.abs().max().item() <= eps / 255 + 1e-6
        else:
            assert r.delta.flatten().norm().item() <= eps + 1e-5
        assert r.delta.shape == (1, 3, 8, 8) and r.delta.device.type == "cpu"
        assert r.history[-1]["step"] == 5 and r.target == 2


def test_generator_keeps_the_image_size_and_rejects_bad_sizes():
    for norm_layer in ("batch", "instance"):
        gen = ResnetGenerator(ngf=4, n_blocks=2, norm_layer=norm_layer)
        assert gen(torch.rand(1, 3, 16, 24)).shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="divisible by 4"):
        UAPGenerator((3, 30, 30), 0.1)
    with pytest.raises(ValueError, match="divisible by 4"):
        train_uap(ChannelMean(), torch.rand(4, 3, 10, 10), 0, steps=1, device="cpu", progress=False)


# --------------------------------------------------------------------------- measures


def test_success_rate_counts_the_target_class_and_excludes_its_images():
    images, labels = channel_images(per_class=4)
    model = ChannelMean()
    force_2 = torch.full((1, 3, 8, 8), -1.0)
    force_2[:, 2] = 1.0  # after clamping: channel 2 all ones, the others zero
    assert targeted_success_rate(model, images, force_2, 2, device="cpu") == 100.0
    assert targeted_success_rate(model, images, force_2, 0, device="cpu") == 0.0
    # without a perturbation the model is right: class-2 images are the only "successes"
    assert targeted_success_rate(model, images, None, 2, device="cpu") == pytest.approx(100 / 3)
    assert targeted_success_rate(model, images, None, 2, labels, device="cpu") == 0.0
    assert targeted_success_rate(model, images, None, 2, labels, exclude_target_class=False,
                                 device="cpu") == pytest.approx(100 / 3)
    # +0.5 on channel 2 makes it 0.8 (0.7 + 0.5 clamped to 1 on class-2 images): all go to 2
    half = torch.zeros(1, 3, 8, 8)
    half[:, 2] = 0.5
    assert targeted_success_rate(model, images, half, 2, labels, device="cpu") == 100.0
    mild = torch.zeros(1, 3, 8, 8)
    mild[:, 2] = 0.3  # channel 2 at 0.6 stays below the 0.7 of class-0 and class-1 images
    assert targeted_success_rate(model, images, mild, 2, labels, device="cpu") == 0.0
    assert math.isnan(targeted_success_rate(model, images[labels == 2], None, 2, labels[labels == 2],
                                            device="cpu"))


def test_fooling_rate_and_accuracy_under_the_perturbation():
    images, labels = channel_images(per_class=4)
    model = ChannelMean()
    force_2 = torch.full((1, 3, 8, 8), -1.0)
    force_2[:, 2] = 1.0
    assert fooling_rate(model, images, force_2, device="cpu") == pytest.approx(200 / 3)
    r = accuracy_under_perturbation(model, images, labels, force_2, device="cpu")
    assert r.aoi == 100.0 and r.aai == pytest.approx(100 / 3) and r.n == 12
    assert r.dr == pytest.approx(200 / 3)
    none = accuracy_under_perturbation(model, images, labels, torch.zeros(1, 3, 8, 8), device="cpu")
    assert none.aai == 100.0 and none.dr == 0.0
    # a misclassified clean image never counts for AAI, even when the perturbation "fixes" it
    wrong = labels.clone()
    wrong[0] = 1  # image 0 is bright in channel 0: the model says 0
    to_1 = torch.zeros(1, 3, 8, 8)
    to_1[:, 1] = 0.5  # everything becomes class 1
    r = accuracy_under_perturbation(model, images, wrong, to_1, device="cpu")
    assert r.aoi == pytest.approx(100 * 11 / 12) and r.aai == pytest.approx(100 * 4 / 12)


def test_perturbation_alone_predicts_a_class_with_a_confidence():
    model = ChannelMean()
    delta = torch.zeros(1, 3, 8, 8)
    delta[:, 1] = 0.3  # grey canvas 0.5: channel 1 at 0.8
    out = perturbation_alone(model, delta, classes=["r", "g", "b"], target="b")
    assert out["pred"] == 1 and out["pred_name"] == "g" and out["target"] == 2
    p = torch.softmax(torch.tensor([5.0, 8.0, 5.0]), 0)
    assert out["confidence"] == pytest.approx(p[1].item(), rel=1e-5)
    assert out["target_confidence"] == pytest.approx(p[2].item(), rel=1e-5)
    assert out["image"].shape == (3, 8, 8) and out["view"] == "grey"
    assert torch.allclose(out["image"], (0.5 + delta[0]).clamp(0, 1))  # mid-grey canvas + delta
    assert perturbation_image(torch.full((1, 3, 2, 2), 0.7)).eq(1.0).all()  # clamped to [0, 1]
    rescaled = perturbation_alone(model, delta, view="rescaled")
    assert rescaled["pred"] == 1 and 0.0 <= rescaled["confidence"] <= 1.0
    assert rescaled["image"][1].min() == 1.0 and rescaled["image"][0].max() == 0.0
    img = perturbation_image(torch.randn(2, 3, 8, 8), "rescaled")
    assert img.min() == 0.0 and img.max() == 1.0
    assert perturbation_image(torch.zeros(1, 3, 8, 8), "rescaled").eq(0.5).all()
    with pytest.raises(ValueError, match="view"):
        perturbation_image(delta, "raw")


# --------------------------------------------------------------------------- training a UAP


def test_a_trained_uap_drives_a_small_model_to_the_target(squares_model):
    model, train, test = squares_model
    target, chance = 0, 100 / 3
    before = targeted_success_rate(model, test.images, None, target, test.labels, device="cpu")
    for p in model.parameters():
        p.grad = None  # fit leaves the last step's gradients
    r = train_uap(model, train.images, target, eps=32, steps=40, batch_size=16, lr=2e-3, ngf=16,
                  n_blocks=2, seed=0, device="cpu", progress=False)
    after = targeted_success_rate(model, test.images, r.delta, target, test.labels, device="cpu")
    assert after > 2 * chance and after > before + 30, (before, after)
    assert r.history[-1]["success"] > r.history[0]["success"]
    assert all(p.grad is None for p in model.parameters())  # gradients went to the generator only
    assert all(p.requires_grad for p in model.parameters())  # restored after the attack
    alone = perturbation_alone(model, r.delta, target=target)
    assert 0 <= alone["pred"] < 3 and 0.0 <= alone["confidence"] <= 1.0
    assert 0.0 <= alone["target_confidence"] <= 1.0


def test_same_seed_same_uap():
    images, _ = channel_images()
    kw = dict(eps=8, steps=3, batch_size=5, lr=0.01, ngf=4, n_blocks=1, device="cpu", progress=False)
    a = train_uap(ChannelMean(), images, 1, seed=3, **kw)
    b = train_uap(ChannelMean(), images, 1, seed=3, **kw)
    c = train_uap(ChannelMean(), images, 1, seed=4, **kw)
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)


def test_bad_budgets_and_targets_are_clear_errors():
    images, _ = channel_images()
    model = ChannelMean()
    kw = dict(steps=1, device="cpu", progress=False)
    for eps in (0, -1.0, 256.0, 1e9, float("nan")):
        with pytest.raises(ValueError, match=r"must be in \(0, 255\]"):
            train_uap(model, images, 0, eps=eps, **kw)
    with pytest.raises(ValueError, match=r"Unknown target class 7.*3 classes.*0\.\.2"):
        train_uap(model, images, 7, eps=8, **kw)
    with pytest.raises(ValueError, match=r"valid targets: 0=r, 1=g, 2=b"):
        train_uap(model, images, -1, eps=8, classes=["r", "g", "b"], **kw)
    with pytest.raises(ValueError, match="Unknown target class 'y'"):
        targeted_success_rate(model, images, None, "y", classes=["r", "g", "b"], device="cpu")
    with pytest.raises(ValueError, match="Unknown norm"):
        train_uap(model, images, 0, eps=8, norm="L1", **kw)


def test_uap_cached_trains_once_per_config(tmp_path, monkeypatch):
    import nbs_lib.methods.uap as uap_module

    images, _ = channel_images()
    cache = RunCache(tmp_path)
    kw = dict(eps=8, steps=2, batch_size=4, ngf=4, n_blocks=1, device="cpu", progress=False, cache=cache)
    config = {"kind": "target_model", "arch": "channel_mean"}
    first = uap_cached(config, ChannelMean(), images, 2, **kw)
    monkeypatch.setattr(uap_module, "train_uap", lambda *a, **k: pytest.fail("retrained a cached UAP"))
    again = uap_cached(config, ChannelMean(), images, 2, **kw)
    assert torch.equal(first.delta, again.delta) and again.history == first.history
    assert again.config == first.config and again.target == 2
    for changed in ({**kw, "eps": 4}, {**kw, "seed": 1}):
        with pytest.raises(pytest.fail.Exception):
            uap_cached(config, ChannelMean(), images, 2, **changed)
    with pytest.raises(pytest.fail.Exception):
        uap_cached({**config, "arch": "other"}, ChannelMean(), images, 2, **kw)
    with pytest.raises(pytest.fail.Exception):
        uap_cached(config, ChannelMean(), images[:-1], 2, **kw)


# --------------------------------------------------------------------------- along training


class Blobs:
    def __init__(self, n=50):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        self.images = (self.labels.float().view(-1, 1, 1, 1) * 0.6 + 0.2
                       + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.labels)


def test_on_step_is_called_once_per_optimizer_step_and_snapshots_every_k():
    data = Blobs(50)  # batch 8: 7 steps an epoch, 14 in 2 epochs
    config = TrainConfig("standard", epochs=2, batch_size=8, lr_f=0.0, lr_g=1e-2)
    calls = []
    callback, snapshots = snapshot_every(4)
    model = tiny_cnn()

    def on_step(step, m):
        calls.append(step)
        assert m is model and m.training
        callback(step, m)

    fit(model, data, config, device="cpu", progress=False, on_step=on_step)
    assert calls == list(range(1, 15))
    assert [s for s, _ in snapshots] == [1, 5, 9, 13] and len(snapshots) == math.ceil(14 / 4)
    first = snapshots[0][1]["4.weight"]
    assert not torch.equal(first, model.state_dict()["4.weight"])  # copies, not references

    # the final UAP of the model against its own snapshots; the model itself is not touched
    delta = torch.zeros(1, 3, 8, 8)
    final_state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = success_along_training(model, snapshots, data.images, delta, 1, data.labels,
                                  device="cpu", progress=False)
    assert [s for s, _ in rows] == [1, 5, 9, 13]
    assert all(0.0 <= r <= 100.0 for _, r in rows)
    expected = targeted_success_rate(model, data.images, delta, 1, data.labels, device="cpu")
    snap = tiny_cnn()
    snap.load_state_dict(snapshots[-1][1])
    assert rows[-1][1] == targeted_success_rate(snap, data.images, delta, 1, data.labels, device="cpu")
    assert all(torch.equal(v, final_state[k]) for k, v in model.state_dict().items())
    assert expected == targeted_success_rate(model, data.images, delta, 1, data.labels, device="cpu")


def test_step_numbers_continue_after_a_resume(tmp_path):
    data = Blobs(50)
    config = TrainConfig("standard", epochs=2, batch_size=8, lr_f=0.0, lr_g=1e-2)
    payloads = []

    class Stop(Exception):
        pass

    def stop(payload):
        payloads.append(payload)
        raise Stop

    with pytest.raises(Stop):
        fit(tiny_cnn(), data, config, device="cpu", progress=False, on_epoch_end=stop)
    callback, snapshots = snapshot_every(3, directory=tmp_path / "snaps")
    calls = []
    fit(tiny_cnn(), data, config, device="cpu", progress=False, resume=payloads[0],
        on_step=lambda s, m: (calls.append(s), callback(s, m)))
    assert calls == list(range(8, 15))
    assert [s for s, _ in snapshots] == [10, 13] and all(p.is_file() for _, p in snapshots)
    rows = success_along_training(tiny_cnn, snapshots, data.images, torch.zeros(1, 3, 8, 8), 0,
                                  data.labels, device="cpu", progress=False)
    assert [s for s, _ in rows] == [10, 13]


# --------------------------------------------------------------------------- input gradients


def test_input_gradient_points_to_the_target_and_leaves_weights_alone():
    images, _ = channel_images(per_class=2)
    model = ChannelMean()
    grads = input_gradient(model, images, 2, device="cpu", average=False)
    assert grads.shape == images.shape
    # raising channel 2 raises the target's log-probability, the other channels lower it
    assert (grads[:, 2] > 0).all() and (grads[:, :2] < 0).all()
    mean = input_gradient(model, images, 2, device="cpu")
    assert mean.shape == (1, 3, 8, 8) and torch.allclose(mean[0], grads.mean(0))
    assert model.scale.grad is None and model.scale.requires_grad
    # moving along the gradient increases the target's probability
    p0 = torch.softmax(model(images), 1)[:, 2]
    p1 = torch.softmax(model(images + 0.01 * grads.sign()), 1)[:, 2]
    assert (p1 > p0).all()

    cnn = load_model("resnet18", weights=None, num_classes=3, seed=0)
    x = torch.rand(2, 3, 32, 32)
    g = input_gradient(cnn, x, torch.tensor([0, 1]), device="cpu", average=False)
    assert g.shape == x.shape and g.abs().sum() > 0
    assert all(p.grad is None for p in cnn.parameters())
    for mode in ("signed", "abs"):
        img = gradient_image(g, mode)
        assert img.shape == g.shape and img.min() >= 0.0 and img.max() <= 1.0
        assert img.max() > 0.5  # scaled, not squashed to a flat grey
    assert gradient_image(g[0]).shape == (3, 32, 32)
    assert gradient_image(torch.zeros(3, 4, 4)).eq(0.5).all()


def test_universal_pgd_reference_stays_in_bound_and_drives_to_the_target(squares_model):
    from nbs_lib.methods.uap import universal_pgd
    model, train, test = squares_model
    delta = universal_pgd(model, train.images, 0, eps=32, steps=30, batch_size=16, device="cpu")
    assert delta.abs().max() <= 32 / 255 + 1e-6
    before = targeted_success_rate(model, test.images, None, 0, test.labels, device="cpu")
    after = targeted_success_rate(model, test.images, delta, 0, test.labels, device="cpu")
    assert after > before + 30, (before, after)


def test_universal_pgd_and_the_generator_agree_on_a_small_case(squares_model):
    """At mini universal PGD stands in for the generator: on the squares both reach the target alike."""
    from nbs_lib.methods.uap import universal_pgd
    model, train, test = squares_model
    for p in model.parameters():
        p.grad = None
    generator = train_uap(model, train.images, 0, eps=32, steps=40, batch_size=16, lr=2e-3, ngf=16, n_blocks=2,
                          seed=0, device="cpu", progress=False)
    direct = universal_pgd(model, train.images, 0, eps=32, steps=40, batch_size=16, device="cpu")
    rates = [targeted_success_rate(model, test.images, d, 0, test.labels, device="cpu")
             for d in (generator.delta, direct)]
    assert abs(rates[0] - rates[1]) <= 15, rates


def test_universal_pgd_in_l2_and_untargeted(squares_model):
    from nbs_lib.methods.uap import fooling_rate, universal_pgd
    model, train, test = squares_model
    delta = universal_pgd(model, train.images, 0, eps=3.0, norm="L2", steps=30, batch_size=16, device="cpu")
    assert delta.flatten().norm() <= 3.0 + 1e-5
    before = targeted_success_rate(model, test.images, None, 0, test.labels, device="cpu")
    assert targeted_success_rate(model, test.images, delta, 0, test.labels, device="cpu") > before + 30
    untargeted = universal_pgd(model, train.images, None, eps=3.0, norm="L2", steps=30, batch_size=16, device="cpu")
    noise = torch.randn_like(untargeted)
    noise *= untargeted.flatten().norm() / noise.flatten().norm()
    assert fooling_rate(model, test.images, untargeted, device="cpu") > fooling_rate(model, test.images, noise,
                                                                                      device="cpu") + 20
