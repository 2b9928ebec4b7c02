"""Steepness of a feature space: the Local Lipschitzness of eq. 4.

Paper section "Robust ImageNet Pre-training", *Steepness of Feature Space*:

    LL(f(X)) = 1/n sum_i  max_{x'_i in B_inf(x_i, eps)}  ||f(x_i) - f(x'_i)||_1 / ||x_i - x'_i||_inf

(Yang et al. 2020). A lower LL is a smoother feature space. f is a feature extractor
(any module mapping [0, 1] images to one vector each, e.g. ``model.features`` of a
:class:`nbs_lib.models.split.SplitClassifier`, which normalises inside); the ball is the
L-inf ball of radius ``eps`` around x intersected with the image box [0, 1].

The inner maximum is found by PGD (:func:`lipschitz_pgd`), as in the authors' DM code:
start from ``x`` plus a little uniform noise (``random_init``, their ``0.001 * noise``),
take ``steps`` signed-gradient ascent steps of size ``1.25 * eps / steps`` (the paper's
PGD rule), projecting onto the ball and [0, 1] after each step, and keep for every image
the largest ratio seen over all iterates (the start included).

The ascent direction is the sign of the gradient of the ratio *with the denominator
held fixed within a step*, i.e. of the feature distance ``||f(x) - f(x')||_1`` (the
official code's TRADES-like inner max; the sign is the same because the denominator is
one positive number per image). The denominator's own gradient touches only the
arg-max pixel(s) of ``|x - x'|``: with it, signed steps keep pushing the pixels on the
ball's boundary back inside and the iterate oscillates short of the maximiser (for a
linear f it stops a few percent below the exact value, which ascent on the distance
reaches at a vertex of the ball). The ratio itself, denominator included, is what is
recorded and reported.

Units: ``eps`` is on the [0, 1] pixel scale; the paper's notation ``#0.5`` (0.5/255)
is ``eps_255=0.5``. ``||.||_1`` sums over all ``embedding_dim`` entries of f (512 for
ResNet-18), so LL grows with the embedding size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbs_lib.core.device import autocast as _autocast
from nbs_lib.core.device import frozen_eval, resolve_device

__all__ = ["local_lipschitz", "lipschitz_pgd", "lipschitz_ratio"]

#: The smallest ``||x - x'||_inf`` a ratio is divided by (a perturbation of zero gives ratio 0).
TINY = 1e-12


def lipschitz_ratio(f_x: torch.Tensor, f_x_adv: torch.Tensor, x: torch.Tensor,
                    x_adv: torch.Tensor) -> torch.Tensor:
    """Per-image ``||f(x) - f(x')||_1 / ||x - x'||_inf`` (differentiable in the features).

    ``f_x``/``f_x_adv`` are the features of ``x``/``x_adv`` (one row per image; extra
    dimensions are flattened). The denominator is clamped to :data:`TINY`, and an image
    with ``x' == x`` gets ratio 0 (the point itself is not in the supremum).
    """
    dtype = torch.promote_types(f_x.dtype, torch.float32)  # float32, or float64 for float64 f
    num = (f_x.to(dtype) - f_x_adv.to(dtype)).flatten(1).abs().sum(1)
    den = (x - x_adv).detach().flatten(1).abs().amax(1).to(dtype)
    ratio = num / den.clamp_min(TINY)
    return torch.where(den > 0, ratio, torch.zeros_like(ratio))


def _check_eps(eps: float | None, eps_255: float | None) -> float:
    if (eps is None) == (eps_255 is None):
        raise ValueError("Give exactly one of eps (on the [0, 1] pixel scale) and eps_255 "
                         "(the paper's notation: eps_255=0.5 is 0.5/255).")
    if eps_255 is not None:
        eps_255 = float(eps_255)
        if not math.isfinite(eps_255) or not 0 < eps_255 <= 255:
            raise ValueError(f"eps_255={eps_255!r} must be in (0, 255] (units of 1/255).")
        return eps_255 / 255.0
    eps = float(eps)
    if not math.isfinite(eps) or not 0 < eps <= 1:
        raise ValueError(f"eps={eps!r} must be in (0, 1] on the [0, 1] pixel scale; for the paper's "
                         "'#0.5' pass eps=0.5/255 or eps_255=0.5. LL is undefined for eps=0.")
    return eps


def _check_steps(steps: int, random_init: float) -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps!r}: the inner maximisation needs at least one PGD step.")
    if not math.isfinite(random_init) or random_init <= 0:
        raise ValueError(f"random_init={random_init!r} must be > 0: at x' = x the feature distance has "
                         "zero gradient, so the ascent starts from x plus a little noise (0.001 in "
                         "the authors' code).")
    return int(steps)


def lipschitz_pgd(features: nn.Module, x: torch.Tensor, eps: float, steps: int = 10,
                  step_size: float | None = None, random_init: float = 1e-3,
                  generator: torch.Generator | None = None, amp: bool = False,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner max of eq. 4 by PGD: ``(x_best, ratio_best)`` per image, both detached.

    ``features`` is evaluated as it is (call it inside :func:`nbs_lib.core.device.frozen_eval`
    for eval mode with frozen weights, as :func:`local_lipschitz` does). ``eps`` is on the
    [0, 1] scale; ``step_size`` defaults to ``1.25 * eps / steps``. The start is
    ``x + random_init * U(-1, 1)`` (noise drawn from ``generator``, on the CPU when the
    generator is a CPU one) projected onto the ball; ``x_best`` is the iterate with the
    largest ratio (see the module docstring for the ascent direction). Gradients are
    taken with respect to the input only; ``amp`` runs the forward passes under bf16
    autocast on CUDA (coarse at eps = 0.5/255: compare with ``amp=False``).
    """
    eps = _check_eps(eps, None)
    steps = _check_steps(steps, random_init)
    alpha = 1.25 * eps / steps if step_size is None else float(step_size)
    cast = _autocast(x.device, amp)
    x = x.detach()
    with torch.no_grad():
        with cast:
            f_x = features(x)
        f_x = f_x.to(torch.promote_types(f_x.dtype, torch.float32))
        lo = (x - eps).clamp_(min=0.0)
        hi = (x + eps).clamp_(max=1.0)
        gen_device = generator.device if generator is not None else x.device
        noise = torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
        x_adv = (x + noise.to(x.device).mul_(2).sub_(1).mul_(random_init)).clamp_(lo, hi)
        best_x = x_adv.clone()
        best = torch.full((len(x),), -1.0, device=x.device, dtype=f_x.dtype)
    for k in range(steps + 1):
        last = k == steps
        with torch.set_grad_enabled(not last):
            x_adv.requires_grad_(not last)
            with cast:
                f_adv = features(x_adv)
            num = (f_x - f_adv.to(f_x.dtype)).flatten(1).abs().sum(1)
        with torch.no_grad():
            ratio = lipschitz_ratio(f_x, f_adv.detach(), x, x_adv)
            better = ratio > best
            best = torch.where(better, ratio, best)
            best_x[better] = x_adv.detach()[better]
        if last:
            break
        # sign(grad of num / den) with den held fixed == sign(grad of num): den > 0 per image
        (grad,) = torch.autograd.grad(num.sum(), x_adv)
        with torch.no_grad():
            x_adv = x_adv.detach().add_(grad.sign(), alpha=alpha).clamp_(lo, hi)
    return best_x, best.clamp_min(0.0)


def local_lipschitz(features: nn.Module, images: torch.Tensor, eps: float | None = None,
                    steps: int = 10, step_size: float | None = None, batch_size: int = 128,
                    device="auto", seed: int = 0, random_init: float = 1e-3,
                    return_per_image: bool = False, *, eps_255: float | None = None,
                    amp: bool = False, progress: bool = True):
    """Local Lipschitzness LL(f(X)) of eq. 4: the mean over ``images`` of the PGD inner max.

    ``features``: a module mapping [0, 1] images to vectors (``model.features``); it is
    moved to ``device`` and evaluated in eval mode with frozen parameters (restored
    afterwards). ``images``: an (n, C, H, W) tensor in [0, 1]. ``eps``: the L-inf radius
    on the [0, 1] scale, or ``eps_255`` in the paper's units (``eps_255=0.5`` is the
    paper's 0.5/255). ``steps``/``step_size``/``random_init``: the PGD of
    :func:`lipschitz_pgd` (noise from a generator seeded with ``seed``, so the same call
    gives the same number). Float32 by default (``amp=False``): bf16 is too coarse for
    perturbations of 0.5/255.

    Returns the mean as a float, or with ``return_per_image=True`` the per-image maxima
    (a float32 CPU tensor whose mean is LL).
    """
    eps = _check_eps(eps, eps_255)
    steps = _check_steps(steps, random_init)
    images = torch.as_tensor(images)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch (n, C, H, W); got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError("images must be floats in [0, 1] (convert uint8 images with images / 255).")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1]: the model normalises inside, the ball is "
                         "intersected with [0, 1].")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    features.to(dev)
    generator = torch.Generator().manual_seed(seed)
    out = []
    with frozen_eval(features):
        for i in tqdm(range(0, len(images), batch_size), desc="LL", leave=False, disable=not progress):
            x = images[i:i + batch_size].to(dev, non_blocking=True)
            _, ratio = lipschitz_pgd(features, x, eps, steps, step_size, random_init, generator, amp)
            out.append(ratio.float().cpu())
    per_image = torch.cat(out)
    return per_image if return_per_image else float(per_image.mean().item())
