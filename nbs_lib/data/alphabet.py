"""The synthetic Alphabet of Zhang et al.: 26 capital letters rendered from offline fonts."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nbs_lib.data.images import (
    SPLITS,
    LabeledImages,
    _entropy,
    fits_in_memory,
    to_float_rgb,
)

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


ALPHABET_STYLE = AlphabetStyle()
_GLYPH_PX = 96  # fonts are rasterised once at about this cap height, then scaled down
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
        if path.stem not in ALPHABET_FACES or not _maps_plain_capitals(path):
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
    rng.random()  # drawn so that existing Alphabet images stay the same (it chose a polarity once)
    image = np.full((size, size), light, dtype=np.float32)
    image[y0 : y0 + h, x0 : x0 + w] += (dark - light) * ink
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
def _alphabet_array(seed: int, split: str, per_class: int, size: int, first: int = 0) -> np.ndarray:
    """Images ``first .. first + per_class - 1`` of every letter of a split, letters interleaved, cached."""
    n_letters = len(LETTERS)
    out = np.empty((n_letters * per_class, size, size), dtype=np.float32)
    for i in range(len(out)):
        c, k = i % n_letters, first + i // n_letters
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
    if fits_in_memory(n, size):
        images = to_float_rgb(_alphabet_array(seed, split, per_class, size), size)
        return LabeledImages("alphabet", split, LETTERS, labels, images=images)
    fetch = functools.partial(_alphabet_item, seed, split, size)
    return LabeledImages("alphabet", split, LETTERS, labels, fetch=fetch)


def fresh_alphabet(n: int, first: int, size: int, seed: int) -> LabeledImages:
    """``n`` new training images, letters interleaved, from image ``first`` of every letter on.

    The training stream is endless, so an epoch can draw images no earlier epoch (and
    no split of the first ``first`` images, such as the validation split) has seen.
    """
    per_class = -(-n // len(LETTERS))
    array = _alphabet_array(seed, "train", per_class, size, first)[:n]
    labels = torch.arange(n) % len(LETTERS)
    return LabeledImages("alphabet", "train", LETTERS, labels, images=to_float_rgb(array, size))


