"""Every figure of the book fits the page and its text reads at 9 pt or more there
(issue: a book a reader enjoys, part 4). Each figure function draws from inputs shaped
like a chapter's (seven targets where the paper has seven, the book's labels), and
:func:`nbs_lib.report.style.rendered_font_sizes` measures its text as shown on the page."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from nbs_lib.data.registry import load_dataset
from nbs_lib.report import plots
from nbs_lib.report.style import MIN_FONT_PT, PAGE_WIDTH_PX, rendered_font_sizes, rendered_scale

TARGETS = ["pets", "nico", "flowers", "cars", "food", "cifar10", "alphabet"]
MINI = ["alphabet", "fashion_mnist", "mnist", "digits"]
MODELS = ["standard", "partial", "partial_bn", "full"]
rng = np.random.default_rng(0)


def _image(size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))


def _grid(rows):
    return pd.DataFrame(rows)


def example_grid():
    sets = {name: load_dataset(name, "train", "smoke") for name in ("alphabet", "fashion_mnist", "digits")}
    return plots.example_grid(sets, per_row=10)


def training_curves():
    return plots.training_curves(_grid([{"dataset": d, "model": m, "epoch": e, "val_acc": rng.uniform(50, 100)}
                                        for d in MINI for m in MODELS for e in range(1, 5)]))


def robust_accuracy_curves():
    return plots.robust_accuracy_curves(_grid([{"dataset": d, "model": m, "seed": s, "eps": e,
                                                "accuracy": 100 * np.exp(-e * (k + 1))}
                                               for d in MINI for k, m in enumerate(MODELS) for s in (0, 1)
                                               for e in np.arange(0, 4.25, 0.25)]))


def decline_ratio_bars():
    return plots.decline_ratio_bars(_grid([{"attack": "PGD-10#0.5", "seed": s, "dataset": d, "model": m,
                                            "dr": 50.0, "dr_ci_low": 45.0, "dr_ci_high": 55.0}
                                           for d in MINI for m in MODELS for s in (0, 1, 2)]), "PGD-10#0.5")


def claims_forest():
    rows = [{"claim": "full is less robust than standard", "dataset": d, "measure": "median minimal radius",
             "difference": -1.0, "ci_low": -2.0, "ci_high": -0.5, "verdict": "reproduced"} for d in MINI]
    return plots.claims_forest(_grid(rows), "median minimal radius")


def adversarial_panel():
    example = {"image": _image(), "adversarial": _image(), "perturbation": _image() * 0.01 - 0.005,
               "clean_pred": 0, "clean_conf": 0.97, "adv_pred": 1, "adv_conf": 0.88}
    return plots.adversarial_panel(example, ["T-shirt/top", "Ankle boot"], "full fine-tune, PGD-10 at 2/255")


def similarity_bars():
    rows = [{"measure": "cca", "reduction": "positions", "dataset": d, "pair": p, "layers": layers,
             "similarity": rng.uniform(20, 90)}
            for d in MINI for p in ("ft-pt", "ft-st", "pt-st", "chance") for layers in ("bottom", "stages", "all")]
    return plots.similarity_bars(_grid(rows))


def mmd_vs_dr():
    frame = _grid([{"dataset": d, "mmd": rng.uniform(0, 1), "dr": rng.uniform(60, 100), "dr_ci_low": 50.0,
                    "dr_ci_high": 100.0, "dr_standard": 20.0} for d in TARGETS])
    correlations = _grid([{"correlation": "Spearman", "r": 0.79, "ci_low": 0.1, "ci_high": 0.97},
                          {"correlation": "Pearson", "r": 0.7, "ci_low": 0.0, "ci_high": 0.95}])
    return plots.mmd_vs_dr(frame, correlations)


def mmd_panels():
    """Chapter 4's figure: Figure 6's DR and the curve area, one panel each."""
    frame = _grid([{"dataset": d, "mmd": rng.uniform(0, 1), "dr": rng.uniform(60, 100), "area": rng.uniform(0, 60),
                    "dr_standard": 20.0, "area_standard": 40.0} for d in TARGETS])
    correlations = _grid([{"correlation": "Spearman", "r": -0.82, "ci_low": -1.0, "ci_high": -0.06},
                          {"correlation": "Pearson", "r": -0.7, "ci_low": -0.95, "ci_high": 0.1}])
    return plots.mmd_panels(frame, {"dr": correlations, "area": correlations})


BUDGETS = [("L2", 1.0), ("L2", 2.0), ("L2", 4.0), ("Linf", 2.0), ("Linf", 4.0), ("Linf", 8.0), ("Linf", 16.0)]


def uap_sweep_grid():
    uaps = {(m, t, n, e): SimpleNamespace(delta=torch.randn(1, 3, 32, 32) * 0.01)
            for m in ("full", "standard") for t in (0, 4) for n, e in BUDGETS}
    masks = {t: torch.rand(32, 32) for t in (0, 4)}
    return plots.uap_sweep_grid(uaps, masks, [chr(65 + i) for i in range(26)], BUDGETS)


def gradient_grid():
    grads = {(m, t): {"image": _image()} for m in ("full", "standard") for t in range(4)}
    return plots.gradient_grid(grads, [chr(65 + i) for i in range(26)])


def uap_budget_curves():
    rows = [{"norm": n, "letter": t, "model": m, "eps": e, "success %": 50.0, "success low": 40.0,
             "success high": 60.0} for n, e in BUDGETS for t in ("A", "E") for m in ("full", "standard")]
    return plots.uap_budget_curves(_grid(rows))


def uap_success_curves():
    return plots.uap_success_curves(_grid({"epoch": [0.1, 1, 2, 3], "success": [60, 70, 80, 90],
                                           "clean accuracy": [40, 80, 90, 95]}))


def uap_transfer_bars():
    rows = [{"perturbation": p, "dataset": d, "DR gap (full - standard)": 10.0, "gap low": 5.0, "gap high": 15.0}
            for p in ("fine-tuned UAP", "pre-trained UAP", "random noise", "transplanted UAP") for d in MINI]
    return plots.uap_transfer_bars(_grid(rows))


def uap_panel():
    alone = {"image": _image(), "pred_name": "E", "confidence": 0.91}
    return plots.uap_panel(_image(), SimpleNamespace(delta=torch.randn(1, 3, 32, 32) * 0.01), alone, _image(),
                           "E", "A", "full fine-tune, target E")


def dr_vs_size():
    ours = _grid([{"backbone": f"efficientnet_lite{k}", "dataset": d, "size_mb": 13.0 + 3 * k, "aoi": 90.0,
                   "dr": 95.0 - k} for k in range(3) for d in MINI])
    paper = _grid({"size_mb": [42.7, 90, 170, 255, 477], "aoi": [90.2, 91, 92, 92.5, 93.0],
                   "dr": [81.5, 78, 75, 72, 69.1]})
    return plots.dr_vs_size(ours, paper)


def feature_visualisation_grid():
    visuals = [SimpleNamespace(images=[_image() for _ in range(6)], components=[11, 205, 318, 590, 777, 1201])
               for _ in range(3)]
    return plots.feature_visualisation_grid(visuals, ["ImageNet teacher", "rung 0.5/255", "rung 2/255"],
                                            title="Fourier parametrisation with jitter")


def before_after_grid():
    rows = [("mnist, anti-robust", [(_image(), "x: 3"), (_image(), "x': C says 7"), (_image(), "x: 1")]),
            ("robustified photo", [(_image(), "original crop"), (_image(), "matched to the 2/255 rung")])]
    return plots.before_after_grid(rows)


def transfer_curve_grid():
    rows = [{"dataset": "mnist", "variant": v, "source_eps": s, "mode": mode, "epoch": e, "seed": seed,
             "accuracy": rng.uniform(10, 95)}
            for v in ("standard", "anti-robust") for s in (0.0, 0.5, 2.0) for mode in ("fixed-feature", "full")
            for e in range(1, 4) for seed in (0, 1)]
    return plots.transfer_curve_grid(_grid(rows))


def lambda_sweep_plot():
    sweep = _grid({"lipschitz_weight": [0, 1e-6, 1.2e-5, 1e-4, 1e-3], "aoi": [93, 93, 92, 90, 80],
                   "aai": [2, 5, 20, 40, 60]})
    return plots.lambda_sweep_plot(sweep, 1.2e-5)


FIGURES = [example_grid, training_curves, robust_accuracy_curves, decline_ratio_bars, claims_forest,
           adversarial_panel, similarity_bars, mmd_vs_dr, mmd_panels, uap_sweep_grid, gradient_grid, uap_budget_curves,
           uap_success_curves, uap_transfer_bars, uap_panel, dr_vs_size, feature_visualisation_grid,
           before_after_grid, transfer_curve_grid, lambda_sweep_plot]


@pytest.mark.parametrize("draw", FIGURES, ids=[f.__name__ for f in FIGURES])
def test_figure_text_reads_at_nine_points_on_the_page(draw):
    fig = draw()
    try:
        small = [(text, round(pt, 1)) for text, pt in rendered_font_sizes(fig) if pt < MIN_FONT_PT - 0.05]
        assert not small, f"text under {MIN_FONT_PT} pt at the page's width (scale {rendered_scale(fig):.2f}): {small[:5]}"
    finally:
        plt.close(fig)


def test_the_measure_sees_a_figure_shrunk_to_the_page():
    fig, ax = plt.subplots(figsize=(2 * PAGE_WIDTH_PX / 100, 2))
    ax.set_title("a title", fontsize=12)
    sizes, scale = dict(rendered_font_sizes(fig)), rendered_scale(fig)
    plt.close(fig)
    assert sizes["a title"] == pytest.approx(12 * 100 / 96 * scale, rel=1e-6)
    assert sizes["a title"] < 9  # about twice the page's width: shown much smaller


def test_mmd_labels_keep_off_the_standard_models_crosses():
    """Chapter 4's Figure 6: a dataset's label had covered a standard model's grey cross (issue 22)."""
    # shapes' cross sits where alphabet's label goes first (right of and above alphabet's dot)
    frame = pd.DataFrame({"dataset": ["mnist", "alphabet", "shapes", "digits"], "mmd": [0.0, 0.5, 0.53, 1.0],
                          "dr": [10.0, 50.0, 90.0, 90.0], "dr_standard": [30.0, 80.0, 54.5, 70.0]})
    fig = plots.mmd_vs_dr(frame)
    try:
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        crosses = ax.transData.transform(np.column_stack([frame.mmd, frame.dr_standard]))
        for label in ax.texts:
            box = label.get_window_extent(renderer)
            assert not any(box.x0 - 3 < x < box.x1 + 3 and box.y0 - 3 < y < box.y1 + 3 for x, y in crosses), \
                f"{label.get_text()!r} covers a cross"
    finally:
        plt.close(fig)


def test_example_grid_row_labels_stay_within_their_row():
    sets = {name: load_dataset(name, "train", "smoke") for name in ("alphabet", "alphabet-lowres")}
    fig = plots.example_grid(sets, per_row=13)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [t for t in fig.texts + [t for ax in fig.axes for t in ax.texts] if t.get_rotation() == 90]
        first, second = (label.get_window_extent(renderer) for label in labels)
        assert first.y0 >= second.y1, f"{labels[0].get_text()!r} and {labels[1].get_text()!r} overlap"
    finally:
        plt.close(fig)


def test_example_grid_captions_keep_apart():
    """Class names under neighbouring images do not run into each other or into the row above
    (chapter 4's 'hubble_deep_field' and 'immunohistochemistry' overlapped in its grid)."""
    sets = {name: load_dataset(name, "train", "smoke") for name in ("photo_patches", "textures", "shapes")}
    fig = plots.example_grid(sets, per_row=10)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for row in range(len(sets)):
            axes = [ax for ax in fig.axes[row * 10:(row + 1) * 10] if ax.get_title()]
            boxes = [ax.title.get_window_extent(renderer) for ax in axes]
            for (left, a), (right, b) in zip(zip(axes, boxes), zip(axes[1:], boxes[1:])):
                assert a.x1 <= b.x0, f"{left.get_title()!r} runs into {right.get_title()!r}"
            if row:  # a caption stays below the images of the row above
                above = min(ax.get_window_extent(renderer).y0 for ax in fig.axes[(row - 1) * 10:row * 10])
                assert max(box.y1 for box in boxes) <= above, f"row {row}'s captions reach into the row above"
    finally:
        plt.close(fig)
