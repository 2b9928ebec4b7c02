"""The built book works with the network off: MathJax typesets, widgets are drawn.

Builds nothing itself. After `jupyter-book build .` and `bash scripts/offline_assets.sh`
it runs scripts/check_offline_html.py on _build/html (or on $BOOK_HTML_DIR), which
opens the pages in headless Chromium, through file:// and a local HTTP server, with
DNS and proxy pointed nowhere. Skipped when there is no build, or when Chromium is
missing and cannot be installed (apt-get, as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("BOOK_HTML_DIR", ROOT / "_build" / "html"))
CHECK = ROOT / "scripts" / "check_offline_html.py"
MATH_PAGE = "book/how_to_read.html"
EXIT_NO_CHROMIUM = 3


def test_built_book_works_offline():
    if not (BUILD / MATH_PAGE).is_file():
        pytest.skip(
            f"no built book at {BUILD} (run `jupyter-book build . -W -n --keep-going` "
            "and `bash scripts/offline_assets.sh` first)"
        )
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--build-dir", str(BUILD), "--math-page", MATH_PAGE, "--install"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = (proc.stdout + proc.stderr).strip()
    if proc.returncode == EXIT_NO_CHROMIUM:
        pytest.skip(f"Chromium is not available and could not be installed:\n{report}")
    assert proc.returncode == 0, f"the built book does not work offline:\n{report}"


def test_install_only_names_the_browser_the_tests_will_use(tmp_path):
    """`make browser` (check_offline_html.py --install-only) finds the browser of $NBS_CHROMIUM,
    the variable the JupyterLab and page-table tests read, and installs nothing then."""
    browser = tmp_path / "my-chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    proc = subprocess.run([sys.executable, str(CHECK), "--install-only"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NBS_CHROMIUM=str(browser)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Chromium: {browser}" and "installing" not in proc.stderr
