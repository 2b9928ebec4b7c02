"""Speed and agreement of nbs_lib's blocked MMD against a brute-force float64 reference.

Usage::

    python benchmarks/bench_mmd.py [--quick] [--json rows.json] [--threads N]

Setting (the paper's Figure 6 measure at the size of a source sample of embeddings):
two samples of 2,000 float32 embeddings of width 1,280 (EfficientNet-B0's feature
width), ``x ~ N(0, I)`` and ``y ~ N(0.05, I)`` (a small mean shift), Gaussian kernel
with the median-heuristic bandwidth sigma of the pooled sample (computed once, not
timed, and given to both implementations). Rows:

* unbiased MMD^2 with the single width sigma,
* unbiased MMD^2 with the mean of three kernels (sigma/2, sigma, 2 sigma),
* (full run only) ours alone on 10,000 x 10,000 embeddings, to show the blocked
  computation at the size the module is built for; the reference would need three
  800 MB distance matrices and minutes, so it is not run there.

The reference is plain and obviously correct: ``scipy.spatial.distance.cdist(...,
"sqeuclidean")`` in float64 gives the three full squared-distance matrices, then
``exp``, and the sums of Gretton et al. (2012) eq. (3) with the diagonals removed.
Ours (:func:`nbs_lib.methods.similarity.discrepancy.mmd`) uses the norm expansion with BLAS matrix
products in float64 block by block. Times are medians of several runs after a
warm-up (the reference runs once, without a warm-up: it is slow; so does ours on the
10,000-point row); the ratio reference/ours > 1
means ours is faster. Ours runs on one torch thread by default, as the reference
(cdist) is single-threaded.

``run(quick)`` returns the rows as dicts for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbs_lib.methods.similarity.discrepancy import median_bandwidth, mmd  # noqa: E402

WIDTH = 1280
SHIFT = 0.05


def reference_mmd(x: np.ndarray, y: np.ndarray, bandwidths: list[float]) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. (3)) from full float64 scipy cdist matrices."""
    from scipy.spatial.distance import cdist

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)

    def kernel(a, b):
        d2 = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-d2 / (2.0 * s * s)) for s in bandwidths) / len(bandwidths)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    s_xx = k_xx.sum() - np.trace(k_xx)
    s_yy = k_yy.sum() - np.trace(k_yy)
    return float(s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * k_xy.sum() / (m * n))


def embeddings(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 Gaussian samples of width 1,280, the second shifted by 0.05 per feature."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, WIDTH), dtype=np.float32)
    y = rng.standard_normal((size, WIDTH), dtype=np.float32) + np.float32(SHIFT)
    return x, y


def _timed(fn, repeats: int, warm_up: bool = True) -> tuple[float, float, float]:
    """(median seconds, fastest seconds, value) over ``repeats`` runs, after a warm-up run."""
    if warm_up:
        fn()
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), value


def _row(kernel: str, size: int, bandwidths: list[float], repeats: int,
         with_reference: bool, x: np.ndarray, y: np.ndarray) -> dict:
    widths = bandwidths if len(bandwidths) > 1 else bandwidths[0]
    ours_s, ours_min, ours_value = _timed(lambda: mmd(x, y, widths), repeats, warm_up=repeats > 1)
    row = {
        "kernel": kernel,
        "size": size,
        "width": WIDTH,
        "ours_s": ours_s,
        "ours_min_s": ours_min,
        "ours_mmd": ours_value,
        "reference_s": None,
        "ratio_reference_over_ours": None,
        "reference_mmd": None,
        "abs_diff": None,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "reference_repeats": 0,
    }
    if with_reference:
        ref_repeats = max(1, repeats // 3)
        ref_s, _, ref_value = _timed(lambda: reference_mmd(x, y, bandwidths), ref_repeats,
                                     warm_up=False)
        row.update(reference_s=ref_s, ratio_reference_over_ours=ref_s / ours_s,
                   reference_mmd=ref_value, abs_diff=abs(ours_value - ref_value),
                   reference_repeats=ref_repeats)
    return row


def run(quick: bool = False, threads: int | None = 1) -> list[dict]:
    """Time ours against the reference; return one dict per setting and print a markdown table.

    ``threads``: torch CPU threads while timing (default 1, like the single-threaded
    reference; ``None`` keeps torch's setting). The previous setting is restored.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows = _run(quick)
    finally:
        torch.set_num_threads(previous)
    print(to_markdown(rows))
    return rows


def _run(quick: bool) -> list[dict]:
    size = 300 if quick else 2000
    repeats = 3
    x, y = embeddings(size)
    sigma = median_bandwidth(x, y)
    rows = [
        _row("single (median sigma)", size, [sigma], repeats, True, x, y),
        _row("mean of sigma/2, sigma, 2 sigma", size, [sigma / 2, sigma, 2 * sigma], repeats, True, x, y),
    ]
    if not quick:
        big_x, big_y = embeddings(10_000, seed=1)
        rows.append(_row("single (median sigma)", 10_000, [median_bandwidth(big_x, big_y)], 1,
                         False, big_x, big_y))
    return rows


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def to_markdown(rows: list[dict]) -> str:
    head = ("| kernel | samples | width | ours (s) | reference (s) | reference/ours "
            "| MMD² ours | MMD² reference | abs diff | runs ours/ref |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['size']:,} x {r['size']:,} | {r['width']} "
            f"| {r['ours_s']:.3f} | {_fmt(r['reference_s'], '.3f')} "
            f"| {_fmt(r['ratio_reference_over_ours'], '.1f')} | {r['ours_mmd']:.6e} "
            f"| {_fmt(r['reference_mmd'], '.6e')} | {_fmt(r['abs_diff'], '.1e')} "
            f"| {r['repeats']}/{r['reference_repeats']} |"
        )
    threads = rows[0]["threads"] if rows else "?"
    lines.append("")
    lines.append(
        f"Unbiased MMD² with a Gaussian kernel between float32 Gaussian embeddings, the second "
        f"shifted by {SHIFT} per feature. Ours: `nbs_lib.methods.similarity.discrepancy.mmd` (float64, blocked "
        f"BLAS products; CPU, {threads} torch thread(s)), median of the runs after a warm-up (no warm-up for a single run). "
        f"Reference: full float64 squared-distance matrices from `scipy.spatial.distance.cdist` "
        f"(single-threaded), then `exp` and the sums of Gretton et al. (2012) eq. (3), one run. "
        "'—': reference not run (too large).")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 x 300 samples instead of 2,000")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for ours (default 1, like the reference; 0: torch's choice)")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, threads=args.threads or None)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
