"""Speed and agreement of nbs_lib's PGD/FGSM against torchattacks.

Usage::

    python benchmarks/bench_attacks.py [--quick] [--json rows.json] [--threads N]

Setting (the paper's Table 1-2 attacks at CPU size): torchvision ResNet-18
(num_classes=10) behind a Normalize layer, trained for a few seconds on scikit-learn
digits upsampled to 32x32 RGB, eval mode; one batch of 64 test images; eps 0.5/255
and 2/255. For each eps it times

* ``nbs_lib.methods.attacks.pgd`` (10 steps, step 1.25*eps/10, no random start) against
  ``torchattacks.PGD(eps, alpha, steps=10, random_start=False)``,
* ``nbs_lib.methods.attacks.fgsm`` against ``torchattacks.FGSM(eps)``,
* the floor: the same number of forward+backward passes w.r.t. the input alone,

as the median of several runs after a warm-up (ours and theirs interleaved), and
reports the ratio theirs/ours (> 1: ours is faster; also from the fastest run, which
is steadier on a shared machine), the accuracy on each
attack's adversarial examples and the largest difference between the two
libraries' adversarial examples (both are deterministic, so they should agree).

``run(quick)`` returns the rows as dicts for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbs_lib.core.device import resolve_device  # noqa: E402
from nbs_lib.methods.attacks import fgsm, parse_attack, pgd  # noqa: E402


class Normalize(nn.Module):
    """ImageNet normalisation as the model's first layer (inputs in [0, 1])."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _digits_32(seed: int = 0):
    """scikit-learn digits as 3x32x32 images in [0, 1], shuffled."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


def build_model(epochs: int, device: torch.device, seed: int = 0):
    """ResNet-18 (torchvision stem) quickly trained on digits; returns (model, test x, test y)."""
    import torchvision

    torch.manual_seed(seed)
    x, y = _digits_32(seed)
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(Normalize(), torchvision.models.resnet18(num_classes=10)).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xtr[b].to(device)), ytr[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), xte.to(device), yte.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def _floor(model, x, y, passes: int):
    """``passes`` forward+backward passes w.r.t. the input only: the cost no attack avoids."""
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(passes):
            xi = x.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(xi), y, reduction="sum")
            torch.autograd.grad(loss, xi)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)


def run(quick: bool = False, device: str = "auto", batch: int = 64) -> list[dict]:
    """Time both libraries; return one dict per (attack, eps) and print a markdown table."""
    import torchattacks

    dev = resolve_device(device)
    repeats = 3 if quick else 7
    model, xte, yte = build_model(epochs=1 if quick else 3, device=dev)
    x, y = xte[:batch], yte[:batch]
    clean = _acc(model, x, y)

    rows = []
    for eps_255 in (0.5, 2.0):
        for name in ("PGD-10", "FGSM"):
            s = parse_attack(f"{name}#{eps_255}")
            if s.name == "PGD":
                ours = lambda: pgd(model, x, y, s.eps, s.steps, step_size=s.step_size)  # noqa: E731
                ta = torchattacks.PGD(model, eps=s.eps, alpha=s.step_size, steps=s.steps, random_start=False)
            else:
                ours = lambda: fgsm(model, x, y, s.eps)  # noqa: E731
                ta = torchattacks.FGSM(model, eps=s.eps)
            theirs = lambda: ta(x, y)  # noqa: E731
            floor = lambda: _floor(model, x, y, s.steps)  # noqa: E731

            for f in (ours, theirs, floor):  # warm-up
                f()
            t_ours, t_theirs, t_floor = [], [], []
            n_runs = repeats if s.name == "PGD" else 5 * repeats  # FGSM is cheap: more runs
            for _ in range(n_runs):
                dt, x_ours = _time(ours, dev)
                t_ours.append(dt)
                dt, x_theirs = _time(theirs, dev)
                t_theirs.append(dt)
                t_floor.append(_time(floor, dev)[0])
            med_o, med_t, med_f = (statistics.median(t) for t in (t_ours, t_theirs, t_floor))
            rows.append({
                "attack": str(s),
                "batch": len(x),
                "ours_s": med_o,
                "torchattacks_s": med_t,
                "floor_s": med_f,
                "ratio_theirs_over_ours": med_t / med_o,
                "ours_min_s": min(t_ours),
                "torchattacks_min_s": min(t_theirs),
                "ratio_min": min(t_theirs) / min(t_ours),
                "ours_over_floor": med_o / med_f,
                "clean_acc": clean,
                "ours_acc": _acc(model, x_ours, y),
                "torchattacks_acc": _acc(model, x_theirs, y),
                "max_abs_diff": (x_ours - x_theirs).abs().max().item(),
                "device": str(dev),
                "threads": torch.get_num_threads(),
                "repeats": n_runs,
            })
    print(to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| attack | batch | ours (s) | torchattacks (s) | theirs/ours | theirs/ours (min) "
            "| floor (s) | ours/floor "
            "| clean acc | acc ours | acc torchattacks | max abs diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['batch']} | {r['ours_s']:.3f} | {r['torchattacks_s']:.3f} "
            f"| {r['ratio_theirs_over_ours']:.2f} | {r['ratio_min']:.2f} | {r['floor_s']:.3f} | {r['ours_over_floor']:.2f} "
            f"| {r['clean_acc']:.1f} | {r['ours_acc']:.1f} | {r['torchattacks_acc']:.1f} "
            f"| {r['max_abs_diff']:.1e} |"
        )
    dev = rows[0]["device"] if rows else "?"
    threads = rows[0]["threads"] if rows else "?"
    lines.append("")
    lines.append(f"Device {dev}, {threads} threads, median of {rows[0]['repeats'] if rows else '?'} runs (FGSM: 5x more) "
                 "after a warm-up (times are medians; 'min' uses the fastest run of each); floor = the same "
                 "number of forward+backward passes w.r.t. the input.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(quick=args.quick, device=args.device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
