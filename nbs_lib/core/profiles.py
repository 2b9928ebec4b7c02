"""Named run sizes (``smoke``, ``mini``, ``paper``), device choice and seeding.

A profile fixes how big every experiment of the book is. A notebook picks one by
name and may override single fields through its papermill parameters::

    prof = get_profile("mini", epochs=3)

``smoke`` exercises every code path in seconds (numbers meaningless), ``mini`` is the
CPU-sized default that the published book is executed with, ``paper`` follows the
paper's settings (ResNet-18, 224x224, 90 epochs, batch 128) on a user's GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Sizes of one run. All fields can be overridden with :func:`get_profile`."""

    name: str
    image_size: int  # side of the square images every dataset is resized to
    train_per_class: int  # training images per class (before the validation split)
    test_per_class: int  # test images per class
    val_fraction: float  # share of the training set held out to choose learning rates
    epochs: int  # fine-tuning epochs of a target model (partial and full)
    epochs_standard: int  # epochs of the standard model, trained from scratch: it needs more to plateau
    batch_size: int
    attack_samples: int  # test images every attack is evaluated on
    autoattack_samples: int  # AutoAttack is costly: it may use fewer images
    autoattack_steps: int  # APGD/APGD-T/FAB iterations (100 in standard AutoAttack)
    autoattack_queries: int  # Square's query budget (5000 in standard AutoAttack)
    lr_grid_f: tuple = (3e-4,)  # learning rates tried for the feature extractor f
    lr_grid_g: tuple = (3e-3,)  # learning rates tried for the classifier g
    lr_grid_standard: tuple = (1e-3,)  # learning rates tried for the standard model (all of it)
    augment: str = "none"  # training augmentation: none, crop, crop_flip
    min_steps: int = 0  # fine-tuning runs at least this many optimizer steps (small sets get more epochs)
    head_l2_grid: tuple = (1e-4, 1e-3, 1e-2)  # L2 strengths tried for a partial model's head fitted to convergence
    head_rounds: int = 50  # at most this many rounds of 20 L-BFGS iterations for that head
    fresh_samples: tuple = ("alphabet",)  # datasets whose standard model draws new images every epoch
    epochs_fresh: int = 20  # epochs of such a standard model (each on new images; mini: 99.6% validation by 19)
    arch: str = "efficientnet_lite0"  # the pre-trained backbone of the chapters
    datasets: tuple = ("alphabet", "fashion_mnist", "mnist", "digits")
    num_workers: int = 0
    similarity_images: int = 1000  # images the layer-similarity measures (CCA, CKA) are computed on
    uap_steps: int = 100  # optimisation steps per universal adversarial perturbation (chapter 3)
    uap_method: str = "universal PGD"  # how chapter 3 makes UAPs: "universal PGD" or "generator" (Poursaeed et al.)
    source_arch: str = "resnet18"  # backbone of the source models pre-trained here (Table 4, chapter 5)
    source_image_size: int = 32  # their image size (and that of the targets fine-tuned from them)
    source_per_class: int = 200  # training images per class of a source dataset
    source_epochs: int = 20  # epochs of source pre-training
    transfer_epochs: int = 6  # epochs of each transfer curve (chapter 7)
    feature_vis_steps: int = 200  # gradient steps of a feature visualisation (chapter 7)
    robustify_steps: int = 200  # gradient steps per image of the robustified source (chapter 7)
    robustify_pool: int = 128  # photograph crops robustified for chapter 7's source-modification experiment
    pool_distill_steps: int = 300  # distillation steps of a source made on such a fixed pool of crops
    transfer_seeds: tuple = (0, 1)  # training seeds of every transfer curve (chapter 7's seed bands)
    # robust ImageNet sources made offline (chapters 5-7, nbs_lib.studies.imagenet_sources): radii (1/255) of
    # the self-distilled ladder (0: the control rung) and its training (nbs_lib.methods.train.self_distill)
    ladder_radii: tuple = (0.0, 0.5, 2.0)
    distill_steps: int = 1500
    distill_batch_size: int = 32
    distill_lr: float = 1e-4
    distill_attack_steps: int = 3
    distill_robust_weight: float = 1.0
    distill_target: str = "logits"
    ladder_validation_crops: int = 256  # held-out crops every rung is validated on
    natural_sets_whole: bool = False  # the natural-image targets whole, ignoring the per-class caps (paper)
    train_seeds: tuple = (0,)  # training seeds of the decisive contrasts (chapter 1's three models)
    # L-inf radii (1/255) of the minimal-radius ladder: 0.125 apart up to 2, then wider up to 16
    radius_grid: tuple = tuple(r / 8 for r in range(1, 17)) + (2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
    # bisections below the ladder's first rung for the images it breaks there (3: to 1/64 of 1/255)
    radius_floor_iterations: int = 3

    def replace(self, **overrides) -> "Profile":
        """A copy with some fields changed; an unknown field or a value of the wrong type is an error.

        Lists are accepted where a field holds a tuple (papermill and YAML give lists); ints
        where it holds a float. Sizes, epochs and step counts must be positive.
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"Unknown profile field(s) {unknown}; the fields are {sorted(fields)}. "
                             "Check the spelling in the notebook's `overrides`.")
        checked = {name: _checked(name, value, fields[name]) for name, value in overrides.items()}
        return dataclasses.replace(self, **checked)


_NON_NEGATIVE = ("min_steps", "num_workers", "radius_floor_iterations")


def _checked(name: str, value, current):
    """``value`` for the field ``name`` (whose current value is ``current``), or a clear error."""
    kind = type(current)
    if kind is tuple and isinstance(value, list):
        value = tuple(value)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ValueError(f"Profile field {name!r} takes a {kind.__name__} (like {current!r}); "
                         f"got {value!r} ({type(value).__name__}).")
    if kind is tuple and current:
        value = tuple(_checked_item(name, item, current[0]) for item in value)
    if kind is int:
        lowest = 0 if name in _NON_NEGATIVE else 1
        if value < lowest:
            raise ValueError(f"Profile field {name!r} must be >= {lowest}; got {value}.")
    if name == "val_fraction" and not 0 <= value < 1:
        raise ValueError(f"Profile field 'val_fraction' must be in [0, 1); got {value}.")
    return value


def _checked_item(name: str, item, example):
    """One element of a tuple field, of the type of the default's elements (ints accepted for floats)."""
    if isinstance(example, float) and isinstance(item, int) and not isinstance(item, bool):
        return float(item)
    if type(item) is not type(example):
        raise ValueError(f"Profile field {name!r} holds {type(example).__name__}s (like {example!r}); "
                         f"got {item!r} ({type(item).__name__}).")
    return item


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        image_size=32,
        train_per_class=12,
        test_per_class=4,
        val_fraction=0.25,
        epochs=1,
        epochs_standard=1,
        epochs_fresh=1,
        batch_size=32,
        attack_samples=16,
        autoattack_samples=8,
        autoattack_steps=2,
        autoattack_queries=10,
        lr_grid_f=(3e-4,),
        lr_grid_g=(3e-3,),
        similarity_images=96,
        uap_steps=4,
        source_per_class=12,
        source_epochs=1,
        transfer_epochs=2,
        feature_vis_steps=5,
        robustify_steps=3,
        robustify_pool=8,
        pool_distill_steps=2,
        transfer_seeds=(0,),
        source_image_size=16,
        ladder_radii=(0.0, 2.0),
        distill_steps=2,
        distill_batch_size=4,
        ladder_validation_crops=8,
        radius_grid=(0.5, 2.0, 16.0),
        radius_floor_iterations=1,
    ),
    "mini": Profile(
        name="mini",
        image_size=64,
        train_per_class=100,
        test_per_class=60,
        val_fraction=0.2,
        epochs=4,
        epochs_standard=15,
        min_steps=130,
        batch_size=64,
        attack_samples=520,  # 20 per letter, 52 per class of the 10-class sets (digits: its 360)
        autoattack_samples=104,
        autoattack_steps=10,
        autoattack_queries=500,
        lr_grid_f=(5e-4,),
        lr_grid_g=(1e-3, 3e-3),
        lr_grid_standard=(2e-3,),
        train_seeds=(0, 1, 2),
        # Table 4's sources pre-trained here: chapter 1's backbone and size (a ResNet-18 at 32x32
        # fine-tuned to models that PGD-10#0.5 barely moved, DR 0-1%, so the table could not test its claim)
        source_arch="efficientnet_lite0",
        source_image_size=64,
        source_per_class=100,
        source_epochs=15,
    ),
    "paper": Profile(
        name="paper",
        image_size=224,
        train_per_class=1000,
        test_per_class=200,
        val_fraction=0.1,
        epochs=90,
        epochs_standard=90,
        batch_size=128,
        attack_samples=10000,
        autoattack_samples=1000,
        autoattack_steps=100,
        autoattack_queries=5000,
        lr_grid_f=(1e-4, 3e-4, 1e-3),
        lr_grid_g=(3e-4, 1e-3, 3e-3),
        lr_grid_standard=(3e-4, 1e-3, 3e-3),
        arch="resnet18",
        datasets=("pets", "nico", "flowers", "cars", "food", "cifar10", "alphabet"),
        num_workers=8,
        similarity_images=5000,
        uap_steps=1000,
        uap_method="generator",
        fresh_samples=(),  # 1,000 images per letter, as in the paper: its standard model reaches 100%
        source_image_size=224,
        source_per_class=1300,
        source_epochs=90,
        transfer_epochs=30,
        natural_sets_whole=True,
        feature_vis_steps=1000,
        robustify_steps=1000,
        robustify_pool=10000,
        pool_distill_steps=5000,
        transfer_seeds=(0, 1, 2),
        distill_steps=20000,
        distill_batch_size=128,
        train_seeds=(0, 1, 2),
    ),
}


def available_profiles() -> list[str]:
    return list(PROFILES)


def get_profile(name: str | Profile, overrides: dict | None = None, **fields) -> Profile:
    """The profile called ``name`` with ``overrides`` (a dict, a notebook's ``overrides``
    parameter) and then ``fields`` applied; ``None`` values are ignored.

    Raises ``ValueError`` naming the known profiles when ``name`` is unknown, and naming
    the field when an override is misspelt or of the wrong type.
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict of profile fields, e.g. {{'epochs': 1}}; got {overrides!r}")
    overrides = {**(overrides or {}), **fields}
    if isinstance(name, Profile):
        base = name
    else:
        if name not in PROFILES:
            raise ValueError(
                f"Unknown profile {name!r}. Known profiles: {', '.join(PROFILES)}. "
                "Pass one of them as the notebook parameter `profile`."
            )
        base = PROFILES[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return base.replace(**overrides) if overrides else base


