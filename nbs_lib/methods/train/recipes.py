"""Cached training of the chapters' models, with the learning-rate search."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

from nbs_lib.core import distributed
from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.data.images import LabeledImages, train_val_split
from nbs_lib.data.registry import fresh_training_images, load_dataset, require_fresh_samples
from nbs_lib.methods.train.config import TRAIN_CODE_VERSION, TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.terms import config_key
from nbs_lib.models.registry import load_model
from nbs_lib.models.split import SplitClassifier

# ----------------------------------------------------------------------------------
# cached training with the learning-rate search of the chapters
# ----------------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A trained target model with the facts a chapter reports about it."""

    model: SplitClassifier
    config: dict
    history: list[dict]
    val_acc: float
    lr_search: list[dict] = field(default_factory=list)  # one row per learning-rate candidate


def weights_id(weights: str | Path | None) -> str | None:
    """What identifies pre-trained weights in a cache key (a file's content hash)."""
    if weights is None or weights == "imagenet":
        return weights
    digest = content_hash(Path(weights))
    return f"file:{Path(weights).name}:{digest}"


def _candidate_lrs(regime: str, profile: Profile, lr_f, lr_g) -> list[tuple[float, float]]:
    grid_f = (lr_f,) if lr_f is not None else profile.lr_grid_f
    grid_g = (lr_g,) if lr_g is not None else profile.lr_grid_g
    if regime == "standard":
        return [(0.0, g) for g in ((lr_g,) if lr_g is not None else profile.lr_grid_standard)]
    if regime == "full":
        return [(f, g) for f, g in itertools.product(grid_f, grid_g)]
    return [(0.0, g) for g in grid_g]


# Datasets whose classes change under a horizontal flip (letters, digits): never flipped.
NO_FLIP_DATASETS = ("alphabet", "mnist", "fashion_mnist", "digits")


def augmentation_for(dataset: str, requested: str) -> str:
    """The profile's augmentation, without flips for glyph datasets (a flipped 'J' is no 'J')."""
    if requested == "crop_flip" and dataset in NO_FLIP_DATASETS:
        return "crop"
    return requested


def epochs_for(regime: str, profile: Profile, n_train: int, fresh_samples: bool = False) -> int:
    """The profile's epochs; fine-tuning on a small set gets enough epochs for ``min_steps`` steps.

    With a fixed number of epochs a set of 800 images gets 13 steps an epoch and stops
    far from its plateau while a set of 2,600 converges; a floor on the number of
    optimizer steps gives every fine-tuning a comparable budget. A model that draws new
    images every epoch (``fresh_samples``) gets the profile's ``epochs_fresh``.
    """
    if fresh_samples:
        return profile.epochs_fresh
    if regime == "standard":
        return profile.epochs_standard
    steps_per_epoch = math.ceil(n_train / profile.batch_size)
    return max(profile.epochs, math.ceil(profile.min_steps / steps_per_epoch))


def train_model(dataset: str, regime: str, profile: str | Profile = "mini", arch: str | None = None,
                weights: str | Path | None = "imagenet", seed: int = 0, device="auto",
                lr_f: float | None = None, lr_g: float | None = None, epochs: int | None = None,
                augment: str | None = None, cache: RunCache | None = None,
                progress: bool = True, adversarial: str | None = None, distill_weight: float = 0.0,
                teacher: str | Path | None = None, lipschitz_weight: float = 0.0,
                lipschitz_eps: float = 0.5, lipschitz_steps: int = 10, dm_beta: float = 0.0,
                compile: bool | str = False, train_seed: int | None = None, head: str = "epochs",
                target_bn: bool = False, fresh_samples: bool = False) -> TrainedModel:
    """Train (or load from the run cache) the paper's ``regime`` model of ``dataset``.

    ``seed`` fixes the data (generated sets, the validation split); ``train_seed``
    (default: ``seed``) fixes the initialisation, batch order and augmentation, so
    several training seeds share one dataset and one test sample (paired comparisons).

    ``adversarial`` (a PGD spec such as ``"PGD-7#8"``) trains on adversarial examples
    (:func:`adversarial_batch`) instead of clean ones. ``distill_weight``/``teacher``
    (KD@stage-2), ``lipschitz_weight``/``lipschitz_eps``/``lipschitz_steps`` (DM,
    eq. 5) and ``dm_beta`` (DM as the authors' code runs it, in the same ball) are the :class:`TrainConfig` fields of the same names (see the module
    docstring for Table 5's regimes). ``compile`` is :func:`fit`'s (speed only; not in
    the cache key).

    ``head="lbfgs"`` fits a partial model's g to convergence (L2 strength from the
    profile's ``head_l2_grid``, chosen on the validation split, at most ``head_rounds``
    rounds), and ``target_bn`` first re-estimates f's BatchNorm statistics on the target
    (:mod:`nbs_lib.methods.train.head`); neither depends on the training seed, so every
    seed shares one model. ``fresh_samples`` draws new training images every epoch
    (:func:`nbs_lib.data.registry.fresh_training_images`; the validation split is fixed).

    The standard model ignores ``weights`` (random initialisation). When ``lr_f``/``lr_g``
    are not given, every candidate of the profile's grid is trained on the training
    split minus a held-out validation split and the candidate with the best final
    validation accuracy is returned (each candidate is cached on its own). The search
    runs once per target: a ``train_seed`` other than ``seed`` trains only the rates the
    search chose at ``seed`` (its ``lr_search`` rows are that search's).
    """
    arguments = dict(locals())
    if train_seed not in (None, seed) and lr_f is None and lr_g is None and head != "lbfgs" \
            and len(_candidate_lrs(regime, get_profile(profile), None, None)) > 1:
        return _with_searched_rates(arguments)
    profile = get_profile(profile)
    arch = arch or profile.arch
    cache = cache or RunCache()
    train_full = load_dataset(dataset, "train", profile, seed=seed)
    train_set, val_set = train_val_split(train_full, profile.val_fraction, seed)
    search = []
    best: TrainedModel | None = None
    converged = head == "lbfgs"
    candidates = [(0.0, 0.0)] if converged else _candidate_lrs(regime, profile, lr_f, lr_g)
    for cand_f, cand_g in candidates:
        config = TrainConfig(regime=regime,
                             epochs=profile.head_rounds if converged else
                             epochs or epochs_for(regime, profile, len(train_set), fresh_samples),
                             batch_size=profile.batch_size, lr_f=cand_f, lr_g=cand_g,
                             augment=augmentation_for(dataset, augment or profile.augment),
                             seed=0 if converged else seed if train_seed is None else train_seed,
                             head=head, head_l2_grid=profile.head_l2_grid if converged else (),
                             target_bn=target_bn, fresh_samples=fresh_samples, adversarial=adversarial, distill_weight=distill_weight,
                             teacher=None if teacher is None else str(teacher),
                             lipschitz_weight=lipschitz_weight, lipschitz_eps=lipschitz_eps,
                             lipschitz_steps=lipschitz_steps, dm_beta=dm_beta)
        trained = _train_cached(dataset, arch, None if regime == "standard" else weights,
                                len(train_full.classes), train_set, val_set, config, profile,
                                device, cache, progress, compile, _epoch_data(dataset, config, profile, seed,
                                                                               len(train_set)))
        search.append({"lr_f": cand_f, "lr_g": cand_g, "val_acc": trained.val_acc})
        if best is None or trained.val_acc > best.val_acc:
            best = trained
    best.lr_search = search
    return best


def _with_searched_rates(arguments: dict) -> TrainedModel:
    """:func:`train_model` of ``arguments`` at the learning rates its search chose for the data seed."""
    searched = train_model(**{**arguments, "train_seed": None})
    chosen = train_model(**{**arguments, "lr_f": searched.config["train"]["lr_f"],
                            "lr_g": searched.config["train"]["lr_g"]})
    chosen.lr_search = searched.lr_search
    return chosen


def model_config(dataset: str, arch: str, weights, num_classes: int, config: TrainConfig,
                 profile: Profile, train_set: LabeledImages, val_set: LabeledImages) -> dict:
    """Everything that determines a trained model: the run cache's key.

    The data enter by their content fingerprints, so a change in how a dataset is
    generated or split retrains rather than reusing a model of the old data. A KD
    teacher enters by its content hash (:func:`weights_id`), not by its path, so
    ``key["train"]["teacher"]`` is that id.
    """
    train = config_key(config)
    if config.teacher is not None:
        train["teacher"] = weights_id(config.teacher)
    return {
        "kind": "target_model", "code_version": TRAIN_CODE_VERSION, "dataset": dataset,
        "arch": arch, "weights": weights_id(weights), "num_classes": num_classes,
        "train": train, "image_size": profile.image_size,
        "train_per_class": profile.train_per_class, "val_fraction": profile.val_fraction,
        "train_data": train_set.fingerprint(), "val_data": val_set.fingerprint(),
        "bn_momentum": 0.1,
    }


def _epoch_data(dataset: str, config: TrainConfig, profile: Profile, seed: int, n: int):
    """The fresh training images of each later epoch (``config.fresh_samples``), else None."""
    if not config.fresh_samples:
        return None
    require_fresh_samples(dataset)
    return lambda epoch: fresh_training_images(dataset, epoch, n, profile, seed)


def _train_cached(dataset, arch, weights, num_classes, train_set, val_set, config: TrainConfig,
                  profile: Profile, device, cache: RunCache, progress: bool,
                  compile: bool | str = False, epoch_data=None) -> TrainedModel:
    """The cached model of ``key``, else trained (resuming from a checkpoint) and cached.

    Under distributed training rank 0 reads the cache and sends what it found to every
    rank (all ranks then train, or all load), and only rank 0 writes checkpoints and
    the finished model.
    """
    key = model_config(dataset, arch, weights, num_classes, config, profile, train_set, val_set)
    with cache.exclusive("models", key):
        return _load_or_train(key, dataset, arch, weights, num_classes, train_set, val_set, config, profile,
                              device, cache, progress, compile, epoch_data)


def _load_or_train(key, dataset, arch, weights, num_classes, train_set, val_set, config: TrainConfig,
                   profile: Profile, device, cache: RunCache, progress: bool, compile, epoch_data) -> TrainedModel:
    model = load_model(arch, weights=weights, num_classes=num_classes, seed=config.seed)
    stored = distributed.broadcast_from_main(lambda: cache.load_model_state("models", key))
    if stored is not None:
        model.load_state_dict(stored["model"])
        return TrainedModel(model.eval(), key, stored["history"], stored["val_acc"])
    resume = distributed.broadcast_from_main(lambda: cache.load_checkpoint("models", key))
    desc = f"{dataset}/{config.regime} lr_f={config.lr_f:g} lr_g={config.lr_g:g}"
    main = distributed.is_main()
    history = fit(model, train_set, config, val=val_set, device=device, resume=resume,
                  on_epoch_end=(lambda payload: cache.save_checkpoint("models", key, payload)) if main else None,
                  progress=progress and main, desc=desc, num_workers=profile.num_workers, compile=compile,
                  epoch_data=epoch_data)
    val_acc = history[-1].get("val_acc", float("nan"))
    model.cpu()
    if main:
        cache.save_model_state("models", key, {"model": model.state_dict(), "history": history,
                                               "val_acc": val_acc})
    return TrainedModel(model.eval(), key, history, val_acc)
