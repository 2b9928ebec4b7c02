import pytest
import torch

from nbs_lib.models.layers import layer_matrices, maps_to_matrix, position_choice
from nbs_lib.models.registry import load_model


def _maps(n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, c, s, s, generator=g) for c, s in ((4, 8), (6, 4), (8, 2), (10, 1))]


def test_pool_is_channel_means_concatenated():
    maps = _maps()
    m = maps_to_matrix(maps, "pool")
    assert m.shape == (3, 4 + 6 + 8 + 10)
    assert torch.allclose(m[:, :4], maps[0].mean(dim=(2, 3)))


def test_positions_are_data_points_aligned_across_stages():
    maps = _maps()
    bottom = maps_to_matrix(maps[:1], "positions", max_positions=None)
    assert bottom.shape == (3 * 64, 4)
    # row (image 1, position 5) is that position's channel vector
    assert torch.equal(bottom[64 + 5], maps[0][1, :, 0, 5])
    two = maps_to_matrix(maps[:2], "positions", max_positions=None)
    assert two.shape == (3 * 16, 4 + 6)  # stage 1 pooled to stage 2's 4x4 grid
    assert torch.allclose(two[0, :4], maps[0][0, :, :2, :2].mean(dim=(1, 2)))


def test_position_subset_is_seeded_and_shared():
    a = position_choice(16, 16, 10, seed=1)
    assert torch.equal(a, position_choice(16, 16, 10, seed=1)) and len(a) == 10
    assert not torch.equal(a, position_choice(16, 16, 10, seed=2))
    assert len(position_choice(4, 4, 100, 0)) == 16


def test_layer_matrices_of_a_model(one_thread):
    model = load_model("resnet18", weights=None, num_classes=3, seed=0).train()
    x = torch.rand(5, 3, 32, 32)
    both = layer_matrices(model, x, ("bottom", "all"), modes=("pool", "positions"), device="cpu",
                          batch_size=2)
    out = both["pool"]
    assert out["bottom"].shape == (5, 64) and out["all"].shape == (5, 64 + 128 + 256 + 512)
    assert model.training  # mode restored
    assert both["positions"]["bottom"].shape == (5 * 64, 64)  # 8x8 grid at 32 px
    pos = layer_matrices(model, x, ("bottom",), modes=("positions",), max_positions=7, device="cpu")
    assert pos["positions"]["bottom"].shape == (5 * 7, 64)
    with torch.no_grad():
        ref = model.eval().features.stage_outputs(x)[0].mean(dim=(2, 3))
    assert torch.allclose(out["bottom"], ref, atol=1e-5)


def test_unknown_layer_set_or_mode():
    model = load_model("resnet18", weights=None, num_classes=3)
    with pytest.raises(ValueError, match="layer set"):
        layer_matrices(model, torch.rand(2, 3, 32, 32), ("middle",), device="cpu")
    with pytest.raises(ValueError, match="mode"):
        layer_matrices(model, torch.rand(2, 3, 32, 32), ("all",), modes=("mean",), device="cpu")
