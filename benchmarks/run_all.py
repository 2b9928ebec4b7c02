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

from benchmarks import bench_attacks, bench_cca, bench_mmd  # noqa: E402

BENCHMARKS = {
    "Attacks: ours against torchattacks (PGD-10, FGSM)": bench_attacks,
    "SVCCA and linear CKA: ours against float64 NumPy/SciPy": bench_cca,
    "MMD: ours against the SciPy cdist reference": bench_mmd,
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    parts = ["# Benchmarks", "", f"Machine: {machine()}. Written by `make bench` on "
             f"{time.strftime('%Y-%m-%d')}.", ""]
    for title, module in BENCHMARKS.items():
        start = time.time()
        rows = module.run(quick=args.quick)
        parts += [f"## {title}", "", module.to_markdown(rows), "",
                  f"({time.time() - start:.0f} s)", ""]
    parts += ["How to read: `theirs/ours` above 1 means ours is faster; `ours/floor` is our time "
              "over the time of the same number of plain forward+backward passes with respect to the "
              "input (PGD-k's floor is k such passes). A ratio within a few percent of 1 is within "
              "the noise of a shared 2-core machine.", ""]
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(parts))
    print(out.read_text())


if __name__ == "__main__":
    main()
