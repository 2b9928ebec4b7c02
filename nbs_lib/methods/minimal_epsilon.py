"""Per-image minimal adversarial radius, and the robustness curves and scalars built on it.

Zhang et al. measure robustness at one radius (DR under PGD-10 at 0.5/255, Tables 1-2).
At that radius almost every fine-tuned model is at DR 95-100, so a single radius cannot
tell models apart. The minimal-perturbation view of robustness (Szegedy et al. 2014;
DeepFool, Moosavi-Dezfooli et al. 2016; Carlini and Wagner 2017, who report the median
minimal perturbation) asks instead, image by image, for the smallest radius at which the
attack succeeds. From that one number per image follow

* the **robust-accuracy curve** at every radius of a fine grid (:func:`robust_curve`;
  an image counts at radius ``e`` when its minimal radius exceeds ``e``), monotone by
  construction;
* two scalars that do not saturate: the **median minimal radius** of the clean-correct
  images (:func:`median_minimal_epsilon`) and the **area under the curve** up to a
  stated radius (:func:`curve_area`, in percent of a model robust everywhere).

Two searches give the minimal radius under the paper's PGD (step ``1.25 * eps / steps``,
no random start): a **ladder** (:func:`minimal_epsilon`) finds for each image the first
radius of a grid that breaks it (galloping up the grid, then bisecting, image by image),
and a **bisection** (:func:`minimal_epsilon_bisection`) halves
a per-image interval; :func:`refine_floor` bisects below a ladder's first rung, where the
ladder alone would censor the most fragile images. Radii are in the paper's units: 1/255
for L-inf, the L2 radius on the [0, 1] scale for L2. A clean-misclassified image has radius 0; an image no radius of
the search breaks has ``inf``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.methods.attacks import pgd
from nbs_lib.methods.batches import iterate_batches
from nbs_lib.methods.evaluate import correct_mask
from nbs_lib.methods.threat_models import threat_model


def _check_grid(grid) -> list[float]:
    radii = [float(r) for r in grid]
    if not radii or any(not np.isfinite(r) or r <= 0 for r in radii) or radii != sorted(set(radii)):
        raise ValueError(f"The radius grid must be positive, finite and strictly increasing; got {list(grid)}.")
    return radii


def _broken(model, images, labels, eps, steps, norm, dev, batch_size, stop_when_broken=True) -> torch.Tensor:
    """Which images PGD-``steps`` at radius ``eps`` (pixels; a float or one per image) misclassifies
    at some iterate (an image stops at the first that breaks it: ``stop_when_broken``)."""
    out = []
    per_image = isinstance(eps, torch.Tensor)
    for start, (x, y) in zip(range(0, len(images), batch_size), iterate_batches(images, labels, batch_size)):
        x, y = x.to(dev), y.to(dev)
        radius = eps[start:start + len(x)] if per_image else eps
        x_adv = pgd(model, x, y, radius, steps, norm=norm, stop_when_broken=stop_when_broken)
        with torch.no_grad():
            out.append((model(x_adv).argmax(1) != y).cpu())
    return torch.cat(out)


def _clean_start(model, images, labels, dev) -> tuple[np.ndarray, torch.Tensor]:
    """Radii before any attack (0 where the clean image is misclassified, else ``inf``) and the
    indices of the clean-correct images, which the searches then attack."""
    clean = correct_mask(model, images, labels, dev, progress=False)
    return np.where(clean.numpy(), np.inf, 0.0), clean.nonzero().flatten()


def minimal_epsilon(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, grid, steps: int = 10,
                    norm: str = "Linf", device="auto", batch_size: int = 128,
                    progress: bool = True, stop_when_broken: bool = True) -> np.ndarray:
    """Per image, the first radius of ``grid`` (ascending, paper units) at which PGD-``steps`` breaks it.

    A search over the grid's rungs, image by image (:func:`_first_breaking_rung`): galloping
    up the rungs 0, 1, 3, 7, ... (and the last), then bisecting between the highest rung that
    held and the lowest that broke, so an image whose radius is the ``k``-th rung costs about
    ``2 log2 k`` PGD runs instead of the ``k`` of a linear ladder (an image broken at the first
    rung costs one, as before). It returns the ladder's answer wherever breaking is monotone
    in the radius, which PGD's step rule (``1.25 * eps / steps``) makes the rule. Within a
    radius an image stops at the first PGD iterate that breaks it (``stop_when_broken``;
    ``False`` keeps the last iterate). Returns a float array: 0 for clean-misclassified
    images, ``inf`` for images no radius of the grid breaks.
    """
    radii = _check_grid(grid)
    ball, dev = threat_model(norm), resolve_device(device)
    result, alive = _clean_start(model, images, labels, dev)
    pixels = torch.tensor([ball.pixels(r) for r in radii], dtype=torch.float64)
    with frozen_eval(model, dev):
        rung = _first_breaking_rung(model, images[alive], labels[alive], pixels, steps, norm, dev, batch_size,
                                    stop_when_broken, progress)
    broken = rung < len(radii)
    result[alive[broken].numpy()] = np.asarray(radii)[rung[broken].numpy()]
    return result


def gallop_rungs(n: int) -> list[int]:
    """The rungs a galloping search tries first on a grid of ``n``: 0, 1, 3, 7, ... and the last."""
    rungs, rung = [], 0
    while rung < n - 1:
        rungs.append(rung)
        rung = 2 * rung + 1
    return rungs + [n - 1]


def _first_breaking_rung(model, images, labels, pixels, steps, norm, dev, batch_size, stop_when_broken,
                         progress) -> torch.Tensor:
    """Per image, the index of the first radius of ``pixels`` (ascending) at which PGD breaks it,
    ``len(pixels)`` where none does: gallop up :func:`gallop_rungs`, then bisect each image's
    bracket (the highest rung that held, the lowest that broke]."""
    n = len(pixels)
    held = torch.full((len(images),), -1, dtype=torch.long)  # highest rung known not to break
    broke = torch.full((len(images),), n, dtype=torch.long)  # lowest rung known to break
    standing = torch.arange(len(images))
    for rung in tqdm(gallop_rungs(n), desc=f"minimal eps ({norm})", leave=False, disable=not progress):
        if len(standing) == 0:
            break
        hit = _broken(model, images[standing], labels[standing], float(pixels[rung]), steps, norm, dev,
                      batch_size, stop_when_broken)
        broke[standing[hit]] = rung
        held[standing[~hit]] = rung
        standing = standing[~hit]
    while True:
        open_ = ((broke - held) > 1) & (broke < n)
        if not bool(open_.any()):
            return broke
        idx = open_.nonzero().flatten()
        mid = (held[idx] + broke[idx]) // 2
        hit = _broken(model, images[idx], labels[idx], pixels[mid].float(), steps, norm, dev, batch_size,
                      stop_when_broken)
        broke[idx[hit]] = mid[hit]
        held[idx[~hit]] = mid[~hit]


def minimal_epsilon_bisection(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, high: float,
                              iterations: int = 8, steps: int = 10, norm: str = "Linf", device="auto",
                              batch_size: int = 128) -> np.ndarray:
    """Per image, the smallest radius found to break it by bisection on ``(0, high]`` (paper units).

    Every image gets its own radius in one batched PGD per iteration. After ``iterations``
    halvings the result is within ``high / 2**iterations`` above the radius where the
    attack starts to succeed. 0 for clean-misclassified images, ``inf`` where PGD at
    ``high`` does not break the image.
    """
    _check_high(high)
    ball, dev = threat_model(norm), resolve_device(device)
    result, idx = _clean_start(model, images, labels, dev)
    with frozen_eval(model, dev):
        if len(idx):
            at_high = _broken(model, images[idx], labels[idx], ball.pixels(high), steps, norm, dev, batch_size)
            idx = idx[at_high]
        result[idx.numpy()] = _bisect(model, images[idx], labels[idx], high, iterations, steps, norm, dev,
                                      batch_size)
    return result


def refine_floor(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, radii, floor: float,
                 iterations: int = 3, steps: int = 10, norm: str = "Linf", device="auto",
                 batch_size: int = 128) -> np.ndarray:
    """Sharpen the radii a ladder censored at its first rung ``floor``, by bisection on ``(0, floor]``.

    A ladder cannot tell apart images that break at any radius up to its first rung, so a
    model whose images mostly break there would show the rung itself as its median radius
    (the saturation this measure exists to avoid). Those images are known to break at
    ``floor``; ``iterations`` halvings place each within ``floor / 2**iterations``. The
    other radii are returned unchanged.
    """
    _check_high(floor)
    radii = np.array(radii, dtype=float)
    idx = torch.as_tensor(np.flatnonzero(radii == floor), dtype=torch.long)
    if len(idx) and iterations > 0:
        dev = resolve_device(device)
        with frozen_eval(model, dev):
            radii[idx.numpy()] = _bisect(model, images[idx], labels[idx], floor, iterations, steps, norm, dev,
                                         batch_size)
    return radii


def _check_high(high) -> None:
    if not np.isfinite(high) or high <= 0:
        raise ValueError(f"high must be a positive radius; got {high!r}")


def _bisect(model, images, labels, high, iterations, steps, norm, dev, batch_size) -> np.ndarray:
    """Bisection on ``(0, high]`` for images known to break at ``high``: the smallest radius found."""
    ball = threat_model(norm)
    lo = torch.zeros(len(images), dtype=torch.float64)
    hi = torch.full((len(images),), float(high), dtype=torch.float64)
    for _ in range(iterations if len(images) else 0):
        mid = (lo + hi) / 2
        broken = _broken(model, images, labels, ball.pixels(mid).float(), steps, norm, dev, batch_size)
        hi = torch.where(broken, mid, hi)
        lo = torch.where(broken, lo, mid)
    return hi.numpy()


def robust_curve(min_eps, radii) -> np.ndarray:
    """Robust accuracy (percent of all images) at each radius: images whose minimal radius exceeds it."""
    m = np.asarray(min_eps, dtype=float)
    return np.array([100.0 * float(np.mean(m > float(r))) for r in radii])


def curve_area(min_eps, max_eps: float) -> float:
    """Area under the robust-accuracy curve on ``[0, max_eps]``, in percent of ``100 * max_eps``.

    The curve is the step function of :func:`robust_curve`; its integral is the mean over
    images of ``min(radius, max_eps)``, so the area is exact for the measured radii.
    100 means every image survives up to ``max_eps``; the clean accuracy bounds it above.
    """
    m = np.asarray(min_eps, dtype=float)
    return 100.0 * float(np.mean(np.minimum(m, max_eps))) / float(max_eps)


def median_minimal_epsilon(min_eps) -> float:
    """Median minimal radius over the clean-correct images (``nan`` if there are none; may be ``inf``)."""
    m = np.asarray(min_eps, dtype=float)
    m = m[m > 0]
    return float(np.median(m)) if len(m) else float("nan")
