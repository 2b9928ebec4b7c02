"""Partial fine-tuning to convergence: g fitted on f's fixed embeddings by full-batch L-BFGS.

Paper section "ImageNet Pre-training Is Non-robust", *Notations and Settings*: in
partial fine-tuning f keeps its pre-trained weights and only g is trained. Trained by
a few epochs of Adam, a linear head on 1,280 features of a few thousand images stops
well before its optimum (train accuracy 91-98% on features that are linearly
separable), so the partial-versus-full comparison (observation 2) would compare an
unfinished model with a finished one. Here g is fitted to convergence instead:

* the embeddings f(x) of the training split are computed once (f in eval mode);
* for every L2 strength of ``config.head_l2_grid`` the objective
  ``mean CE(g(f(x)), y) + l2 * ||W||_F^2`` (a convex problem, its optimum unique) is
  minimised by full-batch L-BFGS with a strong-Wolfe line search, in rounds of
  :data:`ITERATIONS_PER_ROUND` iterations (``config.epochs`` rounds at most) until the
  objective changes by less than :data:`TOLERANCE` (relative) from one round to the next;
* the strength with the best validation accuracy is kept (ties: the stronger penalty).
  A penalty is needed: on separable features an unpenalised head grows without bound,
  its softmax saturates, and gradient attacks would then see vanishing gradients.

With ``config.target_bn`` f's BatchNorm running statistics are first re-estimated on
the target's training images (:func:`reestimate_batchnorm`; f's weights stay frozen),
the set-up of the authors' released training script, whose f runs in train mode
during partial fine-tuning. Without it f normalises with the source's statistics.

Both variants are deterministic (one pass over the images in their order, a convex
fit from the same start), so they do not depend on the training seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbs_lib.core.device import frozen_eval, resolve_device
from nbs_lib.data.images import LabeledImages
from nbs_lib.methods.batches import device_data, input_batches
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.models.split import SplitClassifier

ITERATIONS_PER_ROUND = 20  # L-BFGS iterations between two history rows
TOLERANCE = 1e-7  # relative change of the objective between two rounds that counts as converged
EMBED_BATCH = 256


@torch.no_grad()
def reestimate_batchnorm(features: nn.Module, train: LabeledImages, device, batch_size: int,
                         num_workers: int = 0) -> int:
    """Replace every BatchNorm layer's running statistics of ``features`` by the target's.

    The statistics are reset and accumulated as an equal-weight average over the
    batches of ``train`` (momentum ``None``), in the images' order and without
    augmentation; the weights are not touched (no gradient is computed). ``features``
    ends in eval mode with each layer's momentum restored. Returns the number of
    BatchNorm layers re-estimated.
    """
    norms = [m for m in features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    device = resolve_device(device)
    features.to(device)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        features.train()
        data = device_data(train, device)
        for x, _ in input_batches(data, train.labels.to(device), batch_size, device, num_workers=num_workers):
            features(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        features.eval()
    return len(norms)


@torch.no_grad()
def embed(features: nn.Module, data: LabeledImages, device, num_workers: int = 0) -> torch.Tensor:
    """f(x) of every image of ``data`` in float32, in order, f in eval mode."""
    device = resolve_device(device)
    chunks = []
    with frozen_eval(features, device):
        for x, _ in input_batches(device_data(data, device), data.labels.to(device), EMBED_BATCH, device,
                                  num_workers=num_workers):
            chunks.append(features(x).float())
    return torch.cat(chunks)


def _linear(classifier: nn.Module) -> nn.Linear:
    linear = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if len(linear) != 1:
        raise ValueError("head='lbfgs' fits a linear head: g must hold exactly one nn.Linear layer.")
    return linear[0]


def fit_linear_head(linear: nn.Linear, embeddings: torch.Tensor, labels: torch.Tensor, l2: float,
                    rounds: int) -> list[dict]:
    """Minimise ``mean CE + l2 * ||W||_F^2`` over ``linear`` by full-batch L-BFGS; one row per round.

    Starts from ``linear``'s current weights and stops after ``rounds`` rounds or when
    the objective has converged (:data:`TOLERANCE`).
    """
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=ITERATIONS_PER_ROUND,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def objective():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(embeddings), labels) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    history, previous = [], None
    for round_ in range(rounds):
        value = float(optimizer.step(objective).detach())
        with torch.no_grad():
            logits = linear(embeddings)
            ce = float(F.cross_entropy(logits, labels))
            acc = 100.0 * float((logits.argmax(1) == labels).float().mean())
        history.append({"epoch": round_ + 1, "train_loss": ce, "train_acc": acc, "objective": value,
                        "head_l2": l2})
        if previous is not None and abs(previous - value) <= TOLERANCE * max(abs(previous), 1e-12):
            break
        previous = value
    return history


def fit_converged_head(model: SplitClassifier, train: LabeledImages, config: TrainConfig,
                       val: LabeledImages | None, device, num_workers: int = 0) -> list[dict]:
    """Partial fine-tuning with ``config.head == "lbfgs"`` (see the module docstring); the history.

    Each history row also has ``head_l2`` (the strength kept) and, with ``val``,
    ``val_acc``; the last row has ``head_l2_search``, the validation accuracy of every
    strength tried.
    """
    model.to(device)
    for p in model.features.parameters():
        p.requires_grad_(False)
    if config.target_bn:
        reestimate_batchnorm(model.features, train, device, config.batch_size, num_workers)
    features = embed(model.features, train, device, num_workers)
    labels = train.labels.to(device)
    val_features = embed(model.features, val, device, num_workers) if val is not None and len(val) else None
    linear = _linear(model.classifier)
    start = {k: v.detach().clone() for k, v in linear.state_dict().items()}
    best = None
    search = {}
    for l2 in sorted(config.head_l2_grid):
        linear.load_state_dict(start)
        with torch.enable_grad():
            history = fit_linear_head(linear, features, labels, l2, config.epochs)
        score = _accuracy(linear, val_features, val.labels.to(device)) if val_features is not None \
            else history[-1]["train_acc"]
        search[l2] = score
        if best is None or score >= best[0]:
            best = (score, history, {k: v.detach().clone() for k, v in linear.state_dict().items()})
    score, history, state = best
    linear.load_state_dict(state)
    if val_features is not None:
        history = [{**row, "val_acc": score} for row in history]
    history[-1]["head_l2_search"] = {f"{k:g}": v for k, v in search.items()}
    model.eval()
    return history


@torch.no_grad()
def _accuracy(linear: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((linear(features).argmax(1) == labels).float().mean())
