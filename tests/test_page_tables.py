"""Wide result tables on the built pages scroll inside their output area with their first
(key) column kept in view (issue: a book a reader enjoys, part 3).

Opens the built chapter whose tables are widest (chapter 6: the ladder's validation and the
paper's Table 5 over seven targets) in headless Chromium through playwright, scrolls every
table wider than the page to its right end, and checks its first column is still at the
left edge of the output area. Needs `make html` first (``make test`` builds it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BOOK_HTML_DIR", ROOT / "_build" / "html"))
CHROMIUM = os.environ.get("NBS_CHROMIUM", "/usr/bin/chromium")
PAGE = BUILD / "book" / "06_dm_regularisation.html"

SCROLLED_TABLES = """() => Array.from(document.querySelectorAll('.cell_output table')).flatMap(t => {
    const area = t.closest('.output.text_html');
    if (!area || t.scrollWidth <= area.clientWidth + 1) return [];
    area.scrollLeft = area.scrollWidth;
    const style = getComputedStyle(area).overflowX;
    const lefts = Array.from(t.rows).filter(r => r.cells.length)
        .map(r => r.cells[0].getBoundingClientRect().left - area.getBoundingClientRect().left);
    return [{text: t.innerText.slice(0, 40), overflow: style, scrolled: area.scrollLeft, worst: Math.max(...lefts.map(Math.abs))}];
})"""


def _evaluate_on_page(script: str):
    """``script``'s result on chapter 6's built page in headless Chromium (skips without a build)."""
    if not PAGE.is_file():
        pytest.skip(f"no built book at {BUILD} (run `make html` first)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(PAGE.as_uri())
        result = page.evaluate(script)
        browser.close()
    return result


def test_wide_tables_scroll_with_their_key_column_in_view():
    tables = _evaluate_on_page(SCROLLED_TABLES)
    assert tables, "chapter 6 should have at least one table wider than the page"
    for table in tables:
        assert table["overflow"] in ("auto", "scroll"), f"{table['text']!r} is cut off, not scrollable"
        assert table["scrolled"] > 0
        assert table["worst"] <= 1, f"{table['text']!r}: its first column scrolls out of view"


CELL_PADDING = """() => Array.from(document.querySelectorAll('.cell_output table td')).map(td => {
    const s = getComputedStyle(td);
    return parseFloat(s.paddingLeft) + parseFloat(s.paddingRight);
})"""


def test_table_cells_keep_their_text_apart():
    """Neighbouring cells of a result table are at least 8 px apart (seen run together on chapter 5's page)."""
    paddings = _evaluate_on_page(CELL_PADDING)
    assert paddings, "chapter 6 should have result tables"
    assert min(paddings) >= 8, f"table cells are only {min(paddings):.0f} px apart"


PRINTED_LINES = """() => Array.from(document.querySelectorAll('.cell_output .output.stream pre')).map(pre => ({
    text: pre.innerText.slice(0, 50), hidden: pre.scrollWidth - pre.clientWidth}))"""


def test_printed_lines_wrap_at_the_page_width():
    """A printed line (chapter 6's 'wrote ...; chapter time' line runs past the page's width)
    wraps instead of running off the right edge of its box (_static/outputs.css)."""
    lines = _evaluate_on_page(PRINTED_LINES)
    assert lines, "chapter 6 should print at least one line"
    cut = [line["text"] for line in lines if line["hidden"] > 1]
    assert not cut, f"printed lines cut at the page's edge: {cut}"


STACKED_OUTPUTS = """() => Array.from(document.querySelectorAll('.cell_output')).flatMap(cell => {
    const boxes = Array.from(cell.children).filter(o => o.classList.contains('output'))
        .map(o => o.getBoundingClientRect());
    return boxes.slice(1).map((box, k) => box.top - boxes[k].bottom);
})"""


def test_stacked_outputs_keep_apart():
    """Two outputs of one cell (a table, then the caption of the next table) are at least 6 px
    apart: chapter 3's and chapter 6's stacked tables read as one table without the gap."""
    gaps = _evaluate_on_page(STACKED_OUTPUTS)
    assert gaps, "chapter 6 should have a cell with several outputs"
    assert min(gaps) >= 6, f"stacked outputs only {min(gaps):.0f} px apart"
