"""What building the book costs: ``book/results/run_times.csv``, written by ``make book``.

One row per chapter: its wall-clock seconds, how many run-cache entries existed when it
started (0: an empty cache, so every model and attack of the chapter was computed), the
profile, the build it belongs to (the build's start time), the lane that ran it and when
it started in that build (``make book LANES=2`` runs two chapters at a time,
:mod:`nbs_lib.report.book_build`), and the machine (cores, CPU model, torch version). A chapter run again replaces its row, so a table mixing builds
shows it in the ``build`` column. While a build runs, :func:`progress_line` says which
chapter is next and estimates what is left from the times recorded before.

"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from nbs_lib.core.runs import LOCKS, default_cache_dir
from nbs_lib.report.results import DEFAULT_RESULTS_DIR

RUN_TIMES = DEFAULT_RESULTS_DIR / "run_times.csv"
COLUMNS = ["chapter", "seconds", "cache_entries_before", "cache_empty", "profile", "build", "lane", "started_s",
           "cores", "cpu", "torch"]


def cache_entries(root: str | Path | None = None) -> int:
    """Entries of the run cache (``<cache>/<kind>/<key>/`` folders): 0 for an empty cache."""
    root = Path(root) if root is not None else default_cache_dir()
    if not root.is_dir():
        return 0
    return sum(1 for kind in root.iterdir() if kind.is_dir() and kind.name != LOCKS
               for entry in kind.iterdir() if entry.is_dir())


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Cores, CPU model and torch version of this machine."""
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__}


def _stamp(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read(path: str | Path | None = None) -> pd.DataFrame:
    path = Path(path or RUN_TIMES)
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)


def record(chapter: str, seconds: float, entries_before: int, build_start: float, profile: str,
           path: str | Path | None = None, lane: int = 1, started: float = 0.0) -> pd.DataFrame:
    """Write ``chapter``'s row (replacing an older one) and return the table.

    ``lane`` ran it, ``started`` seconds after the build began."""
    row = {"chapter": chapter, "seconds": round(float(seconds)), "cache_entries_before": int(entries_before),
           "cache_empty": int(entries_before) == 0, "profile": profile, "build": _stamp(build_start),
           "lane": int(lane), "started_s": round(float(started)), **machine()}
    table = read(path)
    table = pd.concat([table[table["chapter"] != chapter].reindex(columns=COLUMNS), pd.DataFrame([row])],
                      ignore_index=True)
    table = table.sort_values("chapter", kind="stable")[COLUMNS]
    path = Path(path or RUN_TIMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return table


def estimate_left(chapters, path: str | Path | None = None) -> tuple[float, list[str]]:
    """Seconds the recorded runs of ``chapters`` took, and the chapters never recorded."""
    known = read(path).set_index("chapter")["seconds"]
    unknown = [chapter for chapter in chapters if chapter not in known.index]
    return float(sum(known[chapter] for chapter in chapters if chapter in known.index)), unknown


def progress_line(chapter: str, later: list[str], build_start: float, path: str | Path | None = None,
                  now: float | None = None, lanes: int = 1) -> str:
    """``== chapter (k after it): elapsed, estimate left`` for a running build (of ``lanes`` lanes:
    the recorded times of what is left, divided among them)."""
    elapsed = (now or time.time()) - build_start
    left, unknown = estimate_left([chapter, *later], path)
    left /= lanes
    if not unknown:
        estimate = f"about {left / 60:.0f} min left by the last recorded times"
    elif len(unknown) == len(later) + 1:
        estimate = "no chapter left has a recorded time, so no estimate"
    else:
        estimate = (f"at least {left / 60:.0f} min left by the last recorded times "
                    f"(none yet for {', '.join(unknown)})")
    return f"== {chapter} ({len(later)} after it): {elapsed / 60:.0f} min into the build, {estimate}"
