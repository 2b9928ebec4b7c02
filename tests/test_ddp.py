"""fit under DistributedDataParallel (2 CPU processes, gloo) equals a one-process fit.

Two runs, each compared parameter by parameter with the same fit in one process:

* ``partial``: g trained with Adam for 8 steps on crop-augmented global batches of 7
  (split 4/3 over the ranks; the last batch of 4 splits 2/2), f frozen in eval mode.
  Checks the global batch order, the augmentation of the global batch, the loss
  shares on uneven slices and DDP's gradient average over two epochs.
* ``full``: every layer trained, BatchNorm in training mode with the statistics of
  the global batch (:class:`nbs_lib.core.distributed.GlobalBatchNorm` over gloo), two SGD
  steps on batches of 15 (8/7) and 10 (5/5).

The same launch then runs the command line (``nbs_lib.methods.train.launch.main``, what
``torchrun -m nbs_lib.methods.train.launch`` calls) on digits at the smoke profile, to check
that only rank 0 writes the run cache and that a one-process ``train_model`` then
finds the model there.

Why the full run is short and uses SGD: a randomly initialised ResNet-18 on 32x32
images with BatchNorm over batches of 15 amplifies float rounding enormously.
Perturbing its weights by one part in 10^7 in a single process moves the weights
after two SGD steps of lr 0.01 by 3e-4, and the reduction order of a two-rank run is
such a perturbation. Adam is worse: its first step moves every weight by about
``lr * sign(gradient)``, so a weight whose gradient is at rounding level can move
either way. With lr 1e-3 and two steps the weights move by 1e-2 and the ranks agree
with the single process to ~1e-7.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nbs_lib.core import distributed
from nbs_lib.core.runs import RunCache
from nbs_lib.methods.train import launch as train_launch
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import train_model
from nbs_lib.models.registry import load_model

pytestmark = pytest.mark.slow  # two processes over gloo: about 20 s

WORLD = 2
TOLERANCE = 1e-5
RUNS = {
    "partial": (TrainConfig("partial", epochs=2, batch_size=7, lr_f=0.0, lr_g=1e-2, augment="crop"), 25),
    "full": (TrainConfig("full", epochs=1, batch_size=15, lr_f=1e-3, lr_g=1e-3, augment="crop",
                         optimizer="sgd"), 25),
}


class Blobs:
    """Three classes of 32x32 images of different brightness."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        base = self.labels.float().view(-1, 1, 1, 1) * 0.3 + 0.2
        self.images = (base + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.labels)


def _train(name: str) -> dict:
    """Run ``name`` of :data:`RUNS` in this process (or rank): final state and history."""
    config, n = RUNS[name]
    model = load_model("resnet18", weights=None, num_classes=3, seed=0)
    history = fit(model, Blobs(n), config, val=Blobs(6, seed=1), device="cpu", progress=False)
    return {"state": model.state_dict(), "history": history}


CLI = ["--dataset", "digits", "--regime", "standard", "--profile", "smoke", "--arch", "resnet18"]


def _worker(rank: int, init: str, tmp: str) -> None:
    """One rank: join the gloo group, do every run and the command line, save the results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        assert distributed.is_distributed() and distributed.rank() == rank
        results = {name: _train(name) for name in RUNS}
        results["cli"] = train_launch.main(CLI + ["--cache", f"{tmp}/cache"])  # ends the group
        torch.save(results, f"{tmp}/result.{rank}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """The folder of one two-process launch (its run cache) and each rank's results."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(f"file://{tmp / 'rendezvous'}", str(tmp)), nprocs=WORLD)
    return tmp, [torch.load(tmp / f"result.{r}", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(launch):
    return launch[1]


@pytest.mark.parametrize("name", list(RUNS))
def test_ddp_matches_one_process(name, ranks, one_thread):
    single = _train(name)
    initial = load_model("resnet18", weights=None, num_classes=3, seed=0).state_dict()
    params = {k for k, _ in load_model("resnet18", weights=None, num_classes=3).named_parameters()}
    moved = max((single["state"][k] - initial[k]).abs().max().item() for k in params)
    assert moved > 100 * TOLERANCE  # training moved the weights far beyond the tolerance
    for k, value in single["state"].items():
        diff = (ranks[0][name]["state"][k].double() - value.double()).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: {k} differs from the one-process run by {diff:.2e}"
    for row, ddp_row in zip(single["history"], ranks[0][name]["history"], strict=True):
        assert ddp_row["val_acc"] == row["val_acc"] and ddp_row["train_acc"] == row["train_acc"]
        assert abs(ddp_row["train_loss"] - row["train_loss"]) < 1e-5


def test_ranks_agree_exactly_and_return_plain_batchnorm(ranks):
    for name in RUNS:
        a, b = (r[name]["state"] for r in ranks)
        assert list(a) == list(load_model("resnet18", weights=None, num_classes=3).state_dict())
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert ranks[0][name]["history"] == ranks[1][name]["history"]


def test_sync_batchnorm_is_undone():
    model = load_model("resnet18", weights=None, num_classes=3)
    classes = [type(m) for m in model.modules()]
    weight = model.features.stem[1].weight  # ResNet's bn1
    undo = distributed.sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model.features.stem[1], distributed.GlobalBatchNorm)
    assert model.features.stem[1].weight is weight  # the optimiser's tensors are kept
    undo()
    assert [type(m) for m in model.modules()] == classes and model.features.stem[1].weight is weight


def test_local_slices_cover_the_batch():
    t = torch.arange(7)
    parts = [distributed.local_slice(t, 2, r) for r in range(2)]
    assert torch.equal(torch.cat(parts), t) and [len(p) for p in parts] == [4, 3]
    assert [len(distributed.local_slice(torch.arange(1), 2, r)) for r in range(2)] == [1, 0]


def test_only_rank_0_writes_the_cache_and_one_process_reuses_it(launch, monkeypatch):
    tmp, results = launch
    entries = list((tmp / "cache" / "models").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.pt").is_file()
    assert not (entries[0] / "checkpoint.pt").exists()
    assert results[0]["cli"] == results[1]["cli"] and results[0]["cli"]["world_size"] == WORLD

    def no_training(*args, **kwargs):
        raise AssertionError("the model of the distributed run should have been found in the cache")

    monkeypatch.setattr("nbs_lib.methods.train.recipes.fit", no_training)
    trained = train_model("digits", "standard", profile="smoke", arch="resnet18", device="cpu",
                          cache=RunCache(tmp / "cache"), progress=False)
    assert trained.history == results[0]["cli"]["history"]
