"""Robust ImageNet sources made offline: adversarial self-distillation of an ImageNet model.

Paper section "Robust ImageNet Pre-training" (Table 5's AT@stage-1, KD@stage-2 and DM start
from Salman et al.'s adversarially trained ImageNet models) and the second work (sources at
a ladder of robustness) need robust ImageNet models, and no ImageNet images are available
offline. Instead the ImageNet model teaches a copy of itself to keep its own predictions
inside an eps-ball, on natural photographs (:func:`nbs_lib.data.photos.photo_crops`): the
adversarially robust distillation of Goldblum et al. (2020, "ARD"), with the teacher its own
pre-trained self, a clean term as in TRADES (Zhang et al. 2019):

    loss = KL(T(x) || S(x)) + robust_weight * KL(T(x) || S(x'))

where T is the frozen teacher, S the student (initialised as T) and x' the inner maximum:
PGD-``attack_steps`` on the cross-entropy to the teacher's top-1 class, Madry et al.'s
random start and step ``2.5 * eps / k`` (:func:`nbs_lib.methods.train.terms.adversarial_batch`).
``eps_255 = 0`` is the control rung: the same training on the same crops without the attack
(x' = x), so "robust" is not confounded with "tuned on these photographs".

The student trains in eval mode: BatchNorm keeps ImageNet's statistics (batches of small
crops would otherwise replace them) and dropout is off, so every step is deterministic.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.data.photos import photo_crops
from nbs_lib.models.registry import load_model


@dataclass(frozen=True)
class DistillConfig:
    """One rung of the ladder: its radius and how it is trained (all of it enters the cache key)."""

    eps_255: float  # L-inf radius of the inner maximum, in 1/255 (0: the control rung, no attack)
    steps: int = 1500  # optimizer steps, each on ``batch_size`` fresh crops
    batch_size: int = 32
    image_size: int = 64
    lr: float = 1e-4  # Adam
    attack_steps: int = 3  # PGD steps of the inner maximum
    robust_weight: float = 1.0  # weight of the robust distance against the clean one
    target: str = "logits"  # what the student matches: the teacher's "logits" (KL) or its "features" f
    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"  # the teacher (and the student's start)
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.eps_255 <= 255:
            raise ValueError(f"eps_255 must lie in [0, 255] (a radius in 1/255), got {self.eps_255}.")
        if min(self.steps, self.batch_size, self.image_size, self.attack_steps) < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size, image_size and attack_steps must be >= 1 and lr > 0: {self}")
        if self.target not in ("logits", "features"):
            raise ValueError(f"target must be 'logits' or 'features', got {self.target!r}.")

    @property
    def spec(self) -> str:
        """The inner maximum as an attack spec (``PGD-3#1.0``)."""
        return f"PGD-{self.attack_steps}#{self.eps_255:g}"

    def key(self) -> dict:
        return asdict(self)


def soft_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(softmax(teacher) || softmax(student)), in nats."""
    return F.kl_div(F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1),
                    reduction="batchmean", log_target=True)


def relative_feature_distance(teacher_features: torch.Tensor, student_features: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``||f_S - f_T||^2``, divided by the batch mean of ``||f_T||^2``."""
    t = teacher_features.float().flatten(1)
    return (student_features.float().flatten(1) - t).pow(2).sum(1).mean() / t.pow(2).sum(1).mean().clamp_min(1e-12)


def _outputs(model: torch.nn.Module, x: torch.Tensor, target: str) -> torch.Tensor:
    return model(x) if target == "logits" else model.features(x)


def _distance(teacher_out: torch.Tensor, student_out: torch.Tensor, target: str) -> torch.Tensor:
    return soft_kl(teacher_out, student_out) if target == "logits" else relative_feature_distance(teacher_out, student_out)


def inner_max(student: torch.nn.Module, x: torch.Tensor, teacher_out: torch.Tensor, config: DistillConfig,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x' in the L-inf ball of radius ``eps_255``/255 that most moves the student away from the teacher.

    PGD on the distillation distance itself (TRADES' inner max): a uniform random start in
    the ball, ``attack_steps`` signed steps of ``2.5 * eps / steps`` (Madry et al.'s rule),
    each projected onto the ball and [0, 1]; the student in eval mode with frozen weights.
    """
    eps = config.eps_255 / 255.0
    alpha = 2.5 * eps / config.attack_steps
    x = x.detach()
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    x_adv = (x + (2 * noise.to(x.device) - 1) * eps).clamp_(lo, hi)
    with frozen_eval(student):
        for _ in range(config.attack_steps):
            x_adv.requires_grad_(True)
            loss = _distance(teacher_out, _outputs(student, x_adv, config.target), config.target)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = (x_adv.detach() + alpha * grad.sign()).clamp_(lo, hi)
    return x_adv.detach()


def distill_step(student: torch.nn.Module, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor, config: DistillConfig, generator: torch.Generator | None = None,
                 teacher_x: torch.Tensor | None = None) -> dict:
    """One step of :func:`distill` on the crops ``x``: returns the clean and the robust distance.

    The teacher sees ``teacher_x`` (default ``x``): a robustified crop is taught what the
    teacher says of the crop it stands for (the second work's section 4.3)."""
    with torch.no_grad():
        target = _outputs(teacher, x if teacher_x is None else teacher_x, config.target)
    if config.eps_255 > 0:
        x_adv = inner_max(student, x, target, config, generator)
        out = _outputs(student, torch.cat([x, x_adv]), config.target)
        clean = _distance(target, out[: len(x)], config.target)
        robust = _distance(target, out[len(x):], config.target)
    else:  # the control rung: x' = x, so the robust term is the clean one (one forward pass, not two)
        clean = _distance(target, _outputs(student, x, config.target), config.target)
        robust = clean
    optimizer.zero_grad(set_to_none=True)
    (clean + config.robust_weight * robust).backward()
    optimizer.step()
    return {"clean": clean.item(), "robust": robust.item()}


def distill(teacher: torch.nn.Module, config: DistillConfig, device="auto", progress: bool = True,
            start: dict | None = None, on_checkpoint=None, checkpoint_every: int = 100,
            pool: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Train one rung from ``teacher`` (any module on [0, 1] images): returns the student
    (a copy of the teacher, trained; eval mode, on the CPU) and its history (the two KL terms
    of every step). Step ``k`` draws its crops and attack noise from ``config.seed`` and
    ``k`` alone, so ``start`` (a :func:`checkpoint_payload`) resumes to the same result;
    ``on_checkpoint(payload)`` is called every ``checkpoint_every`` steps.

    ``pool = (inputs, teacher_inputs)`` trains on a fixed set of crops instead of fresh ones:
    step ``k`` takes ``batch_size`` of them (drawn from the same seed), the student sees
    ``inputs`` and the teacher the matching ``teacher_inputs``."""
    if pool is not None and (pool[0].shape != pool[1].shape or len(pool[0]) < 1):
        raise ValueError("pool needs two non-empty image tensors of one shape: (inputs, teacher_inputs)")
    device = resolve_device(device)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    history = []
    if start is not None:
        student.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        history = list(start["history"])
    generator = torch.Generator(device=device)
    for step in tqdm(range(len(history), config.steps), desc=f"self-distillation {config.spec}",
                     disable=not progress, initial=len(history), total=config.steps):
        step_seed = config.seed * 1_000_003 + step
        generator.manual_seed(step_seed)
        if pool is None:
            x, teacher_x = photo_crops(config.batch_size, config.image_size, seed=step_seed).to(device), None
        else:
            pick = torch.randint(len(pool[0]), (config.batch_size,), generator=torch.Generator().manual_seed(step_seed))
            x, teacher_x = pool[0][pick].to(device), pool[1][pick].to(device)
        history.append(distill_step(student, teacher, optimizer, x, config, generator, teacher_x))
        if on_checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            on_checkpoint(checkpoint_payload(student, optimizer, history))
    return student.cpu().eval(), history


def self_distill(config: DistillConfig, device="auto", progress: bool = True, **kwargs):
    """:func:`distill` with the ImageNet model ``config.arch``/``config.weights`` as teacher."""
    return distill(load_model(config.arch, weights=config.weights), config, device, progress, **kwargs)


def checkpoint_payload(student: torch.nn.Module, optimizer, history: list[dict]) -> dict:
    return {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "history": list(history)}


@torch.no_grad()
def _top1(model, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def agreement(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
              radii_255=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0), attack_steps: int = 10, device="auto") -> dict:
    """How much of the teacher a rung kept, and how robustly, on ``images`` (held-out crops).

    ``{radius: share}``: the share of images whose student top-1 under PGD-``attack_steps``
    at that radius (the paper's step rule, on the cross-entropy to the teacher's clean
    top-1, no random start) still equals the teacher's clean top-1; radius 0 is the clean
    agreement. A robust rung keeps it high at its radius where the teacher itself drops to
    near 0.
    """
    from nbs_lib.methods.attacks import pgd

    device = resolve_device(device)
    with frozen_eval(teacher, device), frozen_eval(student, device):
        x = images.to(device)
        labels = _top1(teacher, x)
        out = {}
        for r in radii_255:
            x_adv = x if r == 0 else torch.cat([pgd(student, x[i:i + 128], labels[i:i + 128], r / 255, attack_steps)
                                                for i in range(0, len(x), 128)])
            out[float(r)] = float((_top1(student, x_adv) == labels).float().mean())
    return out
