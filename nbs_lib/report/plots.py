"""Figures of the book, in the papers' style (matplotlib + seaborn), sized and coloured by
:mod:`nbs_lib.report.style` (page width, text of 9 pt or more where it is read)."""

from __future__ import annotations

import functools
import io
import re
import textwrap

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from nbs_lib.report.style import (CHAR_WIDTH_EM, FIGURE_DPI, MODEL_COLORS, PAGE_WIDTH_IN, PAIR_COLORS, PALETTE, SMALL,
                                  VERDICT_COLORS, page_width, use_book_style)

use_book_style()

_TEXT_TO_PATH = TextToPath()
CAPTION_GAP_PT = 4  # room kept between the captions of neighbouring images

MODEL_ORDER = ["standard", "partial", "partial_bn", "full"]
MODEL_LABELS = {"standard": "standard", "partial": "partial fine-tune", "partial_bn": "partial, target BN",
                "full": "full fine-tune"}


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] tensor in [0, 1] -> [H, W, 3] float array for imshow."""
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def example_grid(datasets: dict, per_row: int = 10, rows_per_dataset: int = 1, size: float = 1.0):
    """One row of examples per dataset (first images of distinct classes), each captioned with its
    class name in lines that fit the image's column."""
    n_rows = len(datasets) * rows_per_dataset
    size = min(size, (PAGE_WIDTH_IN - 0.4) / per_row)
    picks = {name: _one_per_class(ds.labels, per_row * rows_per_dataset) for name, ds in datasets.items()}
    width = (size * 72 - CAPTION_GAP_PT) / (CHAR_WIDTH_EM * SMALL)  # a caption line, in average characters
    captions = {name: [caption(ds.classes[int(ds.labels[i])], width) for i in picks[name]]
                for name, ds in datasets.items()}
    lines = max((c.count("\n") + 1 for cs in captions.values() for c in cs), default=1)
    caption_in = max(0.35, 0.05 + lines * 1.25 * SMALL / 72)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(per_row * size + 0.4, n_rows * (size + caption_in)),
                             squeeze=False)
    for d, (name, ds) in enumerate(datasets.items()):
        for k in range(per_row * rows_per_dataset):
            ax = axes[d * rows_per_dataset + k // per_row, k % per_row]
            ax.axis("off")
            if k < len(picks[name]):
                ax.imshow(to_numpy_image(ds[picks[name][k]][0]), interpolation="nearest")
                ax.set_title(captions[name][k], fontsize=SMALL)
        label = textwrap.fill(name.replace("_", "_ "), 9, break_long_words=False).replace("_ ", "_")
        axes[d * rows_per_dataset, 0].text(-0.15, 0.5, label, transform=axes[d * rows_per_dataset, 0].transAxes,
                                           ha="right", va="center", fontsize=SMALL, rotation=90)
    fig.tight_layout()
    return fig


def caption(text: str, width: float = 8) -> str:
    """A short caption for a small image: ``text`` in lines at most ``width`` average characters
    wide at the caption size (measured, not counted), broken after spaces, slashes and underscores;
    a word longer than a line is hyphenated where the line is full."""
    limit = width * CHAR_WIDTH_EM * SMALL
    lines, line = [], ""
    for piece in re.findall(r"[^ /_]+[ /_]*|[ /_]+", text):
        if line and _text_width(line + piece.rstrip(" ")) > limit:
            lines.append(line.rstrip(" "))
            line = ""
        line += piece
        while len(line.rstrip(" ")) > 1 and _text_width(line.rstrip(" ")) > limit:  # a word longer than a line
            cut = max([1] + [k for k in range(2, len(line)) if _text_width(line[:k] + "-") <= limit])
            lines.append(line[:cut] + "-")
            line = line[cut:]
    return "\n".join(lines + [line.rstrip(" ")] if line.strip() else lines)


@functools.lru_cache(maxsize=4096)
def _text_width(text: str) -> float:
    """Width in points of ``text`` at the caption size in the book's font."""
    width, _, _ = _TEXT_TO_PATH.get_text_width_height_descent(text, FontProperties(size=SMALL), ismath=False)
    return width


def _one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices cycling through the classes: first image of class 0, of class 1, ..."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(y, []).append(i)
    picks, depth = [], 0
    while len(picks) < count and any(depth < len(v) for v in by_class.values()):
        for y in sorted(by_class):
            if depth < len(by_class[y]) and len(picks) < count:
                picks.append(by_class[y][depth])
        depth += 1
    return picks


def image_strip(images: torch.Tensor, titles: list[str] | None = None, size: float = 1.2):
    """A single row of images."""
    n = len(images)
    size = min(size, PAGE_WIDTH_IN / n)
    fig, axes = plt.subplots(1, n, figsize=(n * size, size + 0.45), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(to_numpy_image(images[k]), interpolation="nearest")
        ax.axis("off")
        if titles:
            ax.set_title(caption(titles[k], 10), fontsize=SMALL)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """The figure as PNG bytes (for image widgets); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def training_curves(histories: pd.DataFrame):
    """Validation accuracy per epoch, one panel per dataset, one line per model.

    ``histories`` has columns dataset, model, epoch, val_acc (and train_acc).
    """
    n_panels = histories["dataset"].nunique()
    grid = sns.relplot(data=histories, x="epoch", y="val_acc", hue="model", col="dataset",
                       kind="line", marker="o", height=2.3, aspect=1.3, col_wrap=2 if n_panels > 2 else None,
                       hue_order=[m for m in MODEL_ORDER if m in set(histories["model"])],
                       palette=MODEL_COLORS, facet_kws={"sharey": False, "sharex": False})
    grid.set_axis_labels("epoch", "validation accuracy (%)")
    grid.set_titles("{col_name}")
    _model_legend(grid)
    return grid.figure


def robust_accuracy_curves(curves: pd.DataFrame, max_eps: float = 4.0):
    """Robust accuracy against the L-inf radius (from the minimal radii), one panel per dataset.

    ``curves`` has columns dataset, model, seed, eps, accuracy; the line is the mean over
    training seeds and the band their range. The x-axis stops at ``max_eps`` (1/255), where
    every model of the book is near zero; the dotted line marks Table 1's 0.5/255.
    """
    shown = curves[curves["eps"] <= max_eps]
    n_panels = shown["dataset"].nunique()
    grid = sns.relplot(data=shown, x="eps", y="accuracy", hue="model", col="dataset", kind="line",
                       errorbar=("pi", 100), height=2.4, aspect=1.3, drawstyle="steps-post",
                       col_wrap=2 if n_panels > 2 else None,
                       hue_order=[m for m in MODEL_ORDER if m in set(shown["model"])],
                       palette=MODEL_COLORS, facet_kws={"sharex": True})
    grid.set_axis_labels("radius (x 1/255, L-inf)", "robust accuracy (%)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.set_ylim(-3, 103)
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    _model_legend(grid)
    return grid.figure


def _model_legend(grid) -> None:
    """The models' legend under the panels, in the book's words."""
    for text in grid.legend.texts:
        text.set_text(MODEL_LABELS.get(text.get_text(), text.get_text()))
    sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, title=None, frameon=False)


def decline_ratio_bars(table: pd.DataFrame, attack: str):
    """DR under ``attack`` per target and model with its 95% interval, grouped as the paper's Table 1.

    One group of bars per dataset (the paper's columns), one bar per model (its rows);
    ``table`` holds ``dr``, ``dr_ci_low`` and ``dr_ci_high`` per training seed. A bar is
    the first seed's DR with its interval (a bootstrap over images), a dot each other seed's DR.
    """
    sub = table[table["attack"] == attack]
    first_seed = sub["seed"].min()
    first = sub[sub["seed"] == first_seed].set_index(["dataset", "model"])
    others = sub[sub["seed"] != first_seed]
    datasets = list(dict.fromkeys(sub["dataset"]))
    models = [m for m in MODEL_ORDER if m in set(sub["model"])]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 3.2))
    for k, model in enumerate(models):
        x = np.arange(len(datasets)) + (k - (len(models) - 1) / 2) * width
        values = np.array([first["dr"].get((d, model), np.nan) for d in datasets])
        low = np.array([first["dr_ci_low"].get((d, model), np.nan) for d in datasets])
        high = np.array([first["dr_ci_high"].get((d, model), np.nan) for d in datasets])
        ax.bar(x, values, width, color=MODEL_COLORS.get(model), label=MODEL_LABELS.get(model, model))
        ax.errorbar(x, values, yerr=[np.clip(values - low, 0, None), np.clip(high - values, 0, None)],
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        seeds = others[others["model"] == model]
        ax.plot([x[datasets.index(d)] for d in seeds["dataset"]], seeds["dr"], "o", color="black",
                markersize=2.5, label="other training seeds" if k == 0 and len(seeds) else None)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"DR under {attack} (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def claims_forest(claims: pd.DataFrame, measure: str):
    """Paired differences (A minus B) with 95% intervals, one row per claim and dataset.

    The field's forest plot: a point left or right of the zero line with its interval;
    the marker's colour is the verdict (:mod:`nbs_lib.report.verdicts`).
    """
    sub = claims[claims["measure"] == measure].reset_index(drop=True)
    colors = VERDICT_COLORS
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 0.42 * len(sub) + 1.0))
    labels = [f"{r.claim} ({r.dataset})" for r in sub.itertuples()]
    for i, r in enumerate(sub.itertuples()):
        ax.plot([r.ci_low, r.ci_high], [i, i], color="black", linewidth=1)
        ax.plot(r.difference, i, "o", color=colors[r.verdict], markersize=7, markeredgecolor="black")
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(sub)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"A minus B: {measure}")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, markeredgecolor="black", label=v)
               for v, c in colors.items() if v in set(sub["verdict"])]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / max(1, len(sub)) - 0.12),
              ncol=len(handles), frameon=False)
    fig.tight_layout()
    return fig


def _titled_images(fig, axes, panels, fontsize: int, title: str = ""):
    """Draw ``(image, caption)`` pairs on ``axes`` without ticks, with an optional suptitle."""
    for ax, (img, text) in zip(axes, panels):
        ax.imshow(to_numpy_image(img), interpolation="nearest")
        ax.set_title(text, fontsize=fontsize)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def adversarial_panel(example: dict, classes: list[str], title: str = ""):
    """Image, adversarial image, perturbation (amplified) and both predictions."""
    fig, axes = plt.subplots(1, 3, figsize=(6.3, 2.4))
    pert = example["perturbation"]
    scale = float(pert.abs().max())
    shown = pert / (2 * scale) + 0.5 if scale > 0 else pert + 0.5
    panels = [
        (example["image"], f"clean:\n{classes[example['clean_pred']]} ({example['clean_conf']:.0%})"),
        (example["adversarial"], f"adversarial:\n{classes[example['adv_pred']]} ({example['adv_conf']:.0%})"),
        (shown, f"perturbation\n(x{0.5 / scale:.0f})" if scale > 0 else "no perturbation"),
    ]
    return _titled_images(fig, axes, panels, SMALL + 1, title)


PAIR_LABELS = {"ft-pt": "fine-tuned vs pre-trained", "ft-st": "fine-tuned vs standard",
               "pt-st": "pre-trained vs standard"}


def similarity_bars(frame: pd.DataFrame, measure: str = "cca", reduction: str = "positions"):
    """Grouped bars per dataset, one panel per layer set (paper Figure 3 (a) and (b), and the stage mean).

    ``frame`` is :func:`nbs_lib.studies.ch02_cca_similarity.similarity_study`'s output; the chance level
    (ft against st on shuffled images) is drawn as a dashed tick over each group, and the
    legend sits under the panels.
    """
    sel = frame[(frame.measure == measure) & (frame.reduction == reduction)]
    datasets = list(dict.fromkeys(sel.dataset))
    panels = [(layers, title) for layers, title in (("bottom", "(a) bottom layer"), ("stages", "mean of the 4 stages"),
                                                    ("all", "(b) all layers")) if layers in set(sel.layers)]
    fig, axes = plt.subplots(1, len(panels), figsize=(page_width(2.3 * len(panels)), 3.4), sharey=True,
                             squeeze=False)
    width = 0.26
    for ax, (layers, title) in zip(axes[0], panels):
        part = sel[sel.layers == layers].set_index(["dataset", "pair"]).similarity
        for j, pair in enumerate(PAIR_COLORS):
            values = [part.get((d, pair), np.nan) for d in datasets]
            ax.bar(np.arange(len(datasets)) + (j - 1) * width, values, width, color=PAIR_COLORS[pair],
                   label=PAIR_LABELS[pair])
        chance = [part.get((d, "chance"), np.nan) for d in datasets]
        ax.hlines(chance, np.arange(len(datasets)) - 1.5 * width, np.arange(len(datasets)) + 1.5 * width,
                  colors="black", linestyles="dashed", linewidth=1, label="chance (shuffled images)")
        ax.set_xticks(np.arange(len(datasets)), datasets, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_title(title)
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel(f"{measure.upper()} similarity,\n{reduction} (0-100)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return fig


MMD_Y_LABELS = {"dr": "DR under PGD-10#0.5 (%)", "area": "robust-curve area on [0, 2/255] (%)",
                "median_eps": "median minimal radius (1/255)"}


def mmd_vs_dr(frame: pd.DataFrame, correlations: pd.DataFrame | None = None, y: str = "dr", ax=None):
    """Non-robustness of the fine-tuned model against the target's MMD from the source (Figure 6).

    ``y`` is the paper's ``"dr"`` or a measure that does not saturate (``"area"``,
    ``"median_eps"``; chapter 1). The standard models' value is drawn in grey for context
    (the paper plots only the fine-tuned model's); intervals are drawn where the frame has
    ``{y}_ci_low`` and ``{y}_ci_high``.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.4, 3.8))
    ax.scatter(frame.mmd, frame[y], color=MODEL_COLORS["full"], zorder=3, label="fine-tuned (full)")
    if f"{y}_ci_low" in frame:
        ax.errorbar(frame.mmd, frame[y], yerr=[frame[y] - frame[f"{y}_ci_low"], frame[f"{y}_ci_high"] - frame[y]],
                    fmt="none", ecolor=MODEL_COLORS["full"], alpha=0.6, zorder=2)
    standard = "dr_standard" if y == "dr" else f"{y}_standard"
    if standard in frame:
        ax.scatter(frame.mmd, frame[standard], marker="x", color="grey", zorder=2, label="standard")
    place_labels(ax, frame.mmd, frame[y], frame.dataset,
                 avoid=(frame.mmd, frame[standard]) if standard in frame else None)
    ax.set_xlabel("MMD$^2$ of target from source (pre-trained embedding)")
    ax.set_ylabel(MMD_Y_LABELS.get(y, y))
    if y in ("dr", "area"):
        ax.set_ylim(-3, 103)
    if correlations is not None:
        text = ", ".join(f"{r.correlation} {r.r:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                         for r in correlations.itertuples())
        ax.set_title(text, fontsize=SMALL)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def mmd_panels(frame: pd.DataFrame, correlations_by_measure: dict):
    """Figure 6 and the measures beside it: one :func:`mmd_vs_dr` panel per measure (``{y: correlations}``),
    stacked at the page's width so that each keeps the width of a figure of its own."""
    fig, axes = plt.subplots(len(correlations_by_measure), 1, squeeze=False,
                             figsize=(page_width(6.4), 4.2 * len(correlations_by_measure)))
    for ax, (y, correlations) in zip(axes[:, 0], correlations_by_measure.items()):
        mmd_vs_dr(frame, correlations, y=y, ax=ax)
    return fig


LABEL_OFFSETS = [(5, 4), (5, -4), (-5, 4), (-5, -4), (0, 8), (0, -8), (9, 0), (-9, 0)]  # points from the marker


def place_labels(ax, xs, ys, labels, fontsize: float = SMALL, avoid=None) -> None:
    """Label each point beside it where the label overlaps least with the labels placed
    before it, the markers (and the unlabelled markers at ``avoid = (xs, ys)``) and the axes'
    edges (a greedy search over eight positions)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def marker_boxes(px, py):
        points = ax.transData.transform(np.column_stack([np.asarray(px, float), np.asarray(py, float)]))
        return [(x - 4, y - 4, x + 4, y + 4) for x, y in points if np.isfinite([x, y]).all()]

    taken = marker_boxes(xs, ys) + (marker_boxes(*avoid) if avoid is not None else [])
    frame = ax.get_window_extent(renderer)
    for (x, y), label in zip(zip(xs, ys), labels):
        best = None
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center",
                               va="bottom" if dy > 0 else "top" if dy < 0 else "center")
            box = text.get_window_extent(renderer)
            box = (box.x0, box.y0, box.x1, box.y1)
            cost = sum(_overlap(box, other) for other in taken) + 10 * _outside(box, frame)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _outside(box, frame) -> float:
    inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
    return (box[2] - box[0]) * (box[3] - box[1]) - inside


def uap_sweep_grid(uaps: dict, masks: dict, classes, budgets, models=("full", "standard")):
    """Figure 4(a) over the budget sweep: per model and letter, the letter's glyph, then its UAP
    (contrast-stretched) at every budget, and the gradient map's place left to :func:`gradient_grid`."""
    from nbs_lib.methods.uap import perturbation_image

    letters = sorted({key[1] for key in uaps})
    rows = [(m, t) for m in models for t in letters]
    cell = min(1.25, (PAGE_WIDTH_IN - 1.0) / (len(budgets) + 1))
    fig, axes = plt.subplots(len(rows), len(budgets) + 1, figsize=(cell * (len(budgets) + 1) + 1.0,
                                                                   (cell + 0.1) * len(rows) + 0.3), squeeze=False)
    for i, (name, letter) in enumerate(rows):
        axes[i, 0].imshow(masks[letter].numpy(), cmap="gray_r", interpolation="nearest")
        axes[i, 0].set_ylabel(f"{caption(MODEL_LABELS.get(name, name), 10)}\n{classes[letter]}", fontsize=SMALL)
        for j, (norm, eps) in enumerate(budgets, start=1):
            image = perturbation_image(uaps[(name, letter, norm, eps)].delta, "rescaled")[0]
            axes[i, j].imshow(to_numpy_image(image), interpolation="nearest")
            if i == 0:
                axes[i, j].set_title(f"L2\n{eps:g}" if norm == "L2" else f"L-inf\n{eps:g}", fontsize=SMALL)
        if i == 0:
            axes[i, 0].set_title("glyph", fontsize=SMALL)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def gradient_grid(grads: dict, classes, models=("full", "standard")):
    """Figure 4(b): the mean input gradient towards each letter, per model."""
    letters = sorted({t for _, t in grads})
    cell = min(1.6, (PAGE_WIDTH_IN - 0.6) / len(letters))
    fig, axes = plt.subplots(len(models), len(letters), figsize=(cell * len(letters) + 0.6, (cell + 0.2) * len(models)),
                             squeeze=False)
    for i, name in enumerate(models):
        for j, letter in enumerate(letters):
            axes[i, j].imshow(to_numpy_image(grads[(name, letter)]["image"]), interpolation="nearest")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(f"towards {classes[letter]}", fontsize=SMALL)
        axes[i, 0].set_ylabel(caption(MODEL_LABELS.get(name, name), 10), fontsize=SMALL)
    fig.tight_layout()
    return fig


def uap_budget_curves(table: pd.DataFrame):
    """Targeted success (with its 95% interval) against the budget, per threat model, for both models."""
    norms = list(dict.fromkeys(table["norm"]))
    fig, axes = plt.subplots(1, len(norms), figsize=(page_width(3.4 * len(norms)), 3.1), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, norm in zip(axes[0], norms):
        part = table[table["norm"] == norm]
        for k, letter in enumerate(dict.fromkeys(part["letter"])):
            for name in dict.fromkeys(part["model"]):
                g = part[(part["letter"] == letter) & (part["model"] == name)].sort_values("eps")
                yerr = np.clip([g["success %"] - g["success low"], g["success high"] - g["success %"]], 0, None)
                ax.errorbar(g["eps"], g["success %"], yerr=yerr,
                            color=MODEL_COLORS.get(name), linestyle=styles[k % len(styles)], marker="o",
                            markersize=3, capsize=2, label=f"{MODEL_LABELS.get(name, name)}, {letter}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L2 radius on [0, 1]" if norm == "L2" else "L-inf radius (1/255)")
        ax.set_ylabel("targeted success (%)")
        ax.set_ylim(-3, 103)
        ax.axhline(50, color="grey", linewidth=0.7, linestyle=":")
    fig.tight_layout()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return fig


def uap_success_curves(curve: pd.DataFrame):
    """Figure 5(a): the final UAP's targeted success along the model's training, its clean accuracy beside it."""
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    ax.plot(curve.epoch, curve.success, marker="o", markersize=3, color=MODEL_COLORS.get("full"),
            label="targeted success of the final UAP")
    ax.plot(curve.epoch, curve["clean accuracy"], marker="s", markersize=3, color="0.35", linestyle="--",
            label="clean test accuracy")
    ax.set_xlabel("epoch of fine-tuning (first point: after the first update)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.legend()
    fig.tight_layout()
    return fig


def uap_transfer_bars(transfer: pd.DataFrame):
    """Figure 5(b): the fine-tuned-minus-standard DR gap under each perturbation, with its 95% interval."""
    perturbations = list(dict.fromkeys(transfer["perturbation"]))
    datasets = list(dict.fromkeys(transfer["dataset"]))
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 3.2))
    width = 0.8 / len(perturbations)
    colors = [PALETTE[0], PALETTE[4], "#b0b0b0", PALETTE[2]]
    for k, name in enumerate(perturbations):
        part = transfer[transfer["perturbation"] == name].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (k - (len(perturbations) - 1) / 2) * width
        gap = part["DR gap (full - standard)"]
        yerr = np.clip([gap - part["gap low"], part["gap high"] - gap], 0, None)
        ax.bar(x, gap, width, color=colors[k % len(colors)], label=name, yerr=yerr, capsize=2)
    ax.axhline(0, color="black", linewidth=0.7)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("DR fine-tuned - DR standard\n(points)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def uap_panel(image: torch.Tensor, uap, alone: dict, gradient: torch.Tensor, perturbed_pred: str,
              clean_pred: str, title: str = ""):
    """One model and target: an image, the image with the UAP, the UAP (stretched), the UAP
    alone as the model sees it with its prediction, and the gradient map."""
    from nbs_lib.methods.uap import apply_perturbation, perturbation_image

    panels = [(image, f"image:\n{clean_pred}"),
              (apply_perturbation(image[None], uap.delta)[0], f"with UAP:\n{perturbed_pred}"),
              (perturbation_image(uap.delta, "rescaled")[0], "UAP\n(stretched)"),
              (alone["image"], f"UAP alone:\n{alone['pred_name']} ({alone['confidence']:.0%})"),
              (gradient, "gradient\nto target")]
    fig, axes = plt.subplots(1, len(panels), figsize=(page_width(1.3 * len(panels)), 2.0))
    return _titled_images(fig, axes, panels, SMALL, title)


def dr_vs_size(ours: pd.DataFrame, paper: pd.DataFrame):
    """Table 3 as a figure: mean DR (and AOI) against backbone size, ours beside the paper's."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 3.0))
    mean = ours.groupby("backbone", sort=False)[["size_mb", "aoi", "dr"]].mean()
    names = ", ".join(name.replace("efficientnet_", "") for name in mean.index)
    for ax, metric in zip(axes, ("dr", "aoi")):
        ax.plot(mean.size_mb, mean[metric], marker="o", color=MODEL_COLORS["full"], label=f"this book ({names})")
        ax.plot(paper.size_mb, paper[metric], marker="s", color="grey", linestyle="--",
                label=f"paper ({len(paper)} ResNets)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(mpl.ticker.FixedLocator([10, 20, 50, 100, 200, 500]))
        ax.xaxis.set_major_formatter(mpl.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
        ax.set_xlabel("backbone size (MB, log scale)")
        ax.set_ylabel(f"mean {metric.upper()} of the\nfine-tuned models (%)")
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return fig


def feature_visualisation_grid(visuals, row_labels: list[str], size: float = 1.1, title: str | None = None):
    """Fig. 1 of the second work: one row per source model, one column per component; ``title``
    goes above the components' labels."""
    n_rows, n_cols = len(visuals), len(visuals[0].components)
    size = min(size, (PAGE_WIDTH_IN - 1.3) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * size + 1.3, n_rows * size * 1.15), squeeze=False)
    if title:
        fig.suptitle(title, y=1.0 + 0.05 / (n_rows * size * 1.15))
    for r, vis in enumerate(visuals):
        panels = [(img, f"#{c}" if r == 0 else "") for img, c in zip(vis.images, vis.components)]
        _titled_images(fig, axes[r], panels, SMALL)
        axes[r, 0].text(-0.1, 0.5, caption(row_labels[r], 16), transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=SMALL)
    return fig


def before_after_grid(rows: list[tuple[str, list[tuple[torch.Tensor, str]]]], size: float = 1.1):
    """Rows of captioned images, each row labelled on its left (anti-robust and robustified examples)."""
    n_cols = max(len(panels) for _, panels in rows)
    size = min(size, (PAGE_WIDTH_IN - 1.3) / n_cols)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * size + 1.3, len(rows) * (size + 0.45)),
                             squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for ax in axes[r, len(panels):]:
            ax.axis("off")
        _titled_images(fig, axes[r], [(img, caption(text, 12)) for img, text in panels], SMALL)
        axes[r, 0].text(-0.12, 0.5, caption(label, 12), transform=axes[r, 0].transAxes, ha="right", va="center",
                        fontsize=SMALL)
    return fig


def transfer_curve_grid(curves: pd.DataFrame, hue: str = "source_eps", hue_title: str = "source eps (/255)"):
    """Fig. 3 of the second work: test accuracy against epochs, one line per source model (the
    mean over training seeds, with a band spanning the seeds when there are several), one panel
    per dataset variant (columns) and transfer mode (rows). Sources are told apart by a
    colour-blind-safe palette, numeric radii in increasing order."""
    frame = curves.assign(panel=curves.dataset + " / " + curves.variant)
    order = sorted(frame[hue].unique())
    if pd.api.types.is_numeric_dtype(frame[hue]):
        frame[hue], order = frame[hue].map(lambda v: f"{v:g}"), [f"{v:g}" for v in order]
    grid = sns.relplot(data=frame, x="epoch", y="accuracy", hue=hue, hue_order=order, row="mode", col="panel",
                       kind="line", marker="o", height=2.4, aspect=1.15, errorbar=("pi", 100),
                       palette=sns.color_palette("colorblind", len(order)),
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.set_axis_labels("epoch", "test accuracy (%)")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    if grid.legend is not None:  # below the panels, clear of the row titles on the right
        seeds = frame["seed"].nunique() if "seed" in frame else 1
        sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(order), 3), frameon=False,
                        title=hue_title + (f" (band: range over {seeds} seeds)" if seeds > 1 else ""))
    return grid.figure


def lambda_sweep_plot(sweep: pd.DataFrame, a_priori: float):
    """Chapter 6's sensitivity study: AOI and AAI against eq. 5's lambda, the a-priori value marked."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(sweep.lipschitz_weight, sweep.aoi, marker="o", color=PALETTE[0], label="AOI (clean)")
    ax.plot(sweep.lipschitz_weight, sweep.aai, marker="s", color=PALETTE[3], label="AAI (PGD-10#0.5)")
    positive = [w for w in sweep.lipschitz_weight if w > 0]
    ax.set_xscale("symlog", linthresh=min(positive, default=1.0))
    ax.axvline(a_priori, color="0.4", linestyle="--", linewidth=1)
    ax.text(a_priori, 1.02, "a-priori lambda", transform=ax.get_xaxis_transform(), ha="center", fontsize=SMALL)
    ax.set_xlabel("lambda (eq. 5)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig
