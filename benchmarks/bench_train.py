"""One training epoch through ``nbs_lib.methods.train.loop.fit`` against a plain PyTorch loop.

Usage::

    python benchmarks/bench_train.py [--quick] [--json rows.json]

Setting: ResNet-18 (``load_model("resnet18", weights=None, num_classes=10)``) on 512
scikit-learn digits at 32x32 RGB (``bench_attacks._digits_32``), regime ``full``
(f at ``lr_f`` 5e-4, g at ``lr_g`` 1e-3), Adam, batch 64, no augmentation, one epoch.

The plain loop is written out by hand and replicates fit's schedule: the same
initial weights (``load_model`` with seed 0), Adam with the two parameter groups, the
same shuffled order (``torch.randperm`` from a generator seeded as fit seeds epoch 0),
cross-entropy on each batch, ``zero_grad``/``backward``/``step``, then the cosine
learning rate of the next step (fit's per-step schedule down to ``min_lr``). Reported:
median epoch time of each (interleaved), fit/plain, and the largest parameter
difference after the epoch (0 means fit computes exactly the plain loop).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attacks import _digits_32  # noqa: E402
from nbs_lib.methods.train.config import TrainConfig  # noqa: E402
from nbs_lib.methods.train.loop import fit  # noqa: E402
from nbs_lib.models.registry import load_model  # noqa: E402

CONFIG = TrainConfig("full", epochs=1, batch_size=64, lr_f=5e-4, lr_g=1e-3)


class Digits:
    """The first ``n`` digits (32x32 RGB) in the shape fit takes (``images``, ``labels``)."""

    def __init__(self, n: int):
        x, y = _digits_32(seed=0)
        self.images, self.labels = x[:n], y[:n]

    def __len__(self):
        return len(self.labels)


def cosine(step: int, total: int, base: float, min_lr: float) -> float:
    """The learning rate after ``step`` of ``total`` steps (cosine from ``base`` to ``min_lr``)."""
    floor = min(min_lr / base, 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def plain_epoch(model, data: Digits, config: TrainConfig = CONFIG) -> None:
    """One epoch of hand-written PyTorch training with fit's optimiser, order and schedule."""
    groups = [{"params": list(model.features.parameters()), "lr": config.lr_f},
              {"params": list(model.classifier.parameters()), "lr": config.lr_g}]
    base = [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups)
    total = math.ceil(len(data) / config.batch_size)
    torch.manual_seed(config.seed * 100_003)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed * 100_003))
    model.train()
    for step, start in enumerate(range(0, len(data), config.batch_size), start=1):
        idx = order[start:start + config.batch_size]
        loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = cosine(step, total, lr, config.min_lr)
    model.eval()


def fit_epoch(model, data: Digits, config: TrainConfig = CONFIG) -> None:
    """The same epoch through nbs_lib's fit."""
    fit(model, data, config, device="cpu", progress=False)


def _fresh():
    return load_model("resnet18", weights=None, num_classes=10, seed=0)


def _time(train, data) -> tuple[float, dict]:
    model = _fresh()
    start = time.perf_counter()
    train(model, data)
    return time.perf_counter() - start, model.state_dict()


def run(quick: bool = False) -> list[dict]:
    """Time both epochs (interleaved); return one row and print the table."""
    n, repeats = (128, 1) if quick else (512, 3)
    data = Digits(n)
    _time(fit_epoch, Digits(64))  # warm-up of both code paths
    _time(plain_epoch, Digits(64))
    t_fit, t_plain = [], []
    for _ in range(repeats):
        dt, state_fit = _time(fit_epoch, data)
        t_fit.append(dt)
        dt, state_plain = _time(plain_epoch, data)
        t_plain.append(dt)
    params = {k for k, _ in _fresh().named_parameters()}
    diff = max((state_fit[k] - state_plain[k]).abs().max().item() for k in params)
    buffers = max((state_fit[k].double() - state_plain[k].double()).abs().max().item()
                  for k in state_fit if k not in params)
    moved = max((state_fit[k] - _fresh().state_dict()[k]).abs().max().item() for k in params)
    row = {"images": n, "batch": CONFIG.batch_size, "steps": math.ceil(n / CONFIG.batch_size),
           "fit_s": statistics.median(t_fit), "plain_s": statistics.median(t_plain),
           "ratio_fit_over_plain": statistics.median(t_fit) / statistics.median(t_plain),
           "ratio_min": min(t_fit) / min(t_plain), "max_param_diff": diff,
           "max_buffer_diff": buffers, "max_param_change": moved, "repeats": repeats,
           "threads": torch.get_num_threads()}
    print(to_markdown([row]))
    return [row]


def to_markdown(rows: list[dict]) -> str:
    head = ("| images | batch | steps | fit (s) | plain loop (s) | fit/plain | fit/plain (min) "
            "| max param diff | max BN buffer diff | largest weight change |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['batch']} | {r['steps']} | {r['fit_s']:.2f} | {r['plain_s']:.2f} "
            f"| {r['ratio_fit_over_plain']:.2f} | {r['ratio_min']:.2f} | {r['max_param_diff']:.1e} "
            f"| {r['max_buffer_diff']:.1e} | {r['max_param_change']:.1e} |")
    if rows:
        lines += ["", f"ResNet-18 (random init), regime full, Adam, one epoch on CPU with "
                  f"{rows[0]['threads']} threads; median of {rows[0]['repeats']} epoch(s) each, fit and "
                  "the plain loop interleaved, after a warm-up. 'fit/plain' below 1 means fit is faster; "
                  "a diff of 0 means the two loops computed the same weights bit for bit."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 images, one run")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
