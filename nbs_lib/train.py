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
  target (momentum 0.1, see :func:`nbs_lib.models.load_model`).

Defences of the section "Robust ImageNet Pre-training" (Table 5), each a configuration
of the same ``fit`` (``weights`` is what :func:`train_model` fine-tunes from):

* *AT@stage-1*: regime ``full`` from an adversarially pre-trained source (``weights=``
  its file, :func:`nbs_lib.pretrain.pretrain_source`).
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
  (:func:`nbs_lib.similarity.lipschitz.lipschitz_pgd`, ``lipschitz_steps`` steps, model
  in eval mode). See :func:`lipschitz_batch` for how ``lipschitz_weight`` relates to
  the paper's lambda = 500.

Optimiser Adam with a cosine schedule down to ``min_lr`` per step, as in the authors'
released fine-tuning script. Learning rates are chosen on a validation split held out
from the training set (:func:`train_model`), not on the test set as the paper did.

On CUDA the loop uses bf16 autocast and channels_last; data that fits stays on the
device. The same code path runs on the CPU. ``fit(compile=True)`` adds torch.compile,
and under ``torchrun`` fit trains with DistributedDataParallel
(:mod:`nbs_lib.distributed`); neither enters a cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .attacks import attack_mode, parse_attack, pgd
from .data import LabeledImages, load_dataset, train_val_split
from .models import SplitClassifier, load_model
from .profiles import Profile, autocast as _autocast, get_profile, resolve_device
from .runs import RunCache
from .similarity.lipschitz import lipschitz_pgd, lipschitz_ratio

REGIMES = ("standard", "partial", "full")
AUGMENTATIONS = ("none", "crop", "crop_flip")
TRAIN_CODE_VERSION = 1  # bump when a change to the training code must invalidate the cache


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    regime: str
    epochs: int
    batch_size: int
    lr_f: float
    lr_g: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    min_lr: float = 1e-6
    augment: str = "none"
    seed: int = 0
    adversarial: str | None = None  # PGD adversarial training (Madry et al. 2018), e.g. "PGD-7#8"
    distill_weight: float = 0.0  # KD@stage-2: weight of the feature distance to ``teacher``
    teacher: str | None = None  # KD@stage-2: weights file of the teacher's f (the robust source)
    lipschitz_weight: float = 0.0  # DM (eq. 5): lambda on the LL term; 0 switches DM off
    lipschitz_eps: float = 0.5  # DM: radius of the LL ball in the paper's units (/255)
    lipschitz_steps: int = 10  # DM: PGD steps of the LL inner max

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"Unknown regime {self.regime!r}; use one of {REGIMES}.")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {self.augment!r}; use one of {AUGMENTATIONS}.")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError("optimizer must be 'adam' or 'sgd'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.adversarial is not None:
            spec = parse_attack(self.adversarial)
            if spec.name != "PGD":
                raise ValueError(f"adversarial training needs a PGD spec such as 'PGD-7#8'; got {spec}")
        for name in ("distill_weight", "lipschitz_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 switches it off); got {value!r}")
        if self.teacher is not None:
            object.__setattr__(self, "teacher", str(self.teacher))
            if self.distill_weight == 0:
                raise ValueError("teacher is only used by feature distillation: set distill_weight > 0, "
                                 "or leave teacher=None.")
            if self.teacher != "imagenet" and not Path(self.teacher).is_file():
                raise ValueError(f"teacher={self.teacher!r} is not an existing weights file; pass the file "
                                 "of the adversarially pre-trained source (SourceModel.weights).")
        elif self.distill_weight > 0:
            raise ValueError("distill_weight > 0 needs a teacher: pass teacher=<weights file of the "
                             "adversarially pre-trained source> (SourceModel.weights).")
        if not isinstance(self.lipschitz_eps, (int, float)) or not 0 < self.lipschitz_eps <= 255:
            raise ValueError(f"lipschitz_eps is in the paper's units of 1/255 and must be in (0, 255] "
                             f"(0.5 means 0.5/255); got {self.lipschitz_eps!r}")
        if isinstance(self.lipschitz_steps, bool) or int(self.lipschitz_steps) != self.lipschitz_steps \
                or self.lipschitz_steps < 1:
            raise ValueError(f"lipschitz_steps must be a positive integer; got {self.lipschitz_steps!r}")
        if self.regime == "partial" and (self.distill_weight > 0 or self.lipschitz_weight > 0):
            raise ValueError("feature distillation and DM regularise f, which partial fine-tuning freezes: "
                             "use regime='full' (or 'standard').")

    @property
    def regularised(self) -> bool:
        """Whether the loss has a term on f's features (KD or DM) besides the cross-entropy."""
        return self.distill_weight > 0 or self.lipschitz_weight > 0


# Fields added to TrainConfig after models were cached: left out of a run's cache key
# while they hold their default, so adding them did not invalidate the trained models.
_LATER_FIELDS = {"adversarial": None, "distill_weight": 0.0, "teacher": None,
                 "lipschitz_weight": 0.0, "lipschitz_eps": 0.5, "lipschitz_steps": 10}


def config_key(config: TrainConfig) -> dict:
    """``config`` as the dict that enters a run-cache key (see :data:`_LATER_FIELDS`)."""
    return {k: v for k, v in dataclasses.asdict(config).items()
            if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time adversarial examples (Madry et al. 2018): PGD from a random start.

    The inner maximisation of adversarial training: ``k`` steps of size
    ``2.5 * eps / k`` (Madry et al.'s rule, so the iterate can cross the ball) from a
    uniform random point in the eps-ball, the model in eval mode with frozen weights
    (BatchNorm statistics are not updated by the attack's forward passes).
    """
    s = parse_attack(spec)
    with attack_mode(model):
        return pgd(model, x, y, s.eps, s.steps, step_size=2.5 * s.eps / s.steps, norm=s.norm,
                   random_start=True, generator=generator)


def lipschitz_batch(model: SplitClassifier, x: torch.Tensor, config: TrainConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The inner max of DM (eq. 5): x' in the ball of radius ``lipschitz_eps``/255 around x.

    PGD on the LL ratio ``||f(x) - f(x')||_1 / ||x - x'||_inf`` of eq. 4
    (:func:`nbs_lib.similarity.lipschitz.lipschitz_pgd`: ``lipschitz_steps`` signed steps
    of ``1.25 * eps / steps`` from ``x + 0.001 * U(-1, 1)``, as in the authors' DM code),
    f in eval mode with frozen weights like :func:`adversarial_batch`, float32. The
    outer term, with gradient to the weights, is then
    ``lipschitz_weight * mean ||f(x) - f(x')||_1 / ||x - x'||_inf`` in train mode.

    Scale of ``lipschitz_weight`` (lambda): the paper sets lambda = 500 for the authors'
    own normalisation, a TRADES-like term on the feature distance itself (beta 500 in
    their code). Our term is eq. 4's ratio, which divides that distance by
    ``||x - x'||_inf``, about eps (0.5/255 = 0.002 on the [0, 1] scale): it is ~1/eps
    times the feature distance, so a lambda comparable to theirs is ~500 * eps
    (~1 at eps = 0.5/255). ``||.||_1`` sums over all ``embedding_dim`` entries (512 for
    ResNet-18); if their distance was a mean over the embedding rather than a sum,
    divide by a further ``embedding_dim``.
    """
    with attack_mode(model):
        x_adv, _ = lipschitz_pgd(model.features, x, config.lipschitz_eps / 255.0, config.lipschitz_steps,
                                 generator=generator, amp=False)
    return x_adv


def load_teacher(model: SplitClassifier, config: TrainConfig, device: torch.device) -> nn.Module:
    """KD@stage-2's frozen teacher: f of ``config.teacher`` (same architecture), eval mode, on ``device``."""
    teacher = load_model(model.arch, weights=config.teacher, num_classes=model.num_classes, seed=None)
    if teacher.embedding_dim != model.embedding_dim:
        raise ValueError(f"the teacher's embedding has {teacher.embedding_dim} entries, the student's "
                         f"{model.embedding_dim}: distil from a source of the same architecture.")
    features = teacher.features.to(device).eval()
    if device.type == "cuda":
        features.to(memory_format=torch.channels_last)
    for p in features.parameters():
        p.requires_grad_(False)
    return features


# ----------------------------------------------------------------------------------
# batches and augmentation
# ----------------------------------------------------------------------------------


def iterate_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    shuffle: bool = False, generator: torch.Generator | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of tensors already on their device (no DataLoader, no copies)."""
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(labels.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield images[start:start + batch_size], labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield images[idx], labels[idx]


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the side (``crop``) and horizontal flips (``crop_flip``)."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, [pad] * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip.to(out.device)] = out[flip.to(out.device)].flip(-1)
    return out


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
def predict_logits(model: nn.Module, images: torch.Tensor, device="auto", batch_size: int = 256,
                   amp: bool = True) -> torch.Tensor:
    """Logits of ``model`` in eval mode for all images (returned on the CPU, float32)."""
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        with _autocast(device, amp):
            outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def _loader(ds, batch_size: int, shuffle: bool, generator, num_workers: int, device):
    """A DataLoader visiting ``ds`` in the same order as :func:`iterate_batches`."""
    from torch.utils.data import DataLoader

    order = torch.randperm(len(ds), generator=generator).tolist() if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def input_batches(data, labels: torch.Tensor | None, batch_size: int, device, shuffle: bool = False,
                  generator: torch.Generator | None = None, num_workers: int = 0):
    """Batches ``(x, y)`` on ``device`` from a tensor already there, or from a lazy dataset.

    In-memory datasets stay resident on the device (no DataLoader, no copies); datasets
    too large for memory (``images is None``, the paper-scale sets) go through a
    DataLoader with ``num_workers`` worker processes.
    """
    if isinstance(data, torch.Tensor):
        yield from iterate_batches(data, labels, batch_size, shuffle, generator)
        return
    for x, y in _loader(data, batch_size, shuffle, generator, num_workers, device):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y.to(device, non_blocking=True)


def device_data(ds: LabeledImages, device: torch.device):
    """The images on the device when the dataset is held in memory, else the dataset itself."""
    if ds.images is None:
        return ds
    images = ds.images.to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def dataset_accuracy(model: nn.Module, ds: LabeledImages, device="auto", batch_size: int = 256,
                     num_workers: int = 0, amp: bool = True) -> float:
    """Clean accuracy in percent of ``model`` (eval mode) on an in-memory or lazy dataset."""
    if len(ds) == 0:
        return float("nan")
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    data = device_data(ds, device)
    for x, y in input_batches(data, ds.labels.to(device), batch_size, device, num_workers=num_workers):
        with _autocast(device, amp):
            correct += (model(x).argmax(1) == y).sum()
    model.train(was_training)
    return 100.0 * correct.item() / len(ds)


@torch.no_grad()
def _embed(features: nn.Module, data, labels, device, batch_size: int, amp: bool,
           num_workers: int) -> torch.Tensor:
    """f(x) for every training image, in dataset order (partial fine-tuning without augmentation)."""
    features.eval()
    chunks = []
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


def _feature_mse(feats: torch.Tensor, target: torch.Tensor, share: float | None) -> torch.Tensor:
    """KD's mean ``||f - f_T||^2 / embedding_dim`` (a share of it under DDP, like :func:`_ce`)."""
    if share is None:
        return F.mse_loss(feats.float(), target)
    return F.mse_loss(feats.float(), target, reduction="sum") / math.prod(feats.shape[1:]) * share


def _batch_mean(values: torch.Tensor, share: float | None) -> torch.Tensor:
    """Mean of per-image values; under DDP their sum times ``world / global batch size``."""
    return values.mean() if share is None else values.sum() * share


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
    teacher: nn.Module | None
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
        x = augment_batch(x, config.augment, data_gen)
    share = None
    if loop.ddp:
        share = distributed.world_size() / len(y)
        x, y = distributed.local_slice(x), distributed.local_slice(y)
    if config.adversarial:
        x = adversarial_batch(model, x, y, config.adversarial, attack_gen)
    x_lip = lipschitz_batch(model, x, config, attack_gen) if config.lipschitz_weight > 0 else None
    with _autocast(loop.device, loop.step_amp):
        if x_lip is None:
            logits, feats = loop.step(x)
        else:
            logits, feats = loop.step(torch.cat([x, x_lip]), len(x))
            feats, feats_lip = feats[:len(x)], feats[len(x):]
        loss = _ce(logits, y, share)
        if loop.teacher is not None:
            with torch.no_grad():
                target = loop.teacher(x).float()
            kd = _feature_mse(feats, target, share)
            loss = loss + config.distill_weight * kd
            totals["kd"] += _local_sum(kd, len(y), share)
        if x_lip is not None:
            ll = _batch_mean(lipschitz_ratio(feats, feats_lip, x, x_lip), share)
            loss = loss + config.lipschitz_weight * ll
            totals["ll"] += _local_sum(ll, len(y), share)
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
    totals = {k: torch.zeros((), device=loop.device) for k in ("loss", "correct", "kd", "ll")}
    for x, y in input_batches(data, labels, loop.config.batch_size, loop.device, True, data_gen,
                              num_workers):
        _train_step(loop, x, y, data_gen, attack_gen, totals)
    if loop.ddp:
        summed = distributed.all_sum(torch.stack([totals[k].float() for k in totals]))
        totals = dict(zip(totals, summed))
    row = {"epoch": epoch + 1, "train_loss": totals["loss"].item() / n_train,
           "train_acc": 100.0 * totals["correct"].item() / n_train}
    if loop.teacher is not None:
        row["distill_loss"] = totals["kd"].item() / n_train
    if loop.config.lipschitz_weight > 0:
        row["lipschitz"] = totals["ll"].item() / n_train
    return row


def fit(model: SplitClassifier, train: LabeledImages, config: TrainConfig,
        val: LabeledImages | None = None, device="auto", amp: bool = True,
        resume: dict | None = None, on_epoch_end: Callable[[dict], None] | None = None,
        progress: bool = True, desc: str = "fit", num_workers: int = 0,
        on_step: Callable[[int, nn.Module], None] | None = None,
        compile: bool | str = False) -> list[dict]:
    """Train ``model`` on ``train`` under ``config``; return the per-epoch history.

    Each history row has ``epoch``, ``train_loss``, ``train_acc`` and (with ``val``)
    ``val_acc``. ``resume`` is a payload given earlier to ``on_epoch_end`` (model,
    optimizer and scheduler states, the history): training continues after its epoch
    and ends with exactly the model an uninterrupted run gives. ``on_step(step, model)``,
    if given, is called after every optimizer step with the global step number (1-based,
    counted across epochs, continuing after a resume), e.g. to snapshot the model
    (:func:`nbs_lib.uap.snapshot_every`).

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

    When ``torch.distributed`` is initialised with several processes (``torchrun``),
    fit trains data-parallel with DistributedDataParallel: see
    :mod:`nbs_lib.distributed` for how the global batches, BatchNorm statistics and
    gradients match a one-process run. ``on_epoch_end`` is then called on rank 0 only.
    """
    device = resolve_device(device)
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
    teacher = load_teacher(model, config, device) if config.distill_weight > 0 else None
    if frozen_embeddings:
        data = _embed(model.features, data, labels, device, 256, amp, num_workers)

    ddp = distributed.is_distributed()
    undo_sync_bn = distributed.sync_batchnorm(model, device) if ddp else None
    try:
        step: nn.Module = _Step(model, head_only=frozen_embeddings, with_features=config.regularised)
        if ddp:
            step = distributed.wrap(step, device)
        loop = _Loop(model, _maybe_compile(step, compile, device), optimizer, scheduler, config, device,
                     frozen_embeddings, teacher, amp and not config.lipschitz_weight > 0, ddp, on_step,
                     global_step=len(history) * steps_per_epoch)  # correct after a resume
        bar = tqdm(range(len(history), config.epochs), desc=desc, disable=not progress, leave=True)
        for epoch in bar:
            row = _run_epoch(loop, data, labels, epoch, len(train), num_workers)
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


# ----------------------------------------------------------------------------------
# cached training with the learning-rate search of the chapters
# ----------------------------------------------------------------------------------


@dataclass
class TrainedModel:
    """A trained target model with the facts a chapter reports about it."""

    model: SplitClassifier
    config: dict
    history: list[dict]
    val_acc: float
    lr_search: list[dict] = field(default_factory=list)  # one row per learning-rate candidate


def weights_id(weights: str | Path | None) -> str | None:
    """What identifies pre-trained weights in a cache key (a file's content hash)."""
    if weights is None or weights == "imagenet":
        return weights
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return f"file:{Path(weights).name}:{digest}"


def _candidate_lrs(regime: str, profile: Profile, lr_f, lr_g) -> list[tuple[float, float]]:
    grid_f = (lr_f,) if lr_f is not None else profile.lr_grid_f
    grid_g = (lr_g,) if lr_g is not None else profile.lr_grid_g
    if regime == "standard":
        return [(0.0, g) for g in ((lr_g,) if lr_g is not None else profile.lr_grid_standard)]
    if regime == "full":
        return [(f, g) for f, g in itertools.product(grid_f, grid_g)]
    return [(0.0, g) for g in grid_g]


# Datasets whose classes change under a horizontal flip (letters, digits): never flipped.
NO_FLIP_DATASETS = ("alphabet", "mnist", "fashion_mnist", "digits")


def augmentation_for(dataset: str, requested: str) -> str:
    """The profile's augmentation, without flips for glyph datasets (a flipped 'J' is no 'J')."""
    if requested == "crop_flip" and dataset in NO_FLIP_DATASETS:
        return "crop"
    return requested


def epochs_for(regime: str, profile: Profile, n_train: int) -> int:
    """The profile's epochs; fine-tuning on a small set gets enough epochs for ``min_steps`` steps.

    With a fixed number of epochs a set of 800 images gets 13 steps an epoch and stops
    far from its plateau while a set of 2,600 converges; a floor on the number of
    optimizer steps gives every fine-tuning a comparable budget.
    """
    if regime == "standard":
        return profile.epochs_standard
    steps_per_epoch = math.ceil(n_train / profile.batch_size)
    return max(profile.epochs, math.ceil(profile.min_steps / steps_per_epoch))


def train_model(dataset: str, regime: str, profile: str | Profile = "mini", arch: str | None = None,
                weights: str | Path | None = "imagenet", seed: int = 0, device="auto",
                lr_f: float | None = None, lr_g: float | None = None, epochs: int | None = None,
                augment: str | None = None, cache: RunCache | None = None,
                progress: bool = True, adversarial: str | None = None, distill_weight: float = 0.0,
                teacher: str | Path | None = None, lipschitz_weight: float = 0.0,
                lipschitz_eps: float = 0.5, lipschitz_steps: int = 10,
                compile: bool | str = False) -> TrainedModel:
    """Train (or load from the run cache) the paper's ``regime`` model of ``dataset``.

    ``adversarial`` (a PGD spec such as ``"PGD-7#8"``) trains on adversarial examples
    (:func:`adversarial_batch`) instead of clean ones. ``distill_weight``/``teacher``
    (KD@stage-2) and ``lipschitz_weight``/``lipschitz_eps``/``lipschitz_steps`` (DM,
    eq. 5) are the :class:`TrainConfig` fields of the same names (see the module
    docstring for Table 5's regimes). ``compile`` is :func:`fit`'s (speed only; not in
    the cache key).

    The standard model ignores ``weights`` (random initialisation). When ``lr_f``/``lr_g``
    are not given, every candidate of the profile's grid is trained on the training
    split minus a held-out validation split and the candidate with the best final
    validation accuracy is returned (each candidate is cached on its own).
    """
    profile = get_profile(profile)
    arch = arch or profile.arch
    cache = cache or RunCache()
    train_full = load_dataset(dataset, "train", profile, seed=seed)
    train_set, val_set = train_val_split(train_full, profile.val_fraction, seed)
    search = []
    best: TrainedModel | None = None
    for cand_f, cand_g in _candidate_lrs(regime, profile, lr_f, lr_g):
        config = TrainConfig(regime=regime, epochs=epochs or epochs_for(regime, profile, len(train_set)),
                             batch_size=profile.batch_size, lr_f=cand_f, lr_g=cand_g,
                             augment=augmentation_for(dataset, augment or profile.augment), seed=seed,
                             adversarial=adversarial, distill_weight=distill_weight,
                             teacher=None if teacher is None else str(teacher),
                             lipschitz_weight=lipschitz_weight, lipschitz_eps=lipschitz_eps,
                             lipschitz_steps=lipschitz_steps)
        trained = _train_cached(dataset, arch, None if regime == "standard" else weights,
                                len(train_full.classes), train_set, val_set, config, profile,
                                device, cache, progress, compile)
        search.append({"lr_f": cand_f, "lr_g": cand_g, "val_acc": trained.val_acc})
        if best is None or trained.val_acc > best.val_acc:
            best = trained
    best.lr_search = search
    return best


def model_config(dataset: str, arch: str, weights, num_classes: int, config: TrainConfig,
                 profile: Profile, train_set: LabeledImages, val_set: LabeledImages) -> dict:
    """Everything that determines a trained model: the run cache's key.

    The data enter by their content fingerprints, so a change in how a dataset is
    generated or split retrains rather than reusing a model of the old data. A KD
    teacher enters by its content hash (:func:`weights_id`), not by its path, so
    ``key["train"]["teacher"]`` is that id.
    """
    train = config_key(config)
    if config.teacher is not None:
        train["teacher"] = weights_id(config.teacher)
    return {
        "kind": "target_model", "code_version": TRAIN_CODE_VERSION, "dataset": dataset,
        "arch": arch, "weights": weights_id(weights), "num_classes": num_classes,
        "train": train, "image_size": profile.image_size,
        "train_per_class": profile.train_per_class, "val_fraction": profile.val_fraction,
        "train_data": train_set.fingerprint(), "val_data": val_set.fingerprint(),
        "bn_momentum": 0.1,
    }


def _train_cached(dataset, arch, weights, num_classes, train_set, val_set, config: TrainConfig,
                  profile: Profile, device, cache: RunCache, progress: bool,
                  compile: bool | str = False) -> TrainedModel:
    """The cached model of ``key``, else trained (resuming from a checkpoint) and cached.

    Under distributed training rank 0 reads the cache and sends what it found to every
    rank (all ranks then train, or all load), and only rank 0 writes checkpoints and
    the finished model.
    """
    key = model_config(dataset, arch, weights, num_classes, config, profile, train_set, val_set)
    model = load_model(arch, weights=weights, num_classes=num_classes, seed=config.seed)
    stored = distributed.broadcast_from_main(lambda: cache.load_model_state("models", key))
    if stored is not None:
        model.load_state_dict(stored["model"])
        return TrainedModel(model.eval(), key, stored["history"], stored["val_acc"])
    resume = distributed.broadcast_from_main(lambda: cache.load_checkpoint("models", key))
    desc = f"{dataset}/{config.regime} lr_f={config.lr_f:g} lr_g={config.lr_g:g}"
    main = distributed.is_main()
    history = fit(model, train_set, config, val=val_set, device=device, resume=resume,
                  on_epoch_end=(lambda payload: cache.save_checkpoint("models", key, payload)) if main else None,
                  progress=progress and main, desc=desc, num_workers=profile.num_workers, compile=compile)
    val_acc = history[-1].get("val_acc", float("nan"))
    model.cpu()
    if main:
        cache.save_model_state("models", key, {"model": model.state_dict(), "history": history,
                                               "val_acc": val_acc})
    return TrainedModel(model.eval(), key, history, val_acc)
