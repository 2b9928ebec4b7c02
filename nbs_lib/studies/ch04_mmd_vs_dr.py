"""Chapter 4: distance between source and target against non-robustness (paper Figure 6).

Paper section "The factors affecting the transfer of non-robust features": the MMD
(eq. 3, Gretton et al. 2012) between the pre-trained model's embeddings e_x of source
images and of a target's images, plotted against the fully fine-tuned model's decline
ratio DR under PGD-10#0.5 (Table 1). The paper reports a positive correlation, with DR
near 100% once the MMD exceeds 1.0.

Offline, the source sample is a set of crops of scikit-image's natural photographs
(:func:`nbs_lib.data.generators.natural_photo_sample`), a small stand-in for ImageNet; at
``paper`` scale an ImageNet folder can be given. Each target gets the chapter 1
treatment (standard and fully fine-tuned models, DR under PGD-10#0.5) through
:func:`nbs_lib.studies.common.robustness_study`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.stats
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data.generators import natural_photo_sample
from nbs_lib.data.registry import balanced_sample
from nbs_lib.methods.evaluate import mask_decline_ratio
from nbs_lib.methods.similarity import median_bandwidth, mmd_permutation_test
from nbs_lib.methods.statistics import bootstrap_interval
from nbs_lib.methods.train.recipes import weights_id
from nbs_lib.models.layers import embeddings
from nbs_lib.models.registry import load_model
from nbs_lib.report.paper import TABLE1_ATTACK
from nbs_lib.report.verdicts import verdict
from nbs_lib.studies.common import radius_summary, robustness_study, sample_id

DISTANCE_CODE_VERSION = 1
COLUMNS = ["dataset", "mmd", "mmd_p", "bandwidth", "dr", "dr_ci_low", "dr_ci_high", "aoi", "aai",
           "median_eps", "area", "area_ci_low", "area_ci_high", "dr_standard", "aoi_standard",
           "median_eps_standard", "area_standard", "n", "n_source", "n_target"]


def target_images(dataset: str, profile: Profile, n: int, seed: int = 0) -> torch.Tensor:
    """A class-balanced draw of ``n`` training images of the target (its sample for the MMD)."""
    return balanced_sample(dataset, "train", profile, seed, n, salt="mmd")[0]


def source_target_mmd(source: torch.Tensor, target: torch.Tensor, bandwidth: float | None = None,
                      permutations: int = 200, seed: int = 0) -> dict:
    """Unbiased MMD^2 of two embedding samples, its permutation p-value and the bandwidth used."""
    bandwidth = bandwidth or median_bandwidth(source, target, seed=seed)
    value, p = mmd_permutation_test(source, target, bandwidth, permutations=permutations, seed=seed)
    return {"mmd": value, "mmd_p": p, "bandwidth": bandwidth}


def mmd_study(datasets, profile: str | Profile = "mini", arch: str | None = None, weights="imagenet",
              seed: int = 0, device="auto", cache: RunCache | None = None, n_source: int = 1000,
              n_target: int = 1000, source_folder=None, bandwidth: float | None = None,
              attack: str = TABLE1_ATTACK, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """MMD of every target from the source sample, beside its fine-tuned model's DR.

    ``bandwidth=None`` fixes one Gaussian bandwidth for all targets: the median
    heuristic on the source embeddings pooled with every target's, so that the MMD
    values are on one scale. Returns ``(frame, models)`` with one row per dataset
    (columns :data:`COLUMNS`) and chapter 1's models.

    Besides DR at 0.5/255 (with a bootstrap interval over images), each model gets the
    non-saturating measures of chapter 1 from its per-image minimal radii on the attack
    sample (ladder ``profile.radius_grid``): the median minimal radius (1/255) and the area
    under the robust-accuracy curve on [0, 2/255] (percent, with its bootstrap interval).
    """
    profile = get_profile(profile)
    arch = arch or profile.arch
    cache = cache or RunCache()
    table, models = robustness_study(datasets, profile, [attack], arch, weights, seed, device, cache,
                                     progress, regimes=("standard", "full"), masks=True)
    radii = {key: radius_summary(tm, key[0], profile, seed, device, cache) for key, tm in models.items()}
    pretrained = load_model(arch, weights=weights, num_classes=1000, seed=seed).eval()
    source = natural_photo_sample(n_source, profile.image_size, seed=seed, folder=source_folder)
    samples = {d: target_images(d, profile, n_target, seed) for d in datasets}
    config = {"kind": "mmd", "arch": arch,
              "weights": weights_id(weights), "bandwidth": bandwidth, "seed": seed,
              "source": sample_id("source", source, torch.zeros(len(source), dtype=torch.long)),
              "targets": {d: sample_id(d, x, torch.zeros(len(x), dtype=torch.long))
                          for d, x in samples.items()}}

    def compute():
        e_source = embeddings(pretrained, source, device)
        e_targets = {d: embeddings(pretrained, x, device) for d, x in samples.items()}
        sigma = bandwidth or median_bandwidth(e_source, torch.cat(list(e_targets.values())), seed=seed)
        return {d: source_target_mmd(e_source, e, sigma, seed=seed)
                for d, e in tqdm(e_targets.items(), desc="MMD", disable=not progress)}

    distances = cache.memo("mmd", config, compute, code_version=DISTANCE_CODE_VERSION)
    rows = []
    for d in datasets:
        full = table[(table.dataset == d) & (table.model == "full")].iloc[0]
        standard = table[(table.dataset == d) & (table.model == "standard")].iloc[0]
        dr_low, dr_high = bootstrap_interval(mask_decline_ratio, np.asarray(full.clean), np.asarray(full.robust))
        rows.append({"dataset": d, **distances[d], "dr": full.dr, "dr_ci_low": dr_low, "dr_ci_high": dr_high,
                     "aoi": full.aoi, "aai": full.aai, **radii[(d, "full")],
                     "dr_standard": standard.dr, "aoi_standard": standard.aoi,
                     "median_eps_standard": radii[(d, "standard")]["median_eps"],
                     "area_standard": radii[(d, "standard")]["area"], "n": full.n,
                     "n_source": len(source), "n_target": len(samples[d])})
    return pd.DataFrame(rows, columns=COLUMNS), models


def correlations(frame: pd.DataFrame, x: str = "mmd", y: str = "dr", n_boot: int = 5000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Spearman and Pearson correlation of ``x`` and ``y`` with a bootstrap interval.

    Datasets without a value of ``x`` or ``y`` are left out. The interval resamples datasets with replacement (percentile method); resamples with
    a constant column are skipped. The p-value is scipy's (exact permutation test for
    Spearman on few points; t-test for Pearson).
    """
    complete = frame.dropna(subset=[x, y])  # DR is undefined where AOI is 0
    xs, ys = complete[x].to_numpy(float), complete[y].to_numpy(float)
    if len(xs) < 3:
        raise ValueError(f"a correlation needs at least 3 datasets; got {len(xs)}")
    rng = np.random.default_rng(seed)
    rows = []
    for name, fn in (("Spearman", scipy.stats.spearmanr), ("Pearson", scipy.stats.pearsonr)):
        result = fn(xs, ys) if np.ptp(xs) > 0 and np.ptp(ys) > 0 else (np.nan, np.nan)  # constant: undefined
        boot = []
        with warnings.catch_warnings():  # resamples with few distinct points are expected
            warnings.simplefilter("ignore", scipy.stats.NearConstantInputWarning)
            for _ in range(n_boot):
                idx = rng.integers(0, len(xs), len(xs))
                if np.ptp(xs[idx]) > 0 and np.ptp(ys[idx]) > 0:
                    boot.append(fn(xs[idx], ys[idx])[0])
        low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot else (np.nan, np.nan)
        rows.append({"correlation": name, "r": float(result[0]), "p_value": float(result[1]),
                     "ci_low": float(low), "ci_high": float(high), "n_datasets": len(xs),
                     "n_boot": len(boot)})
    return pd.DataFrame(rows)


# (measure column, its name, the paper's direction of its correlation with MMD)
MMD_CLAIMS = (
    ("dr", "DR under PGD-10#0.5 (the paper's measure; saturates)", "higher"),
    ("area", "robust-curve area on [0, 2/255] (does not saturate)", "lower"),
    ("median_eps", "median minimal radius (does not saturate)", "lower"),
)


def mmd_claims(frame: pd.DataFrame, n_boot: int = 5000, seed: int = 0) -> pd.DataFrame:
    """"Non-robustness grows with the MMD from the source", tested with each measure (Figure 6).

    The statistic is Spearman's rank correlation over the targets with its exact
    permutation p-value and a bootstrap interval over targets (:func:`correlations`). The
    paper's direction is a positive correlation for DR and a negative one for the
    measures of robustness (a farther target keeps less of it). Verdicts follow
    :func:`nbs_lib.report.verdicts.verdict`; a measure that is the same on every target
    (saturated) is not testable. The standard models are a control: nothing is
    transferred to them, so the paper predicts no relation.
    """
    rows = []
    for model, suffix in (("full", ""), ("standard", "_standard")):
        for column, measure, expected in MMD_CLAIMS:
            if column + suffix not in frame.columns:
                continue
            values = frame[column + suffix].replace([np.inf, -np.inf], np.nan)
            testable = values.notna().sum() >= 3 and np.ptp(values.dropna()) > 0
            spearman = (correlations(frame.assign(y=values), "mmd", "y", n_boot=n_boot, seed=seed).iloc[0]
                        if testable else None)
            r, p = (spearman["r"], spearman["p_value"]) if testable else (float("nan"), float("nan"))
            rows.append({"model": model, "measure": measure, "expected": "positive" if expected == "higher"
                         else "negative", "spearman": r,
                         "ci_low": spearman["ci_low"] if testable else float("nan"),
                         "ci_high": spearman["ci_high"] if testable else float("nan"), "p": p,
                         "targets": int(values.notna().sum()),
                         "verdict": verdict(expected, r, p, testable) if model == "full" else
                         ("no clear relation" if not testable or p >= 0.05 else "a relation")})
    return pd.DataFrame(rows)
