"""Notebook parameters given with papermill's -p (strings) or -y (YAML values)."""

import pytest

from nbs_lib.core.parameters import as_dict, as_list
from nbs_lib.core.profiles import get_profile


def test_lists_from_p_and_y_flags_are_the_same():
    assert as_list('["cifar10", "pets"]', "datasets") == ["cifar10", "pets"]
    assert as_list("['cifar10', 'pets']", "datasets") == ["cifar10", "pets"]
    assert as_list(["cifar10", "pets"], "datasets") == ["cifar10", "pets"]
    assert as_list("mnist", "datasets") == ["mnist"]
    assert as_list(None, "datasets") is None
    assert as_list("[0, 1, 2]", "train_seeds") == [0, 1, 2]


def test_overrides_from_p_reach_the_profile():
    overrides = as_dict('{"epochs": 1, "attack_samples": 64}', "overrides")
    prof = get_profile("mini", overrides)
    assert (prof.epochs, prof.attack_samples) == (1, 64)
    assert as_dict(None, "overrides") == {}


def test_bad_parameters_name_the_fix():
    with pytest.raises(ValueError, match="-y flag"):
        as_list('["a", ', "datasets")
    with pytest.raises(ValueError, match="takes a dict"):
        as_dict("[1]", "overrides")
    with pytest.raises(ValueError, match="takes a list"):
        as_list(3, "datasets")


def test_the_torchrun_entry_point_takes_a_notebooks_overrides():
    """`--overrides` gives the profile a notebook run with the same overrides trains under, so
    the notebook finds the model (an explicit --epochs would be a model of its own)."""
    from nbs_lib.core.profiles import get_profile
    from nbs_lib.methods.train.launch import _parser, profile_of

    args = _parser().parse_args(["--dataset", "cifar10", "--regime", "full", "--profile", "paper",
                                 "--overrides", '{"epochs": 1, "batch_size": 32}'])
    assert profile_of(args) == get_profile("paper", {"epochs": 1, "batch_size": 32})
    bad = _parser().parse_args(["--dataset", "d", "--regime", "full", "--overrides", '{"epoch": 1}'])
    with pytest.raises(ValueError, match="epoch"):
        profile_of(bad)
