"""Chapter 6: Discrepancy Mitigating and the robust-transfer baselines (paper eqs. 4-5, Table 5).

Paper section "Robust ImageNet Pre-training". Two parts:

* **Steepness** (eq. 4, :func:`nbs_lib.methods.similarity.local_lipschitz`): features trained on
  source data are steeper on the target's images than features trained on the target
  itself (the paper: LL of ImageNet features against Alphabet features, on Alphabet).
  :func:`steepness_table`.
* **Table 5** (:func:`method_study`): from a standard and a robust ImageNet source (at
  ``mini`` the ImageNet Lite0 and a rung of its self-distilled ladder,
  :mod:`nbs_lib.studies.imagenet_sources`; at ``paper`` Salman et al.'s checkpoints), six
  ways to fine-tune, each evaluated by AOI and AAI under PGD-10#0.5:

  ============== =================== ======================================
  method          starts from          fine-tuning
  ============== =================== ======================================
  full            standard source      plain (chapter 1)
  AT@stage-1      adversarial source   plain
  AT@stage-2      standard source      adversarial training
  AT@stage-1&2    adversarial source   adversarial training
  KD@stage-2      standard source      CE + feature distillation from the adversarial source
  DM@stage-1&2    adversarial source   CE + beta / batch * MSE(f(x'), f(x)) (the authors' code)
  DM (eq. 5)      adversarial source   CE + lambda * LL, lambda from beta a priori
  ============== =================== ======================================

DM is run both ways: as the authors' released code runs it (beta = 500, their inner ball
0.5/255 and 10 steps; :class:`nbs_lib.methods.train.terms.DiscrepancyMitigatingMSE`) and as
eq. 5 is written, with the lambda that gives the same value at the ball's edge
(:func:`nbs_lib.methods.train.terms.lambda_from_beta`: 1.5e-5 for their batch of 128 and 512 features,
1.2e-5 for a batch of 64 and the Lite0's 1,280).

Every method reuses the learning rates that plain fine-tuning chose on each target by
the profile's validation search, so the methods differ in their regime only.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile
from nbs_lib.core.runs import RunCache
from nbs_lib.methods.similarity import local_lipschitz
from nbs_lib.methods.train.recipes import train_model
from nbs_lib.methods.train.terms import AUTHORS_DM_BATCH, AUTHORS_DM_BETA, AUTHORS_DM_FEATURES, lambda_from_beta
from nbs_lib.models.layers import embeddings
from nbs_lib.report.paper import TABLE1_ATTACK, TABLE5_METHODS
from nbs_lib.report.verdicts import tally
from nbs_lib.studies.common import attack_sample, evaluate_cached, model_claims, sample_id
from nbs_lib.studies.sources import SourceModel, target_profile

DM = "DM@stage-1&2"  # the paper's DM row: the authors' code (beta * MSE)
DM_EQ5 = "DM (eq. 5)"  # eq. 5 as written (lambda * LL), lambda from beta a priori
METHODS = TABLE5_METHODS + (DM_EQ5,)  # Table 5's rows, in the paper's order, then eq. 5's DM


def method_settings(method: str, standard: SourceModel, robust: SourceModel, adversarial: str,
                    distill_weight: float, lipschitz_weight: float, lipschitz_eps: float,
                    lipschitz_steps: int, dm_beta: float = AUTHORS_DM_BETA) -> dict:
    """``train_model`` keyword arguments of one Table 5 method."""
    ball = {"lipschitz_eps": lipschitz_eps, "lipschitz_steps": lipschitz_steps}
    settings = {
        "full": {"weights": standard.weights},
        "AT@stage-1": {"weights": robust.weights},
        "AT@stage-2": {"weights": standard.weights, "adversarial": adversarial},
        "AT@stage-1&2": {"weights": robust.weights, "adversarial": adversarial},
        "KD@stage-2": {"weights": standard.weights, "distill_weight": distill_weight,
                       "teacher": str(robust.weights)},
        DM: {"weights": robust.weights, "dm_beta": dm_beta, **ball},
        DM_EQ5: {"weights": robust.weights, "lipschitz_weight": lipschitz_weight, **ball},
    }
    if method not in settings:
        raise ValueError(f"Unknown method {method!r}; use one of {METHODS}.")
    return settings[method]


def method_study(targets, standard: SourceModel, robust: SourceModel, profile: str | Profile = "mini",
                 methods=METHODS, adversarial: str = "PGD-3#2", distill_weight: float = 1.0,
                 lipschitz_weight: float | None = None, lipschitz_eps: float = 0.5, lipschitz_steps: int = 10,
                 dm_beta: float = AUTHORS_DM_BETA, seed: int = 0, device="auto", cache: RunCache | None = None,
                 attack: str = TABLE1_ATTACK, progress: bool = True):
    """Table 5: every method on every target, fully fine-tuned and attacked.

    Returns ``(frame, models)``: columns ``dataset, method, aoi, aai, dr, lr_f, lr_g,
    val_acc``, and ``{(dataset, method): TrainedModel}``. ``full`` runs first on each
    target with the profile's learning-rate search; the other methods reuse its choice.
    ``lipschitz_weight=None`` is eq. 5's lambda derived from ``dm_beta`` in the same ball, for
    this run's batch and embedding size (:func:`nbs_lib.methods.train.terms.lambda_from_beta`).
    """
    prof = target_profile(profile, standard)
    if lipschitz_weight is None:
        lipschitz_weight = lambda_from_beta(dm_beta, lipschitz_eps, prof.batch_size, robust.trained.model.embedding_dim)
    cache = cache or RunCache()
    rows, models = [], {}
    for dataset in tqdm(list(targets), desc="targets", disable=not progress):
        images, labels, _ = attack_sample(dataset, prof, seed)
        sample = sample_id(dataset, images, labels)
        lr = {}
        for method in ["full", *[m for m in methods if m != "full"]]:
            kwargs = method_settings(method, standard, robust, adversarial, distill_weight,
                                     lipschitz_weight, lipschitz_eps, lipschitz_steps, dm_beta)
            tm = train_model(dataset, "full", prof, arch=prof.arch, seed=seed, device=device, cache=cache,
                             progress=progress, **lr, **kwargs)
            if method == "full":
                lr = {"lr_f": tm.config["train"]["lr_f"], "lr_g": tm.config["train"]["lr_g"]}
                if "full" not in methods:
                    continue
            models[(dataset, method)] = tm
            row = evaluate_cached(tm, images, labels, [attack], sample, device, cache, progress, prof)[0]
            rows.append({"dataset": dataset, "method": method, "aoi": row["aoi"], "aai": row["aai"],
                         "dr": row["dr"], **lr, "val_acc": tm.val_acc})
    return pd.DataFrame(rows), models


def feature_spread(model, images: torch.Tensor, device="auto", batch_size: int = 256) -> dict:
    """How much f's features say about the images: ``feature_l1`` is the mean ||f(x)||_1 and
    ``feature_spread`` the mean over features of their standard deviation across ``images``.

    A spread near 0 is a flat feature map: f gives every image nearly the same features, the
    degenerate way to a small LL (eq. 4) that a too-large lambda in eq. 5 rewards.
    """
    feats = embeddings(getattr(model, "model", model), images, device, batch_size)
    return {"feature_l1": float(feats.abs().sum(1).mean()), "feature_spread": float(feats.std(0).mean())}


def lambda_sweep(dataset: str, standard: SourceModel, robust: SourceModel, lambdas,
                 profile: str | Profile = "mini", **kwargs) -> pd.DataFrame:
    """DM as eq. 5 writes it on one target for several lambda (0 is AT@stage-1: plain fine-tuning).

    Besides AOI, AAI and DR, each row has the fine-tuned features' size and spread on the
    attack sample (:func:`feature_spread`), which show how a large lambda flattens f.
    """
    images, _, _ = attack_sample(dataset, target_profile(profile, standard), kwargs.get("seed", 0))
    frames = []
    for lam in lambdas:
        if lam == 0:
            frame, models = method_study([dataset], standard, robust, profile, ("AT@stage-1",), **kwargs)
        else:
            frame, models = method_study([dataset], standard, robust, profile, (DM_EQ5,),
                                         lipschitz_weight=lam, **kwargs)
        (model,) = models.values()
        frames.append(frame.assign(lipschitz_weight=lam,
                                   **feature_spread(model, images, kwargs.get("device", "auto"))))
    return pd.concat(frames, ignore_index=True)


def steepness_table(models: dict, images, eps_255: float = 0.5, steps: int = 10, device="auto",
                    progress: bool = False) -> pd.DataFrame:
    """LL (eq. 4) of each model's f on the same images: ``{name: model}`` -> rows ``model, ll,
    feature_l1, ll_normalised``. ``ll_normalised`` is LL divided by the mean ``||f(x)||_1`` on
    the images: the relative change of the features per unit of input change, which compares
    feature spaces of different scales (a feature map can lower its LL by shrinking)."""
    rows = []
    for name, m in models.items():
        model = getattr(m, "model", m)
        ll = local_lipschitz(model.features, images, eps_255=eps_255, steps=steps, device=device, progress=progress)
        l1 = feature_spread(model, images, device)["feature_l1"]
        rows.append({"model": name, "ll": ll, "feature_l1": l1, "ll_normalised": ll / l1})
    return pd.DataFrame(rows)


def dm_strengths(beta: float = AUTHORS_DM_BETA, eps_255: float = 0.5, batch_size: int = AUTHORS_DM_BATCH,
                 embedding_dim: int = AUTHORS_DM_FEATURES) -> pd.DataFrame:
    """The derivation of eq. 5's lambda from the authors' beta, for their run (batch 128, 512
    features) and for this run's batch and embedding (chapter 6's text)."""
    rows = []
    for run, b, d in (("the authors' run", AUTHORS_DM_BATCH, AUTHORS_DM_FEATURES), ("this run", batch_size, embedding_dim)):
        rows.append({"run": run, "beta": beta, "batch B": b, "features D": d, "eps (1/255)": eps_255,
                     "beta / (B D)": beta / (b * d), "lambda = beta eps / (B D)": lambda_from_beta(beta, eps_255, b, d)})
    return pd.DataFrame(rows)


def dm_terms_on(model, images, batch: int, beta: float = AUTHORS_DM_BETA, eps_255: float = 0.5,
                steps: int = 10, device="auto", chunk: int = 128) -> dict:
    """Both DM terms at their own inner maxima on ``images`` for ``model``'s f (the robust source,
    before fine-tuning): the authors' ``beta / batch * MSE`` and eq. 5's ``lambda * LL`` with
    the a-priori lambda for that batch and f's embedding, and the mean per-feature change that
    the derivation assumed to be 1."""
    from nbs_lib.core.device import frozen_eval, resolve_device
    from nbs_lib.methods.train.terms import mse_inner_max

    device = resolve_device(device)
    features = getattr(model, "model", model).features
    eps = eps_255 / 255.0
    squared, changes = [], []
    with frozen_eval(features, device):
        generator = torch.Generator(device=device).manual_seed(0)
        for i in range(0, len(images), chunk):
            x = images[i:i + chunk].to(device)
            x_adv = mse_inner_max(features, x, eps, steps, generator)
            with torch.no_grad():
                delta = (features(x_adv) - features(x)).float()
            squared.append(delta.pow(2).mean(1))
            changes.append(delta.abs().mean(1))
    mse = float(torch.cat(squared).mean())
    ll = local_lipschitz(features, images, eps_255=eps_255, steps=steps, device=device, progress=False)
    lam = lambda_from_beta(beta, eps_255, batch, getattr(model, "model", model).embedding_dim)
    return {"authors_term": beta / batch * mse, "eq5_term": lam * ll, "mean_feature_change": float(torch.cat(changes).mean())}


def best_method(frame: pd.DataFrame, tolerance: float = 5.0) -> pd.DataFrame:
    """Per dataset: the most robust method (highest AAI), and whether DM is the most robust
    among methods whose AOI is within ``tolerance`` points of plain fine-tuning's."""
    rows = []
    for dataset, part in frame.groupby("dataset", sort=False):
        part = part.set_index("method")
        full_aoi = part.loc["full", "aoi"] if "full" in part.index else part.aoi.max()
        comparable = part[part.aoi >= full_aoi - tolerance]
        rows.append({"dataset": dataset, "most robust": part.aai.idxmax(),
                     f"most robust with AOI within {tolerance:g} of full": comparable.aai.idxmax(),
                     "DM AAI": part.aai.get(DM), "best other AAI":
                     part.drop(index=[DM, DM_EQ5], errors="ignore").aai.max()})
    return pd.DataFrame(rows).set_index("dataset")


TABLE5_CLAIMS = (("is more robust", "higher", "radius"), ("is more robust", "higher", "robust"),
                 ("has higher AOI", "higher", "aoi"))


def table5_claims(per_image: pd.DataFrame, floor: float, best: str = DM) -> pd.DataFrame:
    """Table 5 as paired claims: ``best`` (the paper's DM@stage-1&2) against every other method.

    ``per_image`` comes from :func:`nbs_lib.studies.common.per_image_results` on
    :func:`method_study`'s models (``model`` = method); robustness by the minimal radius
    (does not saturate) and by the share robust at 0.5/255, on the images both methods
    classify correctly, and AOI on all images (the paper: "comparable" clean accuracy).
    """
    others = [m for m in dict.fromkeys(per_image["model"]) if m != best]
    return model_claims(per_image, [(best, m) for m in others], TABLE5_CLAIMS, floor)


def table5_verdicts(claims: pd.DataFrame, paper_table5: pd.DataFrame) -> pd.DataFrame:
    """Per compared method and measure of :func:`table5_claims`: what the paper's Table 5 shows and ours.

    The paper side counts the targets on which its DM@stage-1&2 has the higher AAI (for a
    robustness claim) or AOI (for the AOI claim) than the other method; ours is the tally of
    the paired verdicts over our targets (:func:`nbs_lib.report.verdicts.tally`).
    """
    wide = paper_table5.pivot(index="dataset", columns="method", values=["aoi", "aai"])
    rows = []
    for (a, b, relation, measure), g in claims.groupby(["A", "B", "relation", "measure"], sort=False):
        column = "aoi" if "AOI" in relation else "aai"
        if (column, a) in wide and (column, b) in wide:
            wins = int((wide[(column, a)] > wide[(column, b)]).sum())
            paper_side = f"{column.upper()} higher on {wins} of {len(wide)} targets"
        else:  # eq. 5's DM is this book's second reading, not a row of the paper
            paper_side = "not in the paper"
        rows.append({"claim": f"{a} {relation} than {b}", "measure": measure, "paper": paper_side,
                     "this book": tally(g["verdict"])})
    return pd.DataFrame(rows)
