"""Wall-clock seconds of the whole ``smoke`` run of every source notebook.

Usage::

    python benchmarks/bench_notebooks.py [--quick] [--json rows.json]

Each ``notebooks/*.ipynb`` runs through papermill with ``profile="smoke"`` as CI's
``tests/test_notebooks.py`` runs it: output notebook and results CSVs in a temporary
folder (never ``book/``), working directory the repository, and an empty run cache of
its own (``NBS_CACHE``, see :func:`nbs_lib.core.runs.default_cache_dir`), so every
notebook pays for its own training and attacks, kernel start included. A notebook
that fails is reported as failed and the others still run. ``--quick``: only the
first notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks() -> list[Path]:
    """The source notebooks, in chapter order."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def run_smoke(source: Path, tmp: Path) -> dict:
    """Run ``source`` at the smoke profile with a fresh cache under ``tmp``; time it."""
    import papermill

    previous = os.environ.get("NBS_CACHE")
    os.environ["NBS_CACHE"] = str(tmp / "cache")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(tmp / source.name), cwd=str(ROOT), progress_bar=False,
                                   parameters={"profile": "smoke", "results_dir": str(tmp / "results")})
        status = "ok"
    except Exception as err:  # noqa: BLE001 - report and go on with the other notebooks
        status = f"failed ({type(err).__name__})"
    finally:
        if previous is None:
            os.environ.pop("NBS_CACHE", None)
        else:
            os.environ["NBS_CACHE"] = previous
    return {"notebook": source.stem, "seconds": time.perf_counter() - start, "status": status}


def run(quick: bool = False) -> list[dict]:
    """Time every notebook's smoke run (the first only with ``quick``); print the table."""
    rows = []
    for source in notebooks()[:1] if quick else notebooks():
        with tempfile.TemporaryDirectory(prefix=f"smoke-{source.stem}-") as tmp:
            rows.append(run_smoke(source, Path(tmp)))
        print(f"{rows[-1]['notebook']}: {rows[-1]['seconds']:.0f} s ({rows[-1]['status']})", flush=True)
    print(to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| notebook | smoke run (s) | status |", "|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['seconds']:.0f} | {r['status']} |" for r in rows]
    lines.append(f"| **all** | **{sum(r['seconds'] for r in rows):.0f}** | |")
    lines += ["", "papermill with `-p profile smoke`, an empty run cache per notebook (NBS_CACHE in a "
              "temporary folder), outputs in a temporary folder; kernel start included."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the first notebook")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
