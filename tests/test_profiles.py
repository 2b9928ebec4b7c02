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


def test_overrides_dict_as_a_notebook_passes_it():
    prof = get_profile("paper", {"epochs": 1, "lr_grid_f": [1e-4], "attack_samples": 64})
    assert (prof.epochs, prof.lr_grid_f, prof.attack_samples) == (1, (1e-4,), 64)
    assert get_profile("mini", {"val_fraction": 0}).val_fraction == 0.0  # an int where a float goes
    assert get_profile("mini", {"radius_grid": [1, 2.5]}).radius_grid == (1.0, 2.5)


@pytest.mark.parametrize("bad,match", [({"epochs": "three"}, "takes a int"), ({"epochs": 0}, ">= 1"),
                                       ({"val_fraction": 1.5}, r"\[0, 1\)"), ({"epcohs": 1}, "spelling"),
                                       ({"lr_grid_g": 1e-3}, "takes a tuple"),
                                       ({"radius_grid": [0.5, "1"]}, "holds floats"),
                                       ({"datasets": ["mnist", 3]}, "holds strs")])
def test_bad_override_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        get_profile("mini", bad)
    with pytest.raises(ValueError, match="dict of profile fields"):
        get_profile("mini", "epochs=1")


def test_load_model_leaves_the_global_rng_alone():
    from nbs_lib.models.registry import load_model

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("resnet18", num_classes=2, seed=0)
    assert torch.equal(torch.rand(3), expected)
    a, b = (load_model("resnet18", num_classes=2, seed=5).classifier[1].weight for _ in range(2))
    assert torch.equal(a, b)  # the seed still fixes the initial weights
