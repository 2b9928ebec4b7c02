"""Chapter 5: model capacity and source-task difficulty (paper Tables 3 and 4).

Paper section "Factors Influencing Robustness of Fine-tuned Model":

* **Capacity** (Table 3): the chapter 1 protocol (full fine-tuning, PGD-10#0.5) for
  pre-trained backbones of growing size, averaged over the targets; the paper finds DR
  falling from 81.5 (ResNet-18) to 69.1 (Wide-ResNet-101-2). :func:`capacity_study`.
* **Task difficulty** (Table 4): two sources with the same number of images and classes,
  one semantically richer, each used to pre-train the same backbone, each fine-tuned on
  two related targets; the paper finds the richer source (ImageNet-10animals against
  CIFAR-10) gives higher AOI *and* higher DR. :func:`difficulty_study`.
"""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.methods.evaluate import decline_ratio
from nbs_lib.methods.train.recipes import train_model
from nbs_lib.models.registry import load_model, model_info
from nbs_lib.report.paper import TABLE1_ATTACK
from nbs_lib.report.verdicts import tally
from nbs_lib.studies.common import attack_sample, evaluate_cached, model_claims, radius_summary, sample_id
from nbs_lib.studies.sources import finetune_from_source, pretrain_source, source_table, target_profile

CAPACITY_ARCHS = {"mini": ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
                  "paper": ("resnet18", "resnet50", "resnet101", "wide_resnet50_2", "wide_resnet101_2")}
DIFFICULTY = {"sources": ("alphabet", "alphabet-lowres"), "targets": ("mnist", "digits")}


def capacity_archs(profile: Profile) -> tuple[str, ...]:
    return CAPACITY_ARCHS.get(profile.name, CAPACITY_ARCHS["mini"])


def capacity_study(datasets, profile: str | Profile = "mini", archs=None, weights="imagenet", seed: int = 0,
                   device="auto", cache: RunCache | None = None, attack: str = TABLE1_ATTACK,
                   progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Fully fine-tuned models of every backbone on every target, attacked (Table 3).

    The first backbone gets the profile's learning-rate search (as in chapter 1, from
    whose cache it usually loads); the larger ones reuse the learning rates it chose
    on each target, so the comparison changes the backbone only (and costs one
    training per backbone and target). Columns ``backbone, size_mb, dataset, aoi, aai,
    dr, median_eps, area, area_ci_low, area_ci_high, lr_f, lr_g, val_acc`` (the radius
    measures of :func:`nbs_lib.studies.common.radius_summary`, which do not saturate), and
    the models as ``{(dataset, backbone): TrainedModel}`` for paired claims.
    """
    profile = get_profile(profile)
    archs = list(archs or capacity_archs(profile))
    cache = cache or RunCache()
    rows, chosen, models = [], {}, {}
    for arch in tqdm(archs, desc="backbones", disable=not progress):
        size = model_info(load_model(arch, weights=None, num_classes=10)).size_mb
        for dataset in datasets:
            lr = chosen.get(dataset, {})
            tm = train_model(dataset, "full", profile, arch=arch, weights=weights, seed=seed, device=device,
                             cache=cache, progress=progress, **lr)
            models[(dataset, arch)] = tm
            if arch == archs[0]:
                chosen[dataset] = {"lr_f": tm.config["train"]["lr_f"], "lr_g": tm.config["train"]["lr_g"]}
            images, labels, _ = attack_sample(dataset, profile, seed)
            row = evaluate_cached(tm, images, labels, [attack], sample_id(dataset, images, labels), device,
                                  cache, progress, profile)[0]
            rows.append({"backbone": arch, "size_mb": size, "dataset": dataset, "aoi": row["aoi"],
                         "aai": row["aai"], "dr": row["dr"],
                         **radius_summary(tm, dataset, profile, seed, device, cache),
                         "lr_f": tm.config["train"]["lr_f"], "lr_g": tm.config["train"]["lr_g"],
                         "val_acc": tm.val_acc})
    return pd.DataFrame(rows), models


def table3_layout(frame: pd.DataFrame) -> pd.DataFrame:
    """Means over the targets per backbone, as the paper's Table 3 (backbones as columns)."""
    values = [c for c in ("size_mb", "aoi", "aai", "dr", "median_eps", "area") if c in frame.columns]
    mean = frame.groupby("backbone", sort=False)[values].mean()
    return mean.round(2).T


def difficulty_study(profile: str | Profile = "mini", sources=DIFFICULTY["sources"],
                     targets=DIFFICULTY["targets"], seed: int = 0, device="auto",
                     cache: RunCache | None = None, attack: str = TABLE1_ATTACK,
                     progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pre-train one backbone on each source, fine-tune it on each target (Table 4).

    Returns ``(table, sources, finetuned)``: per source and target the fully fine-tuned
    model's AOI, AAI, DR and the radius measures
    (:func:`nbs_lib.studies.common.radius_summary`); per source model its own accuracy
    (:func:`source_table`); and the fine-tuned models as ``{(target, source): TrainedModel}``
    (evaluated at :func:`~nbs_lib.studies.sources.target_profile`).
    """
    cache = cache or RunCache()
    rows, models, by_source = [], [], {}
    for source in sources:
        model = pretrain_source(source, profile, seed=seed, device=device, cache=cache, progress=progress)
        models.append(model)
        table, finetuned = finetune_from_source(targets, model, profile, [attack], ("full",), seed, device,
                                                cache, progress)
        by_source.update({(d, source): finetuned[(d, "full")] for d in table["dataset"]})
        radius = pd.DataFrame([radius_summary(finetuned[(d, "full")], d, target_profile(profile), seed, device,
                                              cache) for d in table["dataset"]])
        rows.append(pd.concat([table.reset_index(drop=True), radius], axis=1).assign(source=source))
    table = pd.concat(rows, ignore_index=True)[["source", "dataset", "aoi", "aai", "dr", "median_eps", "area",
                                                "area_ci_low", "area_ci_high"]]
    return table, source_table(models), by_source


CAPACITY_CLAIMS = (("has higher AOI", "higher", "aoi"), ("is more robust", "higher", "radius"),
                   ("is more robust", "higher", "robust"))
DIFFICULTY_CLAIMS = (("has higher AOI", "higher", "aoi"), ("is less robust", "lower", "radius"),
                     ("is less robust", "lower", "robust"))


def capacity_claims(per_image: pd.DataFrame, archs, floor: float) -> pd.DataFrame:
    """Table 3 as paired claims: every larger backbone against the smallest (``archs[0]``)."""
    return model_claims(per_image, [(a, archs[0]) for a in archs[1:]], CAPACITY_CLAIMS, floor)


def difficulty_claims(per_image: pd.DataFrame, sources, floor: float) -> pd.DataFrame:
    """Table 4 as paired claims: the richer source (``sources[0]``) against the poorer (``sources[1]``)."""
    return model_claims(per_image, [(sources[0], sources[1])], DIFFICULTY_CLAIMS, floor)


def table4_layout(frame: pd.DataFrame) -> pd.DataFrame:
    """Sources as rows, (target, metric) as columns, as the paper's Table 4."""
    return frame.pivot_table(index="source", columns="dataset", values=["aoi", "aai", "dr"],
                             sort=False).swaplevel(axis=1).sort_index(axis=1, level=0).round(2)


def chapter_results(capacity: pd.DataFrame, difficulty: pd.DataFrame, source_models: pd.DataFrame,
                    difficulty_backbone: str) -> pd.DataFrame:
    """The chapter's numbers in one table: ``experiment, source, backbone, dataset, aoi, aai, dr``.

    Source models appear as ``experiment="source model"`` with their clean (``aoi``) and
    robust (``aai``) accuracy on their own test sample.
    """
    cap = capacity.assign(experiment="capacity", source="imagenet")
    dif = difficulty.assign(experiment="difficulty", backbone=difficulty_backbone)
    src = pd.DataFrame({"experiment": "source model", "source": source_models["source"] + " / "
                        + source_models["pre-training"], "backbone": difficulty_backbone,
                        "dataset": source_models["source"], "aoi": source_models["test_acc"],
                        "aai": source_models["robust_acc"]})
    src["dr"] = decline_ratio(src.aoi, src.aai)
    columns = ["experiment", "source", "backbone", "dataset", "aoi", "aai", "dr"]
    return pd.concat([cap[columns], dif[columns], src[columns]], ignore_index=True)


def _paper_trend(values, expected: str) -> str:
    """How the paper's means move along its backbones: steps in the expected direction, first and last."""
    v = list(values)
    steps = sum((b > a) if expected == "higher" else (b < a) for a, b in zip(v, v[1:]))
    return f"{steps} of {len(v) - 1} steps; {v[0]:.1f} to {v[-1]:.1f}"


def what_reproduced(capacity: pd.DataFrame, difficulty: pd.DataFrame, paper_table3: pd.DataFrame,
                    paper_table4: pd.DataFrame) -> pd.DataFrame:
    """Per claim and measure of Tables 3 and 4: what the paper's table shows and our verdicts.

    ``capacity`` and ``difficulty`` are :func:`capacity_claims` and :func:`difficulty_claims`.
    The paper side: for Table 3, its mean AOI and DR along the five backbones (robustness
    = DR falling); for Table 4, on how many of its two targets the richer source's model
    has the higher AOI and the higher DR (= less robust). Ours: the verdicts over every
    target and backbone pair (:func:`nbs_lib.report.verdicts.tally`).
    """
    rows = []
    for table, claims, generic, paper_side in (
            ("Table 3", capacity, "a larger backbone {} than the smallest", _table3_side(paper_table3)),
            ("Table 4", difficulty, "the richer source {} than the poorer", _table4_side(paper_table4))):
        for (w, measure), g in claims.groupby(["relation", "measure"], sort=False):
            rows.append({"table": table, "claim": generic.format(w), "measure": measure,
                         "paper": paper_side[w], "this book": tally(g["verdict"])})
    return pd.DataFrame(rows)


def _table3_side(paper_table3: pd.DataFrame) -> dict:
    return {"has higher AOI": "mean AOI: " + _paper_trend(paper_table3["aoi"], "higher"),
            "is more robust": "mean DR falls: " + _paper_trend(paper_table3["dr"], "lower")}


def _table4_side(paper_table4: pd.DataFrame) -> dict:
    richer, poorer = dict.fromkeys(paper_table4["source"])
    wide = paper_table4.pivot(index="dataset", columns="source", values=["aoi", "dr"])
    aoi = int((wide[("aoi", richer)] > wide[("aoi", poorer)]).sum())
    dr = int((wide[("dr", richer)] > wide[("dr", poorer)]).sum())
    return {"has higher AOI": f"{aoi} of {len(wide)} targets",
            "is less robust": f"DR higher on {dr} of {len(wide)} targets"}
