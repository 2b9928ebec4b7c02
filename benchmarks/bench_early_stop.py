"""PGD that stops when it has won, against torchattacks' PGD, on a book's fine-tuned model.

Usage::

    python benchmarks/bench_early_stop.py [--quick] [--json rows.json]

Setting: chapter 1's fully fine-tuned EfficientNet-Lite0 on `alphabet` at `mini` (loaded
from the run cache, trained there first if missing), its attack sample (520 test images
at 64 px; 128 with ``--quick``), PGD-10 at 0.5/255 and 2/255 (the paper's step rule, no
random start). For each radius it times, interleaved,

* ``nbs_lib.methods.attacks.pgd(..., stop_when_broken=True)``: an image stops at the first
  iterate that misclassifies it and counts as broken (what the book's evaluation runs),
* ``torchattacks.PGD``: every image takes every step, the last iterate counts,

and compares their verdicts image by image: "same or stronger" is the share of images
that torchattacks breaks and ours breaks too (100% is the goal), "ours only" the images
ours breaks at an earlier iterate that the last iterate gives back. It also times the
minimal-radius ladder of chapter 1 with and without stopping.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbs_lib.core.profiles import get_profile  # noqa: E402
from nbs_lib.methods import minimal_epsilon as min_eps  # noqa: E402
from nbs_lib.methods.attacks import parse_attack, pgd  # noqa: E402
from nbs_lib.methods.batches import iterate_batches  # noqa: E402
from nbs_lib.studies.common import attack_sample, train_three  # noqa: E402

BATCH = 128


def book_model():
    """Chapter 1's fully fine-tuned alphabet model (seed 0, mini) and its attack sample."""
    profile = get_profile("mini")
    model = train_three("alphabet", profile, regimes=("full",), progress=False)["full"].model.eval()
    images, labels, _ = attack_sample("alphabet", profile, 0)
    return model, images, labels


def _broken(model, run, images, labels) -> torch.Tensor:
    out = []
    for x, y in iterate_batches(images, labels, BATCH):
        x_adv = run(x, y)
        with torch.no_grad():
            out.append(model(x_adv).argmax(1) != y)
    return torch.cat(out)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    import torchattacks

    model, images, labels = book_model()
    if quick:
        images, labels = images[:128], labels[:128]
    repeats = 1 if quick else 3
    rows = []
    for eps_255 in (0.5, 2.0):
        s = parse_attack(f"PGD-10#{eps_255}")
        attack = torchattacks.PGD(model, eps=s.eps, alpha=s.step_size, steps=s.steps, random_start=False)
        ours = lambda: _broken(model, lambda x, y: pgd(model, x, y, s.eps, s.steps, stop_when_broken=True),  # noqa: E731
                               images, labels)
        theirs = lambda: _broken(model, attack, images, labels)  # noqa: E731
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            dt, broken_ours = _timed(ours)
            t_ours.append(dt)
            dt, broken_theirs = _timed(theirs)
            t_theirs.append(dt)
        med_o, med_t = statistics.median(t_ours), statistics.median(t_theirs)
        rows.append({"what": str(s), "images": len(labels), "ours_s": med_o, "torchattacks_s": med_t,
                     "ours_over_theirs": med_o / med_t,
                     "robust_ours": 100.0 * float((~broken_ours).float().mean()),
                     "robust_theirs": 100.0 * float((~broken_theirs).float().mean()),
                     "same_or_stronger": 100.0 * float((broken_ours | ~broken_theirs).float().mean()),
                     "ours_only": int((broken_ours & ~broken_theirs).sum())})
    grid = (0.125, 0.25, 0.5, 1.0, 2.0)
    ladder = {stop: _timed(lambda: min_eps.minimal_epsilon(model, images, labels, grid, device=device,
                                                           batch_size=BATCH, progress=False,
                                                           stop_when_broken=stop))
              for stop in (True, False)}
    (t_stop, r_stop), (t_last, r_last) = ladder[True], ladder[False]
    rows.append({"what": f"minimal-radius ladder {grid}", "images": len(labels), "ours_s": t_stop,
                 "torchattacks_s": t_last, "ours_over_theirs": t_stop / t_last,
                 "robust_ours": float("nan"), "robust_theirs": float("nan"),
                 "same_or_stronger": 100.0 * float((r_stop <= r_last).mean()),
                 "ours_only": int((r_stop < r_last).sum())})
    print(to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| attack | images | ours, stop when broken (s) | every step (s) | ours / theirs "
            "| robust ours (%) | robust theirs (%) | same or stronger (%) | broken by ours only |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        robust = (f"{r['robust_ours']:.1f} | {r['robust_theirs']:.1f}" if r["robust_ours"] == r["robust_ours"]
                  else "- | -")
        lines.append(f"| {r['what']} | {r['images']} | {r['ours_s']:.1f} | {r['torchattacks_s']:.1f} "
                     f"| {r['ours_over_theirs']:.2f} | {robust} | {r['same_or_stronger']:.1f} | {r['ours_only']} |")
    lines += ["", "PGD rows: 'every step' is torchattacks.PGD (the last iterate counts); the ladder row compares "
              "our ladder with and without stopping (its 'same or stronger' is the share of images whose "
              "minimal radius is the same or smaller). Model: chapter 1's full fine-tuned alphabet Lite0 (mini)."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
