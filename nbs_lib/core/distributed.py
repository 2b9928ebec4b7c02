"""Data-parallel training across processes (PyTorch DistributedDataParallel).

:func:`nbs_lib.methods.train.loop.fit` switches to data parallelism by itself when
``torch.distributed`` is initialised with more than one process (``torchrun``):

* every rank draws the *same* global batches in the same order as a one-process run
  (same shuffling generator, augmentation applied to the whole global batch) and keeps
  its own contiguous slice (:func:`local_slice`);
* each rank's loss is its share of the global batch mean, so DDP's gradient average
  is exactly the gradient of the global mean, also when the last batch does not split
  evenly;
* BatchNorm layers in training mode use the statistics of the *global* batch:
  ``torch.nn.SyncBatchNorm`` on CUDA, and on the CPU (where ``SyncBatchNorm`` refuses
  to run) :class:`GlobalBatchNorm`, the same computation with differentiable
  all-reduces over gloo (:func:`sync_batchnorm`);
* only rank 0 writes checkpoints and the run cache; validation runs on every rank with
  identical weights, so every rank returns the same history.

What differs from a one-process run: dropout masks (each rank draws its own) and the
random starts of adversarial training and DM's inner maximisation (a per-rank
generator, so the attack runs on the rank's slice only). These regimes match a
one-process run in distribution, not bit for bit; everything else matches to float
rounding (``tests/test_ddp.py``).

Command line (one process per GPU, or CPU processes over gloo)::

    torchrun --nproc_per_node=2 -m nbs_lib.methods.train.launch --dataset mnist --regime full --profile mini

trains (or loads from the run cache) the model :func:`nbs_lib.methods.train.recipes.train_model`
gives for those arguments and prints a JSON summary from rank 0.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without distributed training)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without distributed training)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def local_slice(t: torch.Tensor, ranks: int | None = None, index: int | None = None) -> torch.Tensor:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    return torch.tensor_split(t, ranks)[index]


def broadcast_from_main(load: Callable[[], Any]) -> Any:
    """``load()`` run on rank 0 only, its result sent to every rank (just ``load()`` alone).

    Used for cache look-ups, so that all ranks take the same branch (train or load)
    even when they do not share a file system.
    """
    if not is_distributed():
        return load()
    box = [load() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks (``t`` itself without distributed training)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


class _AllSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over ranks is summed back."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch.

    The CPU counterpart of ``torch.nn.SyncBatchNorm``: in training mode under
    distributed training the per-channel mean and (biased) variance are all-reduced
    over the ranks (two passes: the mean, then the squared deviations, as a one-process
    BatchNorm computes them), with gradients flowing back through the reduction. Eval
    mode, and one process, are plain BatchNorm. Running statistics are updated with the
    global mean and the unbiased global variance, identically on every rank.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() / max(x.shape[1], 1))])
        total = _AllSum.apply(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = _AllSum.apply((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean, var, count) -> None:
        """Exponential (or cumulative, with ``momentum=None``) average, unbiased variance."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1).clamp_min(1))
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _rebuild(bn: nn.modules.batchnorm._BatchNorm, cls: type) -> nn.Module:
    """A ``cls`` BatchNorm sharing ``bn``'s parameters and buffers (so optimisers still hold them)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def _swap(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> None:
    """Replace, in place, every sub-module for which ``replace`` returns a module."""
    for name, child in module.named_children():
        new = replace(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _swap(child, replace)


def sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Make ``model``'s BatchNorm layers use global-batch statistics; return the undo.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere. The new
    layers share the old ones' parameters and buffers; calling the returned function
    puts the original classes back (same tensors), so the trained model is an ordinary
    model again.
    """
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    originals: dict[int, type] = {}

    def to_sync(child):
        if isinstance(child, _BATCHNORMS):
            new = _rebuild(child, cls)
            originals[id(new)] = type(child)
            return new
        return None

    def back(child):
        return _rebuild(child, originals[id(child)]) if id(child) in originals else None

    _swap(model, to_sync)
    return lambda: _swap(model, back)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the ranks)."""
    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def init_from_env() -> torch.device:
    """Join the process group torchrun describes; return this rank's device.

    NCCL with one GPU per local rank when CUDA is available, else gloo on the CPU.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda") if cuda else torch.device("cpu")

