"""Chapter 3: universal adversarial perturbations as a probe of non-robust features.

Paper section "On Non-robust Features" (Figures 4 and 5). The tools (generator,
success rate, UAP alone, input gradients) are in :mod:`nbs_lib.methods.uap`; this module runs
the chapter's experiments on chapter 1's models through the run cache:

* :func:`letter_uaps` / :func:`uap_table`: Figure 4(a) and the "UAP alone" claim: a
  targeted UAP of the fully fine-tuned and of the standard model for several target
  classes, its success rate on held-out test images, the model's prediction on the
  UAP alone, and how much the UAP looks like the target class
  (:func:`semantic_alignment`).
* :func:`gradient_maps`: Figure 4(b), input gradients towards each target class.
* :func:`success_along_training`: Figure 5(a), each model's final UAP against the same
  model at earlier training steps, by re-running its (deterministic) training with
  an ``on_step`` probe.
* :func:`source_uap` / :func:`source_uap_transfer`: Figure 5(b), a UAP of the
  pre-trained ImageNet model applied to every target's fine-tuned and standard models,
  as DR, beside random sign noise of the same L-inf size as a control.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from nbs_lib.core.profiles import Profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data.generators import natural_photo_sample
from nbs_lib.data.images import train_val_split
from nbs_lib.data.registry import balanced_sample, load_dataset
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import TrainedModel
from nbs_lib.methods.uap import (
    UAPResult,
    accuracy_under_perturbation,
    gradient_image,
    input_gradient,
    perturbation_alone,
    predictions,
    targeted_success_rate,
    uap_cached,
    uap_eps,
    universal_pgd,
)
from nbs_lib.models.registry import load_model
from nbs_lib.studies.common import attack_sample, sample_id

PROBE_CODE_VERSION = 1


def uap_training_images(dataset: str, profile: Profile, seed: int = 0, per_class: int = 20):
    """Training images the UAPs are fitted on (class-balanced); evaluation uses the test sample."""
    images, labels, _ = balanced_sample(dataset, "train", profile, seed, per_class=per_class, salt="uap")
    return images, labels


def class_template(images: torch.Tensor, labels: torch.Tensor, target: int) -> torch.Tensor:
    """What distinguishes class ``target`` in pixels: its mean image minus the mean of all images."""
    return images[labels == target].mean(0) - images.mean(0)


def semantic_alignment(pattern: torch.Tensor, template: torch.Tensor) -> float:
    """Pearson correlation of a perturbation or gradient with a class template, in [-1, 1].

    A proxy for the paper's visual judgement in Figure 4(a): a UAP "with clear semantics"
    of the target letter draws the letter, so it correlates with the letter's template;
    a noise-like UAP does not.
    """
    a = pattern.reshape(-1).double()
    b = template.reshape(-1).double().to(a.device)
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def letter_uaps(models: dict[str, TrainedModel], images: torch.Tensor, targets, eps: float = 10.0,
                steps: int = 150, batch_size: int = 32, ngf: int = 32, seed: int = 0, device="auto",
                cache: RunCache | None = None, progress: bool = True) -> dict[tuple[str, int], UAPResult]:
    """One targeted UAP per model and target class, cached: ``{(model name, target): UAPResult}``."""
    cache = cache or RunCache()
    out = {}
    for name, trained in models.items():
        for target in targets:
            out[(name, int(target))] = uap_cached(
                trained.config, trained.model, images, int(target), eps=eps, steps=steps,
                batch_size=batch_size, ngf=ngf, seed=seed, device=device, progress=progress, cache=cache)
    return out


def uap_table(models: dict[str, TrainedModel], uaps: dict, test_images, test_labels, classes,
              template_images, template_labels, device="auto", reference_steps: int = 100) -> pd.DataFrame:
    """Per model and target: success rate on test images (without and with the UAP, and with
    the direct universal-PGD reference of the same budget fitted on the same images), the
    prediction on the UAP alone with its confidence beside the prediction on the plain grey
    canvas, and the UAP's semantic alignment."""
    rows = []
    for (name, target), uap in uaps.items():
        model = models[name].model
        alone = perturbation_alone(model, uap.delta, classes, target, device=device)
        grey = predictions(model, torch.full((1, *uap.delta.shape[1:]), 0.5), device=device)[0]
        template = class_template(template_images, template_labels, target)
        reference = universal_pgd(model, template_images, target, uap.eps, reference_steps, device=device)
        rows.append({
            "model": name, "target": classes[target],
            "success_no_uap": targeted_success_rate(model, test_images, None, target, test_labels,
                                                    device=device),
            "success": targeted_success_rate(model, test_images, uap.delta, target, test_labels,
                                             device=device),
            "success_reference": targeted_success_rate(model, test_images, reference, target,
                                                       test_labels, device=device),
            "grey_prediction": classes[int(grey)],
            "alone_prediction": alone["pred_name"], "alone_confidence": 100 * alone["confidence"],
            "alone_target_confidence": 100 * alone["target_confidence"],
            "alignment": semantic_alignment(uap.delta[0], template)})
    return pd.DataFrame(rows)


def gradient_maps(models: dict[str, TrainedModel], images: torch.Tensor, labels: torch.Tensor, targets,
                  device="auto", max_images: int = 128) -> dict[tuple[str, int], dict]:
    """Figure 4(b): mean input gradient towards each target over (at most ``max_images``)
    images of other classes.

    ``{(model, target): {"image": display image in [0, 1], "alignment": with the template}}``.
    """
    out = {}
    for name, trained in models.items():
        for target in targets:
            others = images[labels != target][:max_images]
            grad = input_gradient(trained.model, others, int(target), device=device)[0]
            out[(name, int(target))] = {
                "image": gradient_image(grad),
                "alignment": semantic_alignment(grad, class_template(images, labels, int(target)))}
    return out


class SuccessProbe:
    """An ``on_step`` callback of :func:`nbs_lib.methods.train.loop.fit`: the UAP's success every ``every`` steps.

    The model is evaluated in eval mode and every module's mode is restored afterwards;
    nothing random is drawn, so training proceeds exactly as without the probe.
    """

    def __init__(self, images, labels, delta, target: int, every: int, device="auto"):
        self.images, self.labels, self.delta = images, labels, delta
        self.target, self.every, self.device = target, every, device
        self.rows: list[dict] = []

    def record(self, step: int, model) -> None:
        modes = [m.training for m in model.modules()]
        rate = targeted_success_rate(model, self.images, self.delta, self.target, self.labels,
                                     device=self.device)
        for module, mode in zip(model.modules(), modes):
            module.train(mode)
        self.rows.append({"step": step, "success": rate})

    def __call__(self, step: int, model) -> None:
        if step == 1 or step % self.every == 0:
            self.record(step, model)


def success_along_training(dataset: str, trained: TrainedModel, uap: UAPResult, images, labels,
                           profile: Profile, weights="imagenet", every: int = 10, device="auto",
                           cache: RunCache | None = None, progress: bool = True) -> pd.DataFrame:
    """Figure 5(a): ``uap`` (made on the final model) against the model at each training step.

    The model's training (its cached config: regime, epochs, learning rates, seed) is run
    again from its initialisation with a :class:`SuccessProbe`; step 0 is the model before
    any update. Training is deterministic, so the last row is the final model, which
    ``final_matches`` checks against the cached model. Columns ``step, epoch, success``.
    """
    cache = cache or RunCache()
    config = {"kind": "uap_curve", "model": trained.config,
              "uap": uap.config, "images": sample_id(dataset, images, labels), "every": every}

    def compute():
        train_cfg = TrainConfig(**trained.config["train"])
        full = load_dataset(dataset, "train", profile, seed=train_cfg.seed)
        train_set, _ = train_val_split(full, profile.val_fraction, train_cfg.seed)
        model = load_model(trained.config["arch"],
                           weights=None if train_cfg.regime == "standard" else weights,
                           num_classes=trained.config["num_classes"], seed=train_cfg.seed)
        probe = SuccessProbe(images, labels, uap.delta, uap.target, every, device)
        probe.record(0, model)
        fit(model, train_set, train_cfg, device=device, on_step=probe, progress=progress,
            desc=f"{dataset}/{train_cfg.regime} with UAP probe", num_workers=profile.num_workers)
        probe.record(-1, model)  # the final model, for the check below
        steps_per_epoch = -(-len(train_set) // train_cfg.batch_size)
        return {"rows": probe.rows, "steps_per_epoch": steps_per_epoch}

    result = cache.memo("uap_curve", config, compute, code_version=PROBE_CODE_VERSION)
    rows = result["rows"]
    final = rows[-1]["success"]
    curve = pd.DataFrame(rows[:-1])
    curve["epoch"] = curve.step / result["steps_per_epoch"]
    expected = targeted_success_rate(trained.model, images, uap.delta, uap.target, labels, device=device)
    curve.attrs["final_matches"] = abs(final - expected) < 1e-9
    return curve


def source_uap(profile: Profile, arch: str, weights="imagenet", target: int = 0, eps: float = 10.0,
               n_images: int = 256, steps: int = 150, batch_size: int = 32, ngf: int = 32,
               seed: int = 0, device="auto", cache: RunCache | None = None,
               progress: bool = True) -> UAPResult:
    """A targeted UAP of the pre-trained ImageNet model, fitted on the natural-photo source sample."""
    model = load_model(arch, weights=weights, num_classes=1000, seed=seed).eval()
    images = natural_photo_sample(n_images, profile.image_size, seed=seed)
    identity = {"arch": arch, "weights": str(weights), "role": "pretrained"}
    return uap_cached(identity, model, images, target, eps=eps, steps=steps, batch_size=batch_size,
                      ngf=ngf, seed=seed, device=device, progress=progress, cache=cache)


def random_sign_noise(shape, eps: float, seed: int = 0) -> torch.Tensor:
    """A control perturbation: +-eps/255 per pixel at random (the UAP's L-inf size, no structure)."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, tuple(shape), generator=g).float() * 2 - 1
    return signs * uap_eps(eps, "Linf")


def source_uap_transfer(models: dict[tuple[str, str], TrainedModel], uap: UAPResult, profile: Profile,
                        seed: int = 0, device="auto", progress: bool = True) -> pd.DataFrame:
    """Figure 5(b): AOI, AAI and DR of each target's models under the pre-trained model's UAP.

    Rows per dataset and model for the UAP and for random sign noise of the same size.
    """
    noise = random_sign_noise(uap.delta.shape, uap.eps, seed)
    rows = []
    for (dataset, name), trained in tqdm(models.items(), desc="source UAP", disable=not progress):
        images, labels, _ = attack_sample(dataset, profile, seed)
        for perturbation, delta in (("pre-trained UAP", uap.delta), ("random sign noise", noise)):
            r = accuracy_under_perturbation(trained.model, images, labels, delta, device=device)
            rows.append({"dataset": dataset, "model": name, "perturbation": perturbation,
                         "aoi": r.aoi, "aai": r.aai, "dr": r.dr, "n": r.n})
    return pd.DataFrame(rows)


def uap_results(table: pd.DataFrame, curves: dict, transfer: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """All the chapter's numbers in one long table: ``dataset, model, experiment, value``."""
    rows = []
    for r in table.itertuples():
        for field in ("success", "success_no_uap", "alone_target_confidence", "alignment"):
            rows.append({"dataset": dataset, "model": r.model, "experiment": f"{field} [{r.target}]",
                         "value": getattr(r, field)})
    for name, curve in curves.items():
        for c in curve.itertuples():
            rows.append({"dataset": dataset, "model": name, "experiment": f"success at step {c.step}",
                         "value": c.success})
    for r in transfer.itertuples():
        rows.append({"dataset": r.dataset, "model": r.model, "experiment": f"DR under {r.perturbation}",
                     "value": r.dr})
    return pd.DataFrame(rows, columns=["dataset", "model", "experiment", "value"])
