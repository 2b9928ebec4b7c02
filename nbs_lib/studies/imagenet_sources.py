"""ImageNet sources for chapters 5-7: the standard ImageNet model and its robust ladder.

Paper section "Robust ImageNet Pre-training" (Table 5) and the second work (transfer from
sources of graded robustness) start from ImageNet models, standard and adversarially
trained. The standard one is chapter 1's ImageNet EfficientNet-Lite0 (the same weights, so
a target fine-tuned from it is chapter 1's model, the same cache entry). Its robust rungs
are made offline by adversarial self-distillation on natural photographs
(:mod:`nbs_lib.methods.train.self_distill`), one per radius of the profile's
``ladder_radii``; radius 0 is the control (the same training without the attack). Each
rung is trained once, cached, validated on held-out photographs and stored as a weights
file that ``weights=`` fine-tunes from exactly like the ImageNet file.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache, atomic_write_bytes, content_hash
from nbs_lib.data.photos import SANITY_PHOTOS, photo_crops
from nbs_lib.methods.similarity.lipschitz import local_lipschitz
from nbs_lib.methods.train.recipes import TrainedModel
from nbs_lib.methods.train.self_distill import DistillConfig, agreement, distill, self_distill
from nbs_lib.models.imagenet import photo
from nbs_lib.models.registry import exportable_state, load_model
from nbs_lib.studies.sources import SourceModel

LADDER_CODE_VERSION = 1  # bump when the distillation or its validation changes
VALIDATION_SEED = 12345


def distill_config(eps_255: float, profile: str | Profile, seed: int = 0) -> DistillConfig:
    """The rung of radius ``eps_255`` at ``profile``'s distillation budget and image size."""
    p = get_profile(profile)
    return DistillConfig(eps_255=float(eps_255), steps=p.distill_steps, batch_size=p.distill_batch_size,
                         image_size=p.image_size, lr=p.distill_lr, attack_steps=p.distill_attack_steps,
                         robust_weight=p.distill_robust_weight, target=p.distill_target, arch=p.arch, seed=seed)


def imagenet_source(profile: str | Profile = "mini") -> SourceModel:
    """The standard source: the ImageNet weights of the profile's backbone (chapter 1's)."""
    p = get_profile(profile)
    model = load_model(p.arch, weights="imagenet").eval()
    trained = TrainedModel(model, {"weights": "imagenet", "arch": p.arch}, [], float("nan"))
    return SourceModel("imagenet", None, trained, "imagenet", float("nan"), float("nan"), "not measured")


def _train_rung(config: DistillConfig, cache: RunCache, device, progress: bool) -> tuple[dict, dict]:
    key = RunCache.versioned({"kind": "self-distilled source", **config.key()}, LADDER_CODE_VERSION)
    with cache.exclusive("sources", key):
        stored = cache.load_model_state("sources", key)
        if stored is None:
            start = cache.load_checkpoint("sources", key)
            student, history = self_distill(config, device, progress, start=start, on_checkpoint=lambda payload:
                                            cache.save_checkpoint("sources", key, payload))
            stored = {"model": student.state_dict(), "history": history}
            cache.save_model_state("sources", key, stored)
    return key, stored


VALIDATION_RADII = (0.0, 0.25, 0.5, 1.0, 2.0)  # PGD-10 radii (1/255) of a rung's held-out agreement


def _validate(student, teacher, config: DistillConfig, crops: int, device, radii=VALIDATION_RADII) -> dict:
    """Agreement with the teacher on held-out crops (clean and under PGD-10), LL of f there
    (eq. 4 at 0.5/255), and the top-1 ImageNet class of chapter 0's sanity photographs."""
    held = photo_crops(crops, config.image_size, VALIDATION_SEED, split="held_out")
    radii = sorted({*radii, config.eps_255})
    row = {f"agreement@{r:g}": share for r, share in agreement(student, teacher, held, radii, device=device).items()}
    row["ll@0.5"] = local_lipschitz(student.features, held[:128], eps_255=0.5, device=device, progress=False)
    with torch.no_grad():
        for name in SANITY_PHOTOS:
            image = photo(name, config.image_size)
            row[f"{name} kept"] = bool(student.eval()(image).argmax() == teacher.eval()(image).argmax())
    return row


def robust_imagenet_source(eps_255: float, profile: str | Profile = "mini", seed: int = 0, device="auto",
                           cache: RunCache | None = None, progress: bool = True) -> SourceModel:
    """The rung of radius ``eps_255`` (1/255; 0 is the control), trained once and cached.

    Its ``clean_accuracy`` and ``robust_accuracy`` are its top-1 agreement with the ImageNet
    teacher on held-out crops, clean and under PGD-10 at its own radius (at 0.5/255 for the
    control); :func:`ladder_table` gives the full validation.
    """
    cache = cache or RunCache()
    config = distill_config(eps_255, profile, seed)
    key, stored = _train_rung(config, cache, device, progress)
    return _rung_source(config, key, stored, get_profile(profile), cache, device)


def _rung_source(config: DistillConfig, key: dict, stored: dict, profile: Profile, cache: RunCache, device,
                 description: str = "", radii=None) -> SourceModel:
    """A trained rung as a :class:`SourceModel`: its weights file, validation (at ``radii``,
    default :data:`VALIDATION_RADII`) and agreement."""
    model = load_model(config.arch, weights=None).eval()
    model.load_state_dict(stored["model"])
    weights = cache.entry_dir("sources", key) / "weights.pt"
    if not weights.exists():
        atomic_write_bytes(weights, lambda f: torch.save(exportable_state(model), f))
    teacher = load_model(config.arch, weights=config.weights).eval()
    crops = profile.ladder_validation_crops
    memo_key = {**key, "crops": crops} if radii is None else {**key, "crops": crops, "radii": sorted(radii)}
    report = cache.memo("source_validation", memo_key,
                        lambda: _validate(model, teacher, config, crops, device, radii or VALIDATION_RADII),
                        code_version=LADDER_CODE_VERSION)
    own = config.eps_255 if config.eps_255 > 0 else 0.5
    trained = TrainedModel(model, key, stored["history"], report["agreement@0"])
    return SourceModel("imagenet", None if config.eps_255 == 0 else config.spec, trained,
                       weights, report["agreement@0"], report[f"agreement@{own:g}"],
                       f"agreement with the teacher under PGD-10#{own:g}", validation=report, description=description)


def pool_source(description: str, inputs: torch.Tensor, teacher_inputs: torch.Tensor,
                profile: str | Profile = "mini", teacher: str = "imagenet", seed: int = 0, device="auto",
                cache: RunCache | None = None, progress: bool = True, radii=(0.0, 0.5)) -> SourceModel:
    """A source distilled without attack (eps 0) from the ``teacher`` weights on a fixed pool of crops.

    The student sees ``inputs`` and learns the teacher's outputs on the matching
    ``teacher_inputs`` (:func:`nbs_lib.methods.train.self_distill.distill`'s ``pool``) for the
    profile's ``pool_distill_steps``: with ``inputs = teacher_inputs`` this is the control
    rung on a fixed pool, with robustified stand-ins it is the second work's "standard model
    pre-trained on the robustified source" (section 4.3). Cached by the pool's content and
    validated like a rung, under PGD-10 at ``radii`` only (each radius costs ten passes over
    the held-out crops).
    """
    cache = cache or RunCache()
    p = get_profile(profile)
    config = dataclasses.replace(distill_config(0.0, p, seed), steps=p.pool_distill_steps, weights=str(teacher))
    key = RunCache.versioned({"kind": "pool-distilled source", **config.key(),
                              "inputs": content_hash(inputs),
                              "teacher_inputs": content_hash(teacher_inputs)}, LADDER_CODE_VERSION)

    def train() -> dict:
        student, history = distill(load_model(config.arch, weights=config.weights), config, device, progress,
                                   pool=(inputs, teacher_inputs))
        return {"model": student.state_dict(), "history": history}

    stored = cache.artifact("sources", key, train, code_version=LADDER_CODE_VERSION)
    return _rung_source(config, key, stored, p, cache, device, description, radii)


def ladder(profile: str | Profile = "mini", radii=None, seed: int = 0, device="auto",
           cache: RunCache | None = None, progress: bool = True) -> dict[float, SourceModel]:
    """Every rung of ``radii`` (default: the profile's ``ladder_radii``), ``{radius: SourceModel}``."""
    radii = get_profile(profile).ladder_radii if radii is None else radii
    return {float(r): robust_imagenet_source(r, profile, seed, device, cache, progress) for r in radii}


def ladder_table(rungs: dict[float, SourceModel], profile: str | Profile = "mini", device="auto",
                 cache: RunCache | None = None) -> pd.DataFrame:
    """One row per rung, and one for the ImageNet teacher itself: agreement with the teacher on
    held-out crops (clean and under PGD-10 at each radius), LL at 0.5/255, sanity photos kept."""
    cache = cache or RunCache()
    rows = validation_rows({"control (no attack)" if radius == 0 else f"rung {radius:g}/255": source
                            for radius, source in rungs.items()})
    p = get_profile(profile)
    teacher = load_model(p.arch, weights="imagenet").eval()
    config = distill_config(max(rungs, default=0.0), p)
    key = RunCache.versioned({"kind": "imagenet teacher", "arch": p.arch, "image_size": p.image_size,
                              "crops": p.ladder_validation_crops, "radii": sorted(rungs)}, LADDER_CODE_VERSION)
    rows.insert(0, {"source": "ImageNet (teacher)",
                    **cache.memo("source_validation", key,
                                 lambda: _validate(teacher, teacher, config, p.ladder_validation_crops, device),
                                 code_version=LADDER_CODE_VERSION), "steps": 0})
    return pd.DataFrame(rows)


def validation_rows(sources: dict[str, SourceModel]) -> list[dict]:
    """``{name: source}`` of self-distilled sources as rows of their validation (:func:`ladder_table`'s)."""
    return [{"source": name, **source.validation, "steps": len(source.trained.history)}
            for name, source in sources.items()]


def validation_table(sources: list[SourceModel]) -> pd.DataFrame:
    """The validation of self-distilled sources (rungs or pool sources), one row each, by label."""
    return pd.DataFrame(validation_rows({source.label: source for source in sources}))


def radius_of(source: SourceModel) -> float:
    """A ladder rung's radius (1/255) from its cache key; NaN for a source not on the ladder."""
    return float(source.trained.config.get("eps_255", math.nan))
