"""ipywidgets explorers that also work in the static, offline book.

Python callbacks do not run in a static HTML page, so every explorer here is built
from pre-rendered panels in a :class:`ipywidgets.Stack` whose visible child is linked
client-side (``jslink``) to a selection control. The same widget works live in
Jupyter and in the built book.
"""

from __future__ import annotations

import ipywidgets as W
import torch

from nbs_lib.report.plots import example_grid, figure_png


def linked_selector(panels: dict, description: str, control: str = "dropdown") -> W.VBox:
    """A control over the keys of ``panels`` that shows the matching panel (widget)."""
    labels = [str(k) for k in panels]
    if control == "toggle":
        chooser = W.ToggleButtons(options=[(label, i) for i, label in enumerate(labels)],
                                  description=description, style={"button_width": "auto"})
    elif control == "slider":
        chooser = W.SelectionSlider(options=[(label, i) for i, label in enumerate(labels)],
                                    description=description)
    else:
        chooser = W.Dropdown(options=[(label, i) for i, label in enumerate(labels)],
                             description=description)
    stack = W.Stack(list(panels.values()), selected_index=0)
    W.jslink((chooser, "index"), (stack, "selected_index"))
    return W.VBox([chooser, stack])


def png_widget(fig, width: int | None = None) -> W.Image:
    kwargs = {"width": width} if width else {}
    return W.Image(value=figure_png(fig), format="png", **kwargs)


def dataset_browser(datasets: dict, per_class: int = 8) -> W.VBox:
    """Pick a dataset, then a class, and see ``per_class`` of its images."""
    dataset_panels = {}
    for name, ds in datasets.items():
        class_panels = {}
        for c, cls in enumerate(ds.classes):
            idx = (ds.labels == c).nonzero().flatten()[:per_class]
            sub = ds.subset(idx.tolist())
            # shown at its own size: the grid is made no wider than the page (nbs_lib.report.style)
            class_panels[f"{c}: {cls}"] = png_widget(example_grid({name: sub}, per_row=per_class, size=0.9))
        dataset_panels[name] = linked_selector(class_panels, "class")
    return linked_selector(dataset_panels, "dataset", control="toggle")


def adversarial_explorer(models: dict, samples: dict, eps_list, attack_name: str = "PGD-10",
                         device="auto", index: int = 0) -> W.VBox:
    """Pick dataset, model and epsilon: a test image, its adversarial version, the perturbation.

    ``models`` maps ``(dataset, regime)`` to a trained model (or :class:`TrainedModel`),
    ``samples`` maps ``dataset`` to ``(images, labels, classes)``. Every panel is computed
    here (PGD on one image per combination), so the explorer also works statically.
    """
    from nbs_lib.methods.evaluate import adversarial_example
    from nbs_lib.report.plots import adversarial_panel

    by_dataset: dict = {}
    for (dataset, regime), model in models.items():
        model = getattr(model, "model", model)
        images, labels, classes = samples[dataset]
        eps_panels = {}
        for eps in eps_list:
            spec = f"{attack_name}#{float(eps)}"
            example = adversarial_example(model, images[index], int(labels[index]), spec, device)
            title = f"{dataset} / {regime} / {spec} (true: {classes[int(labels[index])]})"
            eps_panels[f"{float(eps):g}/255"] = png_widget(adversarial_panel(example, classes, title))
        by_dataset.setdefault(dataset, {})[regime] = linked_selector(eps_panels, "epsilon", "slider")
    return linked_selector({d: linked_selector(m, "model", "toggle") for d, m in by_dataset.items()},
                           "dataset", "toggle")


def uap_explorer(models: dict, uaps: dict, grads: dict, image: torch.Tensor, classes,
                 device="auto") -> W.VBox:
    """Pick a target class, then a model: its UAP on an image, alone, and its gradient map.

    ``models`` maps a model name to a trained model, ``uaps`` and ``grads`` map
    ``(name, target)`` to a :class:`nbs_lib.methods.uap.UAPResult` and a gradient entry
    (:func:`nbs_lib.studies.ch03_uap.gradient_maps`). Panels are pre-rendered (static-safe).
    """
    from nbs_lib.methods.uap import perturbation_alone, predictions
    from nbs_lib.report.plots import uap_panel

    by_target: dict = {}
    for (name, target), uap in uaps.items():
        model = getattr(models[name], "model", models[name])
        alone = perturbation_alone(model, uap.delta, classes, target, device=device)
        clean = classes[int(predictions(model, image[None], None, device=device)[0])]
        perturbed = classes[int(predictions(model, image[None], uap.delta, device=device)[0])]
        fig = uap_panel(image, uap, alone, grads[(name, target)]["image"], perturbed, clean,
                        f"{name}, target {classes[target]}")
        by_target.setdefault(classes[target], {})[name] = png_widget(fig)
    return linked_selector({t: linked_selector(m, "model", "toggle") for t, m in by_target.items()},
                           "target", "toggle")
