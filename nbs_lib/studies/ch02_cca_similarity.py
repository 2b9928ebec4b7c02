"""Chapter 2: what the fine-tuned model learned, measured by layer similarity (Figure 3).

Paper section "Difference between Fine-tuned Model and Standard Model: On the Learned
Knowledge". For each target dataset three models share one architecture: the
pre-trained ImageNet model (``pt``), the fully fine-tuned model (``ft``) and the
standard model trained from scratch (``st``); the last two come from the chapter 1
protocol through the run cache. Their f is compared on the same images by SVCCA
(:func:`nbs_lib.methods.similarity.cca_similarity`) and by linear CKA, on the bottom stage
and on all four stages (:mod:`nbs_lib.models.layers`), scaled to [0, 100].

SVCCA is computed with the paper's 99% of variance kept (``cca``) and with the 98% of
the authors' code (``cca98``); linear CKA biased (``cka``, Kornblith et al.'s usual
estimate) and debiased (``cka_debiased``). Besides bottom and all layers, every stage is
compared on its own and the four stage similarities are averaged (``stages``).

Besides the paper's three pairs, ``chance`` compares ft with st on *shuffled* images
(rows of one model permuted image by image): the value two unrelated representations
of the same size reach by chance, since a mean canonical correlation is biased
upwards when the number of data points is not much larger than the number of neurons.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data.registry import balanced_sample
from nbs_lib.methods.similarity import UndefinedCCA, cca_similarity, debiased_linear_cka, linear_cka
from nbs_lib.methods.train.recipes import weights_id
from nbs_lib.models.layers import LAYER_SETS, layer_matrices
from nbs_lib.models.registry import load_model
from nbs_lib.studies.common import sample_id, train_three

PAIRS = {"ft-pt": ("full", "pretrained"), "ft-st": ("full", "standard"),
         "pt-st": ("pretrained", "standard")}
CHANCE = "chance"
MEASURES = ("cca", "cca98", "cka", "cka_debiased")
VERDICT_MEASURES = ("cca", "cka")  # the measures whose counts make a claim's verdict
MEASURE_NAMES = {"cca": "SVCCA (99% variance)", "cca98": "SVCCA (98% variance)", "cka": "linear CKA",
                 "cka_debiased": "debiased linear CKA"}
STAGES = ("bottom", "stage2", "stage3", "stage4")
STAGE_MEAN = "stages"  # the mean of the four stages' similarities
FIGURE_LAYERS = ("bottom", STAGE_MEAN, "all")
KNOWLEDGE_CODE_VERSION = 2  # 2: per-stage similarities, SVCCA at 98% and debiased CKA
COLUMNS = ["dataset", "pair", "layers", "measure", "reduction", "similarity", "n_rows", "dims", "note"]


def similarity_images(dataset: str, profile: Profile, seed: int = 0, n: int | None = None) -> torch.Tensor:
    """The images every model of ``dataset`` is compared on: a class-balanced draw from train.

    The comparison needs many data points (at least as many as neurons for CCA), more
    than the test split holds at ``mini``; the training images serve, as in SVCCA.
    """
    return balanced_sample(dataset, "train", profile, seed, n or profile.similarity_images,
                           salt="similarity")[0]


def compared_models(dataset: str, profile: Profile, arch: str, weights, seed: int, device,
                    cache: RunCache, progress: bool) -> dict[str, tuple[torch.nn.Module, dict]]:
    """``{"pretrained", "full", "standard"} -> (model, identity)`` for one target dataset."""
    trained = train_three(dataset, profile, arch, weights, seed, device, cache,
                          regimes=("standard", "full"), progress=progress)
    pretrained = load_model(arch, weights=weights, num_classes=trained["full"].model.num_classes,
                            seed=seed).eval()
    return {"pretrained": (pretrained, {"arch": arch, "weights": weights_id(weights)}),
            "full": (trained["full"].model, trained["full"].config),
            "standard": (trained["standard"].model, trained["standard"].config)}


def measure_similarity(measure: str, a: torch.Tensor, b: torch.Tensor) -> tuple[float, str]:
    """``(similarity in [0, 100], note)``; SVCCA that keeps ``n - 1`` directions or more is not defined.

    The guard applies to the widths SVCCA keeps after its SVD reduction
    (:class:`~nbs_lib.methods.similarity.UndefinedCCA`), not to the raw number of neurons.
    """
    if measure == "cka":
        return 100.0 * linear_cka(a, b), ""
    if measure == "cka_debiased":
        return 100.0 * debiased_linear_cka(a, b), ""
    if measure in ("cca", "cca98"):
        try:
            return 100.0 * cca_similarity(a, b, keep=0.99 if measure == "cca" else 0.98), ""
        except UndefinedCCA as err:
            return math.nan, str(err).split(" is trivially")[0] + " is trivially 1"
    raise ValueError(f"Unknown measure {measure!r}; use one of {MEASURES}.")


def shuffle_images(matrix: torch.Tensor, n_images: int, seed: int) -> torch.Tensor:
    """Rows permuted image by image (each image's block of positions moves together)."""
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    return matrix.reshape(n_images, -1, matrix.shape[1])[order].reshape(matrix.shape)


def compare_models(models: dict[str, torch.nn.Module], images: torch.Tensor, modes=("positions", "pool"),
                   measures=MEASURES, max_positions: int | None = 256, seed: int = 0,
                   device="auto") -> list[dict]:
    """Every pair of :data:`PAIRS` plus :data:`CHANCE`, on every layer set, in every mode and measure.

    Rows with ``layers`` :data:`STAGE_MEAN` hold the mean over the four stages (NaN when a
    stage's value is undefined).
    """
    rows = []
    per_model = {name: layer_matrices(model, images, tuple(LAYER_SETS), modes, max_positions, seed, device)
                 for name, model in models.items()}
    for mode in modes:
        mats = {name: matrices[mode] for name, matrices in per_model.items()}
        for layers in LAYER_SETS:
            pairs = {p: (mats[a][layers], mats[b][layers]) for p, (a, b) in PAIRS.items()}
            pairs[CHANCE] = (mats["full"][layers],
                             shuffle_images(mats["standard"][layers], len(images), seed + 1))
            for pair, (a, b) in pairs.items():
                for measure in measures:
                    value, note = measure_similarity(measure, a, b)
                    rows.append({"pair": pair, "layers": layers, "measure": measure, "reduction": mode,
                                 "similarity": value, "n_rows": a.shape[0],
                                 "dims": max(a.shape[1], b.shape[1]), "note": note})
    return rows + stage_means(rows)


def stage_means(rows: list[dict]) -> list[dict]:
    """Per pair, measure and reduction: the mean similarity over the four stages (:data:`STAGES`)."""
    frame = pd.DataFrame(rows)
    frame = frame[frame["layers"].isin(STAGES)]
    out = []
    for (pair, measure, mode), g in frame.groupby(["pair", "measure", "reduction"], sort=False):
        notes = "; ".join(n for n in g["note"] if n)
        out.append({"pair": pair, "layers": STAGE_MEAN, "measure": measure, "reduction": mode,
                    "similarity": float(g["similarity"].mean(skipna=False)), "n_rows": int(g["n_rows"].max()),
                    "dims": int(g["dims"].max()), "note": notes})
    return out


def similarity_study(datasets, profile: str | Profile = "mini", arch: str | None = None,
                     weights="imagenet", seed: int = 0, device="auto", cache: RunCache | None = None,
                     modes=("positions", "pool"), measures=MEASURES, max_positions: int | None = 256,
                     progress: bool = True) -> pd.DataFrame:
    """Figure 3 for every dataset: one row per dataset x pair x layers x measure x reduction.

    Models are trained (or loaded from the run cache) by the chapter 1 protocol; the
    similarities of each dataset are cached too, keyed on the models and the images.
    """
    profile = get_profile(profile)
    arch = arch or profile.arch
    cache = cache or RunCache()
    rows = []
    for dataset in tqdm(list(datasets), desc="similarity", disable=not progress):
        models = compared_models(dataset, profile, arch, weights, seed, device, cache, progress)
        images = similarity_images(dataset, profile, seed)
        labels = torch.zeros(len(images), dtype=torch.long)
        config = {"kind": "similarity",
                  "models": {k: ident for k, (_, ident) in models.items()},
                  "images": sample_id(dataset, images, labels), "modes": list(modes),
                  "measures": list(measures), "max_positions": max_positions, "seed": seed}

        def compute(models=models, images=images):
            return compare_models({k: m for k, (m, _) in models.items()}, images, modes, measures,
                                  max_positions, seed, device)

        rows += [{"dataset": dataset, **row} for row in cache.memo("similarity", config, compute, code_version=KNOWLEDGE_CODE_VERSION)]
    return pd.DataFrame(rows, columns=COLUMNS)


def figure3_table(frame: pd.DataFrame, measure: str = "cca", reduction: str = "positions") -> pd.DataFrame:
    """Datasets x (layers, pair) of one measure and reduction, as in the paper's bar chart."""
    sel = frame[(frame.measure == measure) & (frame.reduction == reduction)]
    table = sel.pivot(index="dataset", columns=["layers", "pair"], values="similarity")
    table = table.reindex(list(dict.fromkeys(sel.dataset)))
    order = [(layers, pair) for layers in FIGURE_LAYERS for pair in [*PAIRS, CHANCE]
             if (layers, pair) in table.columns]
    return table[order].round(1)


def knowledge_observations(frame: pd.DataFrame, measure: str = "cca",
                           reduction: str = "positions") -> pd.DataFrame:
    """The paper's two claims, checked per dataset.

    1. ft is more similar to pt than to st (``ft-pt > ft-st``), on bottom and on all layers
       (and on the per-stage mean).
    2. ft and st are more alike on the bottom layer than on all layers.
    Each claim is also checked against the chance level, so a difference between two
    values that are both at chance does not count as support. A comparison with a
    missing value (CCA with fewer points than neurons) is ``<NA>``, not False.
    """
    t = figure3_table(frame, measure, reduction)

    def larger(row, a, b):
        return pd.NA if pd.isna(row[a]) or pd.isna(row[b]) else bool(row[a] > row[b])

    out = []
    for dataset, row in t.iterrows():
        entry = {"dataset": dataset}
        for layers in FIGURE_LAYERS:
            entry[f"ft closer to pt ({layers})"] = larger(row, (layers, "ft-pt"), (layers, "ft-st"))
            entry[f"ft-st above chance ({layers})"] = larger(row, (layers, "ft-st"), (layers, CHANCE))
        entry["ft-st: bottom > all"] = larger(row, ("bottom", "ft-st"), ("all", "ft-st"))
        out.append(entry)
    return pd.DataFrame(out).set_index("dataset").astype("boolean")


def claims_vs_paper(frame: pd.DataFrame, modes=("positions", "pool"), measures=VERDICT_MEASURES) -> pd.DataFrame:
    """The paper's Figure 3 claims beside how many of our datasets support each.

    One column per measure and reduction; a cell reads "k of n datasets", n counting
    the datasets where the values compared exist (CCA needs more points than neurons).
    The ``verdict`` column follows :func:`figure3_verdict`.
    """
    from nbs_lib.report.paper import FIGURE3_CLAIMS

    claims = {  # claim -> ((layers, pair) that should be larger, (layers, pair) it is compared with)
        "ft closer to pt than to st (bottom)": (("bottom", "ft-pt"), ("bottom", "ft-st")),
        "ft closer to pt than to st (all)": (("all", "ft-pt"), ("all", "ft-st")),
        "ft closer to pt than to st (per-stage mean)": ((STAGE_MEAN, "ft-pt"), (STAGE_MEAN, "ft-st")),
        "ft-st: bottom more alike than all": (("bottom", "ft-st"), ("all", "ft-st")),
    }
    table = {"paper": FIGURE3_CLAIMS}
    for measure in measures:
        for mode in modes:
            t = figure3_table(frame, measure, mode)
            if t.empty:
                continue
            column = {}
            for claim, (larger, smaller) in claims.items():
                if larger not in t.columns or smaller not in t.columns:
                    continue
                both = t[[larger, smaller]].dropna()
                column[claim] = f"{int((both[larger] > both[smaller]).sum())} of {len(both)} datasets"
            table[f"{measure.upper()}, {mode}"] = column
    table = pd.DataFrame(table)
    table["verdict"] = [figure3_verdict([c for c in row.drop("paper") if isinstance(c, str)])
                        for _, row in table.iterrows()]
    return table


def figure3_verdict(counts: list[str]) -> str:
    """The verdict on one Figure 3 claim from its "k of n datasets" counts, one per measure and reduction.

    A count supports the claim when k is more than half of n (the paper's "most datasets"):
    "reproduced" when every measure and reduction supports it, "partly" when some do,
    "no" when none does; "untested" when no count has a dataset.
    """
    pairs = [tuple(int(x) for x in count.split(" datasets")[0].split(" of ")) for count in counts]
    pairs = [(k, n) for k, n in pairs if n > 0]
    if not pairs:
        return "untested"
    supported = sum(k > n / 2 for k, n in pairs)
    return "reproduced" if supported == len(pairs) else "partly" if supported else "no"
