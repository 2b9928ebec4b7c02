"""Where each chapter writes its headline numbers (``book/results/*.csv``).

The executed book is the ``mini`` run. Only ``make book`` writes the published
CSVs: it sets ``NBS_PUBLISH=1``. A notebook run any other way (in JupyterLab, by
papermill by hand, the tests' smoke runs) writes to :data:`SCRATCH_RESULTS_DIR`
unless its ``results_dir`` parameter names a folder, so exploring a chapter never
overwrites the published numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO_ROOT / "book" / "results"
SCRATCH_RESULTS_DIR = REPO_ROOT / "scratch" / "results"  # git-ignored
PUBLISH_VARIABLE = "NBS_PUBLISH"  # set to 1 by `make book`


def results_path(name: str, results_dir: str | os.PathLike | None = None) -> Path:
    """The CSV ``name`` in ``results_dir``, by default the published one (for reading)."""
    folder = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
    return folder / f"{name}.csv"


def output_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """Where a chapter writes: ``results_dir``, else the published folder under ``make book``, else scratch."""
    if results_dir:
        return Path(results_dir)
    return DEFAULT_RESULTS_DIR if os.environ.get(PUBLISH_VARIABLE) == "1" else SCRATCH_RESULTS_DIR


def write_results(frame: pd.DataFrame, name: str, profile: str,
                  results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``frame`` with a ``profile`` column to ``<output_dir(results_dir)>/<name>.csv`` atomically."""
    path = output_dir(results_dir) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(profile=profile)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False, float_format="%.4g")
    os.replace(tmp, path)
    return path
