"""Check in headless Chromium, with the network cut off, that the built book works offline.

Usage (after `jupyter-book build .` and `bash scripts/offline_assets.sh`):

    python scripts/check_offline_html.py [--build-dir _build/html] [--install]
        [--math-page book/how_to_read.html] [--widget-page book/00_data_and_models.html ...]

Every checked page is opened twice, as a file:// URL and through a throw-away HTTP
server on 127.0.0.1, in a fresh headless Chromium profile whose DNS resolves nothing
and whose proxy is a closed local port, so any request to a CDN fails. It checks

(a) math:    MathJax typeset the page (``mjx-container`` elements, at least one per
             math node Sphinx wrote, and no ``mjx-merror``);
(b) widgets: the Jupyter widgets embed manager drew every saved widget view
             (``widget-subarea`` elements holding ``jupyter-widgets`` views), on each
             page given with --widget-page, or else on every page that carries saved
             widget state or a widget view (none: that part is reported as skipped);
(c) network: Chromium's net log shows no request from the page to another machine.

A screenshot of each page (file:// URL) is saved to --out (default
_build/offline_check/) to be looked at. Exit status: 0 all good, 1 a check failed,
2 bad usage or no build, 3 Chromium is missing (and --install was not given or failed).

--install installs the Debian package `chromium` with apt-get when no Chromium is
found (needs root and a reachable Debian mirror); --install-only does only that and
exits (``make browser``, a prerequisite of ``make test``, whose browser tests need it).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_CHROMIUM = 0, 1, 2, 3
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MJX = r"<mjx-container\b"
SUBAREA = r'class="[^"]*\bwidget-subarea\b'


def find_chromium() -> str | None:
    explicit = os.environ.get("NBS_CHROMIUM")  # the browser tests' variable too
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium() -> str | None:
    """apt-get install chromium; the path of the browser, or None (with the reason printed)."""
    if not shutil.which("apt-get"):
        print("check_offline_html: no apt-get here to install Chromium with.", file=sys.stderr)
        return None
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        print("check_offline_html: installing Chromium needs root (apt-get).", file=sys.stderr)
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("check_offline_html: installing the Debian package chromium with apt-get ...", file=sys.stderr)
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"check_offline_html: `{' '.join(cmd)}` failed: {' | '.join(tail)}", file=sys.stderr)
            return None
    return find_chromium()


def ensure_chromium() -> int:
    """Print the path of Chromium, installing it first if it is missing (``make browser``)."""
    chromium = find_chromium() or install_chromium()
    if chromium is None:
        print("check_offline_html: Chromium is missing and could not be installed: as root, "
              "`apt-get install chromium`, or set NBS_CHROMIUM to a Chromium binary.", file=sys.stderr)
        return EXIT_NO_CHROMIUM
    print(f"Chromium: {chromium}")
    return EXIT_OK


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class LocalServer:
    """A static HTTP server for the build on 127.0.0.1 (a free port), in a thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class PageRun:
    dom: str
    remote_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def _browser_args(profile: str, budget_ms: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Network off: no name resolves (loopback excepted), and anything that gets
        # past that meets a proxy on a closed local port. Loopback bypasses proxies.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--proxy-server=127.0.0.1:9",
        f"--virtual-time-budget={budget_ms}",
    ]


def _remote_page_requests(netlog: Path) -> list[str]:
    """URLs of requests that a page (not the browser itself) sent off this machine."""
    try:
        data = json.loads(netlog.read_text(encoding="utf-8", errors="replace"))
    except (OSError, json.JSONDecodeError):
        # Chromium may leave the log without its closing bracket when killed.
        try:
            text = netlog.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
            data = json.loads(text + "]}")
        except (OSError, json.JSONDecodeError):
            return []
    names = {v: k for k, v in data.get("constants", {}).get("logEventTypes", {}).items()}
    urls = []
    for event in data.get("events", []):
        if names.get(event.get("type")) != "URL_REQUEST_START_JOB":
            continue
        params = event.get("params", {})
        url = params.get("url", "")
        if params.get("initiator") == "not an origin":
            continue  # the browser's own background services, not the page
        if re.match(r"^(https?|wss?)://", url) and not re.match(
            r"^(https?|wss?)://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/", url
        ):
            urls.append(url)
    return sorted(set(urls))


def run_page(chromium: str, url: str, budget_ms: int, screenshot: Path | None = None,
             timeout: int = 120) -> PageRun:
    """Load url in a fresh headless profile; the DOM after scripts ran, and what went wrong."""
    with tempfile.TemporaryDirectory(prefix="offline-check-") as tmp:
        netlog = Path(tmp) / "netlog.json"
        args = [chromium, *_browser_args(str(Path(tmp) / "profile"), budget_ms),
                "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}", "--dump-dom", url]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not proc.stdout.strip():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"Chromium could not load {url} (exit {proc.returncode}):\n{tail}")
        errors = [
            line.split("CONSOLE", 1)[-1]
            for line in proc.stderr.splitlines()
            if ":CONSOLE" in line and ("Uncaught" in line or "Error" in line)
        ]
        run = PageRun(dom=proc.stdout, remote_requests=_remote_page_requests(netlog), console_errors=errors)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = [chromium, *_browser_args(str(Path(tmp) / "profile-shot"), budget_ms),
                    "--window-size=1280,1800", f"--screenshot={screenshot}", url]
            subprocess.run(shot, capture_output=True, text=True, timeout=timeout)
            if not screenshot.is_file():
                raise RuntimeError(f"Chromium wrote no screenshot of {url} to {screenshot}")
        return run


def count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def check_math(source: str, dom: str) -> list[str]:
    """Problems with MathJax typesetting (empty list: fine)."""
    nodes = count(r'class="math notranslate nohighlight"', source)
    typeset = count(MJX, dom)
    errors = count(r"<mjx-merror\b", dom)
    problems = []
    if nodes == 0:
        problems.append("the page has no math for MathJax to typeset (wrong page?)")
    elif typeset < nodes:
        problems.append(
            f"MathJax typeset {typeset} of {nodes} math nodes: it did not load or run "
            "(is _offline/mathjax/ there? did scripts/offline_assets.sh run?)"
        )
    if errors:
        problems.append(f"MathJax reported {errors} TeX error(s) (mjx-merror)")
    return problems


def check_widgets(source: str, dom: str) -> list[str]:
    """Problems with the widget views drawn by the embed manager (empty list: fine)."""
    views = count(r'<script type="' + re.escape(WIDGET_VIEW) + '"', source)
    drawn = count(SUBAREA, dom)
    widgets = count(r'class="[^"]*\bjupyter-widgets\b', dom)
    problems = []
    if WIDGET_STATE not in source:
        problems.append(
            "the page has widget views but no saved widget state, so nothing is drawn: execute the "
            "notebook with papermill/nbclient (they store it in the notebook metadata `widgets`) and "
            "do not strip notebook metadata"
        )
        return problems
    if views == 0:
        problems.append("the page has no widget view output")
    elif drawn < views or widgets == 0:
        problems.append(
            f"the widget manager drew {drawn} of {views} widget views: it did not load or run "
            "(is _offline/html-manager/ there? did scripts/offline_assets.sh run?)"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default="_build/html", help="the html folder of a build")
    parser.add_argument("--math-page", default="book/how_to_read.html", help="page with math, relative to the build")
    parser.add_argument("--widget-page", action="append", default=[],
                        help="page with widgets, relative to the build (repeatable); default: every page with saved widget state")
    parser.add_argument("--require-widgets", action="store_true", help="fail when no page has widgets")
    parser.add_argument("--out", default=None, help="screenshot folder (default: BUILD_DIR/../offline_check)")
    parser.add_argument("--budget-ms", type=int, default=10000, help="Chromium virtual time budget per page")
    parser.add_argument("--install", action="store_true", help="apt-get install chromium if it is missing")
    parser.add_argument("--install-only", action="store_true",
                        help="find Chromium, or apt-get install it, print its path and exit")
    args = parser.parse_args(argv)
    if args.install_only:
        return ensure_chromium()

    build = Path(args.build_dir).resolve()
    if not (build / args.math_page).is_file():
        print(f"check_offline_html: no {args.math_page} under {build}; build the book first "
              "(jupyter-book build .; bash scripts/offline_assets.sh).", file=sys.stderr)
        return EXIT_USAGE
    if not (build / "_offline").is_dir():
        print(f"check_offline_html: {build / '_offline'} is missing: run `bash scripts/offline_assets.sh` "
              "after the build.", file=sys.stderr)
        return EXIT_FAIL
    out = Path(args.out).resolve() if args.out else build.parent / "offline_check"

    chromium = find_chromium() or (install_chromium() if args.install else None)
    if chromium is None:
        print("check_offline_html: Chromium not found; install the Debian package `chromium` "
              "(apt-get install chromium) or pass --install.", file=sys.stderr)
        return EXIT_NO_CHROMIUM

    widget_pages = list(args.widget_page)
    if not widget_pages:
        # every page with saved widget state or a widget view output (a view without
        # state would silently show nothing: check_widgets reports it)
        widget_pages = sorted(
            str(p.relative_to(build)) for p in build.rglob("*.html")
            if "_offline" not in p.relative_to(build).parts
            and any(m in p.read_text(encoding="utf-8", errors="replace") for m in (WIDGET_STATE, WIDGET_VIEW))
        )
    for page in widget_pages:
        if not (build / page).is_file():
            print(f"check_offline_html: widget page {page} is not in {build}.", file=sys.stderr)
            return EXIT_USAGE

    checks: list[tuple[str, str]] = [(args.math_page, "math")] + [(p, "widgets") for p in widget_pages]
    failures: list[str] = []
    with LocalServer(build) as server:
        for page, kind in checks:
            source = (build / page).read_text(encoding="utf-8", errors="replace")
            shot = out / (page.replace("/", "__").removesuffix(".html") + ".png")
            for scheme, url in (("file", (build / page).as_uri()), ("http", server.base + page)):
                try:
                    run = run_page(chromium, url, args.budget_ms, screenshot=shot if scheme == "file" else None)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    failures.append(f"{page} [{scheme}]: {err}")
                    continue
                problems = check_math(source, run.dom) if kind == "math" else check_widgets(source, run.dom)
                if kind == "widgets" and "<mjx-container" in run.dom:
                    problems += [p for p in check_math(source, run.dom) if "no math" not in p]
                if run.remote_requests:
                    problems.append("the page tried to reach the network: " + ", ".join(run.remote_requests))
                status = "ok" if not problems else "FAILED"
                if kind == "math":
                    detail = f"{count(MJX, run.dom)} math typeset"
                else:
                    detail = f"{count(SUBAREA, run.dom)} widget views drawn"
                print(f"check_offline_html: {status:6} {kind:7} {scheme:4} {page}: {detail}")
                for err in run.console_errors:
                    print(f"check_offline_html:        console: {err.strip()}")
                failures += [f"{page} [{scheme}]: {p}" for p in problems]
            print(f"check_offline_html:        screenshot {shot}")
    if not widget_pages:
        msg = "no page has widgets (saved widget state or widget views): widget check skipped"
        if args.require_widgets:
            failures.append(msg)
        else:
            print(f"check_offline_html: {msg}")

    if failures:
        print("check_offline_html: the built book does NOT work offline:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return EXIT_FAIL
    print(f"check_offline_html: all {len(checks)} page(s) work offline (file:// and http://127.0.0.1).")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
