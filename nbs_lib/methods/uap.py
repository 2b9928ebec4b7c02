"""Targeted universal adversarial perturbations (UAPs) and input gradients as feature probes.

This module implements the section "On Non-robust Features" of Zhang et al. (AAAI 2023):

* **Figure 4(a)**: a targeted UAP ``v`` of a model, i.e. one perturbation that makes
  the model classify almost every image as the target class ``y~`` (the paper's eq. 2,
  ``g(f(x + v)) = y~ for most x ~ mu``). As in the paper it is produced by an
  encoder-decoder network, the generative adversarial perturbations of Poursaeed et
  al. (CVPR 2018): a ResNet generator (:class:`ResnetGenerator`) fed one fixed noise
  input and trained with the targeted cross-entropy (:func:`train_uap`,
  :func:`uap_cached`). The paper then shows the UAP *alone*, without any image, and
  reports the model's confidence in the target (:func:`perturbation_alone`).
* **Figure 4(b)**: input-gradient maps (Engstrom et al. 2019; Tsipras et al. 2019),
  the gradient of the target-class loss with respect to the pixels
  (:func:`input_gradient`, :func:`gradient_image`).
* **Figure 5(a)**: the success rate of a model's final UAP against the model's own
  checkpoints along training (:func:`snapshot_every` with ``fit(..., on_step=...)``,
  then :func:`success_along_training`).
* **Figure 5(b)**: the decline ratio DR = (AOI - AAI) / AOI of a model under the UAP
  of another (the pre-trained) model (:func:`accuracy_under_perturbation`), and the
  targeted success rate (:func:`targeted_success_rate`) and fooling rate
  (:func:`fooling_rate`).

Design choices
--------------

* **Pixel space.** Images are in [0, 1] and normalisation is the model's first layer,
  so a perturbation is added to raw pixels and the result is clamped to [0, 1]
  (clamping can only shrink the effective perturbation, so the bound still holds).
* **Budgets in the paper's notation**, as in :mod:`nbs_lib.methods.attacks`: for ``norm="Linf"``
  ``eps`` is in units of 1/255 (``eps=10`` is 10/255); for ``norm="L2"`` it is the L2
  radius on the [0, 1] scale, as in the attack specs ``PGD-20-L2#0.5``. Anything not
  in (0, 255] is an error.
* **Generator and bound.** Poursaeed et al.'s ResnetGenerator (reflection pad + 7x7
  conv, two stride-2 convs, ``n_blocks`` residual blocks, two transposed convs, reflection
  pad + 7x7 conv, tanh), with configurable width ``ngf`` and BatchNorm or InstanceNorm.
  Its tanh output ``t`` in (-1, 1) becomes the perturbation ``eps * t`` for L-inf (so
  ``|delta| <= eps`` holds by construction, no projection) and
  ``t * min(1, eps / ||t||_2)`` for L2. Poursaeed et al. instead rescale every output
  so that its maximum reaches eps; the tanh scaling is smoother and equally bounded.
* **One fixed input.** The generator sees one seeded uniform noise image ``z``
  (``1 x 3 x H x W``), so the UAP is a deterministic function of its weights. With a
  batch of one, BatchNorm's batch statistics are the statistics of ``z``'s feature
  maps; the generator is therefore always run in training mode and the returned
  perturbation is exactly the one that was optimised (the eval-mode running
  statistics are never used).
* **Final, not best.** :func:`train_uap` returns the perturbation after the last step
  (the success rate on the training batches is in ``history``); measure it on held-out
  images with :func:`targeted_success_rate`.
* **What "alone" means.** The paper feeds "the UAP itself". Its released code normalises
  inputs with mean 0.5 and std 0.5, so a perturbation fed as the network input in
  that space is, in pixels, a mid-grey canvas plus the perturbation. The default
  ``view="grey"`` is therefore ``clamp(0.5 + delta, 0, 1)``; ``view="rescaled"`` feeds
  ``(delta - min) / (max - min)``, the contrast-stretched picture in which UAPs are
  usually displayed (Figure 4(a)).
* Models are evaluated in eval mode with frozen parameters (:func:`nbs_lib.core.device.frozen_eval`,
  which restores modes and ``requires_grad`` afterwards): gradients are taken with
  respect to the generator or the input only, never left on the model's weights.
  bf16 autocast is used on CUDA only (``amp=True``); the CPU path is float32.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nbs_lib.core.device import autocast as _autocast
from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.methods.evaluate import RobustnessResult, decline_ratio
from nbs_lib.methods.threat_models import THREAT_MODELS, threat_model

__all__ = [
    "ResnetGenerator",
    "UAPGenerator",
    "UAPResult",
    "uap_eps",
    "train_uap",
    "uap_config",
    "uap_cached",
    "universal_pgd",
    "universal_pgd_cached",
    "apply_perturbation",
    "predictions",
    "targeted_success_rate",
    "fooling_rate",
    "accuracy_under_perturbation",
    "perturbation_image",
    "perturbation_alone",
    "snapshot_every",
    "Snapshots",
    "success_along_training",
    "input_gradient",
    "gradient_image",
]

UAP_CODE_VERSION = 1  # bump when a change to the UAP code must invalidate cached UAPs
NORMS = tuple(THREAT_MODELS)
NORM_LAYERS = ("batch", "instance")
VIEWS = ("grey", "black", "rescaled")


# --------------------------------------------------------------------------- validation


def uap_eps(eps: float, norm: str = "Linf") -> float:
    """The budget on the [0, 1] pixel scale from the paper's notation.

    L-inf: ``eps`` in units of 1/255 (``10`` -> ``10/255``). L2: the radius on the [0, 1]
    scale, taken as written (the convention of :class:`nbs_lib.methods.attacks.AttackSpec`).
    Raises ``ValueError`` for an unknown norm and for ``eps`` outside (0, 255].
    """
    ball = threat_model(norm)
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number, got {eps!r}.") from None
    if not math.isfinite(value) or value <= 0 or value > 255:
        raise ValueError(
            f"eps={eps!r} (in {ball.unit}) must be in (0, 255], i.e. a bound in (0, 1] on the pixel "
            "scale: a UAP needs a positive budget, and e.g. eps=10 means 10/255 for L-inf."
        )
    return ball.pixels(value)


def _images_of(images) -> torch.Tensor:
    """A float ``[N, 3, H, W]`` tensor from a tensor or a ``LabeledImages`` held in memory."""
    if not isinstance(images, torch.Tensor):
        inner = getattr(images, "images", None)
        if not isinstance(inner, torch.Tensor):
            raise TypeError("images must be a [N, 3, H, W] tensor in [0, 1] or an in-memory "
                            f"LabeledImages, got {type(images).__name__}.")
        images = inner
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}.")
    return images


def _check_size(height: int, width: int) -> None:
    if height % 4 or width % 4 or height < 8 or width < 8:
        raise ValueError(
            f"The UAP generator needs an image size divisible by 4 and at least 8 (it "
            f"downsamples twice by 2 and upsamples back); got {height}x{width}. Resize the "
            f"images, e.g. to {max(8, 4 * round(height / 4))}x{max(8, 4 * round(width / 4))}."
        )


def _num_classes(model: nn.Module, example: torch.Tensor) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    device = next((p.device for p in model.parameters()), example.device)
    with frozen_eval(model), torch.no_grad():
        return int(model(example[:1].to(device)).shape[-1])


def _resolve_target(target, num_classes: int, classes: Sequence[str] | None) -> int:
    """``target`` as a class index; a class name is looked up in ``classes``."""
    names = list(classes) if classes is not None else None
    if isinstance(target, str):
        if names is None or target not in names:
            raise ValueError(f"Unknown target class {target!r}; "
                             + (f"known classes: {names}." if names else "pass classes=... or an index."))
        return names.index(target)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) and not (
            isinstance(target, float) and target.is_integer()):
        raise ValueError(f"target must be a class index (an int), got {target!r}.")
    target = int(target)
    if not 0 <= target < num_classes:
        listing = (", ".join(f"{i}={n}" for i, n in enumerate(names)) if names
                   else f"0..{num_classes - 1}")
        raise ValueError(f"Unknown target class {target}: the model has {num_classes} classes "
                         f"(valid targets: {listing}).")
    return target


# --------------------------------------------------------------------------- generator


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "batch":
        return lambda ch: nn.BatchNorm2d(ch)
    if kind == "instance":
        return lambda ch: nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    raise ValueError(f"Unknown norm_layer {kind!r}; use one of {NORM_LAYERS}.")


class _ResnetBlock(nn.Module):
    """``x + conv-norm-relu-conv-norm(x)`` with reflection padding (Johnson et al. 2016)."""

    def __init__(self, ch: int, norm: Callable[[int], nn.Module], bias: bool):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """The encoder-decoder of Poursaeed et al. (2018), "Generative Adversarial Perturbations".

    Their ``ResnetGenerator`` (after Johnson et al.'s image-transformation network):
    reflection pad + 7x7 conv to ``ngf`` channels, two stride-2 3x3 convs (``2 ngf``,
    ``4 ngf``), ``n_blocks`` residual blocks at ``4 ngf``, two stride-2 transposed convs
    back to ``ngf``, reflection pad + 7x7 conv to ``out_channels``, tanh. Every conv but
    the last is followed by the norm layer (``"batch"`` or ``"instance"``) and ReLU;
    convs before a BatchNorm have no bias (as in the original). Output in (-1, 1), same
    spatial size as the input; height and width must be divisible by 4 (and >= 8).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64,
                 n_blocks: int = 6, norm_layer: str = "batch"):
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got ngf={ngf}, n_blocks={n_blocks}.")
        norm = _norm_layer(norm_layer)
        bias = norm_layer == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), norm(ngf), nn.ReLU(True),
        ]
        for mult in (1, 2):  # downsample: ngf -> 2 ngf -> 4 ngf
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [_ResnetBlock(ngf * 4, norm, bias) for _ in range(n_blocks)]
        for mult in (4, 2):  # upsample: 4 ngf -> 2 ngf -> ngf
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_size(z.shape[-2], z.shape[-1])
        return self.model(z)


class UAPGenerator(nn.Module):
    """A :class:`ResnetGenerator` with its fixed noise input and the projection to the budget.

    ``forward()`` takes no argument and returns the perturbation ``1 x C x H x W`` on
    the pixel scale: ``eps * tanh_output`` for L-inf, the tanh output rescaled to L2 norm
    ``eps`` when it is larger for L2. ``eps`` is on the [0, 1] pixel scale here (use
    :func:`uap_eps` to convert from the paper's notation). The noise ``z ~ U(0, 1)`` and
    the initial weights come from ``seed`` (the global RNG is left untouched).
    """

    def __init__(self, image_shape: Sequence[int], eps: float, norm: str = "Linf", ngf: int = 64,
                 n_blocks: int = 6, norm_layer: str = "batch", seed: int = 0):
        super().__init__()
        self.ball = threat_model(norm)
        channels, height, width = (int(s) for s in image_shape)
        _check_size(height, width)
        self.eps = float(eps)
        self.norm = norm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ResnetGenerator(channels, channels, ngf, n_blocks, norm_layer)
        noise = torch.rand((1, channels, height, width), generator=torch.Generator().manual_seed(seed))
        self.register_buffer("noise", noise)

    def forward(self) -> torch.Tensor:
        return self.ball.shrink(self.net(self.noise), self.eps)


# --------------------------------------------------------------------------- training


@dataclass
class UAPResult:
    """A trained targeted UAP.

    ``delta`` is the perturbation (``1 x C x H x W``, CPU, float32, pixel scale);
    ``eps`` the budget in the paper's notation (``eps_pixel`` on the [0, 1] scale);
    ``history`` rows ``{"step", "loss", "success"}`` (mean targeted cross-entropy and
    percent of the training batches classified as the target since the previous row);
    ``config`` everything that determined it (see :func:`uap_config`).
    """

    delta: torch.Tensor
    target: int | None  # None: an untargeted UAP
    eps: float
    norm: str
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def eps_pixel(self) -> float:
        return uap_eps(self.eps, self.norm)


def uap_config(target: int, eps: float, norm: str, steps: int, batch_size: int, lr: float, seed: int,
               ngf: int, n_blocks: int, norm_layer: str, image_shape: Sequence[int],
               log_every: int = 10) -> dict:
    """The UAP hyper-parameters as a JSON-able dict (part of the run-cache key)."""
    return {"target": int(target), "eps": float(eps), "norm": norm, "steps": int(steps),
            "batch_size": int(batch_size), "lr": float(lr), "betas": [0.5, 0.999], "seed": int(seed),
            "ngf": int(ngf), "n_blocks": int(n_blocks), "norm_layer": norm_layer,
            "image_shape": [int(s) for s in image_shape], "log_every": int(log_every),
            "noise": "uniform[0,1]", "scaling": "eps*tanh" if norm == "Linf" else "l2-shrink"}


def train_uap(model: nn.Module, images, target: int | str, eps: float = 10.0, norm: str = "Linf",
              steps: int = 500, batch_size: int = 32, lr: float = 2e-4, seed: int = 0,
              device="auto", progress: bool = True, ngf: int = 64, n_blocks: int = 6,
              norm_layer: str = "batch", classes: Sequence[str] | None = None,
              amp: bool = True, log_every: int = 10) -> UAPResult:
    """Train a targeted universal perturbation of ``model`` with a generator (Poursaeed et al. 2018).

    ``images`` (``[N, 3, H, W]`` in [0, 1], or an in-memory ``LabeledImages``) is the
    distribution ``mu`` of eq. 2; ``target`` the class ``y~`` (an index, or a name in
    ``classes``); ``eps`` the budget in the paper's notation (L-inf: units of 1/255; L2:
    radius on the [0, 1] scale). Each of ``steps`` steps takes the next ``batch_size``
    images of a seeded shuffle (reshuffled every pass), adds the generator's
    perturbation, clamps to [0, 1] and takes an Adam step (``lr``, betas (0.5, 0.999)
    as in Poursaeed et al.) on the generator to minimise the cross-entropy towards
    ``target``. The model is frozen in eval mode throughout (restored afterwards).

    Images of the target class are kept in the training batches (they are already
    classified as the target and cost nothing to fit). The default ``lr=2e-4`` is
    Poursaeed et al.'s. Measured here (Lite0 fine-tuned on Alphabet, 10/255, 60 steps):
    with BatchNorm in the generator ``lr=1e-3`` collapses to 0% targeted success while
    2e-4 reaches 60% (a direct universal PGD, :func:`universal_pgd`, reaches 89%):
    always compare a generator's UAP against that baseline before trusting it. ``ngf=64, n_blocks=6`` is their generator; ``ngf=16..32``
    is enough (and much cheaper) on a CPU. Cost on a CPU: the generator's forward and
    backward plus one input-gradient pass of the model per step (EfficientNet-Lite0,
    64x64, batch 32, ``ngf=32``: about 100 s per 100 steps on 2 busy cores).
    Returns a :class:`UAPResult`.
    """
    x_all = _images_of(images)
    eps_pixel = uap_eps(eps, norm)
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"Unknown norm_layer {norm_layer!r}; use one of {NORM_LAYERS}.")
    steps, batch_size, log_every = int(steps), int(batch_size), max(1, int(log_every))
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    image_shape = tuple(x_all.shape[1:])
    _check_size(*image_shape[-2:])
    dev = resolve_device(device)
    model.to(dev)
    target = _resolve_target(target, _num_classes(model, x_all), classes)
    config = uap_config(target, eps, norm, steps, batch_size, lr, seed, ngf, n_blocks, norm_layer,
                        image_shape, log_every)

    gen = UAPGenerator(image_shape, eps_pixel, norm, ngf, n_blocks, norm_layer, seed).to(dev)
    gen.train()  # see the module docstring: one fixed input, batch statistics are its own
    opt = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    order_gen = torch.Generator().manual_seed(seed)
    n = len(x_all)
    cast = _autocast(dev, amp)
    history: list[dict] = []
    loss_sum = torch.zeros((), device=dev)
    hit_sum = torch.zeros((), device=dev)
    seen = 0
    order, pos = torch.randperm(n, generator=order_gen), 0
    with frozen_eval(model):
        bar = tqdm(range(1, steps + 1), desc=f"UAP -> class {target}", leave=False, disable=not progress)
        for step in bar:
            idx = []
            while len(idx) < min(batch_size, n):
                if pos == n:
                    order, pos = torch.randperm(n, generator=order_gen), 0
                take = order[pos:pos + min(batch_size, n) - len(idx)]
                idx.extend(take.tolist())
                pos += len(take)
            x = x_all[idx].to(dev, non_blocking=True)
            y = torch.full((len(idx),), target, device=dev, dtype=torch.long)
            delta = gen()
            with cast:
                logits = model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            hit_sum += (logits.argmax(1) == target).sum()
            seen += len(idx)
            if step % log_every == 0 or step == steps:
                row = {"step": step, "loss": loss_sum.item() / seen, "success": 100.0 * hit_sum.item() / seen}
                history.append(row)
                bar.set_postfix(loss=round(row["loss"], 4), success=round(row["success"], 1))
                loss_sum.zero_(), hit_sum.zero_()
                seen = 0
        with torch.no_grad():
            delta = gen().detach().float().cpu()
    return UAPResult(delta=delta, target=target, eps=float(eps), norm=norm, history=history, config=config)


def universal_pgd(model: nn.Module, images, target: int | str | None, eps: float = 10.0, norm: str = "Linf",
                  steps: int = 100, batch_size: int = 32, seed: int = 0, device="auto",
                  classes: Sequence[str] | None = None) -> torch.Tensor:
    """A universal perturbation without a generator: projected gradient steps on one shared delta.

    The universal-perturbation training of Shafahi et al. (2020, "Universal adversarial
    training"), in either threat model (:mod:`nbs_lib.methods.threat_models`): each step draws
    ``batch_size`` of ``images``, adds the shared perturbation, moves it by ``eps / 10`` along
    the threat model's steepest direction (the sign for L-inf, the normalised gradient for L2)
    and projects it back onto the ``eps``-ball. With a ``target`` it descends the targeted
    cross-entropy (Figure 4(a)); with ``target=None`` it ascends the squared distance of the
    logits from the clean logits, the untargeted loss of the authors' released UAP script
    (Figure 5(b)), from a random point of the ball (the loss is flat at 0). At ``mini`` it is
    the chapter's UAP method; it also checks that the generator of :func:`train_uap` is not
    too weak. Returns ``1 x C x H x W`` on the CPU.
    """
    x_all = _images_of(images)
    ball, eps_pixel = threat_model(norm), uap_eps(eps, norm)
    dev = resolve_device(device)
    model.to(dev)
    if target is not None:
        target = _resolve_target(target, _num_classes(model, x_all), classes)
    g = torch.Generator().manual_seed(seed)
    delta = torch.zeros((1, *x_all.shape[1:]))
    if target is None:  # the loss is flat at delta = 0: start at a random point of the ball (around mid-grey)
        grey = torch.full_like(delta, 0.5)
        delta = ball.random_start(grey, eps_pixel, g) - grey
    delta = delta.to(dev).requires_grad_(True)
    with frozen_eval(model), torch.enable_grad():
        clean = None if target is not None else _logits(model, x_all, dev)
        for _ in range(int(steps)):
            idx = torch.randint(0, len(x_all), (min(batch_size, len(x_all)),), generator=g)
            logits = model((x_all[idx].to(dev) + delta).clamp(0, 1)).float()
            if target is None:
                loss = -F.mse_loss(logits, clean[idx].to(dev))
            else:
                loss = F.cross_entropy(logits, torch.full((len(idx),), target, device=dev, dtype=torch.long))
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= eps_pixel / 10 * ball.direction(grad)
                ball.project_perturbation(delta, eps_pixel)
    return delta.detach().cpu()


def _logits(model: nn.Module, images: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)])


UNIVERSAL_PGD_CODE_VERSION = 1


def universal_pgd_cached(identity: dict, model: nn.Module, images, target: int | None, eps: float,
                         norm: str = "Linf", steps: int = 100, batch_size: int = 32, seed: int = 0,
                         device="auto", sample: dict | None = None, cache: RunCache | None = None) -> UAPResult:
    """:func:`universal_pgd` through the run cache, as a :class:`UAPResult` (``target`` None: untargeted).

    The key is the model's ``identity`` (a ``TrainedModel.config``, or the backbone and
    weights of a pre-trained model), the image sample (``sample``, by default a content
    hash), and every setting of the attack.
    """
    cache = cache or RunCache()
    x_all = _images_of(images)
    uap_eps(eps, norm)  # fail before touching the cache
    config = {"method": "universal PGD", "target": None if target is None else int(target), "eps": float(eps),
              "norm": norm, "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
              "step": "eps/10"}
    key = {"kind": "universal_pgd", "model": identity,
           "sample": sample if sample is not None else _sample_identity(x_all), "uap": config}

    def compute() -> dict:
        return {"delta": universal_pgd(model, x_all, target, eps, norm, steps, batch_size, seed, device)}

    stored = cache.artifact("uaps", key, compute, code_version=UNIVERSAL_PGD_CODE_VERSION)
    return UAPResult(delta=stored["delta"], target=config["target"], eps=float(eps), norm=norm, config=config)


def _sample_identity(images: torch.Tensor) -> dict:
    return {"n": len(images), "shape": list(images.shape[1:]), "content": content_hash(images)}


def uap_cached(trained_model_config: dict, model: nn.Module, images, target: int | str,
               eps: float = 10.0, norm: str = "Linf", steps: int = 500, batch_size: int = 32,
               lr: float = 2e-4, seed: int = 0, device="auto", progress: bool = True, ngf: int = 64,
               n_blocks: int = 6, norm_layer: str = "batch", classes: Sequence[str] | None = None,
               amp: bool = True, log_every: int = 10, sample: dict | None = None,
               cache: RunCache | None = None) -> UAPResult:
    """:func:`train_uap` through the run cache: a second call with the same key loads the UAP.

    The key (as in :func:`nbs_lib.studies.common.evaluate_cached`) is the trained model's
    config (``TrainedModel.config``), the identity of the image sample (``sample``,
    e.g. :func:`nbs_lib.studies.common.sample_id`; by default a content hash of ``images``)
    and every UAP hyper-parameter (:func:`uap_config`). ``amp`` and the device are not
    part of it, as for cached attacks.
    """
    cache = cache or RunCache()
    x_all = _images_of(images)
    uap_eps(eps, norm)  # fail before touching the cache
    target = _resolve_target(target, _num_classes(model, x_all), classes)
    key = {"kind": "uap", "model": trained_model_config,
           "sample": sample if sample is not None else _sample_identity(x_all),
           "uap": uap_config(target, eps, norm, steps, batch_size, lr, seed, ngf, n_blocks,
                             norm_layer, x_all.shape[1:], log_every)}

    def compute() -> dict:
        result = train_uap(model, x_all, target, eps, norm, steps, batch_size, lr, seed, device, progress,
                           ngf, n_blocks, norm_layer, classes, amp, log_every)
        return {"delta": result.delta, "target": result.target, "eps": result.eps, "norm": result.norm,
                "history": result.history, "config": result.config}

    return UAPResult(**cache.artifact("uaps", key, compute, code_version=UAP_CODE_VERSION))


# --------------------------------------------------------------------------- measures


def apply_perturbation(images: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """``clamp(images + delta, 0, 1)`` (``delta`` broadcast over the batch); ``None`` is no-op."""
    if delta is None:
        return images
    return (images + delta.to(images.device, images.dtype)).clamp(0.0, 1.0)


@torch.no_grad()
def predictions(model: nn.Module, images, delta: torch.Tensor | None = None, batch_size: int = 256,
                device="auto", amp: bool = False, progress: bool = False,
                return_probs: bool = False) -> torch.Tensor:
    """Predicted classes (CPU int64) of ``model`` on ``clamp(images + delta, 0, 1)`` in eval mode.

    With ``return_probs=True`` the softmax probabilities (CPU float32) instead.
    """
    x_all = _images_of(images)
    dev = resolve_device(device)
    model.to(dev)
    out = []
    with frozen_eval(model):
        for i in tqdm(range(0, len(x_all), batch_size), desc="UAP eval", leave=False, disable=not progress):
            x = apply_perturbation(x_all[i:i + batch_size].to(dev, non_blocking=True), delta)
            with _autocast(dev, amp):
                logits = model(x).float()
            out.append((logits.softmax(1) if return_probs else logits.argmax(1)).cpu())
    return torch.cat(out)


def targeted_success_rate(model: nn.Module, images, delta: torch.Tensor | None, target: int | str,
                          labels: torch.Tensor | None = None, exclude_target_class: bool = True,
                          batch_size: int = 256, device="auto", classes: Sequence[str] | None = None,
                          amp: bool = False, progress: bool = False) -> float:
    """Percent of images classified as ``target`` after adding ``delta`` (Figure 5(a)).

    The paper's attack success rate: "the perturbed images are misclassified as the
    attack letter". With ``labels`` and ``exclude_target_class`` (default) the images
    whose true class already is the target are left out (they would count as
    successes for free). ``delta=None`` gives the rate without perturbation (the
    baseline). Returns ``nan`` when no image is left.
    """
    x_all = _images_of(images)
    target = _resolve_target(target, _num_classes(model, x_all), classes)
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        if len(labels) != len(x_all):
            raise ValueError(f"{len(x_all)} images but {len(labels)} labels.")
        if exclude_target_class:
            keep = labels != target
            x_all = x_all[keep]
            if len(x_all) == 0:
                return float("nan")
    pred = predictions(model, x_all, delta, batch_size, device, amp, progress)
    return 100.0 * int((pred == target).sum()) / len(pred)


def fooling_rate(model: nn.Module, images, delta: torch.Tensor, batch_size: int = 256,
                 device="auto", amp: bool = False, progress: bool = False) -> float:
    """Percent of images whose predicted class changes when ``delta`` is added.

    The fooling rate of Moosavi-Dezfooli et al. (2017), ``P(k(x + v) != k(x))``; it
    needs no labels. For accuracy-based numbers see :func:`accuracy_under_perturbation`.
    """
    clean = predictions(model, images, None, batch_size, device, amp, progress)
    perturbed = predictions(model, images, delta, batch_size, device, amp, progress)
    return 100.0 * int((clean != perturbed).sum()) / len(clean)


def accuracy_under_perturbation(model: nn.Module, images, labels: torch.Tensor, delta: torch.Tensor,
                                batch_size: int = 256, device="auto", amp: bool = False,
                                progress: bool = False, name: str = "UAP") -> RobustnessResult:
    """AOI, AAI and DR (percent) of ``model`` when one ``delta`` is added to every image (Figure 5(b)).

    Same counting rule as :mod:`nbs_lib.methods.evaluate`: an image counts for AAI when it is
    classified correctly both clean and perturbed, so ``AAI <= AOI`` and
    ``DR = (AOI - AAI) / AOI >= 0`` (:func:`nbs_lib.methods.evaluate.decline_ratio`); the DRs
    are comparable with the chapter's Table 1. ``name`` goes to the result's ``attack``.
    """
    x_all = _images_of(images)
    labels = torch.as_tensor(labels).cpu()
    if len(labels) != len(x_all):
        raise ValueError(f"{len(x_all)} images but {len(labels)} labels.")
    clean = predictions(model, x_all, None, batch_size, device, amp, progress) == labels
    perturbed = predictions(model, x_all, delta, batch_size, device, amp, progress) == labels
    aoi = 100.0 * int(clean.sum()) / len(labels)
    aai = 100.0 * int((clean & perturbed).sum()) / len(labels)
    return RobustnessResult(aoi=aoi, aai=aai, dr=decline_ratio(aoi, aai), attack=name, n=len(labels))


def perturbation_image(delta: torch.Tensor, view: str = "grey") -> torch.Tensor:
    """The perturbation as an image in [0, 1] (same shape as ``delta``).

    ``"grey"``: ``clamp(0.5 + delta, 0, 1)``, the perturbation on a mid-grey canvas (true
    to its amplitude; what the paper's "UAP alone" is in pixel space, see the module
    docstring). ``"rescaled"``: ``(delta - min) / (max - min)`` over the whole
    perturbation of each image, the contrast-stretched display of Figure 4(a) (a
    constant perturbation gives mid-grey). ``"black"``: ``clamp(delta, 0, 1)``, the
    perturbation on a zero canvas.
    """
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; use one of {VIEWS}.")
    delta = delta.detach().float()
    if view == "grey":
        return (0.5 + delta).clamp(0.0, 1.0)
    if view == "black":
        return delta.clamp(0.0, 1.0)
    flat = delta.reshape(delta.shape[0], -1) if delta.dim() == 4 else delta.reshape(1, -1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-12), torch.full_like(flat, 0.5))
    return scaled.reshape(delta.shape)


def perturbation_alone(model: nn.Module, delta: torch.Tensor, classes: Sequence[str] | None = None,
                       target: int | str | None = None, view: str = "grey", device="auto") -> dict:
    """The model's prediction on the perturbation shown without an image (Figure 4(a)).

    The paper reports that the fine-tuned model recognises its UAP alone as the target
    letter with 100% confidence. The input is :func:`perturbation_image` of ``delta``
    (``view="grey"`` or ``"rescaled"``). Returns ``{"pred", "pred_name", "confidence",
    "target", "target_name", "target_confidence", "view", "image"}`` (names ``None``
    without ``classes``; target entries ``None`` without ``target``).
    """
    delta = delta if delta.dim() == 4 else delta[None]
    image = perturbation_image(delta[:1], view)
    probs = predictions(model, image, None, device=device, return_probs=True)[0]
    pred = int(probs.argmax())
    names = list(classes) if classes is not None else None
    out = {"pred": pred, "pred_name": names[pred] if names else None,
           "confidence": float(probs[pred]), "target": None, "target_name": None,
           "target_confidence": None, "view": view, "image": image[0]}
    if target is not None:
        t = _resolve_target(target, len(probs), classes)
        out.update(target=t, target_name=names[t] if names else None, target_confidence=float(probs[t]))
    return out


# --------------------------------------------------------------------------- along training


class Snapshots:
    """An ``on_step`` callback for :func:`nbs_lib.methods.train.loop.fit` keeping the model every ``k`` steps.

    Steps ``1, k + 1, 2k + 1, ...`` are kept (so the model after its first batch, "the very
    beginning of training" of Figure 5(a), is always there; ``ceil(total_steps / k)``
    snapshots in all). Each snapshot is ``(step, state)``: a CPU copy of the
    ``state_dict`` (BatchNorm statistics included), or with ``directory`` the path of a
    file holding it (an EfficientNet-Lite0 state is about 19 MB). ``record(0, model)``
    before training adds the initial model. The callback only reads the model.
    """

    def __init__(self, k: int, directory: str | Path | None = None):
        if int(k) < 1:
            raise ValueError(f"Snapshot interval k must be >= 1, got {k!r}.")
        self.k = int(k)
        self.directory = Path(directory) if directory is not None else None
        self.snapshots: list[tuple[int, dict | Path]] = []

    def record(self, step: int, model: nn.Module) -> None:
        state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"step_{int(step):07d}.pt"
            torch.save(state, path)
            self.snapshots.append((int(step), path))
        else:
            self.snapshots.append((int(step), state))

    def __call__(self, step: int, model: nn.Module) -> None:
        if (int(step) - 1) % self.k == 0:
            self.record(step, model)


def snapshot_every(k: int, directory: str | Path | None = None) -> tuple[Snapshots, list]:
    """``(callback, snapshots)``: pass ``callback`` as ``fit(..., on_step=callback)``.

    ``snapshots`` is the list the callback fills with ``(step, state_dict or path)``
    (see :class:`Snapshots`).
    """
    recorder = Snapshots(k, directory)
    return recorder, recorder.snapshots


def success_along_training(model: nn.Module | Callable[[], nn.Module], snapshots, images,
                           delta: torch.Tensor, target: int | str, labels: torch.Tensor | None = None,
                           exclude_target_class: bool = True, batch_size: int = 256, device="auto",
                           classes: Sequence[str] | None = None, progress: bool = True
                           ) -> list[tuple[int, float]]:
    """Targeted success rate of ``delta`` against every snapshot: ``[(step, percent), ...]``.

    Figure 5(a): the UAP of the final model attacks the same model at earlier training
    batches. ``model`` gives the architecture: a module (deep-copied, never modified)
    or a function building one. ``snapshots`` as filled by :func:`snapshot_every`.
    """
    net = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
    rows = []
    for step, state in tqdm(list(snapshots), desc="UAP along training", leave=False, disable=not progress):
        if not isinstance(state, dict):
            state = torch.load(state, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        rows.append((int(step), targeted_success_rate(net, images, delta, target, labels,
                                                      exclude_target_class, batch_size, device, classes)))
    return rows


# --------------------------------------------------------------------------- input gradients


def input_gradient(model: nn.Module, images, target: int | str | torch.Tensor, device="auto",
                   average: bool = True, batch_size: int = 128, classes: Sequence[str] | None = None
                   ) -> torch.Tensor:
    """Gradient of ``-CE(model(x), target)`` with respect to the input pixels (Figure 4(b)).

    The sign is chosen so the gradient points *towards* the target class: moving the
    image along it raises the target's log-probability (for the true label as
    ``target`` this is minus the loss gradient that attacks ascend). ``target`` is one
    class for all images or a tensor of one class per image. Each image's gradient is
    its own (summed loss, no batch coupling); ``average=True`` returns their mean
    (``1 x C x H x W``), else one per image (the input's shape). CPU float32. The model
    runs in eval mode with frozen parameters, so its weights get no ``.grad``.
    """
    x_all = _images_of(images)
    dev = resolve_device(device)
    model.to(dev)
    n_classes = _num_classes(model, x_all)
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        targets = target.reshape(-1).long().cpu()
        if len(targets) != len(x_all):
            raise ValueError(f"{len(x_all)} images but {len(targets)} targets.")
        if targets.min() < 0 or targets.max() >= n_classes:
            raise ValueError(f"Targets must be in 0..{n_classes - 1}.")
    else:
        targets = torch.full((len(x_all),), _resolve_target(target, n_classes, classes), dtype=torch.long)
    grads = []
    with frozen_eval(model), torch.enable_grad():
        for i in range(0, len(x_all), batch_size):
            x = x_all[i:i + batch_size].to(dev).float().requires_grad_(True)
            loss = -F.cross_entropy(model(x).float(), targets[i:i + batch_size].to(dev), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            grads.append(grad.cpu())
    grad = torch.cat(grads)
    return grad.mean(0, keepdim=True) if average else grad


def gradient_image(grad: torch.Tensor, mode: str = "signed", clip: float = 3.0) -> torch.Tensor:
    """Input gradients as images in [0, 1] for display, each image scaled on its own.

    ``"signed"`` (default): divide by ``clip`` standard deviations of that image's
    gradient, clip to [-1, 1] and map to [0, 1] (0.5 is zero gradient; the few extreme
    pixels do not wash out the rest, as in Tsipras et al.'s and Engstrom et al.'s
    gradient figures). ``"abs"``: ``|grad|`` divided by its maximum (magnitude only).
    A zero gradient gives 0.5 (signed) or 0 (abs). Accepts ``[C, H, W]`` or ``[N, C, H, W]``.
    """
    if mode not in ("signed", "abs"):
        raise ValueError(f"Unknown mode {mode!r}; use 'signed' or 'abs'.")
    g = grad.detach().float().cpu()
    single = g.dim() == 3
    g = g[None] if single else g
    flat = g.reshape(len(g), -1)
    if mode == "signed":
        scale = (flat.std(1, unbiased=False, keepdim=True) * clip).clamp(min=1e-12)
        out = ((flat / scale).clamp(-1.0, 1.0) + 1.0) / 2.0
    else:
        mag = flat.abs()
        out = mag / mag.max(1, keepdim=True).values.clamp(min=1e-12)
    out = out.reshape(g.shape)
    return out[0] if single else out
