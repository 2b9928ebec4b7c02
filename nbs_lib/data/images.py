"""Labelled images in [0, 1]: the dataset class, splits, balanced samples, resizing."""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nbs_lib.core.runs import content_hash

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("NBS_DATA") or REPO_ROOT / "data")

SPLITS = ("train", "test")

# Datasets whose tensors would exceed this many bytes are decoded lazily instead
# (e.g. Alphabet at paper scale: 26,000 images of 224x224 would take 15.6 GB).
MAX_IN_MEMORY_BYTES = 2 * 2**30

FETCH_HINT = "Run `make data` (or `bash scripts/fetch_offline_data.sh`) to fetch it."


def fits_in_memory(n: int, size: int) -> bool:
    """Whether ``n`` RGB float32 images of ``size`` x ``size`` are held in memory (else decoded lazily)."""
    return n * 3 * size * size * 4 <= MAX_IN_MEMORY_BYTES



SHARED_MEMORY = Path("/dev/shm")
PREFETCH_FACTOR = 2  # batches each DataLoader worker prepares ahead (PyTorch's default)


def shared_memory_need(workers: int, batch_bytes: int) -> int:
    """Bytes of shared memory ``workers`` DataLoader processes hold at once: each passes its
    batches to the main process through /dev/shm, ``PREFETCH_FACTOR`` ahead, plus the one in use."""
    return (workers * PREFETCH_FACTOR + 1) * batch_bytes if workers > 0 else 0


def loader_workers(requested: int, batch_bytes: int, shm: Path = SHARED_MEMORY) -> int:
    """DataLoader worker processes to use: ``requested``, or as many as /dev/shm can feed.

    A container's default /dev/shm is 64 MiB and one paper batch (128 images at 224 px)
    is 77 MiB, so 8 workers would die with a bus error; fewer workers (down to 0, decoding
    in the main process) are used instead, with a warning that names the fix. Where there
    is no /dev/shm (macOS, Windows), ``requested`` is used as given.
    """
    if requested <= 0:
        return 0
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return requested
    fitting = max(w for w in range(requested + 1) if w == 0 or shared_memory_need(w, batch_bytes) <= free)
    if fitting < requested:
        need_gib = -(-shared_memory_need(requested, batch_bytes) // 2**30)
        warnings.warn(
            f"{shm} has {free / 2**20:.0f} MiB free, but {requested} DataLoader workers with batches of "
            f"{batch_bytes / 2**20:.0f} MiB need {shared_memory_need(requested, batch_bytes) / 2**20:.0f} MiB; "
            f"using {fitting}. Give the container more shared memory (e.g. docker run --shm-size={need_gib}g) "
            "or lower the profile's num_workers or batch_size through `overrides`.", stacklevel=2)
    return fitting


RUNTIME_BYTES = 3 * 2**30  # PyTorch, CUDA's host-side context and the notebook kernel, roughly
LARGEST_CLASS_COUNT = 102  # Flowers-102: the book's target with the most classes


def host_memory_estimate(profile) -> list[dict]:
    """What a chapter holds in host memory at once under ``profile``, in GiB, as rows
    ``part, GiB, why``; the last row is the total. An upper bound from the profile's sizes.

    A chapter works on one target at a time: its training set, held when it fits in
    ``MAX_IN_MEMORY_BYTES`` (else decoded lazily), twice over while the validation part is
    split off; one attack or similarity sample (a larger one is memory-mapped from the run
    cache, :func:`nbs_lib.data.registry.sample_images`, and costs page cache only); the
    DataLoader workers' shared memory (:func:`shared_memory_need`); and the runtime.
    """
    image = 3 * profile.image_size ** 2 * 4
    train = profile.train_per_class * LARGEST_CLASS_COUNT * image
    sample = max(profile.attack_samples, profile.similarity_images) * image
    shm = shared_memory_need(profile.num_workers, profile.batch_size * image)
    gib, cap = 2**30, MAX_IN_MEMORY_BYTES
    rows = [
        {"part": "training set", "GiB": 2 * min(train, cap) / gib,
         "why": "with its validation part" + ("; a larger set is decoded lazily" if train > cap else "")},
        {"part": "attack or similarity sample", "GiB": min(sample, cap) / gib,
         "why": f"a {sample / gib:.1f} GiB sample is memory-mapped from the run cache" if sample > cap
         else "in memory"},
        {"part": "loader shared memory", "GiB": shm / gib,
         "why": f"{profile.num_workers} workers x {PREFETCH_FACTOR} batches of {profile.batch_size} ahead, "
                "1 in use" if shm else "no worker processes"},
        {"part": "PyTorch and the kernel", "GiB": RUNTIME_BYTES / gib, "why": "roughly"},
    ]
    rows.append({"part": "peak, at most", "GiB": sum(r["GiB"] for r in rows), "why": ""})
    return rows


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$NBS_DATA``, else ``<repo>/data``.

    Read at call time, so changing ``NBS_DATA`` after import takes effect.
    """
    if root is not None:
        return Path(root)
    return Path(os.environ.get("NBS_DATA") or REPO_ROOT / "data")


# ---------------------------------------------------------------------------
# The dataset object
# ---------------------------------------------------------------------------


class LabeledImages(Dataset):
    """Labelled images in [0, 1]: an in-memory tensor or a lazy per-item loader.

    ``images`` is a float32 tensor ``[N, 3, H, W]`` for in-memory sets (all offline
    ones) and ``None`` for lazily decoded ones, whose items come from ``fetch(ids[i])``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        labels: torch.Tensor,
        images: torch.Tensor | None = None,
        fetch: Callable[[int], torch.Tensor] | None = None,
        ids: torch.Tensor | None = None,
    ):
        if (images is None) == (fetch is None):
            raise ValueError("LabeledImages needs exactly one of `images` or `fetch`.")
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.images = images
        self._fetch = fetch
        n = len(self.labels)
        self._ids = torch.arange(n) if ids is None else torch.as_tensor(ids, dtype=torch.int64)
        if images is not None and len(images) != n:
            raise ValueError(f"{len(images)} images but {n} labels.")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[i], int(self.labels[i])
        return self._fetch(int(self._ids[i])), int(self.labels[i])

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the content: pixels and labels for in-memory sets,
        else the name, split, classes and item ids. Part of every run-cache key, so a
        change in how a dataset is made never reuses a model trained on the old data."""
        content = self.images if self.images is not None else np.asarray(self._ids)
        return content_hash(repr((self.name, self.split, list(self.classes))), self.labels, content)

    def subset(self, indices) -> "LabeledImages":
        """The items at ``indices`` (in that order), with the same classes."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        return LabeledImages(
            self.name,
            self.split,
            self.classes,
            self.labels[idx],
            images=None if self.images is None else self.images[idx],
            fetch=self._fetch,
            ids=self._ids[idx],
        )

    def stacked(self, indices=None) -> torch.Tensor:
        """The images at ``indices`` (default: all) as one tensor ``[n, 3, H, W]``, decoding
        lazy items one by one: the way to take a batch of a set held in memory or not."""
        if indices is None:
            indices = range(len(self))
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if self.images is not None:
            return self.images[idx]
        if len(idx) == 0:
            return torch.zeros(0, 3, 0, 0)
        return torch.stack([self[int(i)][0] for i in idx])

    def first(self, n: int) -> torch.Tensor:
        """The first ``n`` images (all of them if the set is smaller) as one tensor, lazy or not."""
        return self.stacked(range(min(n, len(self))))

    def class_counts(self) -> list[int]:
        """Number of items of every class, in class order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        shape = tuple(self.images.shape) if self.images is not None else f"{len(self)} lazy"
        return (
            f"LabeledImages({self.name!r}, split={self.split!r}, "
            f"classes={self.num_classes}, images={shape})"
        )


def train_val_split(
    ds: LabeledImages, val_fraction: float, seed: int
) -> tuple[LabeledImages, LabeledImages]:
    """Hold out ``val_fraction`` of every class for validation (learning-rate choice).

    Stratified per class and deterministic in ``seed``; both parts keep the order of
    ``ds``. A class with at least two items keeps at least one on each side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    rng = np.random.default_rng(_entropy(seed))
    labels = ds.labels.numpy()
    val: list[np.ndarray] = []
    for c in range(ds.num_classes):
        members = np.flatnonzero(labels == c)
        n_val = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(ds)), val_idx)
    return ds.subset(train_idx), ds.subset(val_idx)


# ---------------------------------------------------------------------------
# Variants: "<dataset>-<variant>", the same images transformed
# ---------------------------------------------------------------------------


def thumbnail(images: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Images reduced ``factor`` times by area averaging and enlarged back (bilinear).

    The same content with its fine detail removed, as CIFAR-10's 32x32 thumbnails are
    to ImageNet photographs: the semantically poorer twin of a source dataset
    (paper section "Factors Influencing Robustness of Fine-tuned Model", Table 4).
    """
    size = images.shape[-2:]
    small = F.interpolate(images, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


VARIANTS = {"lowres": thumbnail}


def balanced_indices(
    labels: np.ndarray, per_class: int | None, seed: int, split: str = ""
) -> np.ndarray:
    """Indices of at most ``per_class`` items of every class, chosen with ``seed``.

    The choice is a seeded permutation of each class cut at ``per_class``, so a
    smaller cap gives a subset of a larger one. Returned in ascending order.
    """
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng([_entropy(seed), SPLITS.index(split) if split in SPLITS else 2])
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def _entropy(seed: int) -> int:
    """A non-negative integer for NumPy's seeding from any int seed."""
    return int(seed) % 2**63


# ---------------------------------------------------------------------------
# From raw arrays to [N, 3, S, S] tensors in [0, 1]
# ---------------------------------------------------------------------------


def to_float_rgb(raw: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images ``[N, H, W]`` -> float32 ``[N, 3, size, size]``.

    Bilinear resize with antialiasing, clipped to [0, 1], gray repeated to 3 channels.
    """
    x = torch.from_numpy(np.array(raw, copy=True))  # a copy: cached arrays stay untouched
    x = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).unsqueeze(1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def _resize_one(raw: np.ndarray, size: int, i: int) -> torch.Tensor:
    """One item of ``raw`` as ``[3, size, size]`` (the lazy path of large sets)."""
    return to_float_rgb(raw[i : i + 1], size)[0]


def _from_arrays(name, split, classes, raw, labels, keep, size) -> LabeledImages:
    """A dataset of ``raw[keep]``: in memory when it fits, else resized per item."""
    labels = torch.as_tensor(np.asarray(labels)[keep], dtype=torch.int64)
    if fits_in_memory(len(keep), size):
        chunks = [to_float_rgb(raw[keep[i : i + 2048]], size) for i in range(0, len(keep), 2048)]
        images = torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size)
        return LabeledImages(name, split, classes, labels, images=images)
    fetch = functools.partial(_resize_one, raw, size)
    return LabeledImages(name, split, classes, labels, fetch=fetch, ids=torch.as_tensor(keep))


