"""Sections of ``book/summary.md`` generated from ``book/results/*.csv`` (never typed by hand).

A generated section sits between two marker lines naming the CSV files it is built from;
:func:`update_summary` rewrites what is between them. ``make book`` runs it after the
chapters (``python -m nbs_lib.report.summary``), and a test checks that the committed
summary equals what the committed CSVs give, and that every number in a generated
section is one of those CSVs' values.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from nbs_lib.report.results import DEFAULT_RESULTS_DIR, REPO_ROOT, results_path

SUMMARY = DEFAULT_RESULTS_DIR.parent / "summary.md"
BOOK_CHAPTERS = sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))
BEGIN = "<!-- begin generated: {name} (from {sources}; nbs_lib.report.summary, do not edit) -->"
END = "<!-- end generated: {name} -->"


def _read(name: str, results_dir) -> pd.DataFrame:
    path = results_path(name, results_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing from the results folder; run its chapter "
                                "(make book ONLY=...) to write it.")
    return pd.read_csv(path)


def _difference(row) -> str:
    return f"{row['difference']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"


def chapter1(results_dir=None) -> str:
    """Chapter 1's verdicts: each claim with the paper's count and ours, and each target's difference."""
    claims = pd.concat([_read("01_robustness_claims", results_dir),
                        _read("01_robustness_table2_claims", results_dir)], ignore_index=True)
    return _verdicts_with_differences(_read("01_robustness_verdicts", results_dir), claims)


def _verdicts_with_differences(verdicts: pd.DataFrame, claims: pd.DataFrame) -> str:
    """A verdicts table (claim, measure, paper, this book) with each claim's paired difference per target."""
    profile = verdicts["profile"].iloc[0]
    lines = [f"| claim of the paper | measure | paper | this book (`{profile}`) "
             "| A - B [interval] per target |", "|---|---|---|---|---|"]
    for v in verdicts.to_dict("records"):
        rows = claims[(claims["claim"] == v["claim"]) & _same_measure(claims, v["measure"])]
        per_target = "; ".join(f"`{r['dataset']}` {_difference(r)}: {r['verdict']}" for r in rows.to_dict("records")
                               if pd.notna(r["difference"]))
        lines.append(f"| {v['claim']} | {v['measure']} | {v['paper']} | {v['this book']} | {per_target} |")
    return "\n".join(lines)


def _same_measure(claims: pd.DataFrame, measure: str) -> pd.Series:
    """Rows of ``claims`` measured by ``measure`` (Table 2 rows name their attack instead)."""
    by_attack = claims.get("attack", pd.Series(index=claims.index, dtype=object)).map(
        lambda a: f"AAI under {a} (%)" if isinstance(a, str) else None)
    return (claims["measure"] == measure) | (by_attack == measure)


def chapter2(results_dir=None) -> str:
    """Chapter 2's Figure 3 claims: the paper's statement, our count per measure and reduction, the verdict."""
    claims = _read("02_cca_similarity_claims", results_dir)
    profile = claims["profile"].iloc[0]
    measures = [c for c in claims.columns if c not in ("claim", "paper", "verdict", "profile")]
    lines = [f"| claim of the paper | paper | {' | '.join(measures)} | verdict (`{profile}`) |",
             "|---" * (len(measures) + 3) + "|"]
    for r in claims.to_dict("records"):
        lines.append(f"| {r['claim']} | {r['paper']} | {' | '.join(str(r[m]) for m in measures)} | {r['verdict']} |")
    return "\n".join(lines)


def chapter3(results_dir=None) -> str:
    """Chapter 3's observations of Figures 4 and 5: the rule, our count and the verdict."""
    return _rule_table(_read("03_uap_claims", results_dir), "observation", "observation of the paper")


def _rule_table(claims: pd.DataFrame, first: str, title: str) -> str:
    """Claims decided by a stated rule: the claim (column ``first``, headed ``title``), rule, count, verdict."""
    profile = claims["profile"].iloc[0]
    lines = [f"| {title} | rule | count | verdict (`{profile}`) |", "|---|---|---|---|"]
    for r in claims.to_dict("records"):
        lines.append(f"| {r[first]} | {r['rule']} | {r['count']} | {r['verdict']} |")
    return "\n".join(lines)


def chapter4(results_dir=None) -> str:
    """Chapter 4's correlations of DR and the radius measures with the MMD, each with its verdict."""
    claims = _read("04_mmd_vs_dr_claims", results_dir)
    profile = claims["profile"].iloc[0]
    lines = [f"| models | robustness measure | paper | Spearman with the MMD [interval], p (`{profile}`) "
             "| targets | verdict |", "|---|---|---|---|---|---|"]
    for r in claims.to_dict("records"):
        paper = {"positive": "DR rises with the MMD", "negative": "robustness falls with the MMD"}[r["expected"]]
        if r["model"] != "full":
            paper = "not in the paper (a control)"
        lines.append(f"| {r['model']} | {r['measure']} | {paper} | {r['spearman']:.3g} [{r['ci_low']:.3g}, "
                     f"{r['ci_high']:.3g}], p {r['p']:.3g} | {r['targets']} | {r['verdict']} |")
    return "\n".join(lines)


def chapter5(results_dir=None) -> str:
    """Chapter 5's verdicts on Tables 3 and 4, with each pair's paired difference per target."""
    verdicts = _read("05_capacity_difficulty_verdicts", results_dir)
    claims = _read("05_capacity_difficulty_claims", results_dir)
    profile = verdicts["profile"].iloc[0]
    lines = [f"| table | claim of the paper | measure | paper | this book (`{profile}`) "
             "| A - B [interval] per target |", "|---|---|---|---|---|---|"]
    for v in verdicts.to_dict("records"):
        rows = claims[(claims["table"] == v["table"]) & (claims["measure"] == v["measure"])
                      & claims["relation"].map(lambda relation: f" {relation} " in f" {v['claim']} ")]
        per_target = "; ".join(f"`{r['dataset']}` {r['A']}: {_difference(r)}, {r['verdict']}"
                               for r in rows.to_dict("records") if pd.notna(r["difference"]))
        lines.append(f"| {v['table']} | {v['claim']} | {v['measure']} | {v['paper']} | {v['this book']} "
                     f"| {per_target} |")
    return "\n".join(lines)


def chapter6(results_dir=None) -> str:
    """Chapter 6's Table 5 verdicts: DM@stage-1&2 against each method, with the paired difference per target."""
    return _verdicts_with_differences(_read("06_dm_regularisation_verdicts", results_dir),
                                      _read("06_dm_regularisation_claims", results_dir))


def chapter7(results_dir=None) -> str:
    """Chapter 7's claims of the second work: the rule, our count and the verdict."""
    return _rule_table(_read("07_robust_transfer_claims", results_dir), "claim", "claim of the work")


def build_cost(results_dir=None) -> str:
    """The cost of building the book: each chapter's recorded time (``run_times.csv``), the wall
    clock of each build that recorded several chapters, and the chapters that have no recorded time."""
    folder = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
    path = folder / "run_times.csv"
    if not path.is_file():
        return "No build has recorded its times yet (`make book` writes `book/results/run_times.csv`)."
    times = pd.read_csv(path)
    laned = times[times["lane"].notna()] if "lane" in times else times.iloc[:0]
    machines = sorted({f"{r.cores} cores, {r.cpu}, torch {r.torch}" for r in times.itertuples()})
    extra = []  # columns shown only when they tell rows apart: (header, cell of a row)
    if len(laned):
        extra.append(("lane", lambda r: "" if pd.isna(r.lane) else f"{r.lane:.0f}"))
    if len(machines) > 1:
        extra.append(("CPU", lambda r: re.sub(r"\((R|TM)\)", "", str(r.cpu))))  # cores etc. below the table
    blanks = " |" * len(extra)
    header = ["| chapter | seconds | minutes | run cache at its start | build started |"
              + "".join(f" {name} |" for name, _ in extra), "|---|---|---|---|---|" + "---|" * len(extra)]
    rows = [f"| {r.chapter} | {r.seconds:,.0f} | {r.seconds / 60:.1f} | "
            f"{'empty' if r.cache_empty else f'{r.cache_entries_before:,} entries'} | {r.build} |"
            + "".join(f" {cell(r)} |" for _, cell in extra) for r in times.itertuples()]
    total = [f"| sum of the rows | {times.seconds.sum():,.0f} | {times.seconds.sum() / 60:.1f} | | |{blanks}"]
    for build, rows_of_build in laned.groupby("build"):
        if len(rows_of_build) > 1:  # a build's wall clock: its last chapter's end
            wall = float((rows_of_build["started_s"] + rows_of_build["seconds"]).max())
            total.append(f"| wall clock of the {build} build's rows | {wall:,.0f} | {wall / 60:.1f} | | |{blanks}")
    profiles = ", ".join(sorted(set(times["profile"])))
    lines = [*header, *rows, *total, "",
             f"Profile {profiles}; {'machines' if len(machines) > 1 else 'machine'}: {'; '.join(machines)}."]
    missing = sorted(set(BOOK_CHAPTERS) - set(times["chapter"]))
    if missing:
        lines += ["", f"No recorded time for {', '.join(missing)}: their pages come from runs before times were "
                  "recorded, or the build that ran them did not finish."]
    return "\n".join(lines)


SECTIONS = {"01": (chapter1, "01_robustness_verdicts.csv, 01_robustness_claims.csv, "
                             "01_robustness_table2_claims.csv"),
            "02": (chapter2, "02_cca_similarity_claims.csv"),
            "03": (chapter3, "03_uap_claims.csv"),
            "04": (chapter4, "04_mmd_vs_dr_claims.csv"),
            "05": (chapter5, "05_capacity_difficulty_verdicts.csv, 05_capacity_difficulty_claims.csv"),
            "06": (chapter6, "06_dm_regularisation_verdicts.csv, 06_dm_regularisation_claims.csv"),
            "07": (chapter7, "07_robust_transfer_claims.csv"),
            "build": (build_cost, "run_times.csv")}


def generated(text: str, name: str) -> str | None:
    """The body of section ``name`` in ``text`` (``None`` when its markers are missing)."""
    pattern = re.escape(BEGIN.split("{name}")[0]) + re.escape(name) + r" .*?-->\n(.*?)\n?" + \
        re.escape(END.format(name=name))
    m = re.search(pattern, text, flags=re.S)
    return None if m is None else m.group(1)


def update_summary(path: str | Path = SUMMARY, results_dir=None) -> str:
    """Rewrite every generated section of the summary at ``path``; returns the new text."""
    path = Path(path)
    text = path.read_text()
    for name, (build, sources) in SECTIONS.items():
        begin, end = BEGIN.format(name=name, sources=sources), END.format(name=name)
        body = build(results_dir)
        if generated(text, name) is None:
            raise ValueError(f"{path.name} has no markers for section {name}; put the lines\n{begin}\n{end}\n"
                             "where it belongs.")
        start = text.index(BEGIN.split("{name}")[0] + name)
        stop = text.index(end) + len(end)
        text = text[:start] + f"{begin}\n{body}\n{end}" + text[stop:]
    path.write_text(text)
    return text


if __name__ == "__main__":
    update_summary(*sys.argv[1:2])
    print(f"updated {SUMMARY if len(sys.argv) < 2 else sys.argv[1]}")
