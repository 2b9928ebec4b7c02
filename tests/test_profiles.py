import pytest
import torch

from nbs_lib.core.device import resolve_device, seed_everything
from nbs_lib.core.profiles import available_profiles, get_profile


def test_three_profiles_grow_in_size():
    assert available_profiles() == ["smoke", "mini", "paper"]
    smoke, mini, paper = (get_profile(n) for n in available_profiles())
    for field in ("image_size", "train_per_class", "epochs", "attack_samples"):
        assert getattr(smoke, field) <= getattr(mini, field) <= getattr(paper, field)
    assert paper.arch == "resnet18" and paper.image_size == 224 and paper.epochs == 90


def test_overrides_apply_and_none_is_ignored():
    prof = get_profile("mini", epochs=2, image_size=None)
    assert prof.epochs == 2 and prof.image_size == get_profile("mini").image_size
    assert get_profile("mini").epochs != 2  # the registry is not mutated


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ValueError, match="smoke, mini, paper"):
        get_profile("tiny")


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="Unknown profile field"):
        get_profile("smoke", epoch=3)


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError):
        resolve_device("tpu9")


def test_seeding_is_reproducible():
    seed_everything(3)
    a = torch.rand(4)
    seed_everything(3)
    assert torch.equal(a, torch.rand(4))
