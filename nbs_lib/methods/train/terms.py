"""Inputs and loss terms added to the cross-entropy: adversarial training, KD, DM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbs_lib.core.device import frozen_eval
from nbs_lib.methods.attacks import parse_attack, pgd
from nbs_lib.methods.similarity.lipschitz import lipschitz_pgd
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.models.registry import load_model
from nbs_lib.models.split import SplitClassifier


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time adversarial examples (Madry et al. 2018): PGD from a random start.

    The inner maximisation of adversarial training: ``k`` steps of size
    ``2.5 * eps / k`` (Madry et al.'s rule, so the iterate can cross the ball) from a
    uniform random point in the eps-ball, the model in eval mode with frozen weights
    (BatchNorm statistics are not updated by the attack's forward passes).
    """
    s = parse_attack(spec)
    with frozen_eval(model):
        return pgd(model, x, y, s.eps, s.steps, step_size=2.5 * s.eps / s.steps, norm=s.norm,
                   random_start=True, generator=generator)


def lipschitz_batch(model: SplitClassifier, x: torch.Tensor, config: TrainConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The inner max of DM (eq. 5): x' in the ball of radius ``lipschitz_eps``/255 around x.

    PGD on the LL ratio ``||f(x) - f(x')||_1 / ||x - x'||_inf`` of eq. 4
    (:func:`nbs_lib.methods.similarity.lipschitz.lipschitz_pgd`: ``lipschitz_steps`` signed steps
    of ``1.25 * eps / steps`` from ``x + 0.001 * U(-1, 1)``, as in the authors' DM code),
    f in eval mode with frozen weights like :func:`adversarial_batch`, float32. The
    outer term, with gradient to the weights, is then
    ``lipschitz_weight * mean ||f(x) - f(x')||_1 / ||x - x'||_inf`` in train mode.

    Scale of ``lipschitz_weight`` (lambda): the authors' released DM code does not add
    eq. 5's ratio but ``beta * (1 / batch) * MSE(f(x'), f(x))`` with beta = 500, batch 128
    and 512 features, i.e. ``500 / (128 * 512) * ||f(x') - f(x)||_2^2`` per image. That is
    a different quantity from this term (an L1 distance divided by ``||x - x'||_inf``), so
    the paper's 500 is not a value for ``lipschitz_weight``: convert it, do not copy it.
    Chapter 6 states how its lambda is chosen.
    """
    with frozen_eval(model):
        x_adv, _ = lipschitz_pgd(model.features, x, config.lipschitz_eps / 255.0, config.lipschitz_steps,
                                 generator=generator, amp=False)
    return x_adv


def load_teacher(model: SplitClassifier, config: TrainConfig, device: torch.device) -> nn.Module:
    """KD@stage-2's frozen teacher: f of ``config.teacher`` (same architecture), eval mode, on ``device``."""
    teacher = load_model(model.arch, weights=config.teacher, num_classes=model.num_classes, seed=None)
    if teacher.embedding_dim != model.embedding_dim:
        raise ValueError(f"the teacher's embedding has {teacher.embedding_dim} entries, the student's "
                         f"{model.embedding_dim}: distil from a source of the same architecture.")
    features = teacher.features.to(device).eval()
    if device.type == "cuda":
        features.to(memory_format=torch.channels_last)
    for p in features.parameters():
        p.requires_grad_(False)
    return features


def _feature_mse(feats: torch.Tensor, target: torch.Tensor, share: float | None) -> torch.Tensor:
    """KD's mean ``||f - f_T||^2 / embedding_dim`` (a share of it under DDP, like :func:`_ce`)."""
    if share is None:
        return F.mse_loss(feats.float(), target)
    return F.mse_loss(feats.float(), target, reduction="sum") / math.prod(feats.shape[1:]) * share


