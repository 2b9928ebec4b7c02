"""Table layouts of the book: our numbers arranged as the papers print theirs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nbs_lib.report.paper import TABLE1_ATTACK, TABLE2_ATTACKS, TABLE5_METHODS, table5


def compare_with_paper(table: pd.DataFrame, paper: pd.DataFrame, value: str) -> pd.DataFrame:
    """Our mean over our datasets beside the paper's mean over its datasets, per model (and attack)."""
    keys = ["attack", "model"]
    table = table[table["attack"].isin(set(paper["attack"])) & table["model"].isin(set(paper["model"]))]
    ours = table.groupby(keys)[value].mean().rename(f"{value} (this book, mean)")
    theirs = paper.groupby(keys)[value].mean().rename(f"{value} (paper, mean)")
    return pd.concat([theirs, ours], axis=1).round(2).dropna(how="all")


def paper_layout(table: pd.DataFrame, attack: str = TABLE1_ATTACK, values=("aoi", "aai", "dr")) -> pd.DataFrame:
    """Rows (model, metric) and one column per dataset, as the paper prints Table 1."""
    sub = table[table["attack"] == attack]
    long = sub.melt(id_vars=["dataset", "model"], value_vars=list(values), var_name="metric")
    wide = long.pivot_table(index=["model", "metric"], columns="dataset", values="value", sort=False)
    order = [m for m in ("standard", "partial", "partial_bn", "full") if m in set(sub["model"])]
    wide = wide.reindex(pd.MultiIndex.from_product([order, list(values)], names=["model", "metric"]))
    wide.columns.name = None
    return wide.round(2)


def table2_layout(table: pd.DataFrame, attacks=TABLE2_ATTACKS, models=("standard", "full")) -> pd.DataFrame:
    """AAI with rows (attack, model) and one column per dataset, as the paper prints Table 2."""
    sub = table[table["attack"].isin(attacks) & table["model"].isin(models)]
    wide = sub.pivot_table(index=["attack", "model"], columns="dataset", values="aai", sort=False)
    wide = wide.reindex(pd.MultiIndex.from_product([list(attacks), list(models)], names=["attack", "model"]))
    wide.columns.name = None
    return wide.round(2)


def table5_layout(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, (dataset, metric) as columns, as the paper's Table 5."""
    table = frame.pivot_table(index="method", columns="dataset", values=["aoi", "aai"], sort=False)
    table = table.swaplevel(axis=1)
    datasets = list(dict.fromkeys(frame.dataset))
    table = table[[(d, m) for d in datasets for m in ("aoi", "aai") if (d, m) in table.columns]]
    order = [m for m in TABLE5_METHODS if m in set(frame.method)]
    return table.reindex(order + [m for m in dict.fromkeys(frame.method) if m not in order]).round(2)


def paper_table5_layout() -> pd.DataFrame:
    """The paper's Table 5 in :func:`table5_layout`'s layout."""
    return table5_layout(table5())


def _with_interval(value: float, low: float, high: float, digits: int = 1) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


SHORT_CELL = 24  # characters: a column whose cells are all this short never breaks a cell across lines


def _styled(frame: pd.DataFrame):
    """No index column; short cells (numbers, intervals, p-values, names) kept on one line:
    "8.2e-143" or "93.3 [92.1, 94.4]" broken in two is hard to read. Long text still wraps."""
    short = [c for c in frame.columns if frame[c].astype(str).str.len().max() <= SHORT_CELL]
    return frame.style.hide(axis="index").set_properties(subset=short, **{"white-space": "nowrap"})


def _p_value(value) -> str:
    """A p-value at two significant digits (0.035, 8.2e-143); blank when missing."""
    return "" if pd.isna(value) else f"{value:.2g}"


def _is_p_value(column) -> bool:
    """A column of p-values: named ``p`` or ``... p`` (``"mcnemar p"``), ``p (...)`` or ``p_...``."""
    name = str(column[-1] if isinstance(column, tuple) else column).lower()
    return name == "p" or name.endswith(" p") or name.startswith(("p ", "p_"))


def plain_table(frame: pd.DataFrame, digits: int = 1):
    """A table as the book prints it: no index column, floats at ``digits`` decimals, small
    non-zero floats (learning rates) in short scientific notation rather than rounded to 0,
    floats of 1,000 or more as whole numbers with thousands separators (an LL of 404,299,
    not 404298.969), p-values at two significant digits (0.035, 8.2e-143) and missing values
    as blanks."""
    def number(value):
        if pd.isna(value):
            return ""
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1e}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"

    floats = list(frame.select_dtypes("float").columns)
    p_values = [c for c in floats if _is_p_value(c)]
    numbers = [c for c in floats if c not in p_values]
    return _styled(frame).format(number, subset=numbers).format(_p_value, subset=p_values)


def interval_view(table: pd.DataFrame, attack: str = TABLE1_ATTACK):
    """Table 1 per training seed: AOI, AAI and DR, each with its 95% interval in brackets."""
    sub = table[table["attack"] == attack]
    view = pd.DataFrame({
        "dataset": sub["dataset"], "model": sub["model"], "seed": sub["seed"], "images": sub["n"],
        **{f"{m.upper()} [95% interval]": [_with_interval(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
                                           for r in sub.to_dict("records")] for m in ("aoi", "aai", "dr")},
    })
    return _styled(view)


def radius_view(intervals: pd.DataFrame):
    """Per dataset and model: mean +- standard deviation over training seeds of AOI and the radius scalars
    (the value alone where one seed ran: a spread of one run is not 0)."""
    grouped = intervals.groupby(["dataset", "model"], sort=False)

    def mean_sd(column: str, digits: int):
        mean, sd = grouped[column].mean(), grouped[column].std().fillna(0.0)
        unbroken = grouped[column].apply(lambda v: int(np.isinf(v).sum()))
        return [f"beyond the ladder in {k} of {n} seeds" if k else f"{m:.{digits}f}" if n == 1 else
                f"{m:.{digits}f} ± {s:.{digits}f}" for m, s, k, n in zip(mean, sd, unbroken, grouped.size())]

    keys = grouped.size().index
    view = pd.DataFrame({"dataset": keys.get_level_values(0), "model": keys.get_level_values(1),
                         "seeds": grouped.size().to_numpy(), "AOI (%)": mean_sd("aoi", 1),
                         "median minimal radius (1/255)": mean_sd("median_eps", 3),
                         "area on [0, 2/255] (%)": mean_sd("area", 1)})
    return _styled(view)


def claims_view(claims: pd.DataFrame):
    """Paired claims as the book prints them: both sides, the difference with its interval, the verdict.

    The models compared are in the claim's words; the test, the number of images and of
    training seeds are in the caption (one of each per table in this book).
    """
    keep = [c for c in ("observation", "claim", "attack", "dataset", "measure") if c in claims.columns]
    view = claims[keep].copy()
    if "premise" in claims.columns:
        view["measure"] = [m if pd.isna(p) else f"{m} ({p})" for m, p in zip(view["measure"], claims["premise"])]
    view["A"] = claims["a"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    view["B"] = claims["b"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    view["A - B [95% interval]"] = [_with_interval(r["difference"], r["ci_low"], r["ci_high"], 2)
                                    for r in claims.to_dict("records")]
    view["p"] = claims["p"].map(_p_value)
    view["verdict"] = claims["verdict"]
    tests = ", ".join(sorted(set(claims["test"]) - {""})) or "none"
    caption = (f"test: {tests}; images per claim {claims['images'].min()}-{claims['images'].max()}; "
               f"training seeds {claims['seeds'].max()}")
    return _styled(view).set_caption(caption)


def memory_view(*profiles):
    """Peak host memory of a chapter under each profile (:func:`~nbs_lib.data.images.host_memory_estimate`),
    one column of GiB per profile and the reasons of the last."""
    from nbs_lib.data.images import host_memory_estimate

    columns = {p.name: pd.DataFrame(host_memory_estimate(p)) for p in profiles}
    last = columns[profiles[-1].name]
    frame = pd.DataFrame({"part": last["part"],
                          **{f"GiB at {name}": rows["GiB"] for name, rows in columns.items()},
                          f"at {profiles[-1].name}": last["why"]})
    return plain_table(frame, 2)  # GiB to the hundredth: a 0.05 GiB sample, not 4.6e-02
