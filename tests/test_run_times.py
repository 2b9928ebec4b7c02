"""`make book` records what each chapter cost (book/results/run_times.csv) and shows it (issue 23, part 1)."""

import os

import pandas as pd
import pytest

from nbs_lib.report import book_build, run_times
from nbs_lib.report.results import PUBLISH_VARIABLE, REPO_ROOT
from nbs_lib.report.summary import BOOK_CHAPTERS, build_cost


@pytest.fixture()
def times_file(tmp_path, monkeypatch):
    path = tmp_path / "results" / "run_times.csv"
    monkeypatch.setattr(run_times, "RUN_TIMES", path)
    return path


def test_cache_entries_count_kind_and_key_folders(tmp_path):
    assert run_times.cache_entries(tmp_path / "missing") == 0
    for kind, key in [("models", "a"), ("models", "b"), ("robustness", "c")]:
        (tmp_path / kind / key).mkdir(parents=True)
    (tmp_path / "models" / "stray.txt").write_text("")
    (tmp_path / ".locks" / "models").mkdir(parents=True)  # lock files are not entries
    assert run_times.cache_entries(tmp_path) == 3


def test_a_chapter_run_again_replaces_its_row(times_file):
    run_times.record("01_robustness", 1500.4, 0, 0.0, "mini")
    run_times.record("00_data_and_models", 30, 0, 0.0, "mini")
    table = run_times.record("01_robustness", 90, 42, 3600.0, "mini")
    assert list(table["chapter"]) == ["00_data_and_models", "01_robustness"]
    again = table.set_index("chapter").loc["01_robustness"]
    assert again["seconds"] == 90 and not again["cache_empty"] and again["build"] == "1970-01-01 01:00 UTC"
    assert pd.read_csv(times_file).set_index("chapter").loc["00_data_and_models", "cache_empty"]
    assert {"cores", "cpu", "torch"} <= set(table.columns) and table["cores"].iloc[0] >= 1


def test_progress_estimates_what_is_left_from_recorded_times(times_file):
    run_times.record("01_robustness", 600, 0, 0.0, "mini")
    run_times.record("02_cca_similarity", 300, 0, 0.0, "mini")
    assert run_times.estimate_left(["01_robustness", "02_cca_similarity"]) == (900, [])
    assert run_times.estimate_left(["01_robustness", "03_uap"]) == (600, ["03_uap"])
    line = run_times.progress_line("01_robustness", ["02_cca_similarity"], build_start=0.0, now=120.0)
    assert "2 min into the build" in line and "about 15 min left" in line
    partial = run_times.progress_line("01_robustness", ["03_uap"], 0.0, now=0.0)
    assert "at least 10 min left" in partial and "none yet for 03_uap" in partial
    assert "no estimate" in run_times.progress_line("03_uap", [], 0.0, now=0.0)


def _tiny_notebook(path, code):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_two_lanes_run_chapters_side_by_side_with_one_thread_each(tmp_path, times_file, monkeypatch):
    """make book LANES=2: both chapters run at once, each with half the cores, and each gets its row."""
    monkeypatch.setattr(book_build, "BOOK", tmp_path / "book")
    monkeypatch.setattr(book_build, "LOGS", tmp_path / "logs")
    monkeypatch.setenv("NBS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "book").mkdir()
    code = "import os, time\nprofile = None\nprint('threads', os.environ.get('OMP_NUM_THREADS'))\ntime.sleep(3)"
    books = [_tiny_notebook(tmp_path / f"{name}.ipynb", code) for name in ("00_a", "01_b")]
    assert book_build.build(books, "smoke", lanes=2) == 0
    table = pd.read_csv(times_file).set_index("chapter")
    assert sorted(table["lane"]) == [1, 2] and set(table["profile"]) == {"smoke"}
    assert table["started_s"].max() < 3  # the second started before the first had finished
    expected = str(max(1, os.cpu_count() // 2))
    assert f"threads {expected}" in (tmp_path / "logs" / "01_b.log").read_text()
    assert (tmp_path / "book" / "00_a.ipynb").is_file()
    assert "wall clock of the" in build_cost(times_file.parent)


def test_a_failed_chapter_stops_the_build(tmp_path, times_file, monkeypatch):
    monkeypatch.setattr(book_build, "BOOK", tmp_path / "book")
    monkeypatch.setattr(book_build, "LOGS", tmp_path / "logs")
    (tmp_path / "book").mkdir()
    books = [_tiny_notebook(tmp_path / "00_bad.ipynb", "raise ValueError('no')"),
             _tiny_notebook(tmp_path / "01_next.ipynb", "x = 1")]
    assert book_build.build(books, "smoke", lanes=1) == 1
    assert not times_file.exists()  # neither the failed chapter nor the one after it was recorded
    with pytest.raises(SystemExit):
        book_build.main([str(tmp_path / "missing.ipynb")])


def test_the_build_publishes_and_shares_the_cores():
    one, two = book_build.lane_environment(1), book_build.lane_environment(2, cores=2)
    assert one[PUBLISH_VARIABLE] == "1" == two[PUBLISH_VARIABLE]
    assert two["OMP_NUM_THREADS"] == "1" and book_build.lane_environment(2, cores=16)["OMP_NUM_THREADS"] == "8"
    assert "nbs_lib.report.book_build" in (REPO_ROOT / "Makefile").read_text()


def test_the_summary_shows_the_recorded_build(times_file):
    assert "No build has recorded" in build_cost(times_file.parent)
    run_times.record("00_data_and_models", 30, 0, 0.0, "mini")
    run_times.record("01_robustness", 1530, 12, 0.0, "mini")
    page = build_cost(times_file.parent)
    assert "| 01_robustness | 1,530 | 25.5 | 12 entries |" in page and "| sum of the rows | 1,560 | 26.0 |" in page
    assert "| 00_data_and_models | 30 | 0.5 | empty |" in page and "Profile mini" in page
    assert "No recorded time for 02_cca_similarity, 03_uap," in page
    for chapter in BOOK_CHAPTERS[2:]:
        run_times.record(chapter, 10, 0, 0.0, "mini")
    assert "No recorded time" not in build_cost(times_file.parent)


def test_rows_from_several_machines_say_which_ran_where(times_file, monkeypatch):
    run_times.record("00_data_and_models", 30, 0, 0.0, "mini")
    assert "| CPU |" not in build_cost(times_file.parent)
    table = pd.read_csv(times_file)
    pd.concat([table, table.assign(chapter="01_robustness", cpu="Another CPU")]).to_csv(times_file, index=False)
    page = build_cost(times_file.parent)
    header, _, *rows = page.splitlines()
    assert header.endswith(" CPU |") and header.count("|") == rows[0].count("|")
    assert any(row.startswith("| 01_robustness | 30 |") and row.endswith(" Another CPU |") for row in rows)
    assert "machines: " in page
