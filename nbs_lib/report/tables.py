"""Table layouts of the book: our numbers arranged as the papers print theirs."""

from __future__ import annotations

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
    order = [m for m in ("standard", "partial", "full") if m in set(sub["model"])]
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
    return table.reindex([m for m in TABLE5_METHODS if m in set(frame.method)]).round(2)


def paper_table5_layout() -> pd.DataFrame:
    """The paper's Table 5 in :func:`table5_layout`'s layout."""
    return table5_layout(table5())
