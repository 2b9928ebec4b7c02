"""The chapter 1 protocol: standard, partially and fully fine-tuned models, attacked.

Section "ImageNet Pre-training Is Non-robust" of Zhang et al. (Tables 1 and 2): for
each target dataset, three models of one architecture are trained (``standard`` from
scratch, ``partial`` and ``full`` fine-tuning of the ImageNet model) and evaluated on
clean test images (AOI) and on adversarial ones (AAI), with DR = (AOI - AAI) / AOI.
Later chapters reuse it (the MMD chapter gives more targets "the chapter 1
treatment"). Trained models and attack results are both kept in the run cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import pandas as pd
import torch
from tqdm.auto import tqdm

from .attacks import attack, parse_attack
from .data import balanced_indices, load_dataset
from .evaluate import evaluate_robustness
from .profiles import Profile, get_profile, resolve_device
from .runs import RunCache
from .train import REGIMES, TrainedModel, predict_logits, train_model

TABLE1_ATTACK = "PGD-10#0.5"
TABLE2_ATTACKS = ["PGD-10#2.0", "FGSM#0.5", "FGSM#2.0", "AA#0.5"]
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
    digest = hashlib.sha256(images.contiguous().numpy().tobytes() + labels.numpy().tobytes())
    return {"dataset": dataset, "n": len(labels), "content": digest.hexdigest()[:16]}


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
    cache = cache or RunCache()
    profile = get_profile(profile or "paper")
    rows = []
    for spec in attacks:
        spec = str(parse_attack(spec))
        run_spec, options, budget = autoattack_budget(spec, profile)
        config = {"kind": "robustness", "code_version": EVAL_CODE_VERSION, "model": trained.config,
                  "attack": run_spec, "options": options, "sample": sample, "n": len(labels)}

        def compute(run_spec=run_spec, options=options):
            result = evaluate_robustness(trained.model, images, labels, [run_spec], device=device,
                                         progress=False, **options)[0]
            return asdict(result)

        row = cache.memo("robustness", config, compute)
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


def epsilon_curves(models: dict, profile: str | Profile, eps_list, seed: int = 0, device="auto",
                   attack_name: str = "PGD-10", n: int | None = None, cache: RunCache | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Accuracy under ``attack_name`` at each epsilon (1/255 units), every model, every dataset."""
    profile = get_profile(profile)
    cache = cache or RunCache()
    rows = []
    for (dataset, regime), tm in tqdm(models.items(), desc=f"{attack_name} curves", disable=not progress):
        images, labels, _ = attack_sample(dataset, profile, seed, n)
        specs = [f"{attack_name}#{float(e)}" for e in eps_list if e > 0]
        results = evaluate_cached(tm, images, labels, specs, sample_id(dataset, images, labels), device,
                                  cache, progress, profile)
        if results:
            rows.append({"dataset": dataset, "model": regime, "eps": 0.0, "accuracy": results[0]["aoi"]})
        for e, r in zip([e for e in eps_list if e > 0], results):
            rows.append({"dataset": dataset, "model": regime, "eps": float(e), "accuracy": r["aai"]})
    return pd.DataFrame(rows)


def adversarial_example(model: torch.nn.Module, image: torch.Tensor, label: int, spec: str,
                        device="auto") -> dict:
    """One image, its adversarial version, the perturbation and both predictions with confidences."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    x = image[None].to(dev)
    y = torch.tensor([label], device=dev)
    x_adv = attack(model, x, y, spec) if parse_attack(spec).eps > 0 else x
    probs = predict_logits(model, torch.cat([x, x_adv]), dev).softmax(-1)
    conf, pred = probs.max(-1)
    return {"image": x[0].cpu(), "adversarial": x_adv[0].detach().cpu(),
            "perturbation": (x_adv - x)[0].detach().cpu(),
            "clean_pred": int(pred[0]), "clean_conf": float(conf[0]),
            "adv_pred": int(pred[1]), "adv_conf": float(conf[1])}


def compare_with_paper(table: pd.DataFrame, paper: pd.DataFrame, value: str) -> pd.DataFrame:
    """Our mean over our datasets beside the paper's mean over its datasets, per model (and attack)."""
    keys = ["attack", "model"]
    table = table[table["attack"].isin(set(paper["attack"])) & table["model"].isin(set(paper["model"]))]
    ours = table.groupby(keys)[value].mean().rename(f"{value} (this book, mean)")
    theirs = paper.groupby(keys)[value].mean().rename(f"{value} (paper, mean)")
    return pd.concat([theirs, ours], axis=1).round(2).dropna(how="all")


def paper_layout(table: pd.DataFrame, attack: str = TABLE1_ATTACK, values=("aoi", "aai", "dr")) -> pd.DataFrame:
    """Rows (model, metric) and one column per dataset, as the paper prints Table 1."""
    sub = table[table["attack"] == attack]
    long = sub.melt(id_vars=["dataset", "model"], value_vars=list(values), var_name="metric")
    wide = long.pivot_table(index=["model", "metric"], columns="dataset", values="value", sort=False)
    order = [m for m in ("standard", "partial", "full") if m in set(sub["model"])]
    wide = wide.reindex(pd.MultiIndex.from_product([order, list(values)], names=["model", "metric"]))
    wide.columns.name = None
    return wide.round(2)


def table2_layout(table: pd.DataFrame, attacks=TABLE2_ATTACKS, models=("standard", "full")) -> pd.DataFrame:
    """AAI with rows (attack, model) and one column per dataset, as the paper prints Table 2."""
    sub = table[table["attack"].isin(attacks) & table["model"].isin(models)]
    wide = sub.pivot_table(index=["attack", "model"], columns="dataset", values="aai", sort=False)
    wide = wide.reindex(pd.MultiIndex.from_product([list(attacks), list(models)], names=["attack", "model"]))
    wide.columns.name = None
    return wide.round(2)


def observations(table: pd.DataFrame, attack: str = TABLE1_ATTACK) -> pd.DataFrame:
    """The three observations of the paper's Table 1, checked dataset by dataset.

    1. Fine-tuned (full) models have higher AOI but lower robustness (higher DR) than
       the standard model.
    2. Full fine-tuning gives better robustness (lower DR) and generalisation (higher
       AOI) than partial fine-tuning.
    3. Where the standard model already has a high AOI, pre-training adds little AOI
       but a severe loss of robustness (DR of the full model far above the standard's).
    """
    sub = table[table["attack"] == attack].set_index(["dataset", "model"])
    rows = []
    for dataset in dict.fromkeys(table["dataset"]):
        get = lambda model, metric: sub.loc[(dataset, model), metric]  # noqa: E731
        std_aoi, full_aoi, part_aoi = get("standard", "aoi"), get("full", "aoi"), get("partial", "aoi")
        std_dr, full_dr, part_dr = get("standard", "dr"), get("full", "dr"), get("partial", "dr")
        rows.append({
            "dataset": dataset,
            "1: full has higher AOI than standard": bool(full_aoi > std_aoi),
            "1: full has higher DR than standard": bool(full_dr > std_dr),
            "2: full has lower DR than partial": bool(full_dr < part_dr),
            "2: full has higher AOI than partial": bool(full_aoi > part_aoi),
            "3: standard AOI >= 90 and full gains < 2 points AOI but loses > 20 points of DR":
                bool(std_aoi >= 90 and full_aoi - std_aoi < 2 and full_dr - std_dr > 20),
        })
    return pd.DataFrame(rows).set_index("dataset")


def attack_sanity(models: dict, table: pd.DataFrame, profile: str | Profile, seed: int = 0, device="auto",
                  cache: RunCache | None = None, progress: bool = True) -> pd.DataFrame:
    """The field's checks that the attacks are strong enough, per model.

    * PGD-10 is at least as strong as FGSM at the same epsilon (same images);
    * PGD-10 at 2/255 is at least as strong as at 0.5/255;
    * AutoAttack is at least as strong as PGD-10 at 0.5/255 on the AutoAttack images
      (PGD is re-run on that smaller sample so both see the same images).
    A ``False`` points at a weak attack or gradient masking.
    """
    profile = get_profile(profile)
    cache = cache or RunCache()
    aai = table.set_index(["dataset", "model", "attack"])["aai"]
    rows = []
    for (dataset, regime), tm in tqdm(models.items(), desc="attack checks", disable=not progress):
        get = lambda a: aai.get((dataset, regime, a), float("nan"))  # noqa: E731
        row = {"dataset": dataset, "model": regime,
               "PGD <= FGSM at 0.5": get("PGD-10#0.5") <= get("FGSM#0.5"),
               "PGD <= FGSM at 2.0": get("PGD-10#2.0") <= get("FGSM#2.0"),
               "PGD at 2.0 <= PGD at 0.5": get("PGD-10#2.0") <= get("PGD-10#0.5")}
        if (dataset, regime, "AA#0.5") in aai.index:
            images, labels, _ = attack_sample(dataset, profile, seed, profile.autoattack_samples)
            pgd_small = evaluate_cached(tm, images, labels, ["PGD-10#0.5"], sample_id(dataset, images, labels),
                                        device, cache, False, profile)[0]["aai"]
            row["AA <= PGD at 0.5 (AA images)"] = get("AA#0.5") <= pgd_small
            row["PGD-10#0.5 on AA images"] = pgd_small
            row["AA#0.5"] = get("AA#0.5")
        rows.append(row)
    return pd.DataFrame(rows)
