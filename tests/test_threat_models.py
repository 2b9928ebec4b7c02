"""The L-inf and L2 threat models every attack and UAP uses."""

import pytest
import torch

from nbs_lib.methods.threat_models import per_sample_l2, threat_model


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.3)])
def test_starts_and_projections_stay_in_the_ball_and_in_the_image_range(norm, eps):
    ball = threat_model(norm)
    x = torch.rand(8, 3, 6, 6)
    start = ball.random_start(x, eps, torch.Generator().manual_seed(0))
    far = x + 5 * torch.randn_like(x)
    projected = ball.projector(x, eps)(far.clone())
    for z in (start, projected):
        size = ball.size(z - x)
        assert (size <= eps + 1e-6).all() and z.min() >= 0 and z.max() <= 1
    inside = x + 0.5 * (start - x)
    assert torch.allclose(ball.projector(x, eps)(inside.clone()), inside, atol=1e-6)  # no move inside


def test_directions_and_budgets():
    grad = torch.randn(4, 3, 5, 5)
    assert torch.equal(threat_model("Linf").direction(grad.clone()), grad.sign())
    unit = threat_model("L2").direction(grad.clone())
    assert torch.allclose(per_sample_l2(unit).flatten(), torch.ones(4), atol=1e-5)
    assert threat_model("Linf").pixels(0.5) == 0.5 / 255 and threat_model("L2").pixels(0.5) == 0.5
    big = torch.ones(1, 3, 4, 4)
    assert torch.isclose(threat_model("L2").shrink(big, 0.2).norm(), torch.tensor(0.2))
    delta = torch.tensor([[3.0, -4.0], [0.5, 0.0]])
    assert threat_model("Linf").size(delta).tolist() == [4.0, 0.5]
    assert threat_model("L2").size(delta).tolist() == [5.0, 0.5]
    with pytest.raises(ValueError, match="'Linf' or 'L2'"):
        threat_model("L1")
