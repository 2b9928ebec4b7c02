"""Every source notebook runs end to end at the smoke profile, and the book is fresh."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from nbs_lib.report.notebooks import (
    REQUIRED_PARAMETERS,
    code_cells,
    has_outputs,
    page_problems,
    parameters_cell,
    stale_reason,
    tidy_executed,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.stem for p in SOURCES][:2] == ["00_data_and_models", "01_robustness"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_source_notebook_is_clean_and_parameterised(source):
    assert not has_outputs(source), f"{source} has outputs; notebooks/ holds sources only"
    params = parameters_cell(source)
    for name in REQUIRED_PARAMETERS:
        assert re.search(rf"^{name}\s*=", params, re.M), f"{source} lacks the parameter {name}"


# Chapters whose verdict table is still styled in the notebook: each leaves this set when its
# notebook prints it with plain_table and is re-executed (their attacks must be recomputed first).
STYLED_TABLES = {"06_dm_regularisation"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_tables_are_printed_by_the_library(source):
    """One way to print a table (nbs_lib.report.tables): a notebook that styles its own table
    shows an index column or breaks p-values and intervals across lines (issue 22)."""
    styled = [i for i, cell in enumerate(code_cells(source)) if ".style." in cell]
    if source.stem in STYLED_TABLES:
        assert styled, f"{source.stem} prints its tables with the library now: remove it from STYLED_TABLES"
    else:
        assert not styled, f"{source.stem}: code cells {styled} style a table; use plain_table or a view of nbs_lib.report.tables"


# Chapters whose parameters still use the old names; each leaves this set when it is re-run
# with the shared vocabulary (issue: one vocabulary across chapters).
OLD_VOCABULARY: set[str] = set()
RETIRED_NAMES = ("targets", "dataset")  # "datasets" names the target datasets everywhere


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_parameters_share_one_vocabulary(source):
    params = parameters_cell(source)
    follows = bool(re.search(r"^overrides\s*=", params, re.M)) and not any(
        re.search(rf"^{name}\s*=", params, re.M) for name in RETIRED_NAMES)
    if source.stem in OLD_VOCABULARY:
        assert not follows, f"{source.stem} now follows the vocabulary: remove it from OLD_VOCABULARY"
    else:
        assert follows, f"{source.stem} needs an `overrides` parameter and `datasets` for its targets"


# Pages whose published run predates the hygiene rules (progress bars, absolute paths);
# each leaves this set when its chapter is re-executed (issue: clean pages).
DIRTY_PAGES: set[str] = set()


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_page_shows_no_build_debris(source):
    problems = page_problems(ROOT / "book" / source.name)
    if source.stem in DIRTY_PAGES:
        assert problems, f"{source.stem}'s page is clean now: remove it from DIRTY_PAGES"
    else:
        assert not problems, "\n".join(problems)


def test_page_problems_finds_each_kind_of_debris(tmp_path):
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("profile = 'mini'", metadata={"tags": ["injected-parameters"]})
    noisy = nbformat.v4.new_code_cell("run()")
    noisy.outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n"),
                     nbformat.v4.new_output("stream", name="stdout", text="wrote /work/main/book/results/x.csv\n"),
                     nbformat.v4.new_output("stream", name="stdout",
                                            text="train: 40%|####  | 4/10 [00:02<00:03, 2.00it/s]"),
                     nbformat.v4.new_output("execute_result", data={"text/plain": "{'alignment': 0.1}"})]
    nb.cells = [injected, noisy]
    path = tmp_path / "page.ipynb"
    nbformat.write(nb, path)
    found = "\n".join(page_problems(path))
    for kind in ("injected parameters", "stderr", "an absolute path", "progress-bar text", "a raw dict"):
        assert kind in found, kind
    tidy_executed(path)
    assert not any("injected" in p for p in page_problems(path))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_book_comes_from_current_source(source):
    reason = stale_reason(source, ROOT / "book" / source.name)
    assert reason is None, reason


def test_staleness_check_catches_an_edit(tmp_path):
    source = SOURCES[0]
    nb = nbformat.read(source, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    first_code.source += "\nprint('edited')"
    edited = tmp_path / source.name
    nbformat.write(nb, edited)
    assert stale_reason(edited, ROOT / "book" / source.name) is not None
    assert stale_reason(source, tmp_path / "missing.ipynb") is not None


def test_staleness_check_catches_another_profile(tmp_path):
    """A copy executed at smoke (papermill's record, or the injected cell) is not the book."""
    source = SOURCES[0]
    executed = ROOT / "book" / source.name
    nb = nbformat.read(executed, as_version=4)
    nb.metadata["papermill"]["parameters"]["profile"] = "smoke"
    nbformat.write(nb, tmp_path / source.name)
    reason = stale_reason(source, tmp_path / source.name)
    assert reason is not None and "'smoke'" in reason
    del nb.metadata["papermill"]["parameters"]["profile"]
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    injected.source = 'profile = "paper"\n'
    nbformat.write(nb, tmp_path / source.name)
    assert "'paper'" in stale_reason(source, tmp_path / source.name)


@pytest.mark.notebooks
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_profile(source, tmp_path, monkeypatch):
    monkeypatch.setenv("NBS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / source.name
    papermill.execute_notebook(str(source), str(out), cwd=str(ROOT), progress_bar=False,
                               parameters={"profile": "smoke", "results_dir": str(tmp_path / "results")})
    assert code_cells(out) == code_cells(source)
    csvs = list((tmp_path / "results").glob("*.csv"))
    assert csvs, "the notebook wrote no results CSV"
    for csv in csvs:
        assert "smoke" in csv.read_text()
