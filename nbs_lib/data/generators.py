"""Offline targets at graded distances from natural photographs, and a natural-photo source sample.

The paper's Figure 6 relates, over target datasets, the MMD between the source
(ImageNet) embeddings and the target embeddings to the decline ratio of the
fine-tuned model. Offline, the book has few targets (Alphabet and three sets of
grey glyphs), all far from photographs. This module adds three generated targets
that step from near to far:

- ``photo_patches`` (**near**): crops of real colour and grey photographs; the class
  is the photograph a crop comes from. Natural-image statistics (camera noise,
  1/f spectra, real objects and tissue), but not the photographs of the source sample.
- ``textures`` (**mid**): grey texture photographs (brick, grass, gravel) and
  procedural textures (stripes, checkerboards, dots, blobs), each mapped between two
  random colours: photographic detail in some classes, none in the others, no objects.
- ``shapes`` (**far**): flat geometric shapes on flat, noisy or shaded backgrounds:
  nothing of a photograph but colour.

:func:`natural_photo_sample` gives random crops of other bundled photographs
(astronaut, chelsea, coffee, rocket), a small offline stand-in for ImageNet images
where a sample of source images is needed (the MMD of chapter 4, MMD against DR); with
``folder=`` it samples a user's ImageNet folder instead.

Every image comes from its own random stream ``(seed, split, dataset, class, k)``, so
a set is deterministic in ``seed``, image ``k`` of a class does not depend on how
many are drawn, and train and test never share a stream. Crops of photographs are
taken from disjoint regions of each photograph for train and for test.
All photographs are scikit-image's bundled files, read from disk (no download).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

SPLITS = ("train", "test")

# ---------------------------------------------------------------------------
# scikit-image's bundled photographs
# ---------------------------------------------------------------------------

# name -> file in scikit-image's `data` folder (these load without pooch / network).
BUNDLED_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "camera": "camera.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "immunohistochemistry": "ihc.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}

# The source sample: everyday colour photographs of ImageNet-like content (a person,
# a cat, a cup of espresso, a rocket on its pad). No target below uses them.
SOURCE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")

# Part of a photograph crops may come from, as fractions (left, top, right, bottom):
# the retina photograph is a disc on black, keep the square inscribed in the disc.
USABLE_BOX = {"retina": (0.16, 0.16, 0.84, 0.84)}

TRAIN_SHARE = 0.6  # train crops come from the first 60% of a photo's longer axis ...
SPLIT_GAP = 0.04  # ... test crops from the last 36%: 4% apart, so no pixel is shared


def skimage_data_dir() -> Path:
    """scikit-image's folder of bundled sample images."""
    import skimage.data

    return Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=None)
def bundled_photo(name: str) -> Image.Image:
    """A bundled photograph as an RGB PIL image (grey ones repeated to three channels)."""
    if name not in BUNDLED_FILES:
        raise ValueError(f"Unknown bundled photo {name!r}; known: {', '.join(BUNDLED_FILES)}.")
    path = skimage_data_dir() / BUNDLED_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: scikit-image's bundled sample images are needed "
            f"(reinstall the pinned scikit-image from requirements.txt)."
        )
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.load()
    return rgb


def _split_region(name: str, split: str) -> tuple[float, float, float, float]:
    """The pixel box (left, top, right, bottom) of ``split``'s part of a photograph.

    The usable box is cut across its longer axis: train gets the first
    ``TRAIN_SHARE``, test the part after a gap of ``SPLIT_GAP``.
    """
    w, h = bundled_photo(name).size
    fl, ft, fr, fb = USABLE_BOX.get(name, (0.0, 0.0, 1.0, 1.0))
    left, top, right, bottom = fl * w, ft * h, fr * w, fb * h
    lo, hi = (0.0, TRAIN_SHARE) if split == "train" else (TRAIN_SHARE + SPLIT_GAP, 1.0)
    if right - left >= bottom - top:
        span = right - left
        return left + lo * span, top, left + hi * span, bottom
    span = bottom - top
    return left, top + lo * span, right, top + hi * span


def _usable_short_side(name: str) -> float:
    w, h = bundled_photo(name).size
    fl, ft, fr, fb = USABLE_BOX.get(name, (0.0, 0.0, 1.0, 1.0))
    return min((fr - fl) * w, (fb - ft) * h)


def random_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    side: float,
    region: tuple[float, float, float, float] | None = None,
    flip: bool = True,
) -> np.ndarray:
    """A square crop of side ``side`` px at a random place inside ``region`` (default: the
    whole image), resized to ``size`` (antialiased), maybe mirrored: uint8 ``[size, size, 3]``."""
    left, top, right, bottom = region or (0.0, 0.0, *img.size)
    side = min(side, right - left, bottom - top)
    x0 = rng.uniform(left, right - side)
    y0 = rng.uniform(top, bottom - side)
    crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    out = np.asarray(crop)
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


# ---------------------------------------------------------------------------
# photo_patches (near)
# ---------------------------------------------------------------------------

PHOTO_PATCH_CLASSES = (
    "motorcycle", "camera", "coins", "hubble_deep_field", "retina", "immunohistochemistry",
)  # fmt: skip
PATCH_SIDE = (0.15, 0.38)  # crop side as a share of the photo's usable shorter side


def render_photo_patch(c: int, split: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of photograph ``c`` from ``split``'s region, at a random scale and place."""
    name = PHOTO_PATCH_CLASSES[c]
    side = rng.uniform(*PATCH_SIDE) * _usable_short_side(name)
    return random_crop(bundled_photo(name), size, rng, side, _split_region(name, split))


# ---------------------------------------------------------------------------
# textures (mid)
# ---------------------------------------------------------------------------

TEXTURE_PHOTOS = ("brick", "grass", "gravel")
TEXTURE_CLASSES = TEXTURE_PHOTOS + ("stripes", "checkerboard", "dots", "blobs")
TEXTURE_SIDE = (0.2, 0.38)  # photo texture crop side as a share of the 512 px photo


def _rotated_grid(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of an ``n x n`` grid in a frame rotated by a random angle."""
    theta = rng.uniform(0.0, np.pi)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def _stripes(n: int, rng: np.random.Generator) -> np.ndarray:
    """A grating at a random angle, period and phase, from sine to nearly square wave."""
    u, _ = _rotated_grid(n, rng)
    period = rng.uniform(n / 8, n / 3)
    sharpness = rng.uniform(1.0, 6.0)
    return 0.5 + 0.5 * np.tanh(sharpness * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """A checkerboard at a random angle, cell size and offset."""
    u, v = _rotated_grid(n, rng)
    period = rng.uniform(n / 5, n / 2)
    phase_u, phase_v = rng.uniform(0, 2 * np.pi, size=2)
    wave = np.sin(2 * np.pi * u / period + phase_u) * np.sin(2 * np.pi * v / period + phase_v)
    return 0.5 + 0.5 * np.tanh(8.0 * wave)


def _dots(n: int, rng: np.random.Generator) -> np.ndarray:
    """Discs on a lattice at a random angle, spacing and radius."""
    u, v = _rotated_grid(n, rng)
    spacing = rng.uniform(n / 6, n / 2.5)
    du = (u / spacing + rng.uniform()) % 1.0 - 0.5
    dv = (v / spacing + rng.uniform()) % 1.0 - 0.5
    distance = np.sqrt(du**2 + dv**2) * spacing
    radius = rng.uniform(0.2, 0.35) * spacing
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


def _blobs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random binary blobs (``skimage.data.binary_blobs``) of random size and coverage."""
    from skimage.data import binary_blobs

    mask = binary_blobs(
        length=n,
        blob_size_fraction=rng.uniform(0.05, 0.2),
        volume_fraction=rng.uniform(0.3, 0.6),
        rng=rng,
    )
    return mask.astype(np.float32)


PROCEDURAL_TEXTURES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "dots": _dots,
    "blobs": _blobs,
}


def _downsample(pattern: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (antialiasing a supersampled pattern)."""
    n = pattern.shape[0] // factor
    return pattern.reshape(n, factor, n, factor).mean(axis=(1, 3))


def _stretch(gray: np.ndarray) -> np.ndarray:
    """Contrast stretch to [0, 1] between the 2nd and 98th percentiles."""
    lo, hi = np.percentile(gray, (2, 98))
    return np.clip((gray - lo) / max(hi - lo, 1e-3), 0.0, 1.0)


def _two_colours(rng: np.random.Generator, min_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours at least ``min_distance`` apart (Euclidean, in [0, 1]^3)."""
    while True:
        a, b = rng.uniform(0.0, 1.0, size=(2, 3))
        if np.linalg.norm(a - b) >= min_distance:
            return a, b


def _colourise(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a grey pattern in [0, 1] between two random colours and add pixel noise.

    Applied alike to every texture class, so colour and contrast say nothing of the class.
    """
    dark, light = _two_colours(rng, min_distance=0.5)
    image = dark + gray[..., None] * (light - dark)
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.05), size=image.shape)
    return _to_uint8(image)


def render_texture(c: int, split: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Texture ``c``: a crop of a texture photograph (from ``split``'s region) or a
    procedural pattern drawn at twice the size and averaged down, then colourised."""
    name = TEXTURE_CLASSES[c]
    if name in TEXTURE_PHOTOS:
        side = rng.uniform(*TEXTURE_SIDE) * _usable_short_side(name)
        crop = random_crop(bundled_photo(name), size, rng, side, _split_region(name, split))
        gray = _stretch(crop[..., 0].astype(np.float32) / 255.0)
    else:
        gray = _downsample(PROCEDURAL_TEXTURES[name](2 * size, rng), 2)
    return _colourise(gray, rng)


# ---------------------------------------------------------------------------
# shapes (far)
# ---------------------------------------------------------------------------

SHAPE_CLASSES = ("circle", "ring", "square", "triangle", "hexagon", "star", "cross", "crescent")
SHAPE_RADIUS = (0.22, 0.42)  # circumradius as a share of the image side
_SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down (antialiased edges)


def _polygon(n: int, centre, radius: float, angle: float, inner: float | None = None) -> list:
    """Vertices of a regular ``n``-gon, or of an ``n``-pointed star if ``inner`` is set."""
    if inner is None:
        radii = np.full(n, radius)
        angles = angle + 2 * np.pi * np.arange(n) / n
    else:
        radii = np.tile([radius, inner * radius], n)
        angles = angle + np.pi * np.arange(2 * n) / n
    return [(centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)) for r, a in zip(radii, angles)]


def _cross(centre, radius: float, angle: float, half_width: float = 0.32) -> list:
    """The 12 vertices of a plus sign whose arms reach ``radius`` from the centre."""
    w = half_width * radius
    arm = np.sqrt(max(radius**2 - w**2, 0.0))
    quarter = [(w, -w), (arm, -w), (arm, w)]  # one arm, turned four times
    points = []
    for k in range(4):
        turn = angle + k * np.pi / 2
        cos, sin = np.cos(turn), np.sin(turn)
        points += [(centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos) for x, y in quarter]
    return points


def _circle_box(centre, radius: float) -> list:
    return [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]


def _draw_shape(name: str, draw: ImageDraw.ImageDraw, centre, radius: float, angle: float) -> None:
    """Draw shape ``name`` in white (255) on a black mask; holes are drawn back in black."""
    if name == "circle":
        draw.ellipse(_circle_box(centre, radius), fill=255)
    elif name == "ring":
        draw.ellipse(_circle_box(centre, radius), fill=255)
        draw.ellipse(_circle_box(centre, 0.55 * radius), fill=0)
    elif name == "square":
        draw.polygon(_polygon(4, centre, radius, angle), fill=255)
    elif name == "triangle":
        draw.polygon(_polygon(3, centre, radius, angle), fill=255)
    elif name == "hexagon":
        draw.polygon(_polygon(6, centre, radius, angle), fill=255)
    elif name == "star":
        draw.polygon(_polygon(5, centre, radius, angle, inner=0.42), fill=255)
    elif name == "cross":
        draw.polygon(_cross(centre, radius, angle), fill=255)
    elif name == "crescent":
        draw.ellipse(_circle_box(centre, radius), fill=255)
        shift = (0.5 * radius * np.cos(angle), 0.5 * radius * np.sin(angle))
        draw.ellipse(_circle_box((centre[0] + shift[0], centre[1] + shift[1]), 0.85 * radius), fill=0)
    else:
        raise ValueError(f"Unknown shape {name!r}; known: {', '.join(SHAPE_CLASSES)}.")


def shape_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] of one shape at a random size, place and rotation, fully inside."""
    big = size * _SUPERSAMPLE
    radius = rng.uniform(*SHAPE_RADIUS) * big
    centre = rng.uniform(radius, big - radius, size=2)
    canvas = Image.new("L", (big, big), 0)
    _draw_shape(name, ImageDraw.Draw(canvas), centre, radius, rng.uniform(0.0, 2 * np.pi))
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A flat colour, a flat colour with pixel noise, or a linear colour gradient."""
    base = rng.uniform(0.0, 1.0, size=3)
    kind = rng.integers(3)
    image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if kind == 1:
        image = image + rng.normal(0.0, rng.uniform(0.03, 0.12), size=image.shape)
    elif kind == 2:
        u, _ = _rotated_grid(size, rng)
        ramp = (u - u.mean()) / size  # about -0.7 .. 0.7 across the image
        image = image + ramp[..., None] * rng.uniform(-0.5, 0.5, size=3)
    return image


def render_shape(c: int, split: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Shape ``c`` in a random colour that stands out from a random background."""
    background = _background(size, rng)
    mean = background.reshape(-1, 3).mean(axis=0)
    while True:
        colour = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(colour - mean) >= 0.4:
            break
    coverage = shape_mask(SHAPE_CLASSES[c], size, rng)[..., None]
    return _to_uint8(background + coverage * (colour - background))


# ---------------------------------------------------------------------------
# The registry of generated sets
# ---------------------------------------------------------------------------


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in (about) [0, 1] -> uint8, clipped and rounded, like a decoded file."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class GeneratedSet:
    """A generated classification set: its classes and how one image of a class is made.

    ``render(c, split, size, rng)`` returns a uint8 ``[size, size, 3]`` image of class
    ``c``; ``distance`` places it on the near-to-far scale from natural photographs;
    """

    name: str
    classes: tuple[str, ...]
    render: Callable[[int, str, int, np.random.Generator], np.ndarray]
    distance: str


GENERATED_SETS: dict[str, GeneratedSet] = {
    "photo_patches": GeneratedSet("photo_patches", PHOTO_PATCH_CLASSES, render_photo_patch, "near"),
    "textures": GeneratedSet("textures", TEXTURE_CLASSES, render_texture, "mid"),
    "shapes": GeneratedSet("shapes", SHAPE_CLASSES, render_shape, "far"),
}


def _entropy(seed: int) -> int:
    return int(seed) % 2**63


def item_rng(name: str, seed: int, split: str, c: int, k: int) -> np.random.Generator:
    """The random stream of image ``k`` of class ``c``: own per dataset, seed, split, class."""
    tag = zlib.crc32(name.encode())
    return np.random.default_rng([_entropy(seed), SPLITS.index(split), tag, c, k])


def render_item(name: str, seed: int, split: str, size: int, i: int) -> np.ndarray:
    """Item ``i`` of a generated split (uint8 ``[size, size, 3]``): class ``i % C``, its
    ``i // C``-th image. Classes are interleaved, as in the Alphabet."""
    spec = GENERATED_SETS[name]
    c, k = i % len(spec.classes), i // len(spec.classes)
    image = spec.render(c, split, size, item_rng(name, seed, split, c, k))
    return np.array(image, dtype=np.uint8)  # a writable, contiguous copy


def item_tensor(name: str, seed: int, split: str, size: int, i: int) -> torch.Tensor:
    """Item ``i`` as a float32 ``[3, size, size]`` tensor in [0, 1] (the lazy path)."""
    return torch.from_numpy(render_item(name, seed, split, size, i)).permute(2, 0, 1).float() / 255.0


@functools.lru_cache(maxsize=6)
def generated_array(name: str, seed: int, split: str, per_class: int, size: int) -> np.ndarray:
    """All ``C * per_class`` images of a split as read-only uint8 ``[N, size, size, 3]``, cached."""
    n = len(GENERATED_SETS[name].classes) * per_class
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = render_item(name, seed, split, size, i)
    out.setflags(write=False)
    return out


def clear_caches() -> None:
    """Forget generated sets (the next load draws them again)."""
    generated_array.cache_clear()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]`` in [0, 1]."""
    pixels = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy of the cache
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------------------
# The natural-photo source sample (offline stand-in for ImageNet images)
# ---------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(folder: str | Path) -> list[Path]:
    """Every .jpg / .jpeg / .png (any case, e.g. ImageNet's .JPEG) under ``folder``, sorted."""
    folder = Path(folder)
    hint = (
        "Put ImageNet images there, e.g. the ILSVRC2012 validation JPEGs "
        "(<folder>/*.JPEG or <folder>/<wnid>/*.JPEG; any .jpg/.jpeg/.png, searched "
        "recursively), or call natural_photo_sample without `folder` for the bundled photographs."
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist. {hint}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"Image folder {folder} holds no .jpg, .jpeg or .png file. {hint}")
    return files


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.load()
    return rgb


def natural_photo_sample(
    n: int,
    size: int,
    seed: int = 0,
    folder: str | Path | None = None,
    scale: tuple[float, float] = (0.25, 1.0),
    photos: Sequence[str] = SOURCE_PHOTOS,
) -> torch.Tensor:
    """``n`` random crops of natural photographs: float32 ``[n, 3, size, size]`` in [0, 1].

    What it is for: the MMD between source and target embeddings (Figure 6) needs
    a sample of *source* images. The paper's source is ImageNet; offline, the stand-in
    is scikit-image's bundled everyday colour photographs ``photos`` (default
    astronaut, chelsea, coffee, rocket: a person, a cat, an espresso, a rocket; the
    generated targets use none of them). Each crop is a random square whose side is a
    random share ``scale`` of the photo's shorter side, at a random place, mirrored
    with probability 1/2, resized to ``size`` (antialiased). Crop ``i`` comes from
    photo ``i % len(photos)``. Four photographs are a small sample of what ImageNet
    looks like; the distances they give are a proxy.

    At paper scale pass ``folder``: a folder of ImageNet images (e.g. the ILSVRC2012
    validation JPEGs, searched recursively for .jpg/.jpeg/.png). ``n`` files are chosen
    with ``seed`` (without repetition while there are enough) and cropped the same way.
    Deterministic in ``seed``.
    """
    if n < 0 or size < 1:
        raise ValueError(f"Need n >= 0 and size >= 1, got n={n}, size={size}.")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}.")
    rng = np.random.default_rng([_entropy(seed), 0x5EED])
    if folder is None:
        sources = [bundled_photo(name) for name in photos]
        pick = lambda i: sources[i % len(sources)]  # noqa: E731
    else:
        files = image_files(folder)
        chosen = rng.choice(len(files), size=n, replace=n > len(files))
        pick = lambda i: _open_rgb(files[chosen[i]])  # noqa: E731
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = pick(i)
        side = rng.uniform(*scale) * min(img.size)
        out[i] = random_crop(img, size, rng, side)
    return to_tensor(out)
