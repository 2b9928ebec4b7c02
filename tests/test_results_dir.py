"""Only `make book` writes the published CSVs; every other run writes to scratch."""

import pandas as pd

from nbs_lib.report import results


def test_a_run_outside_make_book_writes_to_scratch(monkeypatch, tmp_path):
    monkeypatch.delenv(results.PUBLISH_VARIABLE, raising=False)
    monkeypatch.setattr(results, "SCRATCH_RESULTS_DIR", tmp_path / "scratch")
    monkeypatch.setattr(results, "DEFAULT_RESULTS_DIR", tmp_path / "published")
    path = results.write_results(pd.DataFrame({"x": [1]}), "01_robustness", "smoke")
    assert path == tmp_path / "scratch" / "01_robustness.csv"
    assert not (tmp_path / "published").exists()


def test_make_book_publishes_and_an_explicit_folder_wins(monkeypatch, tmp_path):
    monkeypatch.setattr(results, "DEFAULT_RESULTS_DIR", tmp_path / "published")
    monkeypatch.setenv(results.PUBLISH_VARIABLE, "1")
    assert results.write_results(pd.DataFrame({"x": [1]}), "a", "mini") == tmp_path / "published" / "a.csv"
    assert results.write_results(pd.DataFrame({"x": [1]}), "a", "mini", tmp_path / "mine") == tmp_path / "mine" / "a.csv"


def test_make_book_sets_the_publish_variable():
    from nbs_lib.report.book_build import lane_environment
    assert lane_environment(1)[results.PUBLISH_VARIABLE] == "1"
    assert "-m nbs_lib.report.book_build" in (results.REPO_ROOT / "Makefile").read_text()
