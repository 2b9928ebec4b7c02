import pytest
import torch
from torch import nn

from nbs_lib.methods.similarity import local_lipschitz
from nbs_lib.methods.similarity.lipschitz import lipschitz_pgd, lipschitz_ratio


class Linear(nn.Module):
    """f(x) = W x on the flattened image."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.b.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_constant_features_have_zero_lipschitzness():
    x = torch.rand(6, 3, 8, 8)
    assert local_lipschitz(Constant(), x, eps=8 / 255, device="cpu", progress=False) == 0.0


def test_linear_one_output_is_the_l1_norm_of_w_exactly():
    torch.manual_seed(0)
    w = torch.randn(1, 3 * 4 * 4, dtype=torch.float64)
    x = torch.full((5, 3, 4, 4), 0.5, dtype=torch.float64)  # ball not clipped by [0, 1]
    per_image = local_lipschitz(Linear(w), x, eps=0.01, device="cpu", progress=False,
                                return_per_image=True)
    assert per_image.shape == (5,)
    assert torch.allclose(per_image.double(), w.abs().sum().expand(5), rtol=1e-4)
    # the paper's notation gives the same number
    a = local_lipschitz(Linear(w), x, eps=2 / 255, device="cpu", progress=False)
    b = local_lipschitz(Linear(w), x, eps_255=2.0, device="cpu", progress=False)
    assert a == b == pytest.approx(w.abs().sum().item(), rel=1e-4)


def test_linear_many_outputs_never_exceeds_the_bound_and_is_close():
    torch.manual_seed(1)
    w = torch.randn(4, 3 * 4 * 4, dtype=torch.float64)
    x = torch.full((3, 3, 4, 4), 0.5, dtype=torch.float64)
    ll = local_lipschitz(Linear(w), x, eps=0.01, device="cpu", progress=False)
    bound = w.abs().sum().item()  # ||W d||_1 <= sum_ij |w_ij| ||d||_inf
    assert 0.5 * bound < ll <= bound * (1 + 1e-9)


def test_more_steps_never_lower_it_on_average(one_thread):
    net = _small_cnn()
    x = torch.rand(16, 3, 16, 16)
    values = [local_lipschitz(net, x, eps=2 / 255, steps=s, device="cpu", progress=False)
              for s in (1, 3, 10)]
    assert values[0] > 0
    assert values[0] <= values[1] * 1.01 and values[1] <= values[2] * 1.01, values


def test_parameters_and_modes_are_restored_and_untouched():
    net = _small_cnn().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    local_lipschitz(net, torch.rand(4, 3, 8, 8), eps=4 / 255, steps=2, device="cpu", progress=False)
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics not updated


def test_same_seed_same_numbers():
    net = _small_cnn()
    x = torch.rand(10, 3, 8, 8)
    a = local_lipschitz(net, x, eps=4 / 255, steps=3, device="cpu", progress=False, return_per_image=True)
    b = local_lipschitz(net, x, eps=4 / 255, steps=3, device="cpu", progress=False, return_per_image=True)
    assert torch.equal(a, b)


def test_pgd_stays_in_the_ball_and_the_box_and_returns_the_best_ratio():
    net = _small_cnn().eval()
    x = torch.rand(6, 3, 8, 8)
    x[:, 0] = 1.0  # a channel at the top of the box
    eps = 8 / 255
    x_best, ratio = lipschitz_pgd(net, x, eps, steps=4, generator=torch.Generator().manual_seed(0))
    assert (x_best - x).abs().max() <= eps + 1e-6
    assert x_best.min() >= 0 and x_best.max() <= 1
    with torch.no_grad():
        again = lipschitz_ratio(net(x), net(x_best), x, x_best)
    assert torch.allclose(again, ratio, rtol=1e-5)


def test_ratio_of_no_perturbation_is_zero_not_nan():
    f = torch.randn(3, 5, requires_grad=True)
    x = torch.rand(3, 2)
    r = lipschitz_ratio(f, f.detach() + 1e-3, x, x.clone())
    assert torch.equal(r, torch.zeros(3))
    r.sum().backward()
    assert torch.isfinite(f.grad).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"),
    (dict(eps=-0.1), "eps"),
    (dict(eps=2.0), r"\(0, 1\]"),
    (dict(eps=0.5), None),
    (dict(eps_255=300.0), "eps_255"),
    (dict(), "exactly one"),
    (dict(eps=0.1, eps_255=1.0), "exactly one"),
    (dict(eps=0.1, steps=0), "step"),
    (dict(eps=0.1, random_init=0.0), "random_init"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    x = torch.rand(2, 3, 4, 4)
    if match is None:
        local_lipschitz(Constant(), x, device="cpu", progress=False, steps=1, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        local_lipschitz(Constant(), x, device="cpu", progress=False, **kwargs)


def test_empty_or_out_of_range_images_are_clear_errors():
    with pytest.raises(ValueError, match="non-empty"):
        local_lipschitz(Constant(), torch.empty(0, 3, 4, 4), eps=0.1, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        local_lipschitz(Constant(), torch.full((2, 3, 4, 4), 2.0), eps=0.1, device="cpu", progress=False)
