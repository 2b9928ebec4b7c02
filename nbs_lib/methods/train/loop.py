"""One ``fit`` for every training regime of the book.

Regimes of the paper's section "ImageNet Pre-training Is Non-robust" (*Notations and
Settings*):

* ``standard``: the same architecture trained from scratch on the target; every
  parameter uses ``lr_g``.
* ``partial``: partial fine-tuning. f keeps its pre-trained weights *and* its BatchNorm
  running statistics: f stays in eval mode throughout, so its BN layers normalise with
  the source (ImageNet) statistics and are never updated; only g is trained. Without
  augmentation the embeddings are computed once and g is trained on them (same result,
  far faster).
* ``full``: full fine-tuning. f and g are both trained, f with its own (usually
  smaller) learning rate ``lr_f``, g with ``lr_g``; BatchNorm statistics adapt to the
  target (momentum 0.1, see :func:`nbs_lib.models.registry.load_model`).

Defences of the section "Robust ImageNet Pre-training" (Table 5), each a configuration
of the same ``fit`` (``weights`` is what :func:`train_model` fine-tunes from):

* *AT@stage-1*: regime ``full`` from an adversarially pre-trained source (``weights=``
  its file, :func:`nbs_lib.studies.sources.pretrain_source`).
* *AT@stage-2*: regime ``full`` from a standard source with PGD adversarial training
  during fine-tuning (``adversarial="PGD-k#eps"``, :func:`adversarial_batch`).
* *AT@stage-1&2*: both.
* *KD@stage-2*: feature distillation as a defence at fine-tuning (Shafahi et al. 2020,
  "Adversarially robust transfer learning", their LwF-style feature-distance penalty).
  Our reading: the student is initialised from the *standard* source; a frozen teacher
  f_T, the adversarially pre-trained source's feature extractor (``teacher=`` its
  weights file), supplies target features, and the loss is
  ``CE + distill_weight * mean_batch ||f(x) - f_T(x)||_2^2 / embedding_dim``, so the
  robustness of the source is distilled at stage 2 only.
* *DM@stage-1&2* (Discrepancy Mitigating, eq. 5): regime ``full`` from the
  adversarially pre-trained source with the loss
  ``CE + lipschitz_weight * mean_batch ||f(x) - f(x')||_1 / ||x - x'||_inf``, x' the
  inner max of eq. 4 over the L-inf ball of radius ``lipschitz_eps``/255 found by PGD
  (:func:`nbs_lib.methods.similarity.lipschitz.lipschitz_pgd`, ``lipschitz_steps`` steps, model
  in eval mode). See :func:`lipschitz_batch` for how ``lipschitz_weight`` relates to
  the paper's lambda = 500.

Optimiser Adam with a cosine schedule down to ``min_lr`` per step, as in the authors'
released fine-tuning script. Learning rates are chosen on a validation split held out
from the training set (:func:`train_model`), not on the test set as the paper did.

On CUDA the loop uses bf16 autocast and channels_last; data that fits stays on the
device. The same code path runs on the CPU. ``fit(compile=True)`` adds torch.compile,
and under ``torchrun`` fit trains with DistributedDataParallel
(:mod:`nbs_lib.core.distributed`); neither enters a cache key.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nbs_lib.core import distributed
from nbs_lib.core.device import autocast as _autocast
from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.data.images import LabeledImages
from nbs_lib.methods.batches import augment_batch, check_pixels, device_data, input_batches
from nbs_lib.methods.evaluate import dataset_accuracy
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.head import fit_converged_head
from nbs_lib.methods.train.terms import FeatureTerm, adversarial_batch, feature_terms
from nbs_lib.models.split import SplitClassifier

# ----------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------


def _param_groups(model: SplitClassifier, config: TrainConfig) -> list[dict]:
    if config.regime == "standard":
        return [{"params": list(model.parameters()), "lr": config.lr_g}]
    groups = [{"params": list(model.classifier.parameters()), "lr": config.lr_g}]
    if config.regime == "full":
        groups.insert(0, {"params": list(model.features.parameters()), "lr": config.lr_f})
    return groups


def make_optimizer(model: SplitClassifier, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, min_lr: float):
    """Cosine annealing per step from each group's learning rate down to ``min_lr``."""
    base = [g["lr"] for g in optimizer.param_groups]

    def factor(group_index: int):
        floor = min(min_lr / base[group_index], 1.0)
        return lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(i) for i in range(len(base))])


@torch.no_grad()
def _embed(features: nn.Module, data, labels, device, batch_size: int, amp: bool,
           num_workers: int) -> torch.Tensor:
    """f(x) for every training image, in dataset order (partial fine-tuning without augmentation)."""
    chunks = []
    with frozen_eval(features, device):
        for x, _ in input_batches(data, labels, batch_size, device, num_workers=num_workers):
            with _autocast(device, amp):
                chunks.append(features(x).float())
    return torch.cat(chunks)


def _prepare(model: SplitClassifier, config: TrainConfig, device: torch.device) -> SplitClassifier:
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if config.regime == "partial":
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model


def _set_train_mode(model: SplitClassifier, regime: str) -> None:
    model.train()
    if regime == "partial":
        model.features.eval()  # BatchNorm keeps the source statistics


class _Step(nn.Module):
    """The forward pass of one training step as one module (what DDP and torch.compile wrap).

    ``forward(x, n)`` returns ``(logits, features)``: with ``with_features`` (KD, DM)
    f's features of all of ``x`` and g's logits of the first ``n`` rows (all rows when
    ``n`` is None), else ``(g(f(x)), None)``. With ``head_only`` the input already is
    f's embedding (partial fine-tuning on frozen embeddings) and only g runs.
    """

    def __init__(self, model: SplitClassifier, head_only: bool, with_features: bool):
        super().__init__()
        self.model = model
        self.head_only = head_only
        self.with_features = with_features

    def forward(self, x: torch.Tensor, n: int | None = None):
        if self.head_only:
            return self.model.classifier(x), None
        if not self.with_features:
            return self.model(x), None
        feats = self.model.features(x)
        return self.model.classifier(feats if n is None else feats[:n]), feats


COMPILE_BACKEND = "inductor"  # torch.compile's backend for fit(compile=True)


@functools.lru_cache(maxsize=None)
def _compile_problem(device_type: str, backend) -> str | None:
    """Why torch.compile with ``backend`` fails on ``device_type`` (None when it works).

    Compiles a tiny forward and backward, which fails the way a real model would where
    the backend cannot build its kernels (for example no C compiler for the CPU).
    """
    try:
        fn = torch.compile(lambda t: torch.tanh(2.0 * t).sum(), backend=backend, fullgraph=True)
        t = torch.linspace(-1, 1, 8, device=device_type, requires_grad=True)
        fn(t).backward()
        return None
    except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}"[:300]


def _maybe_compile(module: nn.Module, compile: bool | str, device: torch.device) -> nn.Module:
    """``torch.compile(module)`` when asked for and working here, else ``module`` (with a warning)."""
    if not compile:
        return module
    backend = COMPILE_BACKEND if compile is True else compile
    problem = _compile_problem(device.type, backend)
    if problem is not None:
        warnings.warn(f"torch.compile (backend {backend!r}) does not work on {device.type} here "
                      f"({problem}); fit falls back to eager execution, which gives the same model.",
                      RuntimeWarning, stacklevel=3)
        return module
    return torch.compile(module, backend=backend)


def _ce(logits: torch.Tensor, y: torch.Tensor, share: float | None) -> torch.Tensor:
    """Mean cross-entropy of the batch; under DDP this rank's share of the global batch mean."""
    if share is None:
        return F.cross_entropy(logits.float(), y)
    return F.cross_entropy(logits.float(), y, reduction="sum") * share


@dataclass
class _Loop:
    """What one epoch of :func:`fit` needs besides the data."""

    model: SplitClassifier
    step: nn.Module  # _Step, maybe in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: object
    config: TrainConfig
    device: torch.device
    frozen_embeddings: bool
    terms: list[FeatureTerm]  # loss terms on f's features (KD, DM), added to the cross-entropy
    step_amp: bool
    ddp: bool
    on_step: Callable[[int, nn.Module], None] | None
    global_step: int = 0


def _epoch_generators(loop: _Loop, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    """The epoch's data generator (same on every rank) and the attacks' generator.

    Seeds dropout too. One process: the attacks share the data generator (as always);
    under DDP each rank has its own generator for dropout and the attacks' random starts
    (they run on the rank's slice only), while shuffling and augmentation stay global.
    """
    base = loop.config.seed * 100_003 + epoch
    generator = torch.Generator().manual_seed(base)
    if not loop.ddp:
        torch.manual_seed(base)  # dropout; identical after a resume
        return generator, generator
    rank = distributed.rank()
    torch.manual_seed(base + 1_000_003 * rank)
    return generator, torch.Generator().manual_seed(base * 1_009 + rank + 1)


def _train_step(loop: _Loop, x: torch.Tensor, y: torch.Tensor, data_gen, attack_gen, totals: dict) -> None:
    """One optimizer step on the global batch ``(x, y)`` (this rank's slice under DDP)."""
    config, model = loop.config, loop.model
    if not loop.frozen_embeddings:
        x = augment_batch(check_pixels(x, "training"), config.augment, data_gen)
    share = None
    if loop.ddp:
        share = distributed.world_size() / len(y)
        x, y = distributed.local_slice(x), distributed.local_slice(y)
    if config.adversarial:
        x = adversarial_batch(model, x, y, config.adversarial, attack_gen)
    perturbed = [t.perturbed(model, x, attack_gen) for t in loop.terms if t.needs_perturbed]
    x_pert = perturbed[0] if perturbed else None  # feature_terms allows at most one such term
    with _autocast(loop.device, loop.step_amp):
        if x_pert is None:
            logits, feats = loop.step(x)
            feats_pert = None
        else:
            logits, feats = loop.step(torch.cat([x, x_pert]), len(x))
            feats, feats_pert = feats[:len(x)], feats[len(x):]
        loss = _ce(logits, y, share)
        for term in loop.terms:
            value = term.value(feats, feats_pert, x, x_pert, share)
            loss = loss + term.weight * value
            totals[term.history_key] += _local_sum(value, len(y), share)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loop.optimizer.step()
    loop.scheduler.step()
    loop.global_step += 1
    if loop.on_step is not None:
        loop.on_step(loop.global_step, model)
    totals["loss"] += _local_sum(loss, len(y), share)
    totals["correct"] += (logits.argmax(1) == y).sum()


def _local_sum(term: torch.Tensor, n: int, share: float | None) -> torch.Tensor:
    """A batch-mean term back to the sum over this process's images (for the history)."""
    return term.detach() * n if share is None else term.detach() / share


def _run_epoch(loop: _Loop, data, labels, epoch: int, n_train: int, num_workers: int) -> dict:
    """One pass over the training data; the epoch's history row (without validation)."""
    data_gen, attack_gen = _epoch_generators(loop, epoch)
    _set_train_mode(loop.model, loop.config.regime)
    keys = ("loss", "correct", *(t.history_key for t in loop.terms))
    totals = {k: torch.zeros((), device=loop.device) for k in keys}
    for x, y in input_batches(data, labels, loop.config.batch_size, loop.device, True, data_gen,
                              num_workers):
        _train_step(loop, x, y, data_gen, attack_gen, totals)
    if loop.ddp:
        summed = distributed.all_sum(torch.stack([totals[k].float() for k in totals]))
        totals = dict(zip(totals, summed))
    row = {"epoch": epoch + 1, "train_loss": totals["loss"].item() / n_train,
           "train_acc": 100.0 * totals["correct"].item() / n_train}
    for term in loop.terms:
        row[term.history_key] = totals[term.history_key].item() / n_train
    return row


def fit(model: SplitClassifier, train: LabeledImages, config: TrainConfig,
        val: LabeledImages | None = None, device="auto", amp: bool = True,
        resume: dict | None = None, on_epoch_end: Callable[[dict], None] | None = None,
        progress: bool = True, desc: str = "fit", num_workers: int = 0,
        on_step: Callable[[int, nn.Module], None] | None = None,
        compile: bool | str = False,
        epoch_data: Callable[[int], LabeledImages] | None = None) -> list[dict]:
    """Train ``model`` on ``train`` under ``config``; return the per-epoch history.

    Each history row has ``epoch``, ``train_loss``, ``train_acc`` and (with ``val``)
    ``val_acc``. ``resume`` is a payload given earlier to ``on_epoch_end`` (model,
    optimizer and scheduler states, the history): training continues after its epoch
    and ends with exactly the model an uninterrupted run gives. ``on_step(step, model)``,
    if given, is called after every optimizer step with the global step number (1-based,
    counted across epochs, continuing after a resume), e.g. to snapshot the model
    (:func:`nbs_lib.methods.uap.snapshot_every`).

    With ``config.distill_weight > 0`` (KD@stage-2) rows also have ``distill_loss`` (the
    mean ``||f(x) - f_T(x)||_2^2 / embedding_dim``); with ``config.lipschitz_weight > 0``
    (DM) they have ``lipschitz`` (the mean LL ratio of the training batches, train mode);
    ``train_loss`` is then the whole objective, cross-entropy plus the weighted terms.
    Both terms are computed on the training batch as it enters the model (augmented,
    adversarial when ``config.adversarial`` is set). A DM step runs in float32 (no bf16
    autocast: perturbations of 0.5/255 are near bf16's resolution), and feeds x and x'
    through f as one batch, so both see the same BatchNorm batch statistics.

    ``compile=True`` runs the training step's forward and backward through
    ``torch.compile`` (backend :data:`COMPILE_BACKEND`; a string names another
    backend). Attacks, validation and the KD teacher stay eager. Where the backend
    cannot compile (say, no C compiler) fit warns and trains eagerly. Not part of any
    cache key: it changes speed, not the model (up to float rounding).

    With ``config.fresh_samples``, ``epoch_data(epoch)`` gives the training images of
    every epoch after the first (0-based ``epoch`` >= 1; the first trains on ``train``):
    a generated dataset draws new images, so the model never sees an image twice. With
    ``config.head == "lbfgs"`` (partial fine-tuning to convergence) g is fitted by
    :func:`nbs_lib.methods.train.head.fit_converged_head` instead of the epoch loop.

    When ``torch.distributed`` is initialised with several processes (``torchrun``),
    fit trains data-parallel with DistributedDataParallel: see
    :mod:`nbs_lib.core.distributed` for how the global batches, BatchNorm statistics and
    gradients match a one-process run. ``on_epoch_end`` is then called on rank 0 only.
    """
    device = resolve_device(device)
    if config.head == "lbfgs":
        return fit_converged_head(model, train, config, val, device, num_workers)
    if config.fresh_samples and epoch_data is None:
        raise ValueError("config.fresh_samples needs epoch_data, the training images of each later epoch.")
    model = _prepare(model, config, device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, steps_per_epoch * config.epochs, config.min_lr)
    history: list[dict] = []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = list(resume["history"])

    data = device_data(train, device)
    labels = train.labels.to(device)
    frozen_embeddings = (config.regime == "partial" and config.augment == "none" and not config.adversarial
                         and not config.regularised)
    terms = feature_terms(config)
    for term in terms:
        term.setup(model, device)
    if frozen_embeddings:
        data = _embed(model.features, data, labels, device, 256, amp, num_workers)

    ddp = distributed.is_distributed()
    undo_sync_bn = distributed.sync_batchnorm(model, device) if ddp else None
    try:
        step: nn.Module = _Step(model, head_only=frozen_embeddings, with_features=bool(terms))
        if ddp:
            step = distributed.wrap(step, device)
        loop = _Loop(model, _maybe_compile(step, compile, device), optimizer, scheduler, config, device,
                     frozen_embeddings, terms, amp and not any(t.float32 for t in terms), ddp, on_step,
                     global_step=len(history) * steps_per_epoch)  # correct after a resume
        bar = tqdm(range(len(history), config.epochs), desc=desc, disable=not progress, leave=True)
        for epoch in bar:
            if config.fresh_samples and epoch > 0:
                fresh = epoch_data(epoch)
                data, labels = device_data(fresh, device), fresh.labels.to(device)
            row = _run_epoch(loop, data, labels, epoch, len(labels), num_workers)
            if val is not None and len(val):
                row["val_acc"] = dataset_accuracy(model, val, device, num_workers=num_workers)
            history.append(row)
            bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "epoch"})
            if on_epoch_end is not None and distributed.is_main():
                on_epoch_end({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "history": history})
    finally:
        if undo_sync_bn is not None:
            undo_sync_bn()
    model.eval()
    return history


