"""Threat models as objects: the L-inf and L2 balls around an image in [0, 1].

Zhang et al. attack under L-inf (Tables 1-2, the paper's ``#0.5`` = 0.5/255); their
released UAP script bounds perturbations in L2. Every attack, the UAPs and their
generator ask a threat model for the three things that differ between the norms:

* ``direction(grad)``: the steepest-ascent direction of a step (sign for L-inf, the
  per-sample L2-normalised gradient for L2), computed in place;
* ``random_start(x, eps, generator)``: a random start inside the ball and [0, 1];
* ``projector(x, eps)``: a function that puts an iterate back into the ball around ``x``
  intersected with [0, 1], in place;

plus the budget conventions: ``pixels(eps)`` converts the paper's notation to the [0, 1]
scale (1/255 units for L-inf, the L2 radius as written), ``shrink(t, eps)`` scales one
whole perturbation into the ball (the UAP generator's output) and ``size(delta)`` measures
perturbations in the norm.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of every sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


class LinfBall:
    """``{x' : |x' - x|_inf <= eps}``; budgets written in units of 1/255."""

    name = "Linf"
    unit = "1/255"

    def pixels(self, eps: float) -> float:
        return eps / 255.0

    def max_pixels(self) -> float:
        return 1.0  # a bound above 1 on the [0, 1] scale means nothing

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign_()

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        noise = _uniform_pm1(x, generator)
        start = x.clone().add_(noise.mul_(eps)).clamp_(0.0, 1.0)
        return self.projector(x, eps)(start)  # rounding can leave x + eps * u a hair outside

    def projector(self, x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
        # Projection onto {|x' - x| <= eps} and [0, 1] is one clamp to these bounds.
        lo = (x - eps).clamp_(min=0.0)
        hi = (x + eps).clamp_(max=1.0)
        return lambda x_adv: x_adv.clamp_(lo, hi)

    def shrink(self, t: torch.Tensor, eps: float) -> torch.Tensor:
        return t * eps  # t is a tanh output in [-1, 1]

    def project_perturbation(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """``delta`` moved onto the ball of radius ``eps`` around 0 (per sample), in place."""
        return delta.clamp_(-eps, eps)

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample L-inf norm of perturbations ``[N, ...]``."""
        return delta.flatten(1).abs().amax(1)


class L2Ball:
    """``{x' : ||x' - x||_2 <= eps}`` per sample; budgets written as the L2 radius on [0, 1]."""

    name = "L2"
    unit = "the L2 radius on the [0, 1] scale"

    def pixels(self, eps: float) -> float:
        return eps

    def max_pixels(self) -> float:
        return math.inf

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.div_(per_sample_l2(grad).add_(1e-12))

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        noise = _uniform_pm1(x, generator)
        gen_device = generator.device if generator is not None else x.device
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=gen_device,
                            dtype=x.dtype).to(x.device)
        return x.clone().add_(noise.div_(per_sample_l2(noise).add_(1e-12)).mul_(radius * eps)).clamp_(0.0, 1.0)

    def projector(self, x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def project(x_adv: torch.Tensor) -> torch.Tensor:
            delta = x_adv.sub_(x)  # x_adv now holds the perturbation
            delta.mul_(torch.clamp(eps / (per_sample_l2(delta) + 1e-12), max=1.0))
            return delta.add_(x).clamp_(0.0, 1.0)  # back to an image, then onto [0, 1]
        return project

    def shrink(self, t: torch.Tensor, eps: float) -> torch.Tensor:
        return t * torch.clamp(eps / (t.flatten().norm(p=2) + 1e-12), max=1.0)

    def project_perturbation(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """``delta`` moved onto the ball of radius ``eps`` around 0 (per sample), in place."""
        return delta.mul_(torch.clamp(eps / (per_sample_l2(delta) + 1e-12), max=1.0))

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample L2 norm of perturbations ``[N, ...]``."""
        return delta.flatten(1).norm(dim=1)


THREAT_MODELS = {"Linf": LinfBall(), "L2": L2Ball()}


def threat_model(norm: str) -> LinfBall | L2Ball:
    """The threat model called ``norm`` ("Linf" or "L2"), or an error naming both."""
    if norm not in THREAT_MODELS:
        raise ValueError(f"Unknown norm {norm!r}; use 'Linf' or 'L2'.")
    return THREAT_MODELS[norm]


def _uniform_pm1(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(-1, 1) noise shaped like ``x`` (drawn on the generator's device, moved to ``x``'s)."""
    gen_device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
    return noise.to(x.device).mul_(2).sub_(1)
