"""Inputs and loss terms added to the cross-entropy: adversarial training, KD, DM.

The loss terms on f's features are objects with one interface (:class:`FeatureTerm`), so
the training loop adds whichever :func:`feature_terms` gives for a config without knowing
them: KD@stage-2 (:class:`FeatureDistillation`) and DM (:class:`DiscrepancyMitigating`).
Each optional part of a run (these two and adversarial inputs) names its fields of
:class:`TrainConfig` and their off-values (``KEY_DEFAULTS``), and so supplies its part of
the cache key (:func:`config_key`): a field enters the key only when it differs from its
off-value, which kept the keys of models cached before the part existed.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from nbs_lib.core.device import frozen_eval
from nbs_lib.methods.attacks import parse_attack, pgd
from nbs_lib.methods.similarity.lipschitz import lipschitz_pgd, lipschitz_ratio
from nbs_lib.methods.train.config import HEAD_KEY_DEFAULTS, TrainConfig
from nbs_lib.models.registry import load_model
from nbs_lib.models.split import SplitClassifier

ADVERSARIAL_KEY_DEFAULTS = {"adversarial": None}  # adversarial inputs (Madry et al. 2018): off


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




def _batch_mean(values: torch.Tensor, share: float | None) -> torch.Tensor:
    """Mean of per-image values; under DDP their sum times ``world / global batch size``."""
    return values.mean() if share is None else values.sum() * share


class FeatureTerm:
    """A weighted loss term on f's features, added to the cross-entropy by the training loop.

    ``weight`` multiplies :meth:`value`; ``history_key`` names its mean in the training
    history; ``needs_perturbed`` says whether :meth:`perturbed` supplies a second input
    x' that goes through f with x as one batch; ``float32`` keeps the step out of bf16
    autocast. ``KEY_DEFAULTS`` are its :class:`TrainConfig` fields and their off-values.
    """

    KEY_DEFAULTS: dict = {}
    history_key = ""
    needs_perturbed = False
    float32 = False

    def __init__(self, config: TrainConfig):
        self.config = config

    @property
    def weight(self) -> float:
        raise NotImplementedError

    def setup(self, model: SplitClassifier, device: torch.device) -> None:
        """Prepare what the term needs on ``device`` (once per fit)."""

    def perturbed(self, model: SplitClassifier, x: torch.Tensor, generator) -> torch.Tensor | None:
        return None

    def value(self, feats, feats_perturbed, x, x_perturbed, share: float | None) -> torch.Tensor:
        """The term's batch mean (this rank's share of it under DDP, like the cross-entropy)."""
        raise NotImplementedError


class FeatureDistillation(FeatureTerm):
    """KD@stage-2: ``mean ||f(x) - f_T(x)||_2^2 / embedding_dim`` to a frozen robust teacher."""

    KEY_DEFAULTS = {"distill_weight": 0.0, "teacher": None}
    history_key = "distill_loss"

    @property
    def weight(self) -> float:
        return self.config.distill_weight

    def setup(self, model, device):
        self.teacher = load_teacher(model, self.config, device)

    def value(self, feats, feats_perturbed, x, x_perturbed, share):
        with torch.no_grad():
            target = self.teacher(x).float()
        return _feature_mse(feats, target, share)


class DiscrepancyMitigating(FeatureTerm):
    """DM (eq. 5): ``mean ||f(x) - f(x')||_1 / ||x - x'||_inf``, x' the inner max (:func:`lipschitz_batch`)."""

    KEY_DEFAULTS = {"lipschitz_weight": 0.0, "lipschitz_eps": 0.5, "lipschitz_steps": 10}
    history_key = "lipschitz"
    needs_perturbed = True
    float32 = True  # perturbations of 0.5/255 are near bf16's resolution

    @property
    def weight(self) -> float:
        return self.config.lipschitz_weight

    def perturbed(self, model, x, generator):
        return lipschitz_batch(model, x, self.config, generator)

    def value(self, feats, feats_perturbed, x, x_perturbed, share):
        return _batch_mean(lipschitz_ratio(feats, feats_perturbed, x, x_perturbed), share)


# The authors' released DM code (train_dm.py) ran with batch 128 and ResNet-18's 512 features.
AUTHORS_DM_BATCH, AUTHORS_DM_FEATURES, AUTHORS_DM_BETA = 128, 512, 500.0


def mse_inner_max(features: nn.Module, x: torch.Tensor, eps: float, steps: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The inner max of the authors' DM code: x' in the L-inf ball of radius ``eps`` around x.

    ``steps`` signed ascent steps of size ``1.25 * eps / steps`` on ``MSE(f(x'), f(x))``
    from ``x + 0.001 * N(0, 1)``, projected onto the ball and [0, 1] after each step; the
    last iterate is returned (their loop keeps no best iterate). Call it with ``features``
    in eval mode and frozen (their ``model.eval()``), float32.
    """
    x = x.detach()
    alpha = 1.25 * eps / steps
    with torch.no_grad():
        f_x = features(x).float()
        lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
        x_adv = (x + 0.001 * noise.to(x.device)).clamp_(lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.mse_loss(features(x_adv).float(), f_x), x_adv)
        x_adv = (x_adv.detach() + alpha * grad.sign()).clamp_(lo, hi)
    return x_adv.detach()


def lambda_from_beta(beta: float = AUTHORS_DM_BETA, eps_255: float = 0.5, batch_size: int = AUTHORS_DM_BATCH,
                     embedding_dim: int = AUTHORS_DM_FEATURES, feature_change: float = 1.0) -> float:
    """Eq. 5's lambda that gives the authors' DM term its value, decided before any run.

    Their term is ``beta / batch * MSE(f(x'), f(x)) = beta / (batch * D) * ||f(x') - f(x)||_2^2``
    per image (``MSE`` averages over the batch and the D features); eq. 5's is
    ``lambda * ||f(x') - f(x)||_1 / ||x' - x||_inf``. At the edge of the ball
    (``||x' - x||_inf = eps``), with every feature moved by ``feature_change`` (the order of
    a post-ReLU average-pooled feature, about 1), the two are ``beta * c^2 / batch`` and
    ``lambda * D * c / eps``; equal when

        lambda = beta * eps * c / (batch * D).

    For the paper (beta 500, eps 0.5/255, batch 128, D 512, c 1): 500 * 0.00196 / 65,536
    = 1.5e-5.
    """
    if min(beta, eps_255, batch_size, embedding_dim, feature_change) <= 0:
        raise ValueError("beta, eps_255, batch_size, embedding_dim and feature_change must be positive.")
    return beta * (eps_255 / 255.0) * feature_change / (batch_size * embedding_dim)


class DiscrepancyMitigatingMSE(FeatureTerm):
    """DM as the authors' released code runs it: ``dm_beta * (1 / batch) * MSE(f(x'), f(x))``.

    x' is :func:`mse_inner_max` in the ball of radius ``lipschitz_eps``/255 with
    ``lipschitz_steps`` steps (theirs: 0.5/255, 10). The batch is this step's (their 128);
    MSE averages over the batch and f's features. Compare :class:`DiscrepancyMitigating`
    (eq. 5 as written) and :func:`lambda_from_beta`.
    """

    KEY_DEFAULTS = {"dm_beta": 0.0}
    history_key = "dm_mse"
    needs_perturbed = True
    float32 = True

    @property
    def weight(self) -> float:
        return self.config.dm_beta

    def perturbed(self, model, x, generator):
        with frozen_eval(model):
            return mse_inner_max(model.features, x, self.config.lipschitz_eps / 255.0, self.config.lipschitz_steps,
                                 generator)

    def value(self, feats, feats_perturbed, x, x_perturbed, share):
        # the global batch: under DDP share = world / local batch, so world * local = share * local^2
        batch = len(x) if share is None else round(share * len(x) ** 2)
        return _feature_mse(feats_perturbed, feats, share) / batch


FEATURE_TERMS = (FeatureDistillation, DiscrepancyMitigating, DiscrepancyMitigatingMSE)  # in the order the loss adds them


def feature_terms(config: TrainConfig) -> list[FeatureTerm]:
    """The feature terms switched on in ``config`` (weight > 0), in :data:`FEATURE_TERMS` order."""
    terms = [t for t in (kind(config) for kind in FEATURE_TERMS) if t.weight > 0]
    if sum(t.needs_perturbed for t in terms) > 1:
        raise ValueError("At most one feature term may bring its own perturbed inputs.")
    return terms


def config_key(config: TrainConfig) -> dict:
    """``config`` as the dict that enters a run-cache key.

    Every field, except those of an optional part (adversarial inputs, each
    :data:`FEATURE_TERMS` class) that hold their off-value.
    """
    off = {**ADVERSARIAL_KEY_DEFAULTS, **HEAD_KEY_DEFAULTS, **{k: v for kind in FEATURE_TERMS for k, v in kind.KEY_DEFAULTS.items()}}
    return {k: v for k, v in dataclasses.asdict(config).items() if not (k in off and v == off[k])}
