"""Plain float64 NumPy/SciPy versions of the similarity measures, for tests and benchmarks.

They follow the textbook formulas, not the algorithms of :mod:`.cca`: classical CCA
whitens each side with the inverse square root of its covariance (Hotelling 1936;
Hardoon et al. 2004), and CKA is computed from the n x n Gram matrices through HSIC
(Kornblith et al. 2019, eq. 2). Agreement between the two is a check of both.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _centre(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def svd_reduce_numpy(x: np.ndarray, keep: float) -> np.ndarray:
    """Centred ``x`` on the top singular directions holding ``keep`` of its variance."""
    u, s, _ = np.linalg.svd(_centre(x), full_matrices=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(energy, keep - 1e-12)) + 1
    return u[:, :k] * s[:k]


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = scipy.linalg.eigh(cov)
    return (v / np.sqrt(w)) @ v.T


def cca_numpy(x: np.ndarray, y: np.ndarray, keep: float | None = 0.99) -> float:
    """Mean canonical correlation by whitening: svd(Sxx^-1/2 Sxy Syy^-1/2)."""
    x, y = _centre(x), _centre(y)
    if keep is not None:
        x, y = svd_reduce_numpy(x, keep), svd_reduce_numpy(y, keep)
    n = len(x)
    sxx, syy, sxy = x.T @ x / (n - 1), y.T @ y / (n - 1), x.T @ y / (n - 1)
    rho = np.linalg.svd(_inverse_sqrt(sxx) @ sxy @ _inverse_sqrt(syy), compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def cka_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))
