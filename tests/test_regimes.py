"""Table 5's fine-tuning regimes as configurations of the one ``fit`` (tiny: ResNet-18 at 16x16)."""

import math

import pytest
import torch

from nbs_lib.data.images import LabeledImages
from nbs_lib.methods.similarity import local_lipschitz
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.terms import config_key
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import model_config, weights_id
from nbs_lib.models.registry import load_model
from nbs_lib.models.resnet import torchvision_resnet_state


def _blobs(n=32, size=16, seed=0):
    """Two classes of textured 16x16 images: darker and brighter noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = labels.float().view(-1, 1, 1, 1) * 0.4 + 0.3
    images = (base + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return LabeledImages("blobs", "train", ["dark", "bright"], labels, images=images)


def _source_file(path, seed):
    """A ResNet-18 'source' exported like nbs_lib.studies.sources does (5 source classes)."""
    torch.save(torchvision_resnet_state(load_model("resnet18", None, num_classes=5, seed=seed)), path)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {"standard": _source_file(root / "standard.pt", 0), "robust": _source_file(root / "robust.pt", 1)}


def _config(epochs=1, batch_size=16, lr=1e-3, **kwargs):
    return TrainConfig("full", epochs=epochs, batch_size=batch_size, lr_f=lr, lr_g=lr, **kwargs)


REGIMES = {  # Table 5: (source the student starts from, TrainConfig fields)
    "full fine-tuned": ("standard", {}),
    "AT@stage-1": ("robust", {}),
    "AT@stage-2": ("standard", {"adversarial": "PGD-2#8"}),
    "AT@stage-1&2": ("robust", {"adversarial": "PGD-2#8"}),
    "KD@stage-2": ("standard", {"distill_weight": 1.0, "teacher": "robust"}),
    "DM (eq. 5)": ("robust", {"lipschitz_weight": 1.0, "lipschitz_eps": 8.0, "lipschitz_steps": 2}),
    "DM@stage-1&2": ("robust", {"dm_beta": 500.0, "lipschitz_eps": 8.0, "lipschitz_steps": 2}),
}


@pytest.mark.parametrize("name", list(REGIMES))
def test_every_table5_regime_runs(name, sources, one_thread):
    start, fields = REGIMES[name]
    if "teacher" in fields:
        fields = {**fields, "teacher": sources[fields["teacher"]]}
    model = load_model("resnet18", weights=sources[start], num_classes=2)
    before = model.features.stem[0].weight.clone()
    data = _blobs()
    history = fit(model, data, _config(**fields), val=data, device="cpu", progress=False)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"]) and "val_acc" in history[0]
    assert ("distill_loss" in history[0]) == ("distill_weight" in fields)
    assert ("lipschitz" in history[0]) == ("lipschitz_weight" in fields)
    assert ("dm_mse" in history[0]) == ("dm_beta" in fields)
    assert not torch.equal(before, model.features.stem[0].weight)  # f was fine-tuned
    assert not model.training


def _teacher_distance(model, teacher, images):
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model.eval().features(images), teacher.eval().features(images)).item()


def test_distillation_pulls_the_students_features_to_the_teachers(sources, one_thread):
    data = _blobs()
    teacher = load_model("resnet18", weights=sources["robust"], num_classes=2)
    distances = {}
    for weight in (0.0, 10.0):
        model = load_model("resnet18", weights=sources["standard"], num_classes=2)
        extra = {"distill_weight": weight, "teacher": sources["robust"]} if weight else {}
        history = fit(model, data, _config(epochs=4, batch_size=8, **extra), device="cpu", progress=False)
        distances[weight] = _teacher_distance(model, teacher, data.images)
        if weight:
            assert history[-1]["distill_loss"] < 0.8 * history[0]["distill_loss"]  # the train-mode term
    assert distances[10.0] < 0.8 * distances[0.0], distances  # and in eval mode (0.14 against 0.25)


def test_discrepancy_mitigating_lowers_the_local_lipschitzness(sources, one_thread):
    data = _blobs()
    ll = {}
    for weight in (0.0, 1.0):
        model = load_model("resnet18", weights=sources["robust"], num_classes=2)
        config = _config(epochs=4, batch_size=8, lr=3e-3, lipschitz_weight=weight, lipschitz_eps=8.0,
                         lipschitz_steps=3)
        history = fit(model, data, config, device="cpu", progress=False)
        ll[weight] = local_lipschitz(model.features, data.images, eps_255=8.0, steps=3, device="cpu",
                                     progress=False)
        if weight:
            assert history[-1]["lipschitz"] < history[0]["lipschitz"]  # the train-mode term falls
    assert ll[1.0] < 0.75 * ll[0.0], ll  # about 1700 against 3400


def test_authors_dm_lowers_the_feature_discrepancy(sources, one_thread):
    """The authors' DM (beta / batch * MSE in their inner ball) makes f flatter around the data."""
    data = _blobs()
    ll = {}
    for beta in (0.0, 5000.0):
        model = load_model("resnet18", weights=sources["robust"], num_classes=2)
        config = _config(epochs=4, batch_size=8, lr=3e-3, dm_beta=beta, lipschitz_eps=8.0, lipschitz_steps=3)
        history = fit(model, data, config, device="cpu", progress=False)
        ll[beta] = local_lipschitz(model.features, data.images, eps_255=8.0, steps=3, device="cpu",
                                   progress=False)
        if beta:
            assert history[-1]["dm_mse"] < history[0]["dm_mse"]
    assert ll[5000.0] < 0.75 * ll[0.0], ll


def test_dm_and_kd_are_deterministic(sources, one_thread):
    data = _blobs(n=16)
    config = _config(batch_size=8, lipschitz_weight=1.0, lipschitz_eps=8.0, lipschitz_steps=2,
                     distill_weight=1.0, teacher=sources["robust"])
    a = load_model("resnet18", weights=sources["standard"], num_classes=2)
    b = load_model("resnet18", weights=sources["standard"], num_classes=2)
    fit(a, data, config, device="cpu", progress=False)
    fit(b, data, config, device="cpu", progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


OLD_FIELDS = {"regime", "epochs", "batch_size", "lr_f", "lr_g", "optimizer", "weight_decay", "min_lr",
              "augment", "seed"}


def test_plain_configs_keep_their_cache_keys():
    assert set(config_key(TrainConfig("full", 2, 16, 1e-4, 1e-3))) == OLD_FIELDS
    assert set(config_key(TrainConfig("partial", 2, 16, 0, 1e-3, adversarial="PGD-3#8"))) == OLD_FIELDS | {
        "adversarial"}
    dm = config_key(_config(lipschitz_weight=1.0))
    assert dm["lipschitz_weight"] == 1.0 and "lipschitz_eps" not in dm  # eps at its default
    assert config_key(_config(lipschitz_weight=1.0, lipschitz_eps=2.0))["lipschitz_eps"] == 2.0
    assert config_key(_config(dm_beta=500.0))["dm_beta"] == 500.0 and "dm_beta" not in config_key(_config())
    with pytest.raises(ValueError, match="one of them"):
        _config(dm_beta=500.0, lipschitz_weight=1e-5)


def test_the_teacher_enters_the_key_by_content(sources, tmp_path):
    from nbs_lib.core.profiles import get_profile

    data = _blobs(n=8)
    prof = get_profile("smoke")
    teacher = _source_file(tmp_path / "teacher.pt", 2)
    config = _config(distill_weight=1.0, teacher=teacher)
    key = model_config("blobs", "resnet18", sources["standard"], 2, config, prof, data, data)
    assert key["train"]["teacher"] == weights_id(teacher) and key["train"]["distill_weight"] == 1.0
    _source_file(tmp_path / "teacher.pt", 3)  # same path, other weights
    assert model_config("blobs", "resnet18", sources["standard"], 2, config, prof, data, data) != key


def test_train_model_passes_the_regime_fields(sources, monkeypatch):
    import nbs_lib.methods.train.recipes as train_module

    seen = []

    def fake(dataset, arch, weights, num_classes, train_set, val_set, config, *rest):
        seen.append(config)
        return train_module.TrainedModel(None, {}, [], 50.0)

    monkeypatch.setattr(train_module, "_train_cached", fake)
    train_module.train_model("digits", "full", "smoke", arch="resnet18", weights=sources["robust"],
                             lr_f=1e-4, lr_g=1e-3, device="cpu", progress=False,
                             distill_weight=2.0, teacher=sources["robust"], lipschitz_weight=0.5,
                             lipschitz_eps=1.0, lipschitz_steps=4)
    (config,) = seen
    assert (config.distill_weight, config.teacher, config.lipschitz_weight, config.lipschitz_eps,
            config.lipschitz_steps) == (2.0, sources["robust"], 0.5, 1.0, 4)


@pytest.mark.parametrize("fields, match", [
    ({"distill_weight": -1.0, "teacher": "x"}, "distill_weight must be"),
    ({"distill_weight": 1.0}, "needs a teacher"),
    ({"teacher": "missing.pt"}, "set distill_weight > 0"),
    ({"distill_weight": 1.0, "teacher": "/nonexistent/teacher.pt"}, "not an existing weights file"),
    ({"lipschitz_weight": float("nan")}, "lipschitz_weight must be"),
    ({"lipschitz_weight": -0.1}, "lipschitz_weight must be"),
    ({"lipschitz_weight": 1.0, "lipschitz_eps": 0.0}, "units of 1/255"),
    ({"lipschitz_weight": 1.0, "lipschitz_eps": 300.0}, "units of 1/255"),
    ({"lipschitz_weight": 1.0, "lipschitz_steps": 0}, "positive integer"),
    ({"lipschitz_weight": 1.0, "lipschitz_steps": 2.5}, "positive integer"),
])
def test_invalid_settings_name_the_fix(fields, match):
    with pytest.raises(ValueError, match=match):
        _config(**fields)


def test_partial_fine_tuning_cannot_regularise_f(sources):
    with pytest.raises(ValueError, match="regime='full'"):
        TrainConfig("partial", 1, 8, 0, 1e-3, lipschitz_weight=1.0)
    with pytest.raises(ValueError, match="regime='full'"):
        TrainConfig("partial", 1, 8, 0, 1e-3, distill_weight=1.0, teacher=sources["robust"])


def test_feature_terms_are_chosen_by_their_weights_and_own_their_key_fields(sources):
    from nbs_lib.methods.train.terms import (ADVERSARIAL_KEY_DEFAULTS, FEATURE_TERMS, DiscrepancyMitigating,
                                             FeatureDistillation, feature_terms)
    both = _config(lipschitz_weight=1.0, distill_weight=1.0, teacher=sources["robust"])
    assert [type(t) for t in feature_terms(both)] == [FeatureDistillation, DiscrepancyMitigating]
    assert feature_terms(_config()) == []
    owned = {**ADVERSARIAL_KEY_DEFAULTS, **{k: v for kind in FEATURE_TERMS for k, v in kind.KEY_DEFAULTS.items()}}
    plain = config_key(_config())
    assert set(plain) == set(OLD_FIELDS) and not set(plain) & set(owned)
    for field, default in owned.items():  # each owned field holds its off-value in a plain config
        assert getattr(_config(), field) == default
