"""Generalisation and robustness metrics of Zhang et al. (AAAI 2023), Tables 1-2.

The section "ImageNet Pre-training Is Non-robust" reports, for every model and
target dataset,

* **AOI**: accuracy on original inputs (percent),
* **AAI**: accuracy on adversarial inputs (percent), by default under PGD-10#0.5,
* **DR**: decline ratio ``(AOI - AAI) / AOI`` (percent), which compares robustness
  across models whose clean accuracies differ.

Counting rule for AAI. A sample counts as robust when the model classifies it
correctly *and* classifies its adversarial example correctly. The clean image lies
inside every eps-ball, so a misclassified clean image is already an adversarial
example; this is the rule AutoAttack and RobustBench use, and it guarantees
``AAI <= AOI`` (``DR >= 0``). It also lets us attack only the correctly classified
images, which saves the attack's cost on the rest without changing any number.

All functions take images in [0, 1] (``(N, C, H, W)`` tensors) and integer labels,
run the model in eval mode (its modes are restored afterwards) and show tqdm
progress bars over batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbs_lib.core.device import autocast as _autocast
from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.methods.attacks import (
    AttackSpec,
    adversarial_batches,
    attack,
    parse_attack,
)
from nbs_lib.methods.batches import device_data, input_batches

__all__ = [
    "accuracy",
    "robust_accuracy",
    "decline_ratio",
    "mask_decline_ratio",
    "RobustnessResult",
    "evaluate_robustness",
    "robustness_table",
    "accuracy_vs_epsilon",
    "correct_mask",
    "robustness_masks",
]


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if len(images) == 0:
        raise ValueError("No images to evaluate on.")


def _percent(mask: torch.Tensor) -> float:
    """Share of ``True`` in a boolean mask, in percent (exact integer counting)."""
    return 100.0 * int(mask.sum()) / len(mask)


def correct_mask(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    amp: bool = False,
    progress: bool = True,
    desc: str = "clean",
) -> torch.Tensor:
    """Boolean CPU tensor: which images the model classifies correctly (eval mode, no grad)."""
    from tqdm.auto import tqdm

    _check_data(images, labels)
    dev = resolve_device(device)
    out = []
    with frozen_eval(model, dev), torch.no_grad():
        for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=not progress):
            x = images[i : i + batch_size].to(dev, non_blocking=True)
            y = labels[i : i + batch_size].to(dev, non_blocking=True)
            with _autocast(dev, amp, torch.bfloat16):
                logits = model(x)
            out.append(logits.argmax(1) == y)
    return torch.cat(out).cpu()


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    amp: bool = False,
    progress: bool = True,
) -> float:
    """Top-1 accuracy in percent on clean images: the paper's AOI (Table 1)."""
    mask = correct_mask(model, images, labels, device, batch_size, amp=amp, progress=progress)
    return _percent(mask)


def _robust_mask(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor,
    spec: AttackSpec,
    dev: torch.device,
    batch_size: int,
    progress: bool,
    **attack_kwargs,
) -> torch.Tensor:
    """Robust = correct on the clean image and on its adversarial example.

    Only the clean-correct images are attacked (the others are counted as broken). PGD
    leaves an image at the first iterate that breaks it (``stop_when_broken``, AutoAttack's
    convention) unless the caller passes ``stop_when_broken=False``.
    """
    attack_kwargs.setdefault("stop_when_broken", True)
    robust = torch.zeros(len(images), dtype=torch.bool)
    idx = clean.nonzero().flatten()
    if len(idx) == 0:
        return robust
    cast = _autocast(dev, attack_kwargs.get("amp", False), attack_kwargs.get("amp_dtype", torch.bfloat16))
    hits = []
    with frozen_eval(model, dev):
        for _x, x_adv, y in adversarial_batches(
            model, (images[idx], labels[idx]), spec, device=dev, batch_size=batch_size,
            progress=progress, **attack_kwargs,
        ):
            with torch.no_grad(), cast:
                hits.append(model(x_adv).argmax(1) == y)
    robust[idx] = torch.cat(hits).cpu()
    return robust


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: str | AttackSpec,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **attack_kwargs,
) -> float:
    """Accuracy in percent under the attack ``spec`` (e.g. ``"PGD-10#0.5"``): the paper's AAI.

    A sample counts when both the clean image and its adversarial example are
    classified correctly (see the module docstring). Extra keyword arguments go to
    :func:`nbs_lib.methods.attacks.attack` (``amp``, ``random_start``, ``seed``, ...).
    """
    s = parse_attack(spec)
    dev = resolve_device(device)
    amp = attack_kwargs.get("amp", False)
    clean = correct_mask(model, images, labels, dev, max(batch_size, 1), amp=amp, progress=progress)
    robust = _robust_mask(model, images, labels, clean, s, dev, batch_size, progress, **attack_kwargs)
    return _percent(robust)


def decline_ratio(aoi, aai):
    """Decline ratio ``DR = (AOI - AAI) / AOI`` in percent (the paper's eq. in Table 1).

    ``aoi`` and ``aai`` are accuracies in percent; scalars give a float, arrays an
    array. ``AOI = 0`` gives ``nan`` (there is nothing to decline from).
    Example: Pets standard model, ``decline_ratio(60.62, 40.23) = 33.6``.
    """
    aoi_a = np.asarray(aoi, dtype=float)
    aai_a = np.asarray(aai, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        dr = np.where(aoi_a == 0, np.nan, 100.0 * (aoi_a - aai_a) / np.where(aoi_a == 0, 1.0, aoi_a))
    return float(dr) if dr.ndim == 0 else dr


def mask_decline_ratio(clean, robust) -> float:
    """DR in percent from per-image clean-correct and robust masks (for bootstrapping over images)."""
    clean, robust = np.asarray(clean, dtype=bool), np.asarray(robust, dtype=bool)
    return decline_ratio(100.0 * clean.mean(), 100.0 * robust.mean())


@dataclass
class RobustnessResult:
    """One cell group of Table 1/2: clean accuracy, adversarial accuracy and DR (percent)."""

    aoi: float
    aai: float
    dr: float
    attack: str
    n: int  # number of evaluated images


def evaluate_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: list[str] | str,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **attack_kwargs,
) -> list[RobustnessResult]:
    """AOI, AAI and DR of one model under several attacks (Table 1 and Table 2 rows).

    The clean pass (AOI) runs once and is shared by all attacks; each attack only
    attacks the correctly classified images.
    """
    if isinstance(attacks, (str, AttackSpec)):
        attacks = [attacks]
    specs = [parse_attack(a) for a in attacks]  # fail early on a bad spec
    clean, robust_masks = robustness_masks(model, images, labels, specs, device, batch_size, progress,
                                           **attack_kwargs)
    aoi = _percent(clean)
    results = []
    for s, robust in zip(specs, robust_masks):
        aai = _percent(robust)
        results.append(RobustnessResult(aoi=aoi, aai=aai, dr=decline_ratio(aoi, aai), attack=str(s), n=len(images)))
    return results


def robustness_masks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: list[str | AttackSpec],
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **attack_kwargs,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per image: the clean-correct mask and, for each attack, the robust mask (the counting rule above).

    The masks are what paired tests compare (McNemar on two models' robust masks).
    """
    specs = [parse_attack(a) for a in attacks]
    dev = resolve_device(device)
    amp = attack_kwargs.get("amp", False)
    clean = correct_mask(model, images, labels, dev, max(batch_size, 1), amp=amp, progress=progress)
    return clean, [_robust_mask(model, images, labels, clean, s, dev, batch_size, progress, **attack_kwargs)
                   for s in specs]


def robustness_table(
    models: dict,
    data: dict,
    attacks: list[str] | str = ("PGD-10#0.5",),
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **attack_kwargs,
) -> pd.DataFrame:
    """Tables 1-2 as a tidy frame: one row per (dataset, model, attack).

    ``models`` maps ``(dataset, model_name)`` to a model; ``data`` maps ``dataset`` to
    ``(images, labels)``. Columns: ``dataset, model, attack, aoi, aai, dr, n``.
    Pivot with ``df.pivot_table(index=["model", "attack"], columns="dataset", values="aai")``.
    """
    from tqdm.auto import tqdm

    missing = sorted({d for d, _ in models} - set(data))
    if missing:
        raise ValueError(f"No data for dataset(s) {missing}; `data` has {sorted(data)}.")
    rows = []
    for (dataset, name), model in tqdm(models.items(), desc="models", leave=False, disable=not progress):
        images, labels = data[dataset]
        for r in evaluate_robustness(model, images, labels, list(attacks), device, batch_size, progress, **attack_kwargs):
            rows.append({"dataset": dataset, "model": name, **asdict(r)})
    cols = ["dataset", "model", "attack", "aoi", "aai", "dr", "n"]
    return pd.DataFrame(rows, columns=cols)


def accuracy_vs_epsilon(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps_255_list,
    attack: str = "PGD-10",
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    **attack_kwargs,
) -> pd.DataFrame:
    """Accuracy (percent) under ``attack`` at every eps of ``eps_255_list`` (units of 1/255).

    Extends Table 2's two budgets (0.5 and 2.0) to a curve. ``attack`` is a spec
    without its ``#eps`` part: ``"PGD-10"``, ``"FGSM"``, ``"AA"``, ``"PGD-20-L2"``
    (for L2 the numbers are radii on the [0, 1] scale). eps 0 gives the clean
    accuracy. Returns a frame with columns ``eps, accuracy, attack``.
    """
    if "#" in attack:
        raise ValueError(f"Give the attack without its epsilon, e.g. 'PGD-10', not {attack!r}.")
    specs = [parse_attack(f"{attack}#{float(e)}") for e in eps_255_list]
    dev = resolve_device(device)
    amp = attack_kwargs.get("amp", False)
    clean = correct_mask(model, images, labels, dev, max(batch_size, 1), amp=amp, progress=progress)
    rows = []
    for s in specs:
        if s.eps == 0:
            mask = clean
        else:
            mask = _robust_mask(model, images, labels, clean, s, dev, batch_size, progress, **attack_kwargs)
        rows.append({"eps": s.eps_255, "accuracy": _percent(mask), "attack": attack})
    return pd.DataFrame(rows, columns=["eps", "accuracy", "attack"])


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device="auto", batch_size: int = 256,
                   amp: bool = True) -> torch.Tensor:
    """Logits of ``model`` (frozen, eval mode) for all images, returned on the CPU in float32."""
    device = resolve_device(device)
    outs = []
    with frozen_eval(model, device):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            with _autocast(device, amp):
                outs.append(model(x).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def dataset_accuracy(model: nn.Module, ds, device="auto", batch_size: int = 256,
                     num_workers: int = 0, amp: bool = True) -> float:
    """Clean accuracy in percent of ``model`` (frozen, eval mode) on an in-memory or lazy dataset."""
    if len(ds) == 0:
        return float("nan")
    device = resolve_device(device)
    correct = torch.zeros((), device=device)
    with frozen_eval(model, device):
        data = device_data(ds, device)
        for x, y in input_batches(data, ds.labels.to(device), batch_size, device, num_workers=num_workers):
            with _autocast(device, amp):
                correct += (model(x).argmax(1) == y).sum()
    return 100.0 * correct.item() / len(ds)


def adversarial_example(model: nn.Module, image: torch.Tensor, label: int, spec: str,
                        device="auto") -> dict:
    """One image, its adversarial version, the perturbation and both predictions with confidences."""
    dev = resolve_device(device)
    x = image[None].to(dev)
    y = torch.tensor([label], device=dev)
    with frozen_eval(model, dev):
        x_adv = attack(model, x, y, spec) if parse_attack(spec).eps > 0 else x
        probs = predict_logits(model, torch.cat([x, x_adv]), dev).softmax(-1)
    conf, pred = probs.max(-1)
    return {"image": x[0].cpu(), "adversarial": x_adv[0].detach().cpu(),
            "perturbation": (x_adv - x)[0].detach().cpu(),
            "clean_pred": int(pred[0]), "clean_conf": float(conf[0]),
            "adv_pred": int(pred[1]), "adv_conf": float(conf[1])}
