"""Adversarial attacks in pixel space: FGSM, PGD (L-inf and L2) and AutoAttack.

This module implements the threat model of Zhang et al. (AAAI 2023), section
"ImageNet Pre-training Is Non-robust": an adversarial example ``x' = x + delta`` with
``||delta||_inf <= eps`` maximises the classification loss of the true label. Table 1
evaluates with PGD-10 at eps = 0.5/255 (Kurakin-style, no random start, step size
``1.25 * eps / steps``); Table 2 adds PGD-10#2.0, FGSM#0.5, FGSM#2.0 and AA#0.5
(AutoAttack, Croce and Hein 2020).

Conventions:

* every model takes images in [0, 1] and returns logits; normalisation is the
  model's first layer, so all attacks work on raw pixels;
* the paper's notation ``PGD-10#0.5`` means PGD with 10 steps at L-inf
  ``eps = 0.5/255`` on the [0, 1] scale. :func:`parse_attack` reads it, see
  :class:`AttackSpec` for the full grammar (including L2 specs);
* attacks only ever take gradients with respect to the input: parameters get no
  ``.grad``, the model is evaluated in eval mode and every module's training flag
  and every parameter's ``requires_grad`` flag are restored afterwards.

Example::

    x_adv = attack(model, x, y, "PGD-10#0.5")
    for x, x_adv, y in adversarial_batches(model, (images, labels), "FGSM#2.0"):
        ...
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nbs_lib.core.device import autocast as _autocast
from nbs_lib.core.device import channels_last, frozen_eval, resolve_device
from nbs_lib.methods.batches import check_pixels, iterate_batches
from nbs_lib.methods.threat_models import threat_model

__all__ = [
    "AttackSpec",
    "parse_attack",
    "fgsm",
    "pgd",
    "autoattack",
    "attack",
    "adversarial_batches",
    "ACCEPTED_FORMS",
]

#: The forms :func:`parse_attack` accepts (shown in its error messages).
ACCEPTED_FORMS = (
    "'FGSM#<eps>', 'PGD-<steps>#<eps>', 'AA#<eps>' or 'AA-<steps>#<eps>' for L-inf "
    "(eps in units of 1/255, e.g. 'PGD-10#0.5' is eps = 0.5/255), and the same with "
    "'-L2' before '#' for L2 (eps as an L2 radius on the [0, 1] scale, e.g. "
    "'PGD-20-L2#0.5')"
)

#: Iterations of APGD/FAB in standard AutoAttack (Croce and Hein 2020).
AA_STANDARD_STEPS = 100

_SPEC_RE = re.compile(
    r"^\s*(?P<name>FGSM|PGD|AA)(?:-(?P<steps>[+-]?\d+))?(?:-(?P<norm>Linf|L2|Linfty|Inf))?"
    r"\s*#\s*(?P<eps>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*$",
    re.IGNORECASE,
)
_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "aa": "AA"}
_NORMS = {"linf": "Linf", "linfty": "Linf", "inf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AttackSpec:
    """One attack in the paper's notation (Table 2's "criterion" column).

    Attributes
    ----------
    name:
        ``"FGSM"``, ``"PGD"`` or ``"AA"`` (AutoAttack).
    steps:
        Iterations: ``1`` for FGSM, ``k`` for PGD-k, the APGD/FAB iterations for
        AutoAttack (``100`` in standard AutoAttack, the default of ``"AA#eps"``).
    eps_255:
        The number after ``#``. For L-inf it is the radius in units of 1/255
        (``0.5`` means ``0.5/255`` on the [0, 1] scale, the paper's notation). For L2
        specs it is taken as written: the L2 radius on the [0, 1] pixel scale
        (``"PGD-20-L2#0.5"`` is an L2 ball of radius 0.5, the usual CIFAR-scale L2
        budget), because L2 budgets are conventionally quoted on that scale.
    norm:
        ``"Linf"`` (the paper's threat model) or ``"L2"``.
    """

    name: str
    steps: int
    eps_255: float
    norm: str = "Linf"

    def __post_init__(self):
        if self.name not in ("FGSM", "PGD", "AA"):
            raise ValueError(f"Unknown attack {self.name!r}; accepted forms: {ACCEPTED_FORMS}.")
        threat_model(self.norm)  # an unknown norm is an error naming the known ones
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"An attack needs at least one step, got steps={self.steps!r}.")
        if self.name == "FGSM" and self.steps != 1:
            raise ValueError("FGSM is a single step; write 'PGD-<steps>#<eps>' for more steps.")
        eps = float(self.eps_255)
        if not math.isfinite(eps) or not 0.0 <= eps <= 255.0:
            unit = threat_model(self.norm).unit
            raise ValueError(
                f"eps {self.eps_255!r} (in units of {unit}) is outside [0, 255], i.e. outside "
                "[0, 1] on the pixel scale. The number after '#' is in units of 1/255: "
                "'PGD-10#0.5' means eps = 0.5/255."
            )
        object.__setattr__(self, "eps_255", eps)

    @property
    def eps(self) -> float:
        """The radius on the [0, 1] pixel scale (``eps_255 / 255`` for L-inf)."""
        return threat_model(self.norm).pixels(self.eps_255)

    @property
    def step_size(self) -> float:
        """Step size on the [0, 1] scale: ``eps`` for FGSM, ``1.25 * eps / steps`` for PGD.

        The PGD rule is the paper's ("step size = 1.25 * (eps / step)"). AutoAttack
        adapts its own step size; the PGD rule is returned for information.
        """
        if self.name == "FGSM":
            return self.eps
        return 1.25 * self.eps / self.steps

    def __str__(self) -> str:
        eps = f"{self.eps_255:g}"
        if "." not in eps and "e" not in eps:
            eps += ".0"  # the paper writes '#2.0', not '#2'
        norm = "-L2" if self.norm == "L2" else ""
        if self.name == "FGSM":
            head = "FGSM"
        elif self.name == "AA" and self.steps == AA_STANDARD_STEPS:
            head = "AA"
        else:
            head = f"{self.name}-{self.steps}"
        return f"{head}{norm}#{eps}"


def parse_attack(spec: str | AttackSpec) -> AttackSpec:
    """Parse the paper's attack notation into an :class:`AttackSpec`.

    Accepted: ``FGSM#<eps>``, ``PGD-<steps>#<eps>``, ``AA#<eps>`` (standard AutoAttack,
    100 iterations) and ``AA-<steps>#<eps>``, each optionally with ``-L2`` (or
    ``-Linf``) before ``#``. Examples: ``"PGD-10#0.5"``, ``"FGSM#2.0"``, ``"AA#0.5"``,
    ``"PGD-20-L2#0.5"``. Case-insensitive.

    Raises ``ValueError`` naming the accepted forms for anything else, for an eps
    outside [0, 255] (outside [0, 1] on the pixel scale) and for fewer than one step.
    """
    if isinstance(spec, AttackSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"An attack spec is a string such as 'PGD-10#0.5', got {type(spec).__name__}.")
    m = _SPEC_RE.match(spec)
    if m is None:
        raise ValueError(f"Cannot parse attack spec {spec!r}. Accepted forms: {ACCEPTED_FORMS}.")
    name = _NAMES[m["name"].lower()]
    norm = _NORMS[(m["norm"] or "Linf").lower()]
    if m["steps"] is None:
        if name == "PGD":
            raise ValueError(
                f"PGD needs a number of steps in {spec!r}, e.g. 'PGD-10#0.5'. "
                f"Accepted forms: {ACCEPTED_FORMS}."
            )
        steps = 1 if name == "FGSM" else AA_STANDARD_STEPS
    else:
        if name == "FGSM":
            raise ValueError(
                f"FGSM takes no step count ({spec!r}); write 'FGSM#<eps>' or 'PGD-<steps>#<eps>'."
            )
        steps = int(m["steps"])
        if steps < 1:
            raise ValueError(f"{spec!r}: the number of steps must be at least 1, got {steps}.")
    return AttackSpec(name=name, steps=steps, eps_255=float(m["eps"]), norm=norm)


# --------------------------------------------------------------------------- helpers


def _check_eps(eps: float, norm: str) -> float:
    ball = threat_model(norm)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0 or eps > ball.max_pixels():
        raise ValueError(
            f"eps={eps!r} is outside [0, 1] on the pixel scale. Attack functions take eps "
            "on the [0, 1] scale: pass 0.5/255 for the paper's '#0.5', or use "
            "attack(model, x, y, 'PGD-10#0.5')."
        )
    return eps


def _input_grad(model, x_adv, y, cast) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. ``x_adv`` (a leaf requiring grad).

    ``reduction='sum'`` keeps each sample's gradient independent of the batch size; the
    loss is computed in float32 even under autocast, so the input gradient is float32.
    """
    return _logits_and_grad(model, x_adv, y, cast)[1]


def _logits_and_grad(model, x_adv, y, cast) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at ``x_adv`` (detached) and :func:`_input_grad`, from one forward pass."""
    with torch.enable_grad():  # also works when the caller is inside torch.no_grad()
        with cast:
            logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
    return logits.detach(), grad


# --------------------------------------------------------------------------- attacks


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size ``eps``.

    Table 2's ``FGSM#0.5`` and ``FGSM#2.0`` rows: ``x' = clip(x + eps * sign(grad), 0, 1)``.
    With ``norm="L2"`` the step follows the L2-normalised gradient (the fast gradient
    method). ``eps`` is on the [0, 1] scale (``0.5/255`` for the paper's ``#0.5``).
    See :func:`pgd` for ``amp``.
    """
    eps = _check_eps(eps, norm)
    x = check_pixels(x.detach(), "fgsm")
    if eps == 0:
        return x.clone()
    with _attack_layout(model) as model, frozen_eval(model):
        x_adv = x.clone().requires_grad_(True)
        grad = _input_grad(model, x_adv, y, _autocast(x.device, amp, amp_dtype))
        with torch.no_grad():
            return (x + threat_model(norm).direction(grad).mul_(eps)).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | None = None,
    norm: str = "Linf",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    targeted: bool = False,
    stop_when_broken: bool = False,
) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy (the paper's PGD-k, Tables 1-2).

    Kurakin-style iterative attack as used by the paper: start at ``x`` (no random
    start unless ``random_start=True``), take ``steps`` signed gradient steps of size
    ``step_size`` (default ``1.25 * eps / steps``, the paper's rule) and after each
    step project onto the eps-ball around ``x`` intersected with [0, 1]. Returns the
    last iterate.

    ``norm="L2"`` steps along the L2-normalised gradient and projects onto the L2
    ball of radius ``eps`` (then onto [0, 1], which can only shrink the perturbation).

    The loop has no host synchronisation: bounds are precomputed, one buffer is
    updated in place, the loss is summed over the batch (per-sample gradients do not
    depend on the batch size). With ``amp=True`` on CUDA the forward/backward runs
    under bf16 autocast while the input, loss and its gradient stay float32. Beware:
    bf16 keeps 8 significant bits, so perturbations of 0.5/255 are close to its
    resolution after normalisation; compare against ``amp=False`` before trusting
    bf16 numbers at the paper's smallest eps. Model and input run in the channels_last layout.

    ``eps`` may also be a 1-D tensor of per-image radii (the bisection of
    :mod:`nbs_lib.methods.minimal_epsilon`); each image then gets its own ball and step.

    ``targeted=True`` reads ``y`` as target classes and *descends* the cross-entropy
    towards them (the anti-robust datasets of chapter 7, after Ilyas et al. 2019).

    ``stop_when_broken=True`` (evaluation): an image is left at the first iterate the model
    misclassifies (classifies as the target, when targeted) and takes no more steps, so
    later steps are spent on the images still standing. That iterate is returned for it,
    so the attack counts every image any iterate broke: AutoAttack's convention (Croce and
    Hein 2020), never weaker than keeping the last iterate. It costs one host
    synchronisation per step; training keeps the default (every image, every step).
    """
    x = check_pixels(x.detach(), "pgd")
    per_image = isinstance(eps, torch.Tensor)
    eps = _per_image_eps(eps, norm, x) if per_image else _check_eps(eps, norm)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got steps={steps}.")
    if per_image and step_size is not None:
        raise ValueError("Per-image radii take the paper's step rule (1.25 * eps / steps); leave step_size=None.")
    alpha = 1.25 * eps / steps if step_size is None else float(step_size)
    if not per_image and eps == 0:
        return x.clone()
    cast = _autocast(x.device, amp, amp_dtype)

    ball = threat_model(norm)
    if stop_when_broken:
        with _attack_layout(model) as model:
            return _pgd_until_broken(model, x, y, eps, alpha, steps, ball, random_start, generator, cast,
                                     targeted)
    with _attack_layout(model) as model, frozen_eval(model):
        with torch.no_grad():
            x_adv = ball.random_start(x, eps, generator) if random_start else x.clone()
            project = ball.projector(x, eps)
        x_adv.requires_grad_(True)

        for _ in range(steps):
            grad = _input_grad(model, x_adv, y, cast)
            if targeted:
                grad.neg_()
            with torch.no_grad():
                step = ball.direction(grad)
                project(x_adv.add_(step.mul_(alpha)) if per_image else x_adv.add_(step, alpha=alpha))
    return x_adv.detach()


def _pgd_until_broken(model, x, y, eps, alpha, steps, ball, random_start, generator, cast, targeted):
    """:func:`pgd`'s loop on the images not broken yet: each step attacks only those, and an
    image leaves the batch at the first iterate that breaks it (``stop_when_broken``)."""
    per_image = isinstance(eps, torch.Tensor)
    with frozen_eval(model):
        with torch.no_grad():
            x_adv = ball.random_start(x, eps, generator) if random_start else x.clone()
        active = torch.arange(len(x), device=x.device)
        for _ in range(steps):
            xs, ys = x[active], y[active]
            eps_s, alpha_s = (eps[active], alpha[active]) if per_image else (eps, alpha)
            current = x_adv[active].requires_grad_(True)
            logits, grad = _logits_and_grad(model, current, ys, cast)
            broken = logits.argmax(1) == ys if targeted else logits.argmax(1) != ys
            standing = ~broken
            if not bool(standing.any()):
                break
            active, current, grad, xs = active[standing], current[standing], grad[standing], xs[standing]
            if per_image:
                eps_s, alpha_s = eps_s[standing], alpha_s[standing]
            if targeted:
                grad.neg_()
            with torch.no_grad():
                step = ball.direction(grad).mul_(alpha_s)
                moved = current.detach().add_(step)
                ball.projector(xs, eps_s)(moved)
                x_adv[active] = moved
    return x_adv


def _per_image_eps(eps: torch.Tensor, norm: str, x: torch.Tensor) -> torch.Tensor:
    """Per-image radii (one per row of ``x``, [0, 1] scale), shaped to broadcast against ``x``."""
    if eps.dim() != 1 or len(eps) != len(x):
        raise ValueError(f"Per-image eps must be a 1-D tensor with one radius per image ({len(x)}); "
                         f"got shape {tuple(eps.shape)}.")
    eps = eps.detach().to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()) \
            or bool((eps > threat_model(norm).max_pixels()).any()):
        raise ValueError("Per-image eps must be finite and in [0, 1] on the pixel scale "
                         "(0.5/255 for the paper's '#0.5').")
    return eps.view(-1, *([1] * (x.dim() - 1)))


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    seed: int = 0,
    steps: int = AA_STANDARD_STEPS,
    n_queries: int = 5000,
    verbose: bool = False,
) -> torch.Tensor:
    """AutoAttack (Croce and Hein 2020), the paper's ``AA#0.5`` row of Table 2.

    Runs ``torchattacks.AutoAttack`` (``version="standard"``: APGD-CE, APGD-T, FAB-T,
    Square), with two settings aligned to the reference AutoAttack:

    * torchattacks builds APGD/APGD-T/FAB with 10 iterations; standard AutoAttack uses
      100. ``steps`` (default 100) sets them; ``"AA-10#0.5"`` gives the cheap variant.
    * torchattacks attacks ``n_classes - 1`` target classes; standard AutoAttack uses
      the 9 most likely wrong classes. We pass ``n_classes = min(classes, 10)``
      (classes read from the model's output), which gives exactly that.

    Models with fewer than 4 classes cannot use the DLR losses (they need the 3rd and
    4th largest logits): APGD-T is then skipped with a warning.
    ``n_queries`` is Square's query budget (5000 in the standard version). The
    global torch RNG is left untouched (torchattacks reseeds it with ``seed``).
    """
    import torchattacks  # imported lazily: only AutoAttack needs it

    eps = _check_eps(eps, norm)
    x = check_pixels(x.detach(), "autoattack")
    if eps == 0:
        return x.clone()
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    with _attack_layout(model) as model, frozen_eval(model), torch.random.fork_rng(devices=devices):
        n_classes = min(_num_classes(model, x), 10)
        aa = torchattacks.AutoAttack(
            model, norm=norm, eps=eps, version=version, n_classes=n_classes, seed=seed,
            verbose=verbose,
        )
        aa.set_device(x.device)
        if n_classes < 4:
            # The DLR losses (APGD-T, APGD-DLR) divide by the gap to the 3rd/4th logit and
            # need at least 4 classes; run the remaining attacks of the ensemble.
            keep = [a for a in aa._autoattack.attacks
                    if not isinstance(a, torchattacks.APGDT) and getattr(a, "loss", "ce") != "dlr"]
            warnings.warn(
                f"AutoAttack: the model has {n_classes} classes; the DLR-loss attacks need at "
                f"least 4 and are skipped ({', '.join(type(a).__name__ for a in keep)} remain).",
                stacklevel=2,
            )
            if len(keep) == 1:
                keep = keep * 2  # MultiAttack wants two; the repeat is a no-op on broken points
            aa._autoattack.attacks = keep
        for sub in aa._autoattack.attacks:
            if hasattr(sub, "steps"):
                sub.steps = int(steps)
            if hasattr(sub, "n_queries"):
                sub.n_queries = int(n_queries)
        x_adv = aa(x, y.to(x.device))
    return x_adv.detach().clamp_(0.0, 1.0)


@contextlib.contextmanager
def _attack_layout(model: nn.Module):
    """The model as an attack runs it: weights and input in the channels_last layout (attack steps
    1.48x faster on the CPU, same numbers up to rounding; ``benchmarks/RESULTS.md``), put back
    in its own layout afterwards. A model in training mode (adversarial training) is left as it
    is: a layout change moves a short fine-tuning run by more than rounding."""
    if model.training or isinstance(model, _ChannelsLastInput):
        yield model
        return
    contiguous = all(p.is_contiguous() for p in model.parameters() if p.dim() == 4)
    channels_last(model)
    try:
        yield _ChannelsLastInput(model)
    finally:
        if contiguous:
            model.to(memory_format=torch.contiguous_format)


class _ChannelsLastInput(nn.Module):
    """``model`` fed its input in the channels_last layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(channels_last(x))


def _keywords(fn) -> set[str]:
    return set(list(inspect.signature(fn).parameters)[3:])  # after model, x, y


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: str | AttackSpec,
    **kwargs,
) -> torch.Tensor:
    """Run the attack named by ``spec`` (e.g. ``"PGD-10#0.5"``) on one batch.

    Dispatches to :func:`fgsm`, :func:`pgd` or :func:`autoattack`. Extra keyword
    arguments (``amp``, ``random_start``, ``generator``, ``seed``, ``n_queries``, ...)
    go to that function; options that only another attack takes are ignored, so one
    set of options can serve a list of mixed specs. Unknown names raise ``TypeError``.
    """
    s = parse_attack(spec)
    fn = {"FGSM": fgsm, "PGD": pgd, "AA": autoattack}[s.name]
    fixed = {"eps", "norm", "steps", "step_size"}
    known = (_keywords(fgsm) | _keywords(pgd) | _keywords(autoattack)) - fixed
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"Unknown attack option(s) {unknown}; known: {sorted(known)}.")
    opts = {k: v for k, v in kwargs.items() if k in _keywords(fn) - fixed}
    if s.name == "FGSM":
        return fgsm(model, x, y, s.eps, norm=s.norm, **opts)
    if s.name == "PGD":
        return pgd(model, x, y, s.eps, s.steps, step_size=s.step_size, norm=s.norm, **opts)
    return autoattack(model, x, y, s.eps, norm=s.norm, steps=s.steps, **opts)


def iter_batches(
    data, batch_size: int = 128
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(x, y)`` from a pair of tensors ``(images, labels)`` or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        images, labels = data
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        yield from iterate_batches(images, labels, batch_size)
    else:
        for batch in data:
            yield batch[0], batch[1]


def _n_batches(data, batch_size: int) -> int | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return math.ceil(len(data[0]) / batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def adversarial_batches(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor] | Iterable,
    spec: str | AttackSpec,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **kwargs,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Attack a whole dataset batch by batch; yield ``(x, x_adv, y)`` on ``device``.

    ``data`` is ``(images, labels)`` tensors (split into ``batch_size`` batches) or a
    ``DataLoader``/iterable of ``(x, y)`` batches. The model is moved to ``device``
    (``"auto"``: CUDA, then MPS, then CPU); the attacks put model and input in the
    channels_last layout themselves. Extra keyword arguments go to
    :func:`attack`. Shows a tqdm progress bar over batches.
    """
    from tqdm.auto import tqdm

    s = parse_attack(spec)
    dev = resolve_device(device)
    model.to(dev)
    bar = tqdm(
        iter_batches(data, batch_size), total=_n_batches(data, batch_size),
        desc=str(s), leave=False, disable=not progress,
    )
    for x, y in bar:
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        yield x, attack(model, x, y, s, **kwargs), y
