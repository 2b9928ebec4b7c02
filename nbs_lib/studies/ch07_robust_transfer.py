"""Chapter 7: when does source robustness help transfer, and when does it hurt?

The second work (Falck, "Are Adversarially Robust Deep Nets Always Better Transfer
Learners?", section 4) argues that adversarially
robust source models transfer better only when the target shares the source's
human-interpretable (robust) structure. Its four experiments, each built here on the
book's own pieces:

* **A ladder of robust sources** (Salman et al. 2020's ImageNet models at ``paper``, read
  from checkpoints by :func:`checkpoint_ladder`; at ``mini`` the ImageNet EfficientNet-Lite0
  self-distilled at several radii, 0 the control, :mod:`nbs_lib.studies.imagenet_sources`).
* **Feature visualisation** (section 4.1, after Engstrom et al. 2019): for chosen
  components i of the representation R = f(x), start from Gaussian noise x0 and
  ascend R(x)_i by normalised gradient steps (:func:`visualise_features`).
* **Anti-robust targets** (section 4.2, after Ilyas et al. 2019): each image of a
  target is pushed by *targeted* PGD against a standard model C of that target towards
  a random other class t and relabelled t, so only C's non-robust features predict
  the new label (:func:`anti_robust_images`, :func:`anti_robust_splits`).
* **Transfer curves** (Fig. 3): fixed-feature transfer (only g trained, f frozen with
  its source BatchNorm statistics; the ``partial`` regime) and full fine-tuning from
  every source, held-out test accuracy after every epoch (:func:`transfer_curve`).
* **Source dataset modification** (section 4.3): every source image x (here: a pool of
  crops of the offline photographs, the ladder's own source data) is replaced by an image
  whose representation under the *robust* source matches R(x), found by gradient descent
  from another crop (:func:`robustify_images`); a source distilled *without* attack from
  the standard ImageNet model on the robustified crops is then compared, as a transfer
  learner, with the same distillation on the original crops (:func:`robustified_pair`).

Every dataset and model made here is a run-cache entry keyed by its inputs' content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.data.images import LabeledImages
from nbs_lib.data.photos import photo_crops
from nbs_lib.data.registry import load_dataset
from nbs_lib.methods.attacks import parse_attack, pgd
from nbs_lib.methods.threat_models import threat_model
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import TrainedModel, augmentation_for, train_model, weights_id
from nbs_lib.methods.train.terms import config_key
from nbs_lib.models.registry import load_model
from nbs_lib.models.split import SplitClassifier
from nbs_lib.report.verdicts import count_verdict
from nbs_lib.studies.imagenet_sources import pool_source, radius_of
from nbs_lib.studies.sources import SourceModel, checkpoint_source

ROBUST_TRANSFER_CODE_VERSION = 2  # bump when a change here must invalidate this chapter's cached artifacts
MODES = {"fixed-feature": "partial", "full fine-tuning": "full"}


# ----------------------------------------------------------------------------------
# the ladder of source models
# ----------------------------------------------------------------------------------


def ladder_spec(eps_255: float, steps: int = 3) -> str | None:
    """The adversarial-training spec of one rung: ``None`` for eps 0, else ``PGD-steps#eps``."""
    if not isinstance(eps_255, (int, float)) or not math.isfinite(eps_255) or eps_255 < 0:
        raise ValueError(f"a ladder epsilon is a number >= 0 in units of 1/255; got {eps_255!r}")
    return None if eps_255 == 0 else f"PGD-{int(steps)}#{float(eps_255):g}"


def source_eps(source: SourceModel) -> float:
    """The radius (1/255) a source was made robust at (0: standard or the control rung)."""
    if source.validation:  # a self-distilled rung (imagenet_sources)
        return radius_of(source)
    return 0.0 if source.adversarial is None else parse_attack(source.adversarial).eps_255


def external_source(path: str | Path, eps: float, arch: str = "resnet18", name: str = "imagenet") -> SourceModel:
    """A rung of the ladder read from a checkpoint file (at ``paper``: Salman et al.'s robust
    ImageNet models, trained at ``eps``); see :func:`nbs_lib.studies.sources.checkpoint_source`."""
    return checkpoint_source(path, ladder_spec(eps), arch, name)


def checkpoint_ladder(checkpoints: dict, arch: str = "resnet18", name: str = "imagenet") -> list[SourceModel]:
    """The ladder read from ``{eps: path}`` checkpoint files, lowest radius first.

    The radii may arrive as strings (papermill writes a dict parameter's keys as text:
    ``{"0": ..., "4": ...}``); each must read as a number >= 0 in units of 1/255.
    """
    ladder = []
    for eps, path in checkpoints.items():
        try:
            radius = float(eps)
        except (TypeError, ValueError):
            raise ValueError(f"robust_checkpoints maps a radius in 1/255 to a checkpoint path; {eps!r} is not a "
                             "number (e.g. {0: 'resnet18_linf_eps0.0.ckpt', 4: 'resnet18_linf_eps4.0.ckpt'})."
                             ) from None
        ladder.append((radius, path))
    if len(ladder) < 2:
        raise ValueError("robust_checkpoints needs at least two radii, the standard model (0) among them.")
    return [external_source(path, radius, arch, name) for radius, path in sorted(ladder)]


# ----------------------------------------------------------------------------------
# section 4.1: feature visualisation
# ----------------------------------------------------------------------------------


@dataclass
class FeatureVisualisation:
    """Images that maximise chosen components of a model's representation."""

    components: list[int]
    images: torch.Tensor  # [k, 3, H, W] in [0, 1], one per component
    start_activation: torch.Tensor  # R(x0)_i
    final_activation: torch.Tensor  # R(x_vis)_i


def noise_seed_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Gaussian-noise start images (mean 0.5, std 0.25, clipped to [0, 1]); the same for every model."""
    generator = torch.Generator().manual_seed(seed)
    return (0.5 + 0.25 * torch.randn(count, 3, size, size, generator=generator)).clamp_(0, 1)


def _normalised(grad: torch.Tensor) -> torch.Tensor:
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norm.view(-1, *([1] * (grad.dim() - 1)))


PARAMETRISATIONS = ("pixels", "fourier")


def _fourier_scale(size: int) -> torch.Tensor:
    """1/frequency for every coefficient of a ``size`` x ``size`` real FFT (lowest frequency 1/size)."""
    fy = torch.fft.fftfreq(size).abs()[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    return 1.0 / torch.sqrt(fy ** 2 + fx ** 2).clamp_min(1.0 / size)


def _fourier_images(spectrum: torch.Tensor, size: int) -> torch.Tensor:
    """Images in (0, 1) from a real-valued ``[k, 3, size, size // 2 + 1, 2]`` spectrum scaled by 1/f."""
    scale = _fourier_scale(size).to(spectrum.device)
    coefficients = torch.complex(spectrum[..., 0], spectrum[..., 1]) * scale
    return torch.sigmoid(torch.fft.irfft2(coefficients, s=(size, size), norm="ortho"))


def visualise_features(model: SplitClassifier, components, size: int, steps: int = 200,
                       step_size: float = 1.0, seed: int = 0, device="auto",
                       parametrisation: str = "pixels") -> FeatureVisualisation:
    """Section 4.1: x_vis = argmax_x R(x)_i by gradient ascent, one image per component i.

    ``R`` is f's pooled embedding (``model.features``), in eval mode with frozen weights.

    * ``"pixels"`` (the work's, after Engstrom et al. 2019: no image prior): each
      component starts from its own :func:`noise_seed_images` image (the same for every
      model of a ladder) and moves ``step_size`` (L2, decaying linearly to 0) along the
      normalised gradient per step, clipped to [0, 1]. A robust model's gradients alone
      should give a recognisable image; a standard model's give high-frequency patterns.
    * ``"fourier"`` (the decorrelated parametrisation of Olah et al. 2017's feature
      visualisation): the image is ``sigmoid(irfft2(w / f))``, Adam (lr 0.05) on the
      spectrum ``w`` (started at small noise from ``seed``), and each step sees the image
      shifted by up to size/16 pixels (random jitter). The 1/f scaling favours low
      frequencies for every model alike, so high-frequency patterns cannot dominate and
      the rungs compare on the structure they respond to; it is the prior, not robustness,
      that smooths these images, which is why both are shown.
    """
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"Unknown parametrisation {parametrisation!r}; use one of {PARAMETRISATIONS}.")
    components = [int(c) for c in components]
    if not components:
        raise ValueError("choose at least one component to visualise")
    if max(components) >= model.embedding_dim or min(components) < 0:
        raise ValueError(f"components must lie in [0, {model.embedding_dim}); got {components}")
    device = resolve_device(device)
    index = torch.tensor(components, device=device)
    rows = torch.arange(len(components), device=device)
    features = model.features.to(device)
    with frozen_eval(features):
        if parametrisation == "pixels":
            x = _ascend_pixels(features, noise_seed_images(len(components), size, seed).to(device), rows, index,
                               steps, step_size)
        else:
            x = _ascend_spectrum(features, len(components), size, rows, index, steps, seed, device)
        with torch.no_grad():
            start = features(x[0])[rows, index].cpu()
            final = features(x[1])[rows, index].cpu()
    return FeatureVisualisation(components, x[1].detach().cpu(), start, final)


def _ascend_pixels(features, x0: torch.Tensor, rows, index, steps: int, step_size: float):
    x = x0.clone()
    for step in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(features(x)[rows, index].sum(), x)
        with torch.no_grad():
            x = (x + step_size * (1 - step / steps) * _normalised(grad)).clamp_(0, 1)
    return x0, x


def seed_spectrum(count: int, size: int, seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The Fourier parametrisation's start: small Gaussian coefficients (std 0.01), a near-grey
    image with faint 1/f texture; the same for every model of a ladder."""
    generator = generator or torch.Generator().manual_seed(seed)
    return 0.01 * torch.randn(count, 3, size, size // 2 + 1, 2, generator=generator)


def _ascend_spectrum(features, count: int, size: int, rows, index, steps: int, seed: int, device):
    generator = torch.Generator().manual_seed(seed)
    spectrum = seed_spectrum(count, size, generator=generator).to(device)
    x0 = _fourier_images(spectrum, size).detach()
    spectrum.requires_grad_(True)
    optimizer = torch.optim.Adam([spectrum], lr=0.05)
    shift = max(1, size // 16)
    for _ in range(steps):
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
        image = torch.roll(_fourier_images(spectrum, size), shifts=(dy, dx), dims=(2, 3))
        loss = -features(image)[rows, index].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return x0, _fourier_images(spectrum, size).detach()


def active_components(models, size: int, count: int, seed: int = 0, device="auto") -> list[int]:
    """``count`` components drawn from ``seed`` among those active (> 0) for every model.

    R is a pooled ReLU output: a component that is 0 on its start image has zero gradient
    and cannot be ascended, so the grids show only components every model of the ladder
    responds to on both starts (the pixel noise and the Fourier parametrisation's start).
    """
    device = resolve_device(device)
    starts = torch.cat([noise_seed_images(8, size, seed), _fourier_images(seed_spectrum(8, size, seed), size)])
    active = None
    for model in models:
        features = model.features.to(device)
        with frozen_eval(features), torch.no_grad():
            response = features(starts.to(device)).amin(0).cpu() > 0
        active = response if active is None else active & response
    candidates = torch.nonzero(active).flatten().numpy()
    if len(candidates) == 0:
        raise ValueError("no component of the representation is active on the noise start for every model")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(candidates, size=min(count, len(candidates)), replace=False).tolist())


def image_roughness(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically adjacent pixels, per image.

    A number for section 4.1's visual claim: 0 for a flat image, 1 for a black-and-white
    checkerboard, about 0.28 for the Gaussian-noise start (std 0.25, clipped). The work's
    interpretable visualisations are smooth shapes, so they should lie well below the noise.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [n, channels, H, W]; got shape {tuple(images.shape)}")
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1)
    return torch.cat([dx, dy], dim=1).mean(dim=1)


def colour_spread(images: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the standard deviation across the colour channels, per image.

    0 for a grey image. A grey-scale source (``fashion_mnist``) never shows its model
    colour, so colour in a visualisation is structure the source data does not have.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [n, channels, H, W]; got shape {tuple(images.shape)}")
    return images.std(dim=1, unbiased=False).flatten(1).mean(dim=1)


def visualisation_grid(sources: list[SourceModel], count: int = 6, size: int = 32,
                       steps: int = 200, step_size: float = 1.0, seed: int = 0, device="auto",
                       parametrisation: str = "pixels"):
    """Fig. 1: one :class:`FeatureVisualisation` per source (same components, same start).

    Returns ``(visualisations, table)``; the table has one row per source and component
    with the activation at the start and at the end, and the roughness
    (:func:`image_roughness`) and colour (:func:`colour_spread`) of the noise start and
    the final image.
    """
    components = active_components([s.trained.model for s in sources], size, count, seed, device)
    start_images = noise_seed_images(len(components), size, seed)
    start_rough, start_colour = image_roughness(start_images).tolist(), colour_spread(start_images).tolist()
    visuals, rows = [], []
    for s in sources:
        vis = visualise_features(s.trained.model, components, size, steps, step_size, seed, device, parametrisation)
        visuals.append(vis)
        measures = zip(vis.components, vis.start_activation.tolist(), vis.final_activation.tolist(), start_rough,
                       image_roughness(vis.images).tolist(), start_colour, colour_spread(vis.images).tolist())
        for c, a0, a1, r0, r1, c0, c1 in measures:
            rows.append({"parametrisation": parametrisation, "source_eps": source_eps(s), "component": c,
                         "start_activation": a0,
                         "final_activation": a1, "start_roughness": r0, "final_roughness": r1,
                         "start_colour": c0, "final_colour": c1})
    return visuals, pd.DataFrame(rows)


def visualisation_study(sources: list[SourceModel], count: int = 6, size: int = 64, steps: int = 200,
                        seed: int = 0, device="auto"):
    """Fig. 1 in both parametrisations (:data:`PARAMETRISATIONS`): ``({parametrisation:
    visualisations}, table)``, the table :func:`visualisation_grid`'s rows of both."""
    visuals, tables = {}, []
    for parametrisation in PARAMETRISATIONS:
        visuals[parametrisation], table = visualisation_grid(sources, count, size, steps, seed=seed, device=device,
                                                             parametrisation=parametrisation)
        tables.append(table)
    return visuals, pd.concat(tables, ignore_index=True)


def activation_summary(activations: pd.DataFrame) -> pd.DataFrame:
    """Per parametrisation and source radius: the mean activation at the start and the end, and
    the final images' roughness and colour (the noise start's roughness beside them)."""
    columns = ["start_activation", "final_activation", "start_roughness", "final_roughness", "final_colour"]
    return activations.groupby(["parametrisation", "source_eps"], as_index=False, sort=False)[columns].mean()


# ----------------------------------------------------------------------------------
# section 4.2: anti-robust targets
# ----------------------------------------------------------------------------------


@dataclass
class AntiRobustSplit:
    """One split of an anti-robust dataset and what its construction achieved."""

    data: LabeledImages  # the perturbed images, labelled with their target classes t
    original_labels: torch.Tensor
    success_rate: float  # % of images the standard model C classifies as t
    max_perturbation: float  # largest |x_adv - x| (L-inf) or ||x_adv - x||_2 (L2) over the split


def random_other_classes(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A target class t != y drawn uniformly from the other classes for every label y."""
    if num_classes < 2:
        raise ValueError("an anti-robust dataset needs at least two classes")
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


ANTI_ROBUST_STEP_FACTOR = 2.5  # targeted PGD step = factor * eps / steps (Madry et al.'s 2.5)


def anti_robust_images(classifier: SplitClassifier, ds: LabeledImages, attack: str = "PGD-20#32",
                       seed: int = 0, device="auto", batch_size: int = 256,
                       step_factor: float = ANTI_ROBUST_STEP_FACTOR) -> AntiRobustSplit:
    """Section 4.2: x_adv = argmin_{||x'-x|| <= eps} CE(C(x'), t) by targeted PGD, relabelled t.

    ``attack`` is a PGD spec (``"PGD-20#32"``: 20 steps, L-inf 32/255; L2 as
    ``"PGD-20-L2#1.0"`` with eps in pixel units). t is a uniformly random class other
    than y (Ilyas et al.'s D_rand draws any class; excluding y makes every label a
    non-robust one). ``classifier`` is a standard model of the same target.

    The step is ``step_factor * eps / steps``, not the evaluation rule 1.25 * eps / steps:
    a targeted attack has to travel further than the ball's radius (Ilyas et al. took 100
    L2 steps of 0.1 in a ball of 0.5). On the 32px glyph targets the factor matters less
    than eps: targeted success on `digits` at 16/255 is about 20% whatever the step, at
    32/255 it is 71% with 1.25 and 83% with 2.5 (20 steps), at 64/255 it is 97-100%.
    """
    spec = parse_attack(attack)
    if spec.name != "PGD":
        raise ValueError(f"anti-robust images need a PGD spec such as 'PGD-20#8'; got {attack!r}")
    device = resolve_device(device)
    classifier = classifier.to(device).eval()
    targets = random_other_classes(ds.labels, ds.num_classes, seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    out, hits, largest = [], 0, 0.0
    for start in range(0, len(ds), batch_size):  # a lazy (paper-size) set is decoded batch by batch
        x = ds.stacked(range(start, min(start + batch_size, len(ds)))).to(device)
        t = targets[start:start + batch_size].to(device)
        x_adv = pgd(classifier, x, t, spec.eps, spec.steps, step_factor * spec.eps / spec.steps, spec.norm,
                    random_start=False, generator=generator, targeted=True)
        with torch.no_grad():
            hits += int((classifier(x_adv).argmax(1) == t).sum())
            largest = max(largest, float(threat_model(spec.norm).size(x_adv - x).max()))
        out.append(x_adv.cpu())
    images = torch.cat(out)
    data = LabeledImages(f"{ds.name}-antirobust", ds.split, ds.classes, targets, images=images)
    return AntiRobustSplit(data, ds.labels.clone(), 100.0 * hits / len(ds), largest)


def anti_robust_splits(target: str, profile: str | Profile, classifier: TrainedModel, attack: str = "PGD-20#32",
                       seed: int = 0, device="auto", cache: RunCache | None = None,
                       step_factor: float = ANTI_ROBUST_STEP_FACTOR) -> dict[str, AntiRobustSplit]:
    """The anti-robust train and test splits of ``target`` (cached like a model).

    ``classifier`` is the standard model C of ``target`` at the profile's size; the key
    holds its identity, the original data's fingerprints, the attack and the seed.
    """
    cache = cache or RunCache()
    prof = get_profile(profile)  # the targets' profile (sources.target_profile of the ladder)
    splits = {}
    for i, split in enumerate(("train", "test")):
        ds = load_dataset(target, split, prof, seed=seed)
        key = {"kind": "anti_robust", "data": ds.fingerprint(), "classifier": classifier.config,
               "attack": str(parse_attack(attack)), "step_factor": float(step_factor), "seed": seed + i}

        def compute(ds=ds, i=i) -> dict:
            made = anti_robust_images(classifier.model, ds, attack, seed + i, device, step_factor=step_factor)
            return {"images": made.data.images, "labels": made.data.labels, "original": made.original_labels,
                    "success_rate": made.success_rate, "max_perturbation": made.max_perturbation}

        stored = cache.artifact("anti_robust", key, compute, code_version=ROBUST_TRANSFER_CODE_VERSION)
        data = LabeledImages(f"{target}-antirobust", split, ds.classes, stored["labels"], images=stored["images"])
        splits[split] = AntiRobustSplit(data, stored["original"], stored["success_rate"], stored["max_perturbation"])
    return splits


def anti_robust_table(splits: dict[str, dict[str, AntiRobustSplit]], attack: str) -> pd.DataFrame:
    """One row per target and split: how the anti-robust construction went."""
    rows = []
    for target, parts in splits.items():
        for split, made in parts.items():
            rows.append({"dataset": target, "split": split, "images": len(made.data), "attack": attack,
                         "labels changed %": 100.0 * float((made.data.labels != made.original_labels)
                                                           .float().mean()),
                         "C predicts t %": made.success_rate, "max perturbation": made.max_perturbation})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------
# transfer curves (Fig. 3, Fig. 4b)
# ----------------------------------------------------------------------------------


def transfer_config(mode: str, profile: Profile, dataset: str, epochs: int, seed: int,
                    lr_f: float | None = None, lr_g: float | None = None) -> TrainConfig:
    """The fine-tuning of one transfer curve: ``mode`` is ``fixed-feature`` or ``full fine-tuning``.

    Learning rates are fixed across sources (the profile's first ``lr_grid_f`` and last
    ``lr_grid_g`` unless given), so the curves differ only by the source.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown transfer mode {mode!r}; use one of {list(MODES)}.")
    regime = MODES[mode]
    return TrainConfig(regime=regime, epochs=int(epochs), batch_size=profile.batch_size,
                       lr_f=0.0 if regime == "partial" else (lr_f or profile.lr_grid_f[0]),
                       lr_g=lr_g or profile.lr_grid_g[-1],
                       augment=augmentation_for(dataset.split("-")[0], profile.augment), seed=seed)


def transfer_curve(source: SourceModel, train: LabeledImages, test: LabeledImages, mode: str,
                   profile: str | Profile = "mini", epochs: int = 8, seed: int = 0, device="auto",
                   cache: RunCache | None = None, progress: bool = True) -> list[dict]:
    """Test accuracy after every epoch of fine-tuning ``source`` on ``train`` (cached).

    Returns rows ``epoch, accuracy, train_acc``; accuracy is on ``test`` (held out; it
    never chooses anything, the learning rates are fixed by :func:`transfer_config`).
    """
    cache = cache or RunCache()
    prof = get_profile(profile)  # the targets' profile (sources.target_profile of the ladder)
    config = transfer_config(mode, prof, train.name, epochs, seed)
    key = {"kind": "transfer_curve", "source": weights_id(source.weights), "arch": prof.arch,
           "image_size": prof.image_size, "train": config_key(config), "train_data": train.fingerprint(),
           "test_data": test.fingerprint()}

    def run() -> list[dict]:
        model = load_model(prof.arch, weights=source.weights, num_classes=train.num_classes, seed=seed)
        history = fit(model, train, config, val=test, device=device, progress=progress,
                      desc=f"{source.label} -> {train.name} ({mode})")
        return [{"epoch": h["epoch"], "accuracy": h["val_acc"], "train_acc": h["train_acc"]} for h in history]

    return cache.memo("transfer_curves", key, run, code_version=ROBUST_TRANSFER_CODE_VERSION)


def transfer_study(sources: list[SourceModel], datasets: dict, modes=tuple(MODES), profile="mini",
                   epochs: int = 8, seeds=(0,), device="auto", cache: RunCache | None = None,
                   progress: bool = True, experiment: str = "transfer") -> pd.DataFrame:
    """Every source fine-tuned on every dataset in every mode, once per training seed
    (the head's initialisation, the batch order and augmentation): one row per epoch.

    ``datasets`` maps ``(dataset, variant) -> (train, test)`` :class:`LabeledImages`.
    """
    if isinstance(seeds, int) or not len(seeds):
        raise ValueError(f"seeds is a non-empty list of training seeds, e.g. [0, 1]; got {seeds!r}")
    rows = []
    for (dataset, variant), (train, test) in datasets.items():
        for mode in modes:
            for s in sources:
                for seed in seeds:
                    for r in transfer_curve(s, train, test, mode, profile, epochs, int(seed), device, cache, progress):
                        rows.append({"experiment": experiment, "source": s.label, "source_eps": source_eps(s),
                                     "dataset": dataset, "variant": variant, "mode": mode, "seed": int(seed), **r})
    return pd.DataFrame(rows)


def target_datasets(targets, profile="mini", anti_robust: dict | None = None, seed: int = 0) -> dict:
    """``(dataset, variant) -> (train, test)`` for the standard targets and their anti-robust twins."""
    prof = get_profile(profile)  # the targets' profile (sources.target_profile of the ladder)
    out = {}
    for target in targets:
        out[(target, "standard")] = (load_dataset(target, "train", prof, seed=seed),
                                     load_dataset(target, "test", prof, seed=seed))
        if anti_robust and target in anti_robust:
            out[(target, "anti-robust")] = (anti_robust[target]["train"].data, anti_robust[target]["test"].data)
    return out


def standard_target_model(target: str, profile="mini", seed: int = 0, device="auto",
                          cache: RunCache | None = None, progress: bool = True) -> TrainedModel:
    """The standard model C of ``target`` at the sources' backbone and size (chapter 1's protocol)."""
    prof = get_profile(profile)  # the targets' profile (sources.target_profile of the ladder)
    return train_model(target, "standard", prof, arch=prof.arch, weights=None, seed=seed, device=device,
                       cache=cache, progress=progress)


def curve_summary(curves: pd.DataFrame, early_epoch: int = 1) -> pd.DataFrame:
    """Per dataset, variant and mode: early and final accuracy by source radius (mean over the
    training seeds), and their Spearman correlation with the radius (positive: robustness helps)."""
    rows = []
    last = int(curves.epoch.max())
    keys = ["dataset", "variant", "mode"]
    mean = curves.groupby(keys + ["source_eps", "epoch"], sort=False, as_index=False).accuracy.mean()
    for (dataset, variant, mode), part in mean.groupby(keys, sort=False):
        row = {"dataset": dataset, "variant": variant, "mode": mode}
        for label, epoch in (("early", min(early_epoch, last)), ("final", last)):
            at = part[part.epoch == epoch].sort_values("source_eps")
            for eps, acc in zip(at.source_eps, at.accuracy):
                row[f"{label} eps={eps:g}"] = acc
            rho = stats.spearmanr(at.source_eps, at.accuracy).statistic if at.accuracy.nunique() > 1 else 0.0
            row[f"{label} rho"] = rho
        rows.append(row)
    return pd.DataFrame(rows)


def curve_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per dataset, mode and epoch, one column per source (mean over the seeds)."""
    wide = curves.pivot_table(index=["dataset", "mode", "epoch"], columns="source", values="accuracy", aggfunc="mean")
    wide.columns.name = None
    return wide.reset_index()


# ----------------------------------------------------------------------------------
# section 4.3: the robustified source dataset
# ----------------------------------------------------------------------------------


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A random permutation with no fixed point: every image gets another image as its seed."""
    if n < 2:
        raise ValueError("a derangement needs at least two items")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    fixed = torch.nonzero(perm == torch.arange(n)).flatten()
    for i in fixed.tolist():  # swap each fixed point with its neighbour
        j = (i + 1) % n
        perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def robustify_images(robust_model: SplitClassifier, images: torch.Tensor, seeds: torch.Tensor,
                     steps: int = 100, step_size: float = 1.0, device="auto", batch_size: int = 256):
    """Section 4.3: x_r = argmin ||R(x_r) - R(x)||_2 by gradient descent from a seed image.

    ``R`` is the robust model's pooled embedding. Each step moves x_r by ``step_size``
    (L2, decaying linearly to 0) along the normalised gradient, then clips to [0, 1].
    Returns ``(robust_images, start_distance, final_distance)``, distances per image.
    """
    if images.shape != seeds.shape:
        raise ValueError("every image needs one seed image of the same shape")
    device = resolve_device(device)
    features = robust_model.features.to(device)
    out, d0, d1 = [], [], []
    with frozen_eval(features):
        for start in range(0, len(images), batch_size):
            with torch.no_grad():
                goal = features(images[start:start + batch_size].to(device))
            x = seeds[start:start + batch_size].to(device).clone()
            with torch.no_grad():
                d0.append((features(x) - goal).norm(dim=1).cpu())
            for step in range(steps):
                x.requires_grad_(True)
                distance = (features(x) - goal).norm(dim=1)
                (grad,) = torch.autograd.grad(distance.sum(), x)
                with torch.no_grad():
                    x = (x - step_size * (1 - step / steps) * _normalised(grad)).clamp_(0, 1)
            with torch.no_grad():
                d1.append((features(x) - goal).norm(dim=1).cpu())
            out.append(x.detach().cpu())
    return torch.cat(out), torch.cat(d0), torch.cat(d1)


ROBUSTIFY_SEED = 4300  # the crops of the section 4.3 pool (distinct from every ladder step's crops)


def robustified_photos(robust: SourceModel, profile: str | Profile = "mini", step_size: float = 1.0,
                       seed: int = 0, device="auto", cache: RunCache | None = None) -> dict:
    """Section 4.3's robustified source data: ``robustify_pool`` crops of the training photographs,
    each replaced by :func:`robustify_images` of ``robust`` started from another crop of the pool
    (a :func:`derangement`), ``robustify_steps`` steps (cached).

    Returns ``original``, ``seeds`` (the start crop of each), ``images`` (robustified) and the
    representation distances ``start`` and ``final`` per crop.
    """
    cache = cache or RunCache()
    p = get_profile(profile)
    crops = photo_crops(p.robustify_pool, p.image_size, seed=ROBUSTIFY_SEED + seed, split="train")
    order = derangement(len(crops), seed)
    key = {"kind": "robustified photos", "robust": robust.trained.config, "crops": content_hash(crops),
           "steps": p.robustify_steps, "step_size": float(step_size), "seed": seed}

    def compute() -> dict:
        images, d0, d1 = robustify_images(robust.trained.model, crops, crops[order], p.robustify_steps, step_size,
                                          device)
        return {"images": images, "start": d0, "final": d1}

    stored = cache.artifact("robustified_source", key, compute, code_version=ROBUST_TRANSFER_CODE_VERSION)
    return {"original": crops, "seeds": crops[order], **stored}


def robustified_pair(robust: SourceModel, profile: str | Profile = "mini", teacher: str = "imagenet",
                     seed: int = 0, device="auto", cache: RunCache | None = None,
                     progress: bool = True) -> tuple[SourceModel, SourceModel, dict]:
    """Section 4.3: a *standard* source made on the robustified crops, and its baseline made on the
    original crops, both distilled without attack from ``teacher`` (the ladder's standard ImageNet
    weights) with the same recipe, steps and seed (:func:`nbs_lib.studies.imagenet_sources.pool_source`).

    A robustified crop is taught the teacher's output on the crop it stands for, as Ilyas et
    al.'s robustified dataset keeps the original label. Returns ``(baseline, robustified, summary)``;
    the summary says how far the descent went (mean representation distance to the original,
    from the seed crop and at the end).
    """
    made = robustified_photos(robust, profile, seed=seed, device=device, cache=cache)
    radii = sorted({0.0, 0.5, source_eps(robust)})  # clean, the paper's radius and the robust rung's own
    common = dict(profile=profile, teacher=str(teacher), seed=seed, device=device, cache=cache, progress=progress,
                  radii=radii)
    baseline = pool_source("photos, distilled (original crops)", made["original"], made["original"], **common)
    robustified = pool_source("photos, distilled (robustified crops)", made["images"], made["original"], **common)
    summary = {"crops": len(made["images"]), "matching steps": get_profile(profile).robustify_steps,
               "distance from the seed crop": float(made["start"].mean()),
               "distance at the end": float(made["final"].mean()),
               "relative distance at the end": float((made["final"] / made["start"].clamp_min(1e-12)).mean())}
    return baseline, robustified, summary


def chapter_results(curves: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The chapter's CSV rows: ``experiment, source, source_eps, dataset, variant, mode, seed, epoch, accuracy``."""
    cols = ["experiment", "source", "source_eps", "dataset", "variant", "mode", "seed", "epoch", "accuracy"]
    return curves[cols].assign(profile=profile)


def anti_robust_examples(anti: dict[str, dict[str, AntiRobustSplit]], profile="mini", seed: int = 0,
                         count: int = 6) -> list[tuple[str, list]]:
    """Fig. 2: for each target, a row of training images with their labels y and a row of
    their anti-robust versions with the new labels t (for :func:`nbs_lib.report.plots.before_after_grid`)."""
    rows = []
    for target, splits in anti.items():
        clean = load_dataset(target, "train", get_profile(profile), seed=seed)
        made = splits["train"]
        picks = range(min(count, len(clean)))
        rows.append((target, [(clean[i][0], f"y={clean.classes[int(made.original_labels[i])]}") for i in picks]))
        rows.append(("anti-robust", [(made.data.images[i], f"t={clean.classes[int(made.data.labels[i])]}")
                                     for i in picks]))
    return rows


def robustified_examples(robust: SourceModel, profile="mini", seed: int = 0, device="auto", count: int = 6,
                         cache: RunCache | None = None):
    """Fig. 4a: source crops, the crops the descent started from, and the robustified results."""
    made = robustified_photos(robust, profile, seed=seed, device=device, cache=cache)
    picks = range(min(count, len(made["images"])))
    return [(name, [(made[key][i], "") for i in picks])
            for name, key in (("original", "original"), ("seed crop", "seeds"), ("robustified", "images"))]


# ----------------------------------------------------------------------------------
# what reproduced
# ----------------------------------------------------------------------------------

CONSTRUCTION_SUCCESS = 90.0  # % of images on which C must predict t for the construction to count as made
ROUGHNESS_MARGIN = 0.01  # a roughness change smaller than this (4% of the noise start's 0.27) is no change


def what_reproduced(activations: pd.DataFrame, anti_table: pd.DataFrame, summary: pd.DataFrame,
                    modified: pd.DataFrame, chance: dict, original: str, robustified: str) -> pd.DataFrame:
    """The work's section 4 claims, each with its rule, our numbers and a verdict (:func:`count_verdict`).

    ``activations`` is :func:`visualisation_grid`'s table, ``anti_table`` :func:`anti_robust_table`'s,
    ``summary`` :func:`curve_summary` of the ladder's curves, ``modified`` the curves of the
    ``original`` and ``robustified`` sources (labels of their ``source`` column), ``chance``
    the chance accuracy (%) of each target. Curves are compared by their mean over the
    training seeds; the counts carry no interval.
    """
    return pd.DataFrame([_visualisation_claim(activations), _construction_claim(anti_table),
                         _learnable_claim(summary, chance), *_correlation_claims(summary, chance),
                         *_robustified_claims(modified, original, robustified)])


def _row(claim: str, rule: str, numbers: str, agreeing: int, total: int) -> dict:
    return {"claim": claim, "rule": rule, "this book": numbers, "count": f"{agreeing} of {total}",
            "verdict": count_verdict(agreeing, total)}


def _visualisation_claim(activations: pd.DataFrame) -> dict:
    if "parametrisation" in activations:  # the work's own visualisations: pixels, no image prior
        activations = activations[activations.parametrisation == "pixels"]
    rough = activations.groupby("source_eps").final_roughness.mean().sort_index()
    start = float(activations.start_roughness.mean())
    steps = [bool(b < a - ROUGHNESS_MARGIN) for a, b in zip(rough.iloc[:-1], rough.iloc[1:])]
    numbers = (", ".join(f"{v:.3f} at eps {e:g}" for e, v in rough.items()) + f" (noise start {start:.3f})")
    verdict = _row("4.1: robustness controls the interpretability of the visualised features",
                   f"the pixel-space visualisations' roughness falls by more than {ROUGHNESS_MARGIN:g} at every "
                   "rung (counted), and the most robust one is smoother than the noise it started from by as much",
                   numbers, sum(steps), len(steps))
    if verdict["verdict"] == "reproduced" and rough.iloc[-1] >= start - ROUGHNESS_MARGIN:
        verdict["verdict"] = "partly"
    return verdict


def _construction_claim(anti_table: pd.DataFrame) -> dict:
    train = anti_table[anti_table["split"] == "train"]
    made = int((train["C predicts t %"] >= CONSTRUCTION_SUCCESS).sum())
    numbers = ", ".join(f"{d} {s:.0f}%" for d, s in zip(train.dataset, train["C predicts t %"]))
    return _row("4.2: the anti-robust construction works (C predicts the random target t)",
                f"C predicts t on at least {CONSTRUCTION_SUCCESS:g}% of a target's training images",
                numbers, made, len(train))


def _anti_robust_best(summary: pd.DataFrame) -> dict[str, float]:
    """Per target: full fine-tuning's best final accuracy (over the sources) on its anti-robust variant."""
    anti = summary[(summary.variant == "anti-robust") & (summary["mode"] == "full fine-tuning")]
    return dict(zip(anti.dataset, anti.filter(like="final eps=").max(axis=1).astype(float)))


def _learnable(summary: pd.DataFrame, chance: dict) -> dict[str, bool]:
    """Per target: is that best accuracy above twice chance?"""
    return {d: best > 2 * chance[d] for d, best in _anti_robust_best(summary).items()}


def _learnable_claim(summary: pd.DataFrame, chance: dict) -> dict:
    above = list(_learnable(summary, chance).values())
    numbers = ", ".join(f"{d} {b:.1f}% (chance {chance[d]:.0f}%)" for d, b in _anti_robust_best(summary).items())
    return _row("4.2: the anti-robust labels are learnable (non-robust features carry them)",
                "full fine-tuning's best final test accuracy on the anti-robust variant is above twice chance",
                numbers, sum(above), len(above))


def _correlation_claims(summary: pd.DataFrame, chance: dict) -> list[dict]:
    """Standard targets: rho of the early accuracy positive. Anti-robust targets: rho of the final
    accuracy zero or negative, counted only where the anti-robust labels were learnable at all
    (:func:`_learnable`): at chance, every source fails alike and the order of the rungs is noise."""
    learnable = _learnable(summary, chance)
    rows = []
    for variant, column, sign, claim in (
            ("standard", "early rho", 1, "4.2: on standard targets robustness correlates with accuracy, "
                                         "especially early"),
            ("anti-robust", "final rho", -1, "4.2: on anti-robust targets robustness no longer helps")):
        part = summary[summary.variant == variant]
        numbers = "; ".join(f"{d} {m}: {rho:+.2f}" for d, m, rho in zip(part.dataset, part["mode"], part[column]))
        rule = (f"Spearman's rho of the source radius and the {column.split()[0]} test accuracy is "
                + ("positive" if sign > 0 else "zero or negative") + " (counted over targets and modes)")
        if sign < 0:
            part = part[[learnable.get(d, False) for d in part.dataset]]
            rule += "; a target whose anti-robust labels are not learnable (see above) is not testable"
            numbers += "" if len(part) else " (labels not learnable: not testable)"
        agree = [(rho > 0) if sign > 0 else (rho <= 0) for rho in part[column]]
        rows.append(_row(claim, rule, numbers, sum(agree), len(agree)))
    return rows


def _robustified_claims(modified: pd.DataFrame, original: str, robustified: str) -> list[dict]:
    wide = curve_table(modified).set_index(["dataset", "mode", "epoch"])
    last = int(modified.epoch.max())
    rows = []
    for label, epoch in (("first", 1), ("last", last)):
        at = wide.xs(epoch, level="epoch")
        ahead = (at[robustified] > at[original]).tolist()
        numbers = "; ".join(f"{d} {m}: {r:.1f} vs {o:.1f}" for (d, m), r, o in
                            zip(at.index, at[robustified], at[original]))
        rows.append(_row(f"4.3: the robustified source transfers better ({label} epoch)",
                         f"the robustified source's test accuracy after the {label} epoch is above the original "
                         "source's (counted over targets and modes)", numbers, sum(ahead), len(ahead)))
    return rows
