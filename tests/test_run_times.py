"""`make book` records what each chapter cost (book/results/run_times.csv) and shows it (issue 23, part 1)."""

import subprocess
import sys

import pandas as pd
import pytest

from nbs_lib.report import run_times
from nbs_lib.report.summary import build_cost


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


def test_the_command_line_the_makefile_runs(tmp_path):
    cache = tmp_path / "cache"
    (cache / "models" / "k").mkdir(parents=True)
    env = {"NBS_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    before = subprocess.run([sys.executable, "-m", "nbs_lib.report.run_times", "before", "0", "01_robustness"],
                            capture_output=True, text=True, env=env, check=True)
    assert before.stdout.strip() == "1" and "== 01_robustness" in before.stderr
    bad = subprocess.run([sys.executable, "-m", "nbs_lib.report.run_times", "nonsense"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2


def test_the_summary_shows_the_recorded_build(times_file):
    assert "No build has recorded" in build_cost(times_file.parent)
    run_times.record("00_data_and_models", 30, 0, 0.0, "mini")
    run_times.record("01_robustness", 1530, 12, 0.0, "mini")
    page = build_cost(times_file.parent)
    assert "| 01_robustness | 1,530 | 25.5 | 12 entries |" in page and "| all | 1,560 | 26.0 |" in page
    assert "| 00_data_and_models | 30 | 0.5 | empty |" in page and "Profile mini" in page
