"""Where each chapter writes its headline numbers (``book/results/*.csv``).

The executed book is the ``mini`` run; a smoke run in the tests writes to a
temporary folder instead (the notebooks' ``results_dir`` parameter), so the
published CSVs are only ever replaced by a real run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO_ROOT / "book" / "results"


def results_path(name: str, results_dir: str | os.PathLike | None = None) -> Path:
    folder = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
    return folder / f"{name}.csv"


def write_results(frame: pd.DataFrame, name: str, profile: str,
                  results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``frame`` with a ``profile`` column to ``<results_dir>/<name>.csv`` atomically."""
    path = results_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(profile=profile)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False, float_format="%.4g")
    os.replace(tmp, path)
    return path
