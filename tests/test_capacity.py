import pytest

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.studies.ch05_capacity_difficulty import (
    capacity_study,
    difficulty_study,
    table3_layout,
    table4_layout,
)


@pytest.mark.slow
def test_capacity_reuses_the_first_backbones_learning_rates(tmp_path):
    prof = get_profile("smoke", lr_grid_g=(1e-3, 3e-3))
    frame = capacity_study(["digits"], prof, archs=["efficientnet_lite0", "efficientnet_lite1"],
                           device="cpu", cache=RunCache(tmp_path), progress=False)
    assert frame.backbone.tolist() == ["efficientnet_lite0", "efficientnet_lite1"]
    assert frame.size_mb.is_monotonic_increasing and frame.lr_g.nunique() == 1
    table = table3_layout(frame)
    assert list(table.index) == ["size_mb", "aoi", "aai", "dr", "median_eps", "area"] and table.shape[1] == 2


@pytest.mark.slow
def test_difficulty_study_pretrains_each_source_and_fine_tunes(tmp_path):
    frame, sources = difficulty_study("smoke", sources=("digits", "digits-lowres"), targets=("mnist",),
                                      device="cpu", cache=RunCache(tmp_path), progress=False)
    assert frame.source.tolist() == ["digits", "digits-lowres"] and (frame.dataset == "mnist").all()
    assert sources.source.tolist() == ["digits", "digits-lowres"]
    assert table4_layout(frame).shape == (2, 3)
