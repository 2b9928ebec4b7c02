"""Natural photographs available offline: the pool robust ImageNet sources are distilled on.

Paper section "Robust ImageNet Pre-training" (Table 5) and the second work start from
adversarially trained ImageNet models, which are not available offline. Chapters 5-7 make
them here by adversarial self-distillation of the ImageNet EfficientNet-Lite0
(:mod:`nbs_lib.methods.train.self_distill`), which needs natural images but no labels. The
pool is curated to photographs (no abstract art) from two Debian wallpaper packages and two
of scikit-image's bundled photos; none is a crop of any target. ``make data`` unpacks the
chosen files (``python -m nbs_lib.data.photos install DEB_FOLDER``), each checked by MD5.

Splits are by photograph, not by crop: :data:`HELD_OUT` photographs are never trained on
and give the held-out crops that validate a rung; scikit-image's ``chelsea`` and ``coffee``
(chapter 0's sanity photos) are kept out of both, so their ImageNet predictions test that a
rung kept the teacher's knowledge.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nbs_lib.data.generators import _entropy, bundled_photo, random_crop, to_tensor
from nbs_lib.data.images import data_root


@dataclass(frozen=True)
class WallpaperPhoto:
    package: str  # the Debian package that ships it
    member: str  # its path inside the package
    md5: str


_MATE = "usr/share/backgrounds/mate/nature/{}.jpg"
_PLASMA = "usr/share/wallpapers/{}/contents/images/{}.jpg"

# The photographs of mate-backgrounds 1.26 ("nature") and plasma-workspace-wallpapers 5.27
# (curated by eye: painted, rendered and abstract wallpapers left out).
WALLPAPERS = {
    "Aqua": WallpaperPhoto("mate-backgrounds", _MATE.format("Aqua"), "bb9d83532a31223343a044d25242dcd6"),
    "Blinds": WallpaperPhoto("mate-backgrounds", _MATE.format("Blinds"), "aa8c959b44dab9cb85ad5f3dc0c85f51"),
    "Dune": WallpaperPhoto("mate-backgrounds", _MATE.format("Dune"), "c56a7b8ac1a9a25b3a5d9965c1e1ee15"),
    "FreshFlower": WallpaperPhoto("mate-backgrounds", _MATE.format("FreshFlower"), "3a94856c33abf72d5120897a492e68a2"),
    "Garden": WallpaperPhoto("mate-backgrounds", _MATE.format("Garden"), "4164703bd7b6f087358e87f3aa296c4a"),
    "GreenMeadow": WallpaperPhoto("mate-backgrounds", _MATE.format("GreenMeadow"), "a39f784809c4550e12427ad463b8d8e7"),
    "LadyBird": WallpaperPhoto("mate-backgrounds", _MATE.format("LadyBird"), "32268be4325293ad107c6f595607e7ba"),
    "RainDrops": WallpaperPhoto("mate-backgrounds", _MATE.format("RainDrops"), "ab77b2ceef702553108c377d86ce2817"),
    "Storm": WallpaperPhoto("mate-backgrounds", _MATE.format("Storm"), "7f3abd21e0ee03b40b4fb8c7874575e5"),
    "TwoWings": WallpaperPhoto("mate-backgrounds", _MATE.format("TwoWings"), "b627e9c299a88d63f3eb40a0da68999a"),
    "Wood": WallpaperPhoto("mate-backgrounds", _MATE.format("Wood"), "efe68ac15751369fe829a6e7b6740b82"),
    "YellowFlower": WallpaperPhoto("mate-backgrounds", _MATE.format("YellowFlower"), "b6167ae420518663a9f7f112aa7abc49"),
    "BytheWater": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("BytheWater", "1920x1080"), "ece2f0680ea401170b1747460ace9c69"),
    "ColdRipple": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("ColdRipple", "1920x1080"), "02dcf2946fb4e8c66abeef4b03d3b4c3"),
    "DarkestHour": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("DarkestHour", "1920x1080"), "f0de8bf0997ccbd494b2331b33d4dab5"),
    "EveningGlow": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("EveningGlow", "1920x1080"), "e526fe88c2730e320714a5a977cce547"),
    "FallenLeaf": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("FallenLeaf", "1920x1080"), "1512901fb0be824ac1f8a83e728117ae"),
    "Grey": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("Grey", "1920x1080"), "dd12745cf46afde33adb358409941a78"),
    "Kite": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("Kite", "1920x1080"), "c64d0a17402e246cd026735c6b5b9349"),
    "OneStandsOut": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("OneStandsOut", "1920x1080"), "e409163f338f01883d2f33436bad2606"),
    "Path": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("Path", "1920x1080"), "a5d8ff9723157d3d73083caa5ddba49d"),
    "summer_1am": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("summer_1am", "1920x1080"), "ebf57232dee8183060e2a7d6b76e26cc"),
    "ColorfulCups": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("ColorfulCups", "2560x1600"), "cc54e89092d7b3433966f1c8e33e7de2"),
    "Volna": WallpaperPhoto("plasma-workspace-wallpapers", _PLASMA.format("Volna", "5120x2880"), "2a8142f95428a589408e1ef4fc7c2165"),
}  # fmt: skip
PACKAGES = tuple(dict.fromkeys(p.package for p in WALLPAPERS.values()))

SKIMAGE_PHOTOS = ("astronaut", "rocket")  # bundled with scikit-image (chelsea and coffee are kept out)
HELD_OUT = ("Dune", "LadyBird", "ColorfulCups", "Path")  # never trained on: the validation crops
SANITY_PHOTOS = ("chelsea", "coffee")  # in no split: their ImageNet classes must survive distillation
SHORT_SIDE = 512  # photographs are kept at this shorter side (crops of 64-224 px need no more)
CROP_SCALE = (0.1, 0.6)  # crop side as a share of the shorter side


def photos_dir() -> Path:
    """Where ``make data`` puts the wallpaper photographs: ``<data>/photos``."""
    return data_root() / "photos"


def split_photos(split: str) -> tuple[str, ...]:
    """The photographs of ``split``: ``"train"`` or ``"held_out"``."""
    if split == "train":
        return SKIMAGE_PHOTOS + tuple(n for n in WALLPAPERS if n not in HELD_OUT)
    if split == "held_out":
        return HELD_OUT
    raise ValueError(f"Unknown photo split {split!r}; use 'train' or 'held_out'.")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> Image.Image:
    """A pool photograph as RGB, resized so that its shorter side is :data:`SHORT_SIDE`."""
    if name in SKIMAGE_PHOTOS or name in SANITY_PHOTOS:
        img = bundled_photo(name)
    elif name in WALLPAPERS:
        path = photos_dir() / f"{name}.jpg"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make data` (it unpacks the photographs of "
                                    f"the Debian packages {', '.join(PACKAGES)}).")
        with Image.open(path) as raw:
            img = raw.convert("RGB")
    else:
        raise ValueError(f"Unknown photo {name!r}; known: {', '.join(SKIMAGE_PHOTOS + tuple(WALLPAPERS))}.")
    scale = SHORT_SIDE / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    img.load()
    return img


def photo_crops(n: int, size: int, seed: int, split: str = "train",
                scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """``n`` random crops of ``split``'s photographs: float32 ``[n, 3, size, size]`` in [0, 1].

    Each crop picks a photograph uniformly, a square side of a random share ``scale`` of
    its shorter side at a random place, mirrors it with probability 1/2 and resizes it to
    ``size`` (antialiased), like ImageNet training's random-resized crops. Deterministic in
    ``seed`` (a training run passes a new seed per step: crops are drawn fresh each time).
    """
    if n < 1 or size < 1:
        raise ValueError(f"Need n >= 1 and size >= 1, got n={n}, size={size}.")
    names = split_photos(split)
    rng = np.random.default_rng([_entropy(seed), 0xF070])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(rng.integers(len(names), size=n)):
        img = load_photo(names[k])
        out[i] = random_crop(img, size, rng, rng.uniform(*scale) * min(img.size))
    return to_tensor(out)


def missing_photos() -> list[str]:
    """Wallpaper photographs absent from :func:`photos_dir` or failing their MD5."""
    return [n for n, p in WALLPAPERS.items()
            if not (photos_dir() / f"{n}.jpg").is_file() or _md5(photos_dir() / f"{n}.jpg") != p.md5]


def install(deb_folder: str | Path) -> Path:
    """Unpack the chosen photographs from the downloaded ``.deb`` files in ``deb_folder``.

    Each file is checked against its MD5 before it is moved into :func:`photos_dir`; a
    mismatch (another package version) stops with the file named and nothing half-written.
    """
    deb_folder, target = Path(deb_folder), photos_dir()
    with tempfile.TemporaryDirectory() as tmp:
        for package in PACKAGES:
            debs = sorted(deb_folder.glob(f"{package}_*.deb"))
            if not debs:
                raise FileNotFoundError(f"No {package}_*.deb in {deb_folder}: `apt-get download {package}` first.")
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), f"{tmp}/{package}"], check=True)
        staged = Path(tmp) / "photos"
        staged.mkdir()
        for name, p in WALLPAPERS.items():
            source = Path(tmp) / p.package / p.member
            if not source.is_file() or _md5(source) != p.md5:
                raise ValueError(f"{p.member} of {p.package} is missing or fails its MD5 ({p.md5}): "
                                 "the package version differs from the curated one (see nbs_lib/data/photos.py).")
            shutil.copyfile(source, staged / f"{name}.jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("photos.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.move(str(staged), partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


if __name__ == "__main__":  # python -m nbs_lib.data.photos install|check DEB_FOLDER
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "check":
        sys.exit(1 if missing_photos() else 0)
    if command == "install" and len(sys.argv) == 3:
        print(f"[data] photos: {len(WALLPAPERS)} photographs in {install(sys.argv[2])}")
        sys.exit(0)
    sys.exit("usage: python -m nbs_lib.data.photos check | install DEB_FOLDER")
