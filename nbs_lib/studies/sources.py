"""Source models pre-trained here, standard or adversarial, to fine-tune from.

Paper section "The Non-robust Feature from Pre-trained Model" (Table 4) asks how the
source task shapes what the pre-trained model hands down, so sources are pre-trained here
from scratch: the profile's ``source_arch`` (torchvision's ResNet-18, the paper's
backbone) at ``source_image_size`` on an offline dataset, standard or with PGD
adversarial training (Madry et al. 2018; :func:`nbs_lib.methods.train.terms.adversarial_batch`).
Every source model is a cached run like the target models, and is exported in its
backbone's weights-file format (:func:`nbs_lib.models.registry.exportable_state`), so
``weights=<that file>`` fine-tunes from it exactly as from ImageNet weights. The robust
ImageNet sources of chapters 6 and 7 are :mod:`nbs_lib.studies.imagenet_sources`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, atomic_write_bytes
from nbs_lib.methods.attacks import parse_attack
from nbs_lib.methods.train.recipes import TrainedModel, train_model, weights_id
from nbs_lib.models.registry import exportable_state, load_model
from nbs_lib.studies.common import (
    attack_sample,
    evaluate_cached,
    robustness_study,
    sample_id,
)


@dataclass
class SourceModel:
    """A source model pre-trained here, with what the chapters report about it."""

    source: str  # the source dataset
    adversarial: str | None  # its adversarial-training spec, None for standard pre-training
    trained: TrainedModel
    weights: Path  # torchvision-format state dict: pass as ``weights=`` to fine-tune from it
    clean_accuracy: float  # on the source's test sample
    robust_accuracy: float  # on the same images under ``evaluated_with``
    evaluated_with: str
    validation: dict = field(default_factory=dict)  # a self-distilled ImageNet rung's validation (imagenet_sources)
    description: str = ""  # a label of its own (chapter 7's sources distilled on a fixed pool of crops)

    @property
    def label(self) -> str:
        if self.description:
            return self.description
        if self.validation:  # a rung of the self-distilled ImageNet ladder (imagenet_sources)
            return f"{self.source}, self-distilled ({self.adversarial or 'control, no attack'})"
        return f"{self.source} ({'standard' if self.adversarial is None else 'AT ' + self.adversarial})"


def source_profile(profile: str | Profile) -> Profile:
    """The profile at which sources are pre-trained and their targets fine-tuned (chapters 5-7):
    the source backbone and image size, ``source_per_class`` images per class."""
    p = get_profile(profile)
    return p.replace(arch=p.source_arch, image_size=p.source_image_size,
                     train_per_class=p.source_per_class, epochs_standard=p.source_epochs)


def target_profile(profile: str | Profile, source: "SourceModel | None" = None) -> Profile:
    """The profile for targets fine-tuned from ``source``: for a source pre-trained here its
    backbone and size (``source_arch``, ``source_image_size``); for an ImageNet source
    (``source.source == "imagenet"``) the profile itself, so that fine-tuning from the
    ImageNet weights is chapter 1's model (the same cache entry)."""
    p = get_profile(profile)
    if source is not None and source.source == "imagenet":
        return p
    return p.replace(arch=p.source_arch, image_size=p.source_image_size)


def source_weights_file(trained: TrainedModel, cache: RunCache) -> Path:
    """The trained source's f and g in its backbone's weights-file format, in the run cache."""
    path = cache.entry_dir("source_weights", trained.config) / "weights.pt"
    if not path.exists():
        buffer = io.BytesIO()
        torch.save(exportable_state(trained.model), buffer)
        atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    return path


def pretrain_source(source: str, profile: str | Profile = "mini", adversarial: str | None = None,
                    evaluate_with: str | None = None, seed: int = 0, device="auto",
                    cache: RunCache | None = None, progress: bool = True) -> SourceModel:
    """Pre-train (or load) a source model on ``source``, standard or adversarially.

    ``adversarial`` is a PGD spec (``"PGD-3#2"``: 3 steps, L-inf 2/255; L2 as
    ``"PGD-3-L2#0.25"``). The model is evaluated on the source's test sample, clean
    and under ``evaluate_with`` (default: PGD-10 at the adversarial epsilon, or at
    2/255 for a standard source), so standard and adversarial sources compare.
    """
    cache = cache or RunCache()
    prof = source_profile(profile)
    trained = train_model(source, "standard", prof, arch=prof.arch, weights=None, seed=seed,
                          device=device, cache=cache, progress=progress, adversarial=adversarial)
    evaluate_with = evaluate_with or _own_attack(adversarial)
    images, labels, _ = attack_sample(source, prof, seed)
    row = evaluate_cached(trained, images, labels, [evaluate_with], sample_id(source, images, labels),
                          device, cache, progress, prof)[0]
    return SourceModel(source, adversarial, trained, source_weights_file(trained, cache),
                       row["aoi"], row["aai"], evaluate_with)


def _own_attack(adversarial: str | None) -> str:
    if adversarial is None:
        return "PGD-10#2.0"
    spec = parse_attack(adversarial)
    return f"PGD-10{'-L2' if spec.norm == 'L2' else ''}#{spec.eps_255}"


def checkpoint_source(path: str | Path, adversarial: str | None, arch: str = "resnet18",
                      name: str = "imagenet") -> SourceModel:
    """A source model read from a checkpoint file instead of pre-trained here.

    At ``paper`` these are Salman et al.'s ImageNet ResNets (standard, eps 0, and robust),
    in the MadryLab ``robustness`` format that :func:`nbs_lib.models.registry.load_model` reads.
    ``adversarial`` labels the radius it was trained at (``None``: standard). Its source
    accuracies are not measured here (NaN): ImageNet is not available offline.
    """
    if path is None:
        raise ValueError(f"No checkpoint path for the {'standard' if adversarial is None else 'robust'} source: "
                         "a run from checkpoints needs both (chapter 6: standard_checkpoint and robust_checkpoint, "
                         "e.g. Salman et al.'s resnet18_linf_eps0.0.ckpt and resnet18_linf_eps4.0.ckpt).")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint file: pass the path of an ImageNet model "
                                "(e.g. Salman et al.'s resnet18_linf_eps4.0.ckpt).")
    model = load_model(arch, weights=path, num_classes=1000).eval()
    trained = TrainedModel(model, {"weights": weights_id(path), "arch": arch}, [], float("nan"))
    return SourceModel(name, adversarial, trained, path, float("nan"), float("nan"), "not measured")


def source_table(sources: list[SourceModel]) -> pd.DataFrame:
    """One row per source model: its training and its clean and robust source accuracy."""
    rows = []
    for s in sources:
        rows.append({"source": s.source, "pre-training": "standard" if s.adversarial is None else
                     f"adversarial {s.adversarial}", "epochs": len(s.trained.history),
                     "lr": s.trained.config.get("train", {}).get("lr_g", float("nan")),
                     "val_acc": s.trained.val_acc,
                     "test_acc": s.clean_accuracy, "robust_acc": s.robust_accuracy,
                     "attack": s.evaluated_with})
    return pd.DataFrame(rows)


def finetune_from_source(targets, source: SourceModel, profile: str | Profile = "mini",
                         attacks=("PGD-10#0.5",), regimes=("full",), seed: int = 0, device="auto",
                         cache: RunCache | None = None, progress: bool = True):
    """Chapter 1's protocol on ``targets`` with ``source`` as the pre-trained model.

    Returns :func:`nbs_lib.studies.common.robustness_study`'s ``(table, models)`` with a
    ``source`` column naming the source model.
    """
    prof = target_profile(profile)
    table, models = robustness_study(list(targets), prof, list(attacks), prof.arch, source.weights, seed,
                                     device, cache, progress, regimes=regimes)
    return table.assign(source=source.label), models
