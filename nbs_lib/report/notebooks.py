"""Checks that the executed book matches its source notebooks.

An executed notebook in ``book/`` must come from the current source notebook in
``notebooks/``: the same code cells in the same order, apart from the cell that
papermill injects with the run's parameters. Otherwise the book would publish
outputs of code that no longer exists. It must also have run at the book's profile
(:data:`BOOK_PROFILE`): a copy executed at ``smoke`` or ``paper`` is not the published book.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

REQUIRED_PARAMETERS = ("profile", "device", "seed")
BOOK_PROFILE = "mini"  # the profile every executed notebook in book/ is run at (`make book`)


def code_cells(path: str | Path) -> list[str]:
    """Sources of the code cells, without papermill's injected-parameters cell."""
    nb = nbformat.read(path, as_version=4)
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]


def executed_profile(path: str | Path) -> str | None:
    """The ``profile`` parameter a notebook ran with: papermill's record, else the source default."""
    nb = nbformat.read(path, as_version=4)
    recorded = nb.metadata.get("papermill", {}).get("parameters", {})
    if "profile" in recorded:
        return str(recorded["profile"])
    for tag in ("injected-parameters", "parameters"):  # papermill's injected values win
        for cell in nb.cells:
            if tag not in cell.metadata.get("tags", []):
                continue
            for line in cell.source.splitlines():
                name, _, value = line.partition("=")
                if name.strip() == "profile":
                    return value.split("#")[0].strip().strip("'\"")
    return None


def stale_reason(source: str | Path, executed: str | Path, profile: str = BOOK_PROFILE) -> str | None:
    """Why ``executed`` is not the book's run of ``source`` at ``profile`` (``None`` when it is)."""
    executed = Path(executed)
    if not executed.exists():
        return f"{executed} is missing: run `make book ONLY={Path(source).stem}`"
    ran_at = executed_profile(executed)
    if ran_at != profile:
        return (f"{executed} was executed at profile {ran_at!r}, the book is run at {profile!r}; "
                f"re-run `make book ONLY={Path(source).stem}`")
    src, out = code_cells(source), code_cells(executed)
    if src == out:
        return None
    for i, (a, b) in enumerate(zip(src, out)):
        if a != b:
            return (f"{executed} is stale: code cell {i + 1} differs from {source}; "
                    f"re-run `make book ONLY={Path(source).stem}`")
    return f"{executed} is stale: {len(out)} code cells, the source has {len(src)}"


def parameters_cell(path: str | Path) -> str:
    """The source of the one cell tagged ``parameters`` (error if not exactly one)."""
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path} has {len(tagged)} cells tagged 'parameters'; it needs exactly one")
    return tagged[0].source


def has_outputs(path: str | Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


# ----------------------------------------------------------------------------------
# page hygiene: what an executed notebook must not show a reader
# ----------------------------------------------------------------------------------

_ABSOLUTE_PATH = re.compile(r"PosixPath\(|(?<![\w.])/(?:work|root|home|tmp|usr|opt|var)/")
_PROGRESS_BAR = re.compile(r"\d+%\|.*\||\d+(?:\.\d+)?\s?(?:it|s)/(?:s|it)\]")
_RAW_DICT = re.compile(r"^\s*\{['\"][^'\"]+['\"]\s*:")
_PAGE_MIME = ("text/plain", "text/html", "text/markdown")


def page_problems(path: str | Path) -> list[str]:
    """What a reader should never see on the rendered page of an executed notebook.

    Output written to stderr (warnings, logging), absolute paths of the machine that
    ran it, leftover progress-bar text, raw dict reprs printed as results, and
    papermill's injected-parameters cell left visible. Each item names the cell.
    """
    nb = nbformat.read(path, as_version=4)
    found = []
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            found.append(f"cell {index}: papermill's injected parameters are shown (run tidy_executed)")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append(f"cell {index}: stderr output {output['text'][:60]!r}")
            for text in _output_texts(output):
                for name, pattern in (("an absolute path", _ABSOLUTE_PATH), ("progress-bar text", _PROGRESS_BAR),
                                      ("a raw dict", _RAW_DICT)):
                    m = pattern.search(text)
                    if m:
                        found.append(f"cell {index}: {name} {text[max(m.start() - 20, 0):m.end() + 20]!r}")
    return found


def _output_texts(output) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    data = output.get("data", {})
    return [data[k] if isinstance(data[k], str) else "".join(data[k]) for k in _PAGE_MIME if k in data]


def tidy_executed(path: str | Path) -> None:
    """Hide papermill's injected-parameters cell on the rendered page (the ``remove-cell`` tag).

    The parameters a page ran with stay in the notebook's papermill metadata and in the
    cell itself for anyone who opens the notebook; ``make book`` runs this after papermill.
    """
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


if __name__ == "__main__":  # python -m nbs_lib.report.notebooks tidy book/NAME.ipynb ...
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "tidy":
        raise SystemExit("usage: python -m nbs_lib.report.notebooks tidy EXECUTED.ipynb ...")
    for executed in sys.argv[2:]:
        tidy_executed(executed)
