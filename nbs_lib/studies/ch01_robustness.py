"""The chapter 1 protocol: standard, partially and fully fine-tuned models, attacked.

Section "ImageNet Pre-training Is Non-robust" of Zhang et al. (Tables 1 and 2): for
each target dataset, three models of one architecture are trained (``standard`` from
scratch, ``partial`` and ``full`` fine-tuning of the ImageNet model) and evaluated on
clean test images (AOI) and on adversarial ones (AAI), with DR = (AOI - AAI) / AOI.
Later chapters reuse it (the MMD chapter gives more targets "the chapter 1
treatment"). Trained models and attack results are both kept in the run cache.
"""

from __future__ import annotations

import math

import pandas as pd
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.report.paper import TABLE1_ATTACK
from nbs_lib.studies.common import attack_sample, evaluate_cached, sample_id


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


def at_most(a: float, b: float) -> bool | None:
    """``a <= b``, or ``None`` when either attack was not run (NaN): a missing check, not a failed one."""
    if math.isnan(a) or math.isnan(b):
        return None
    return bool(a <= b)


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
               "PGD <= FGSM at 0.5": at_most(get("PGD-10#0.5"), get("FGSM#0.5")),
               "PGD <= FGSM at 2.0": at_most(get("PGD-10#2.0"), get("FGSM#2.0")),
               "PGD at 2.0 <= PGD at 0.5": at_most(get("PGD-10#2.0"), get("PGD-10#0.5"))}
        if (dataset, regime, "AA#0.5") in aai.index:
            images, labels, _ = attack_sample(dataset, profile, seed, profile.autoattack_samples)
            pgd_small = evaluate_cached(tm, images, labels, ["PGD-10#0.5"], sample_id(dataset, images, labels),
                                        device, cache, False, profile)[0]["aai"]
            row["AA <= PGD at 0.5 (AA images)"] = at_most(get("AA#0.5"), pgd_small)
            row["PGD-10#0.5 on AA images"] = pgd_small
            row["AA#0.5"] = get("AA#0.5")
        rows.append(row)
    return pd.DataFrame(rows)
