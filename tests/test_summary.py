"""book/summary.md's generated sections: built from the committed CSVs, every number from one of them."""

import re
import shutil

import pytest

from nbs_lib.report.results import DEFAULT_RESULTS_DIR
from nbs_lib.report.summary import BEGIN, END, SECTIONS, SUMMARY, generated, update_summary

COST_SECTIONS = {"build"}  # not results of the science, derived from run_times.csv
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _csv_numbers(sources: str) -> set[str]:
    tokens = set()
    for name in sources.split(", "):
        tokens |= set(NUMBER.findall((DEFAULT_RESULTS_DIR / name).read_text()))
    return tokens


def _matches(token: str, csv_tokens: set[str]) -> bool:
    if token in csv_tokens:
        return True
    mantissa = token.lower().split("e")[0]  # 4.66e-05 has three significant digits, not seven
    digits = len(mantissa.lstrip("+-").replace(".", "").lstrip("0")) or 1
    value = float(token)
    return any(float(f"{float(t):.{digits}g}") == value for t in csv_tokens)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_summary_section_is_what_the_results_give(name, tmp_path):
    text = SUMMARY.read_text()
    body = generated(text, name)
    assert body is not None, f"summary.md lacks the markers of section {name}"
    build, sources = SECTIONS[name]
    assert body == build(None), "book/summary.md is stale: run `python -m nbs_lib.report.summary`"
    if name in COST_SECTIONS:
        return  # build times: minutes and the total are computed from the recorded seconds
    csv_tokens = _csv_numbers(sources)
    strays = [t for t in NUMBER.findall(body) if not _matches(t, csv_tokens)]
    assert not strays, f"numbers in the summary that are in none of {sources}: {strays}"


def test_update_summary_rewrites_only_between_the_markers(tmp_path):
    copy = tmp_path / "summary.md"
    sections = "between\n".join(f"{BEGIN.format(name=name, sources=sources)}\nold text\n{END.format(name=name)}\n"
                                 for name, (_, sources) in SECTIONS.items())
    copy.write_text(f"intro\n{sections}outro\n")
    text = update_summary(copy)
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old text" not in text
    assert text.count("between\n") == len(SECTIONS) - 1
    for name, (build, _) in SECTIONS.items():
        assert generated(text, name) == build(None)


def test_a_missing_results_file_names_the_chapter_to_run(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(DEFAULT_RESULTS_DIR, results)
    (results / "01_robustness_claims.csv").unlink()
    copy = tmp_path / "summary.md"
    shutil.copy(SUMMARY, copy)
    with pytest.raises(FileNotFoundError, match="make book ONLY"):
        update_summary(copy, results)
