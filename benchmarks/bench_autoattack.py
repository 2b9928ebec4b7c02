"""AutoAttack through ``nbs_lib.methods.attacks.autoattack`` against torchattacks' own call.

Usage::

    python benchmarks/bench_autoattack.py [--quick] [--json rows.json]

Setting: the ResNet-18 of ``bench_attacks`` (digits at 32x32 RGB, eval mode), the
mini profile's AutoAttack budget (``autoattack_steps`` APGD/APGD-T/FAB iterations,
``autoattack_queries`` Square queries) on half of its ``autoattack_samples`` test
images (26), eps 0.5/255 (the paper's ``AA#0.5``, which this digits model mostly
withstands) and 2/255 (where AutoAttack breaks images, so agreement is tested on
broken ones too), two runs of each side (one call takes 0.5 min on an idle 2-core
CPU, several times longer on a busy one). ``--quick``: the smoke profile's budget and
sample count, one run.

* ours: ``nbs_lib.methods.attacks.autoattack(model, x, y, eps, steps=..., n_queries=...)``;
* theirs: ``torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
  n_classes=10, seed=0)`` called directly, with the same reduced budget set on its
  sub-attacks (``steps`` of APGD, APGD-T and FAB, ``n_queries`` of Square), the only
  change to torchattacks' defaults.

With 10 classes our wrapper's settings equal torchattacks' (``n_classes=10``), so
with the same seed both should return the same images; the wrapper adds the frozen
eval-mode model (:func:`nbs_lib.core.device.frozen_eval`), a forked RNG and the final
clamp. Reported: median time of each (ours and theirs interleaved), theirs/ours,
robust accuracy of each, the share of images where both agree on robust or not and
the largest difference between the two adversarial batches.
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

from benchmarks.bench_attacks import _acc, _sync, build_model  # noqa: E402
from nbs_lib.core.device import resolve_device  # noqa: E402
from nbs_lib.core.profiles import get_profile  # noqa: E402
from nbs_lib.methods.attacks import autoattack  # noqa: E402


def torchattacks_autoattack(model, eps: float, steps: int, queries: int, seed: int = 0):
    """torchattacks' standard AutoAttack with the given iteration and query budget."""
    import torchattacks

    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
    for sub in aa._autoattack.attacks:
        if hasattr(sub, "steps"):
            sub.steps = steps
        if hasattr(sub, "n_queries"):
            sub.n_queries = queries
    return aa


def _timed(fn, device) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _robust(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def run(quick: bool = False, device: str = "auto") -> list[dict]:
    """Time both AutoAttack calls; return one row per eps and print the table."""
    dev = resolve_device(device)
    prof = get_profile("smoke" if quick else "mini")
    steps, queries = prof.autoattack_steps, prof.autoattack_queries
    n = prof.autoattack_samples if quick else prof.autoattack_samples // 2
    repeats = 1 if quick else 2
    model, xte, yte = build_model(epochs=1 if quick else 3, device=dev)
    x, y = xte[:n], yte[:n]
    rows = []
    for eps_255 in (0.5, 2.0):
        eps = eps_255 / 255
        ours = lambda: autoattack(model, x, y, eps, steps=steps, n_queries=queries)  # noqa: E731
        theirs_aa = torchattacks_autoattack(model, eps, steps, queries)
        theirs = lambda: theirs_aa(x, y)  # noqa: E731
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            dt, x_ours = _timed(ours, dev)
            t_ours.append(dt)
            dt, x_theirs = _timed(theirs, dev)
            t_theirs.append(dt)
        r_ours, r_theirs = _robust(model, x_ours, y), _robust(model, x_theirs, y)
        rows.append({
            "attack": f"AA#{eps_255:g}", "batch": len(x), "steps": steps, "queries": queries,
            "ours_s": statistics.median(t_ours), "torchattacks_s": statistics.median(t_theirs),
            "ratio_theirs_over_ours": statistics.median(t_theirs) / statistics.median(t_ours),
            "ratio_min": min(t_theirs) / min(t_ours),
            "clean_acc": _acc(model, x, y), "ours_acc": 100.0 * r_ours.float().mean().item(),
            "torchattacks_acc": 100.0 * r_theirs.float().mean().item(),
            "agreement": 100.0 * (r_ours == r_theirs).float().mean().item(),
            "max_abs_diff": (x_ours - x_theirs).abs().max().item(),
            "repeats": repeats, "device": str(dev),
        })
    print(to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| attack | batch | steps / queries | ours (s) | torchattacks (s) | theirs/ours "
            "| theirs/ours (min) | clean acc "
            "| robust acc ours | robust acc torchattacks | same verdict (%) | max abs diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['batch']} | {r['steps']} / {r['queries']} | {r['ours_s']:.2f} "
            f"| {r['torchattacks_s']:.2f} | {r['ratio_theirs_over_ours']:.2f} | {r['ratio_min']:.2f} "
            f"| {r['clean_acc']:.1f} "
            f"| {r['ours_acc']:.1f} | {r['torchattacks_acc']:.1f} | {r['agreement']:.1f} "
            f"| {r['max_abs_diff']:.1e} |")
    if rows:
        lines += ["", f"Device {rows[0]['device']}, median of {rows[0]['repeats']} run(s) each, ours and "
                  "theirs interleaved. Standard version (APGD-CE, APGD-T, FAB-T, Square), 9 target "
                  "classes, seed 0 on both sides; 'same verdict': images both call robust or both "
                  "call broken. Where ours is faster it is the frozen weights: torchattacks' FAB takes "
                  "its gradients with `.backward()`, which on a model with trainable parameters also "
                  "computes every weight gradient (and accumulates it in `.grad`); our wrapper runs "
                  "the same call inside `frozen_eval`, where the parameters do not require grad "
                  "(APGD and APGD-T use `torch.autograd.grad` on the input and cost the same)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke budget, one run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, device=args.device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
