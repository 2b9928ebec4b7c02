"""Speed and agreement of nbs_lib's SVCCA and linear CKA against plain float64 NumPy/SciPy.

Setting (issue 4): two related representations of 5,000 data points x 512 neurons
(a shared 64-dimensional signal plus noise, as two layers of two models would be).
Ours (:mod:`nbs_lib.methods.similarity.cca`: SVD reduction to 99% of the variance, then the
canonical correlations as singular values of Q1^T Q2, in float64 with torch) against
the textbook reference (:mod:`nbs_lib.methods.similarity.reference`: the same SVD reduction
in NumPy, then whitening by the inverse square roots of the covariances through
``scipy.linalg.eigh``). Linear CKA is timed the same way against the Gram-matrix
(HSIC) formula on 2,000 points (the reference is O(n^2) memory). Each is the median
of a few runs; the ratio reference/ours above 1 means ours is faster.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbs_lib.methods.similarity import cca_similarity, linear_cka  # noqa: E402
from nbs_lib.methods.similarity.reference import cca_numpy, cka_numpy  # noqa: E402


def related_pair(n: int, d: int, shared: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = z @ rng.normal(size=(shared, d)) + 0.5 * rng.normal(size=(n, d))
    y = np.tanh(z @ rng.normal(size=(shared, d))) + 0.5 * rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.float32)


def _median_time(fn, repeats: int) -> tuple[float, float]:
    value, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def run(quick: bool = False) -> list[dict]:
    n, d, n_cka = (1000, 128, 500) if quick else (5000, 512, 2000)
    repeats = 2 if quick else 3
    x, y = related_pair(n, d)
    rows = []
    for name, ours, ref, size in (
        ("SVCCA (keep 99%)", lambda: cca_similarity(torch.from_numpy(x), torch.from_numpy(y)),
         lambda: cca_numpy(x, y, 0.99), n),
        ("linear CKA", lambda: linear_cka(torch.from_numpy(x[:n_cka]), torch.from_numpy(y[:n_cka])),
         lambda: cka_numpy(x[:n_cka], y[:n_cka]), n_cka),
    ):
        ours()  # warm-up
        t_ours, v_ours = _median_time(ours, repeats)
        t_ref, v_ref = _median_time(ref, repeats)
        rows.append({"measure": name, "shape": f"{size} x {d}", "ours_s": t_ours, "reference_s": t_ref,
                     "ratio": t_ref / t_ours, "ours": v_ours, "reference": v_ref,
                     "abs_diff": abs(v_ours - v_ref)})
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| measure | data | ours (s) | NumPy/SciPy float64 (s) | reference/ours | ours | reference | abs. diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['shape']} | {r['ours_s']:.3f} | {r['reference_s']:.3f} | "
                     f"{r['ratio']:.2f} | {r['ours']:.6f} | {r['reference']:.6f} | {r['abs_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(to_markdown(run(quick="--quick" in sys.argv)))
