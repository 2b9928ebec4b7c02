"""The shared experiment kit of the chapters: test samples, the three models, cached attacks."""

from __future__ import annotations

import warnings
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.data.registry import balanced_sample
from nbs_lib.methods.attacks import parse_attack
from nbs_lib.methods.evaluate import decline_ratio, mask_decline_ratio, robustness_masks
from nbs_lib.methods.minimal_epsilon import curve_area, median_minimal_epsilon, minimal_epsilon, refine_floor
from nbs_lib.methods.statistics import bootstrap_interval, mcnemar, paired_bootstrap, wilson_interval
from nbs_lib.methods.train.recipes import TrainedModel, train_model
from nbs_lib.report.paper import TABLE1_ATTACK, TABLE2_ATTACKS
from nbs_lib.report.verdicts import verdict

EVAL_CODE_VERSION = 3  # 2: the per-image clean and robust masks are kept; 3: PGD stops at the breaking iterate
MIN_EPS_CODE_VERSION = 3  # 2: PGD stops at the breaking iterate; 3: galloping search over the grid
MIN_PAIRED_IMAGES = 20  # fewer paired images than this: a claim is not testable


def attack_sample(dataset: str, profile: Profile, seed: int, n: int | None = None):
    """The test images every attack of a chapter is evaluated on (balanced over classes).

    Returns ``(images, labels, classes)``; see :func:`sample_id` for its cache identity.
    """
    return balanced_sample(dataset, "test", profile, seed, n=n or profile.attack_samples)


def sample_id(dataset: str, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """What identifies an attack sample in a cache key: its name, size and content hash."""
    return {"dataset": dataset, "n": len(labels), "content": content_hash(images, labels)}


# The chapters' models of a target and how :func:`train_model` makes each: the paper's three
# (partial fine-tuning with its head fitted to convergence) and partial fine-tuning with f's
# BatchNorm statistics re-estimated on the target (the authors' released set-up).
MODEL_RECIPES = {
    "standard": {"regime": "standard"},
    "partial": {"regime": "partial", "head": "lbfgs"},
    "partial_bn": {"regime": "partial", "head": "lbfgs", "target_bn": True},
    "full": {"regime": "full"},
}
PAPER_MODELS = ("standard", "partial", "full")  # the paper's three models
CH1_MODELS = ("standard", "partial", "partial_bn", "full")  # chapter 1: the three and the BN variant


def train_three(dataset: str, profile: str | Profile, arch: str | None = None,
                weights="imagenet", seed: int = 0, device="auto", cache: RunCache | None = None,
                regimes=PAPER_MODELS, progress: bool = True, train_seed: int | None = None
                ) -> dict[str, TrainedModel]:
    """The paper's three models of ``dataset`` (or those of ``regimes``, names of :data:`MODEL_RECIPES`).

    ``seed`` fixes the data, ``train_seed`` (default ``seed``) the training run (:func:`train_model`).
    The standard model of a dataset in the profile's ``fresh_samples`` draws new images
    every epoch (the paper's standard Alphabet model masters its 1,000 images per letter;
    at ``mini`` 80 per letter are too few for that); the fine-tuned models see the fixed set.
    """
    profile = get_profile(profile)
    unknown = [name for name in regimes if name not in MODEL_RECIPES]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; the chapters' models are {list(MODEL_RECIPES)}.")
    models = {}
    for name in regimes:
        recipe = dict(MODEL_RECIPES[name])
        fresh = recipe["regime"] == "standard" and dataset in profile.fresh_samples
        models[name] = train_model(dataset, recipe.pop("regime"), profile, arch=arch, weights=weights, seed=seed,
                                   device=device, cache=cache, progress=progress, train_seed=train_seed,
                                   fresh_samples=fresh, **recipe)
    return models


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
                    profile: Profile | None = None, masks: bool = False) -> list[dict]:
    """AOI/AAI/DR of one trained model under each attack, each result cached on its own.

    Each row keeps the attack's name in the paper's notation (``attack``), says with
    which budget it ran (``budget``; see :func:`autoattack_budget`); with ``masks=True``
    it also carries the per-image masks as boolean arrays (``clean``, ``robust``; the
    cache keeps them as strings of 0/1, :func:`mask_bits`).
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
            clean, (robust,) = robustness_masks(trained.model, images, labels, [run_spec], device=device,
                                                progress=False, **options)
            aoi, aai = 100.0 * int(clean.sum()) / len(clean), 100.0 * int(robust.sum()) / len(robust)
            return {"aoi": aoi, "aai": aai, "dr": decline_ratio(aoi, aai), "attack": run_spec,
                    "n": len(labels), "clean": mask_bits(clean), "robust": mask_bits(robust)}

        row = cache.memo("robustness", config, compute, code_version=EVAL_CODE_VERSION)
        clean, robust = bits_mask(row.pop("clean")), bits_mask(row.pop("robust"))
        rows.append({**row, "attack": spec, "budget": budget, **({"clean": clean, "robust": robust} if masks else {})})
    return rows


def mask_bits(mask) -> str:
    """A boolean mask as a string of 0/1 (how the run cache keeps per-image results)."""
    return "".join("1" if b else "0" for b in np.asarray(mask, dtype=bool))


def bits_mask(bits: str) -> np.ndarray:
    """The boolean mask of :func:`mask_bits`."""
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")


def minimal_epsilon_cached(trained: TrainedModel, images: torch.Tensor, labels: torch.Tensor, grid,
                           sample: dict, device="auto", cache: RunCache | None = None, steps: int = 10,
                           norm: str = "Linf", progress: bool = True, floor_iterations: int = 0) -> np.ndarray:
    """Per-image minimal radius of :func:`~nbs_lib.methods.minimal_epsilon.minimal_epsilon`, cached.

    With ``floor_iterations`` > 0 the images the ladder breaks at its first rung are then
    bisected below it (:func:`~nbs_lib.methods.minimal_epsilon.refine_floor`), cached on
    its own so that the ladder is never recomputed for it.
    """
    cache = cache or RunCache()
    grid = [float(r) for r in grid]
    config = {"kind": "minimal_epsilon", "model": trained.config, "grid": grid, "steps": steps,
              "norm": norm, "sample": sample}

    def ladder():
        radii = minimal_epsilon(trained.model, images, labels, grid, steps, norm, device, progress=progress)
        return _radii_to_json(radii)

    radii = _radii_from_json(cache.memo("minimal_epsilon", config, ladder, code_version=MIN_EPS_CODE_VERSION))
    if floor_iterations <= 0:
        return radii

    def floor():
        return _radii_to_json(refine_floor(trained.model, images, labels, radii, min(grid), floor_iterations,
                                           steps, norm, device))

    floor_config = {**config, "kind": "minimal_epsilon_floor", "iterations": int(floor_iterations)}
    return _radii_from_json(cache.memo("minimal_epsilon", floor_config, floor, code_version=MIN_EPS_CODE_VERSION))


def _radii_to_json(radii) -> list:
    return [None if np.isinf(r) else float(r) for r in radii]


def _radii_from_json(stored) -> np.ndarray:
    return np.array([np.inf if r is None else r for r in stored], dtype=float)


RADIUS_AREA_MAX = 2.0  # robust-curve areas are taken over [0, 2/255] throughout the book


def radius_floor(profile: Profile) -> float:
    """The smallest minimal radius the search resolves: the ladder's first rung, halved by each bisection."""
    return min(profile.radius_grid) / 2 ** max(profile.radius_floor_iterations, 0)


def curve_radii(profile: Profile) -> tuple:
    """Radii (1/255) of a robust-accuracy curve: 0, the bisection's steps below the first rung, the ladder."""
    floor, first = radius_floor(profile), min(profile.radius_grid)
    below = tuple(floor * i for i in range(1, round(first / floor)))
    return (0.0, *below, *sorted(profile.radius_grid))


def radius_summary(trained: TrainedModel, dataset: str, profile: Profile, seed: int = 0, device="auto",
                   cache: RunCache | None = None) -> dict:
    """A model's non-saturating robustness on its attack sample, from the per-image minimal radii.

    ``median_eps``: median minimal radius of the clean-correct images (1/255); ``area``: area
    under the robust-accuracy curve on [0, :data:`RADIUS_AREA_MAX`/255] in percent, with a
    bootstrap interval over images (``area_ci_low``, ``area_ci_high``). The ladder is
    ``profile.radius_grid``, bisected ``profile.radius_floor_iterations`` times below its
    first rung (:func:`minimal_epsilon_cached`).
    """
    images, labels, _ = attack_sample(dataset, profile, seed)
    radii = minimal_epsilon_cached(trained, images, labels, profile.radius_grid, sample_id(dataset, images, labels),
                                   device, cache, progress=False, floor_iterations=profile.radius_floor_iterations)
    low, high = bootstrap_interval(lambda m: curve_area(m, RADIUS_AREA_MAX), radii)
    return {"median_eps": median_minimal_epsilon(radii), "area": curve_area(radii, RADIUS_AREA_MAX),
            "area_ci_low": low, "area_ci_high": high}


def robustness_study(datasets, profile: str | Profile = "mini", attacks=None, arch: str | None = None,
                     weights="imagenet", seed: int = 0, device="auto", cache: RunCache | None = None,
                     progress: bool = True, regimes=PAPER_MODELS, train_seed: int | None = None,
                     masks: bool = False):
    """Train the three models of every dataset and attack them.

    Returns ``(table, models)``: ``table`` has one row per dataset x model x attack with
    columns ``dataset, model, seed, attack, aoi, aai, dr, n, budget`` (percent; ``seed`` is
    the training seed, ``train_seed`` or ``seed``; the data and the attacked images follow
    ``seed``, so models of several training seeds are compared on the same images; with
    ``masks=True`` also ``clean`` and ``robust``, the per-image masks); ``models`` maps
    ``(dataset, regime)`` to the :class:`TrainedModel`. AutoAttack specs run on the
    profile's ``autoattack_samples`` images, the others on ``attack_samples``. ``regimes``
    chooses which of the three models are trained (all by default).
    """
    profile = get_profile(profile)
    attacks = list(attacks or [TABLE1_ATTACK, *TABLE2_ATTACKS])
    cache = cache or RunCache()
    rows, models = [], {}
    run_seed = seed if train_seed is None else train_seed  # a seed-independent model keeps the run's seed
    for dataset in datasets:
        trained = train_three(dataset, profile, arch, weights, seed, device, cache, regimes, progress, train_seed)
        for regime, tm in tqdm(trained.items(), desc=f"{dataset}: attacks", disable=not progress):
            models[(dataset, regime)] = tm
            for group in _attack_groups(attacks, profile):
                n, specs = group
                images, labels, _ = attack_sample(dataset, profile, seed, n)
                sample = sample_id(dataset, images, labels)
                for row in evaluate_cached(tm, images, labels, specs, sample, device, cache,
                                           progress, profile, masks):
                    rows.append({"dataset": dataset, "model": regime, "seed": run_seed, **row})
    columns = ["dataset", "model", "seed", "attack", "aoi", "aai", "dr", "n", "budget"]
    table = pd.DataFrame(rows, columns=columns + (["clean", "robust"] if masks else []))
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
    """Per model: how it was trained (optimizer and chosen rates or L2), epochs or rounds, accuracies."""
    rows = []
    for (dataset, regime), tm in models.items():
        last = tm.history[-1]
        rows.append({"dataset": dataset, "model": regime, "training": training_words(tm.config["train"], last),
                     "epochs or rounds": len(tm.history), "train_acc": round(last["train_acc"], 2),
                     "val_acc": round(tm.val_acc, 2)})
    return pd.DataFrame(rows)


def training_words(train: dict, last: dict) -> str:
    """A cache key's training part in words, e.g. "Adam, lr_f 5e-04, lr_g 1e-03, fresh images"."""
    if train.get("head") == "lbfgs":
        words = f"L-BFGS head to convergence, L2 {last['head_l2']:.0e}"
        return words + (", BN re-estimated on the target" if train.get("target_bn") else ", source BN")
    rates = f"lr_f {train['lr_f']:.0e}, lr_g {train['lr_g']:.0e}" if train["regime"] == "full" \
        else f"lr {train['lr_g']:.0e}"
    return f"{train['optimizer'].capitalize()}, {rates}" + (", fresh images every epoch"
                                                            if train.get("fresh_samples") else "")


def histories(models: dict) -> pd.DataFrame:
    """Training curves of all models as one tidy frame (dataset, model, epoch, ...)."""
    frames = [pd.DataFrame(tm.history).assign(dataset=d, model=r) for (d, r), tm in models.items()]
    return pd.concat(frames, ignore_index=True)




def paired_claim(a, b, expected: str, kind: str = "score", floor: float = 0.0, ceiling: float = 100.0) -> dict:
    """The test and verdict of "A is ``expected`` than B" on paired per-image scores.

    ``a`` and ``b`` are arrays of images x training seeds (a 1-D array is one seed);
    ``nan`` marks an image left out for that seed (e.g. not classified correctly by
    both models). Each image's score is its mean over the seeds where it counts.
    ``kind="mask"`` reads the scores as 0/1 and reports percent; with one seed the test
    is McNemar's exact test, otherwise (and for ``kind="score"``) Fisher's sign-flip
    permutation test on the per-image differences, each image carrying all its seeds
    (:func:`nbs_lib.methods.statistics.paired_bootstrap`); the interval is a bootstrap
    over images. Both cover the sampling of test images, not the spread between training
    runs: the seeds enter as repeated measurements of each image. The claim is not testable when both
    sides sit at ``floor`` or both at ``ceiling`` (a saturated measure), or when fewer
    than :data:`MIN_PAIRED_IMAGES` images count (a bootstrap of a handful of images
    claims a certainty it does not have). Returns the two means, the difference with its 95% interval, the
    p-value, the test's name, the number of images and seeds, and the verdict word.
    """
    a = np.asarray(a, dtype=float).reshape(len(a), -1)
    b = np.asarray(b, dtype=float).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"Paired scores must have one shape; got {a.shape} and {b.shape}.")
    scale = 100.0 if kind == "mask" else 1.0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an image left out for every seed: dropped below
        a_img, b_img = np.nanmean(a, 1) * scale, np.nanmean(b, 1) * scale
    keep = np.isfinite(a_img) & np.isfinite(b_img)
    a_img, b_img = a_img[keep], b_img[keep]
    row = {"a": float("nan"), "b": float("nan"), "difference": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "p": float("nan"), "test": "", "images": int(keep.sum()),
           "seeds": a.shape[1]}
    if keep.sum() < MIN_PAIRED_IMAGES:
        return {**row, "verdict": verdict(expected, float("nan"), float("nan"))}
    boot = paired_bootstrap(a_img, b_img)
    row.update(a=float(a_img.mean()), b=float(b_img.mean()), difference=boot["difference"],
               ci_low=boot["ci_low"], ci_high=boot["ci_high"], p=boot["p"], test="sign-flip permutation")
    if kind == "mask" and a.shape[1] == 1:
        row.update(p=mcnemar(a_img > 0, b_img > 0)["p"], test="McNemar (exact)")
    saturated = all(v <= floor for v in (row["a"], row["b"])) or all(v >= ceiling for v in (row["a"], row["b"]))
    return {**row, "verdict": verdict(expected, row["difference"], row["p"], testable=not saturated)}


# ----------------------------------------------------------------------------------
# per-image results of several models and seeds, their intervals and paired claims
# ----------------------------------------------------------------------------------

MEASURES = {
    "aoi": "AOI (%)",
    "radius": "mean minimal radius, both correct (1/255, capped at 2)",
    "robust": "robust at 0.5/255, both correct (%)",
}
SATURATION = 1.0  # points from 0 or 100 where a percentage counts as saturated


def per_image_results(models_by_seed: dict, profile: str | Profile, seed: int = 0, device="auto",
                      cache: RunCache | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per model x test image: ``clean`` and ``robust`` (under PGD-10#0.5) and ``min_eps`` (1/255).

    The minimal radius is the first of ``profile.radius_grid`` at which PGD-10 breaks the image,
    bisected ``profile.radius_floor_iterations`` times below the first rung for the images
    that break there.
    Columns ``dataset, model, seed, image, clean, robust, min_eps``; ``image`` indexes the
    attack sample (the same images for every model and training seed of a dataset).
    """
    profile = get_profile(profile)
    cache = cache or RunCache()
    frames = []
    jobs = [(ts, key, tm) for ts, models in models_by_seed.items() for key, tm in models.items()]
    for train_seed, (dataset, regime), tm in tqdm(jobs, desc="minimal radii", disable=not progress):
        images, labels, _ = attack_sample(dataset, profile, seed)
        sample = sample_id(dataset, images, labels)
        row = evaluate_cached(tm, images, labels, [TABLE1_ATTACK], sample, device, cache, False, profile,
                              masks=True)[0]
        radii = minimal_epsilon_cached(tm, images, labels, profile.radius_grid, sample, device, cache,
                                       progress=False, floor_iterations=profile.radius_floor_iterations)
        frames.append(pd.DataFrame({"dataset": dataset, "model": regime, "seed": train_seed,
                                    "image": np.arange(len(labels)), "clean": row["clean"],
                                    "robust": row["robust"], "min_eps": radii}))
    return pd.concat(frames, ignore_index=True)


def interval_table(per_image: pd.DataFrame, max_eps: float = RADIUS_AREA_MAX) -> pd.DataFrame:
    """Per dataset x model x seed: AOI, AAI (PGD-10#0.5) and DR with 95% intervals, and the radius scalars.

    AOI and AAI get Wilson intervals, DR and the curve area a bootstrap over images;
    ``median_eps`` is the median minimal radius of the clean-correct images (1/255) and
    ``area`` the area under the robust-accuracy curve on ``[0, max_eps]`` (percent).
    """
    rows = []
    for (dataset, model, seed), g in per_image.groupby(["dataset", "model", "seed"], sort=False):
        clean, robust, radii = g["clean"].to_numpy(), g["robust"].to_numpy(), g["min_eps"].to_numpy()
        n = len(g)
        aoi, aai = 100.0 * clean.mean(), 100.0 * robust.mean()
        rows.append({
            "dataset": dataset, "model": model, "seed": seed, "n": n,
            "aoi": aoi, **ci_columns("aoi", wilson_interval(int(clean.sum()), n)),
            "aai": aai, **ci_columns("aai", wilson_interval(int(robust.sum()), n)),
            "dr": decline_ratio(aoi, aai),
            **ci_columns("dr", bootstrap_interval(mask_decline_ratio, clean, robust)),
            "median_eps": median_minimal_epsilon(radii),
            "area": curve_area(radii, max_eps),
            **ci_columns("area", bootstrap_interval(lambda m: curve_area(m, max_eps), radii)),
        })
    return pd.DataFrame(rows)


def ci_columns(name: str, interval: tuple[float, float]) -> dict:
    """``{name}_ci_low`` and ``{name}_ci_high`` columns of one interval."""
    return {f"{name}_ci_low": interval[0], f"{name}_ci_high": interval[1]}


def per_image_scores(per_image: pd.DataFrame, dataset: str, model: str, column: str) -> np.ndarray:
    """Images x training seeds (in the order of all seeds of the frame) of one model's per-image column."""
    g = per_image[(per_image["dataset"] == dataset) & (per_image["model"] == model)]
    wide = g.pivot(index="image", columns="seed", values=column)
    seeds = sorted(set(per_image["seed"]))
    if list(wide.columns) != seeds:
        raise ValueError(f"{dataset}/{model} has training seeds {list(wide.columns)}, the others {seeds}: "
                         "paired claims need every model trained with the same seeds.")
    return wide.to_numpy(dtype=float)


def claim_scores(per_image: pd.DataFrame, dataset: str, a: str, b: str, measure: str,
                 max_eps: float = RADIUS_AREA_MAX):
    """Paired per-image scores of models ``a`` and ``b`` for a measure of :data:`MEASURES`, and their kind.

    AOI compares the clean masks; the robustness measures compare the images both models
    classify correctly (``nan`` elsewhere): the minimal radius capped at ``max_eps``, or
    the robust mask under PGD-10#0.5.
    """
    def scores(model, column):
        return per_image_scores(per_image, dataset, model, column)

    if measure == "aoi":
        return scores(a, "clean"), scores(b, "clean"), "mask"
    both = (scores(a, "clean") > 0) & (scores(b, "clean") > 0)
    column = "min_eps" if measure == "radius" else "robust"
    sa, sb = scores(a, column), scores(b, column)
    if measure == "radius":
        sa, sb = np.minimum(sa, max_eps), np.minimum(sb, max_eps)
    return np.where(both, sa, np.nan), np.where(both, sb, np.nan), "mask" if measure == "robust" else "score"


def model_claims(per_image: pd.DataFrame, pairs, claims, floor: float,
                 max_eps: float = RADIUS_AREA_MAX) -> pd.DataFrame:
    """Paired claims "A <claim> than B" per dataset for each ``(A, B)`` of ``pairs`` (models of ``per_image``).

    ``claims`` are ``(words, expected, measure)`` with a measure of :data:`MEASURES`; each
    gets :func:`paired_claim`'s test and verdict on the same images, saturated at ``floor``
    (:func:`radius_floor`) or the cap for the radius and within :data:`SATURATION` of 0 or
    100 for a percentage. Used by Tables 3-5 (chapters 5 and 6).
    """
    rows = []
    for dataset in dict.fromkeys(per_image["dataset"]):
        for a, b in pairs:
            for words, expected, measure in claims:
                rows.append({"claim": f"{a} {words} than {b}", "relation": words, "dataset": dataset,
                             "measure": MEASURES[measure], "A": a, "B": b,
                             **model_claim(per_image, dataset, a, b, expected, measure, floor, max_eps)})
    return pd.DataFrame(rows)


def model_claim(per_image: pd.DataFrame, dataset: str, a: str, b: str, expected: str, measure: str,
                floor: float, max_eps: float = RADIUS_AREA_MAX) -> dict:
    """:func:`paired_claim` of "model ``a`` is ``expected`` than ``b``" on ``dataset`` by ``measure``.

    Saturated within :data:`SATURATION` of 0 or 100 for a percentage, at ``floor`` or
    ``max_eps`` for the minimal radius.
    """
    sa, sb, kind = claim_scores(per_image, dataset, a, b, measure, max_eps)
    low, high = (SATURATION, 100 - SATURATION) if kind == "mask" else (floor, max_eps)
    return paired_claim(sa, sb, expected, kind, low, high)
