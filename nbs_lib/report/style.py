"""The book's figure style: one place for the page width, text sizes and colours.

A figure is drawn at ``FIGURE_DPI`` and shown at its own pixel width, or shrunk to the
page's content width (``PAGE_WIDTH_PX``, the width of a chapter's text column in the
built book at a 1280-pixel window) when it is wider; shrinking shrinks its text too. So
every figure of :mod:`nbs_lib.report.plots` is at most ``PAGE_WIDTH_IN`` wide and its
text at least ``MIN_FONT_PT`` points, and :func:`rendered_font_sizes` measures what a
reader sees (a test holds every figure to it). Colours are colour-blind safe (seaborn's
``colorblind`` palette, after Okabe and Ito).
"""

from __future__ import annotations

import matplotlib as mpl
import seaborn as sns
from matplotlib.text import Text

FIGURE_DPI = 100  # matplotlib's default, which the notebooks' inline figures use
PAGE_WIDTH_PX = 688  # a chapter's text column in the built book (CSS pixels)
PAGE_WIDTH_IN = 6.8  # the widest figure, with a little room for the tight bounding box
MIN_FONT_PT = 9  # the smallest text a reader should have to read, at its rendered size
CSS_PX_PER_PT = 96 / 72

BOOK_RC = {
    "figure.dpi": FIGURE_DPI,
    "savefig.dpi": FIGURE_DPI,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9.5,
    "legend.title_fontsize": 9.5,
    "figure.titlesize": 10.5,
}

PALETTE = sns.color_palette("colorblind").as_hex()
MODEL_COLORS = {"standard": PALETTE[0], "partial": PALETTE[2], "partial_bn": PALETTE[4], "full": PALETTE[3]}
VERDICT_COLORS = {"reproduced": PALETTE[2], "opposite": PALETTE[3], "no clear difference": "#8c8c8c",
                  "not testable": "#cccccc"}
# Figure 3 of the paper: blue (ft-pt), brick red (ft-st), dark gold (pt-st); the palette's orange
# stands for the gold (its yellow is too pale on white)
PAIR_COLORS = {"ft-pt": PALETTE[0], "ft-st": PALETTE[3], "pt-st": PALETTE[1]}
SMALL = 9  # captions under images and point labels: the smallest size the book uses
CHAR_WIDTH_EM = 0.6  # an average character's width in em (DejaVu Sans): caption widths are given in these


def use_book_style() -> None:
    """Set the book's text sizes and resolution for every figure drawn after it."""
    mpl.rcParams.update(BOOK_RC)


def page_width(wanted: float) -> float:
    """``wanted`` inches, or the page's width when that is wider."""
    return min(wanted, PAGE_WIDTH_IN)


def rendered_scale(fig, dpi: float = FIGURE_DPI) -> float:
    """How much the page shrinks ``fig`` (1 when it fits): its tight width against the page's."""
    fig.canvas.draw()
    width_px = fig.get_tightbbox(fig.canvas.get_renderer()).width * dpi
    return min(1.0, PAGE_WIDTH_PX / width_px)


def rendered_font_sizes(fig, dpi: float = FIGURE_DPI) -> list[tuple[str, float]]:
    """Every visible text of ``fig`` with the size in points a reader sees it at on the page."""
    scale = rendered_scale(fig, dpi)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return [(t.get_text(), t.get_fontsize() * dpi / 72 / CSS_PX_PER_PT * scale) for t in texts]
