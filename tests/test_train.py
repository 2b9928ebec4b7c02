import pytest
import torch

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data.registry import load_dataset
from nbs_lib.methods.batches import augment_batch
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import train_model
from nbs_lib.models.registry import load_model


class Blobs:
    """Two well separated classes of 16x16 images: a bright and a dark square."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        base = self.labels.float().view(-1, 1, 1, 1) * 0.6 + 0.2
        self.images = (base + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.labels)


def _small(regime, seed=0, epochs=2):
    model = load_model("resnet18", weights=None, num_classes=2, seed=seed)
    return model, TrainConfig(regime, epochs=epochs, batch_size=16, lr_f=1e-4, lr_g=1e-3, seed=seed)


def test_standard_training_learns_and_leaves_eval_mode():
    model, config = _small("standard", epochs=3)
    data = Blobs()
    history = fit(model, data, config, val=data, device="cpu", progress=False)
    assert len(history) == 3 and history[-1]["val_acc"] == 100.0
    assert not model.training


def test_partial_fine_tuning_touches_only_g_and_keeps_bn_statistics():
    model, config = _small("partial")
    before_f = {k: v.clone() for k, v in model.features.state_dict().items()}
    before_g = model.classifier[1].weight.clone()
    fit(model, Blobs(), config, device="cpu", progress=False)
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, before_f[k]), k  # weights and BN running stats unchanged
    assert not torch.equal(before_g, model.classifier[1].weight)


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_partial_fine_tuning_with_augmentation_keeps_f_frozen_and_in_eval_mode(augment):
    """With augmentation the images go through f at every step (no frozen embeddings): f must
    still run in eval mode, so its BatchNorm statistics stay the source's."""
    model, config = _small("partial")
    config = TrainConfig("partial", epochs=2, batch_size=16, lr_f=1e-4, lr_g=1e-3, augment=augment)
    before_f = {k: v.clone() for k, v in model.features.state_dict().items()}
    modes = []
    model.features.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    fit(model, Blobs(), config, device="cpu", progress=False)
    assert modes and not any(modes), "f ran in train mode during partial fine-tuning"
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, before_f[k]), k


def test_full_fine_tuning_uses_two_learning_rates():
    from nbs_lib.methods.train.loop import make_optimizer
    model, config = _small("full")
    opt = make_optimizer(model, config)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_same_seed_same_model():
    a, config = _small("full")
    b, _ = _small("full")
    fit(a, Blobs(), config, device="cpu", progress=False)
    fit(b, Blobs(), config, device="cpu", progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resume_after_interruption_gives_the_uninterrupted_model():
    data = Blobs()
    reference, config = _small("full", epochs=2)
    fit(reference, data, config, device="cpu", progress=False)

    payloads = []
    first, _ = _small("full", epochs=2)
    one_epoch = TrainConfig(**{**config.__dict__, "epochs": 2})

    class Interrupt(Exception):
        pass

    def stop_after_first(payload):
        payloads.append({k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in payload.items()})
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(first, data, one_epoch, device="cpu", progress=False, on_epoch_end=stop_after_first)
    import copy
    resumed, _ = _small("full", epochs=2)
    fit(resumed, data, config, device="cpu", progress=False, resume=copy.deepcopy(payloads[0]))
    for (k, va), vb in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k


def test_augmentation_keeps_shape_and_range():
    x = torch.rand(4, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    for kind in ("none", "crop", "crop_flip"):
        y = augment_batch(x, kind, g)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


@pytest.mark.parametrize("corrupt, fragment", [(lambda x: x * 255, r"\[0, 1\] scale"),
                                              (lambda x: x.index_put_((torch.tensor([3]),), torch.tensor(float("inf"))),
                                               "NaN or Inf")])
def test_training_refuses_images_off_the_pixel_scale(corrupt, fragment):
    data = Blobs()
    data.images = corrupt(data.images.clone())
    model, config = _small("standard", epochs=1)
    with pytest.raises(ValueError, match=fragment):
        fit(model, data, config, device="cpu")


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown regime"):
        TrainConfig("finetune", 1, 8, 1e-3, 1e-3)
    with pytest.raises(ValueError, match="Unknown augmentation"):
        TrainConfig("full", 1, 8, 1e-3, 1e-3, augment="mixup")


def test_train_model_caches_and_resumes(tmp_path, monkeypatch):
    cache = RunCache(tmp_path)
    kwargs = dict(dataset="digits", regime="full", profile="smoke", arch="efficientnet_lite0",
                  device="cpu", cache=cache, progress=False)
    first = train_model(**kwargs)
    assert len(first.history) == 1 and first.lr_search
    # a second call loads instead of training
    import nbs_lib.methods.train.recipes as train_module
    monkeypatch.setattr(train_module, "fit", lambda *a, **k: pytest.fail("retrained a cached model"))
    again = train_model(**kwargs)
    for va, vb in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(va, vb)
    # a different config does not reuse it
    with pytest.raises(pytest.fail.Exception):
        train_model(**{**kwargs, "seed": 1})


def test_cache_key_follows_the_data_content():
    from nbs_lib.core.profiles import get_profile
    from nbs_lib.data.images import train_val_split
    from nbs_lib.methods.train.recipes import model_config

    prof = get_profile("smoke")
    train, val = train_val_split(load_dataset("digits", "train", prof), 0.25, 0)
    config = TrainConfig("full", 1, 8, 1e-4, 1e-3)
    key = model_config("digits", "resnet18", "imagenet", 10, config, prof, train, val)
    altered = train.subset(range(len(train)))
    altered.images[0, 0, 0, 0] = 1 - altered.images[0, 0, 0, 0]
    assert model_config("digits", "resnet18", "imagenet", 10, config, prof, altered, val) != key
    assert model_config("digits", "resnet18", "imagenet", 10, config, prof, train, val) == key


def _as_lazy(blobs):
    from nbs_lib.data.images import LabeledImages

    return LabeledImages("blobs", "train", ["dark", "bright"], blobs.labels,
                         fetch=lambda i: blobs.images[i])


def _as_memory(blobs):
    from nbs_lib.data.images import LabeledImages

    return LabeledImages("blobs", "train", ["dark", "bright"], blobs.labels, images=blobs.images)


@pytest.mark.parametrize("regime", ["partial", "full"])
def test_lazy_datasets_train_like_in_memory_ones(regime):
    """Paper-scale sets are decoded lazily through a DataLoader: same batches, same model."""
    from nbs_lib.methods.evaluate import dataset_accuracy

    blobs = Blobs()
    a, config = _small(regime)
    b, _ = _small(regime)
    fit(a, _as_memory(blobs), config, val=_as_memory(blobs), device="cpu", progress=False)
    history = fit(b, _as_lazy(blobs), config, val=_as_lazy(blobs), device="cpu", progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k
    assert dataset_accuracy(b, _as_lazy(blobs), "cpu") == dataset_accuracy(b, _as_memory(blobs), "cpu")
    assert history[-1]["val_acc"] == dataset_accuracy(b, _as_lazy(blobs), "cpu")


def test_glyph_datasets_are_never_flipped():
    from nbs_lib.methods.train.recipes import augmentation_for

    assert augmentation_for("alphabet", "crop_flip") == "crop"
    assert augmentation_for("cifar10", "crop_flip") == "crop_flip"
    assert augmentation_for("alphabet", "none") == "none"


def test_small_sets_get_enough_fine_tuning_steps():
    from nbs_lib.core.profiles import get_profile
    from nbs_lib.methods.train.recipes import epochs_for

    prof = get_profile("mini", epochs=4, min_steps=130, batch_size=64)
    assert epochs_for("full", prof, 2080) == 4  # 33 steps an epoch: 132 steps
    assert epochs_for("full", prof, 800) == 10  # 13 steps an epoch
    assert epochs_for("standard", prof, 800) == prof.epochs_standard


def test_other_training_seeds_reuse_the_searched_learning_rates(tmp_path, monkeypatch):
    """The learning-rate search runs once per target (at the data seed); seed 1 trains one candidate."""
    import nbs_lib.methods.train.recipes as train_module

    cache = RunCache(tmp_path)
    calls = []
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda model, train, config, **k: calls.append(
        (config.seed, config.lr_g)) or real_fit(model, train, config, **k))
    kwargs = dict(dataset="digits", regime="full", arch="efficientnet_lite0", device="cpu", cache=cache,
                  progress=False)
    profile = get_profile("smoke", lr_grid_g=(1e-3, 3e-3))
    searched = train_model(profile=profile, **kwargs)
    assert sorted(calls) == [(0, 1e-3), (0, 3e-3)]
    other = train_model(profile=profile, train_seed=1, **kwargs)
    chosen = searched.config["train"]["lr_g"]
    assert calls[2:] == [(1, chosen)]
    assert other.config["train"]["lr_g"] == chosen and other.config["train"]["seed"] == 1
    assert other.lr_search == searched.lr_search
