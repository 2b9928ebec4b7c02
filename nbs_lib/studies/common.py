"""The shared experiment kit of the chapters: test samples, the three models, cached attacks."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.data.images import balanced_indices
from nbs_lib.data.registry import load_dataset
from nbs_lib.methods.attacks import parse_attack
from nbs_lib.methods.evaluate import evaluate_robustness
from nbs_lib.methods.train.config import REGIMES
from nbs_lib.methods.train.recipes import TrainedModel, train_model
from nbs_lib.report.paper import TABLE1_ATTACK, TABLE2_ATTACKS

EVAL_CODE_VERSION = 1


def attack_sample(dataset: str, profile: Profile, seed: int, n: int | None = None):
    """The test images every attack of a chapter is evaluated on (balanced over classes).

    Returns ``(images, labels, classes)``; see :func:`sample_id` for its cache identity.
    """
    test = load_dataset(dataset, "test", profile, seed=seed)
    n = min(n or profile.attack_samples, len(test))
    per_class = max(1, n // len(test.classes))  # equal per class: n is rounded down
    sub = test.subset(balanced_indices(test.labels.numpy(), per_class, seed, "test"))
    images = sub.images if sub.images is not None else torch.stack([sub[i][0] for i in range(len(sub))])
    return images, sub.labels, test.classes


def sample_id(dataset: str, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """What identifies an attack sample in a cache key: its name, size and content hash."""
    return {"dataset": dataset, "n": len(labels), "content": content_hash(images, labels)}


def train_three(dataset: str, profile: str | Profile, arch: str | None = None,
                weights="imagenet", seed: int = 0, device="auto", cache: RunCache | None = None,
                regimes=REGIMES, progress: bool = True) -> dict[str, TrainedModel]:
    """The paper's three models of ``dataset``: ``{"standard", "partial", "full"} -> TrainedModel``."""
    profile = get_profile(profile)
    return {regime: train_model(dataset, regime, profile, arch=arch, weights=weights, seed=seed,
                                device=device, cache=cache, progress=progress)
            for regime in regimes}


def autoattack_budget(spec: str, profile: Profile) -> tuple[str, dict, str]:
    """The spec to run, its options and a label of its budget.

    ``AA#e`` is standard AutoAttack (100 iterations, 5000 Square queries). Profiles
    smaller than ``paper`` cannot afford it on a CPU and run the same ensemble with
    ``profile.autoattack_steps`` iterations and ``profile.autoattack_queries`` queries.
    """
    s = parse_attack(spec)
    if s.name != "AA":
        return str(s), {}, "paper"
    steps, queries = profile.autoattack_steps, profile.autoattack_queries
    label = "standard" if (steps, queries) == (100, 5000) else f"{steps} it., {queries} queries"
    run = f"AA-{steps}{'-L2' if s.norm == 'L2' else ''}#{s.eps_255}"
    return run, {"n_queries": queries}, label


def evaluate_cached(trained: TrainedModel, images: torch.Tensor, labels: torch.Tensor,
                    attacks: list[str], sample: dict, device="auto",
                    cache: RunCache | None = None, progress: bool = True,
                    profile: Profile | None = None) -> list[dict]:
    """AOI/AAI/DR of one trained model under each attack, each result cached on its own.

    Each row keeps the attack's name in the paper's notation (``attack``) and says
    with which budget it ran (``budget``; see :func:`autoattack_budget`).
    """
    if profile is None:
        raise ValueError("evaluate_cached needs the profile whose AutoAttack budget it runs "
                         "(profile.autoattack_steps, autoattack_queries); pass profile=...")
    cache = cache or RunCache()
    profile = get_profile(profile)
    rows = []
    for spec in attacks:
        spec = str(parse_attack(spec))
        run_spec, options, budget = autoattack_budget(spec, profile)
        config = {"kind": "robustness", "model": trained.config,
                  "attack": run_spec, "options": options, "sample": sample, "n": len(labels)}

        def compute(run_spec=run_spec, options=options):
            result = evaluate_robustness(trained.model, images, labels, [run_spec], device=device,
                                         progress=False, **options)[0]
            return asdict(result)

        row = cache.memo("robustness", config, compute, code_version=EVAL_CODE_VERSION)
        rows.append({**row, "attack": spec, "budget": budget})
    return rows


def robustness_study(datasets, profile: str | Profile = "mini", attacks=None, arch: str | None = None,
                     weights="imagenet", seed: int = 0, device="auto", cache: RunCache | None = None,
                     progress: bool = True, regimes=REGIMES):
    """Train the three models of every dataset and attack them.

    Returns ``(table, models)``: ``table`` has one row per dataset x model x attack with
    columns ``dataset, model, attack, aoi, aai, dr, n`` (percent); ``models`` maps
    ``(dataset, regime)`` to the :class:`TrainedModel`. AutoAttack specs run on the
    profile's ``autoattack_samples`` images, the others on ``attack_samples``. ``regimes``
    chooses which of the three models are trained (all by default).
    """
    profile = get_profile(profile)
    attacks = list(attacks or [TABLE1_ATTACK, *TABLE2_ATTACKS])
    cache = cache or RunCache()
    rows, models = [], {}
    for dataset in datasets:
        trained = train_three(dataset, profile, arch, weights, seed, device, cache, regimes, progress)
        for regime, tm in tqdm(trained.items(), desc=f"{dataset}: attacks", disable=not progress):
            models[(dataset, regime)] = tm
            for group in _attack_groups(attacks, profile):
                n, specs = group
                images, labels, _ = attack_sample(dataset, profile, seed, n)
                sample = sample_id(dataset, images, labels)
                for row in evaluate_cached(tm, images, labels, specs, sample, device, cache,
                                           progress, profile):
                    rows.append({"dataset": dataset, "model": regime, **row})
    table = pd.DataFrame(rows, columns=["dataset", "model", "attack", "aoi", "aai", "dr", "n", "budget"])
    return table, models


def _attack_groups(attacks: list[str], profile: Profile) -> list[tuple[int, list[str]]]:
    """Attacks grouped by the number of test images they run on."""
    aa = [a for a in attacks if parse_attack(a).name == "AA"]
    other = [a for a in attacks if parse_attack(a).name != "AA"]
    groups = []
    if other:
        groups.append((profile.attack_samples, other))
    if aa:
        groups.append((profile.autoattack_samples, aa))
    return groups


def training_summary(models: dict, datasets_test: dict | None = None) -> pd.DataFrame:
    """Per model: chosen learning rates, epochs, final train and validation accuracy."""
    rows = []
    for (dataset, regime), tm in models.items():
        last = tm.history[-1]
        train = tm.config["train"]
        rows.append({"dataset": dataset, "model": regime, "lr_f": train["lr_f"] if regime == "full" else None,
                     "lr_g": train["lr_g"], "epochs": len(tm.history),
                     "train_acc": round(last["train_acc"], 2), "val_acc": round(tm.val_acc, 2),
                     "candidates": len(tm.lr_search)})
    return pd.DataFrame(rows)


def histories(models: dict) -> pd.DataFrame:
    """Training curves of all models as one tidy frame (dataset, model, epoch, ...)."""
    frames = [pd.DataFrame(tm.history).assign(dataset=d, model=r) for (d, r), tm in models.items()]
    return pd.concat(frames, ignore_index=True)


