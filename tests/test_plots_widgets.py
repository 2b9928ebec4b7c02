import matplotlib

matplotlib.use("Agg")

import ipywidgets as W
import pandas as pd

from nbs_lib.data.registry import load_dataset
from nbs_lib.models.registry import load_model
from nbs_lib.report.plots import claims_forest, example_grid, robust_accuracy_curves, training_curves
from nbs_lib.report.widgets import (
    adversarial_explorer,
    dataset_browser,
    linked_selector,
)


def _links(box) -> list[tuple[list, list]]:
    """(source, target) of every client-side link in ``box``'s embedded state (what the static page runs)."""
    from ipywidgets.embed import embed_data

    state = embed_data(views=[box])["manager_state"]["state"]
    return [(s["state"]["source"], s["state"]["target"]) for s in state.values()
            if s["model_name"] == "LinkModel"]


def test_linked_selector_links_control_and_stack():
    box = linked_selector({"a": W.Label("A"), "b": W.Label("B")}, "pick")
    control, stack = box.children
    assert isinstance(stack, W.Stack) and len(stack.children) == 2
    wanted = ([f"IPY_MODEL_{control.model_id}", "index"], [f"IPY_MODEL_{stack.model_id}", "selected_index"])
    assert wanted in _links(box), "the control is not linked to the stack in the browser (jslink)"


def test_dataset_browser_has_one_panel_per_class():
    ds = load_dataset("digits", "test", "smoke")
    box = dataset_browser({"digits": ds}, per_class=2)
    dataset_stack = box.children[1]
    class_stack = dataset_stack.children[0].children[1]
    assert len(class_stack.children) == 10
    assert all(isinstance(c, W.Image) and len(c.value) > 100 for c in class_stack.children)


def test_adversarial_explorer_panels():
    ds = load_dataset("digits", "test", "smoke")
    model = load_model("resnet18", num_classes=10)
    box = adversarial_explorer({("digits", "standard"): model},
                               {"digits": (ds.images, ds.labels, ds.classes)}, [0, 2], device="cpu")
    eps_stack = box.children[1].children[0].children[1].children[0].children[1]
    assert len(eps_stack.children) == 2


def test_figures_draw():
    ds = load_dataset("digits", "test", "smoke")
    assert len(example_grid({"digits": ds}, per_row=5).axes) == 5
    from nbs_lib.data.images import LabeledImages  # a lazy set (paper-size data): images is None
    lazy = LabeledImages("digits", "test", ds.classes, ds.labels, fetch=lambda i: ds.images[i])
    assert lazy.images is None and len(example_grid({"digits": lazy}, per_row=5).axes) == 5
    hist = pd.DataFrame({"dataset": ["d"] * 4, "model": ["standard", "standard", "full", "full"],
                         "epoch": [1, 2, 1, 2], "val_acc": [10, 20, 30, 40.0]})
    assert training_curves(hist) is not None
    curves = pd.DataFrame({"dataset": ["d"] * 8, "model": (["standard"] * 2 + ["full"] * 2) * 2,
                           "seed": [0] * 4 + [1] * 4, "eps": [0, 1] * 4, "accuracy": [90, 50, 95, 5.0, 88, 40, 96, 3]})
    assert robust_accuracy_curves(curves) is not None
    claims = pd.DataFrame({"claim": ["a", "b"], "dataset": ["d", "d"], "measure": ["m", "m"],
                           "difference": [1.0, -2.0], "ci_low": [0.5, -3.0], "ci_high": [1.5, 0.5],
                           "verdict": ["reproduced", "no clear difference"]})
    fig = claims_forest(claims, "m")
    assert len(fig.axes[0].get_yticklabels()) == 2
