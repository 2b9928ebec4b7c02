"""Point every page of a built book at the local copies of its third-party scripts.

Usage: python scripts/offline_html.py [BUILD_HTML_DIR]        (default: _build/html)

Run by scripts/offline_assets.sh after it has copied MathJax, the Jupyter widgets
embed manager and RequireJS into BUILD_HTML_DIR/_offline/. _config.yml already makes
Sphinx write page-relative paths to those files, so normally this script only tidies
them ("_static/../_offline/x" becomes "_offline/x"). It is also the safety net for a
page that still loads one of them from a CDN (a theme or extension default that
bypassed the configuration). Such a <script src> is rewritten
to the page-relative local copy (its `integrity` and `crossorigin` attributes are
dropped, as they describe the remote file). A verbatim repeat of an inline script
(sphinx-thebe writes one twice) is dropped.

Afterwards every page is scanned: any <script src> or stylesheet <link> that still
points off the machine is reported and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

OFFLINE = "_offline"
STATIC_DETOUR = "_static/../_offline/"

SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)
LINK_TAG = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
SRC_ATTR = re.compile(r"""\bsrc\s*=\s*(["'])(?P<url>[^"']*)\1""", re.IGNORECASE)
HREF_ATTR = re.compile(r"""\bhref\s*=\s*(["'])(?P<url>[^"']*)\1""", re.IGNORECASE)
DROP_ATTRS = re.compile(r"""\s+(?:integrity|crossorigin)(?:\s*=\s*(["'])[^"']*\1)?""", re.IGNORECASE)
REMOTE = re.compile(r"^(?:https?:)?//", re.IGNORECASE)


def local_target(url: str) -> str | None:
    """The path under _offline/ that replaces a remote script URL, or None."""
    low = url.lower().split("?")[0].split("#")[0]
    name = low.rsplit("/", 1)[-1]
    if "mathjax" in low and name.endswith(".js"):
        if name in {"mathjax.js", "latest.js"} or "@2" in low:
            # MathJax 2 entry points have no MathJax 3 equivalent with the same name.
            return f"{OFFLINE}/mathjax/es5/tex-mml-chtml.js"
        return f"{OFFLINE}/mathjax/es5/{name}"
    if name in {"require.js", "require.min.js"}:
        return f"{OFFLINE}/requirejs/require.js"
    if "html-manager" in low and name in {"embed-amd.js", "embed.js"}:
        return f"{OFFLINE}/html-manager/dist/embed-amd.js"
    return None


def rewrite_page(page: Path, build: Path) -> tuple[str, int]:
    """The page's text with known CDN scripts pointed at _offline/, and the count."""
    text = page.read_text(encoding="utf-8")
    prefix = os.path.relpath(build, page.parent).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    count = 0

    def fix(match: re.Match) -> str:
        nonlocal count
        tag = match.group(0)
        src = SRC_ATTR.search(tag)
        if not src:
            return tag
        url = src.group("url")
        if STATIC_DETOUR in url:
            # "_static/../_offline/x" (how Sphinx writes the configured path) -> "_offline/x"
            count += 1
            return tag[: src.start("url")] + url.replace(STATIC_DETOUR, OFFLINE + "/") + tag[src.end("url") :]
        if not REMOTE.match(url):
            return tag
        target = local_target(src.group("url"))
        if target is None:
            return tag
        count += 1
        new = tag[: src.start("url")] + prefix + target + tag[src.end("url") :]
        return DROP_ATTRS.sub("", new)

    text = SCRIPT_TAG.sub(fix, text)
    text, dropped = drop_duplicate_inline_scripts(text)
    return text, count + dropped


INLINE_SCRIPT = re.compile(r"<script>(?P<body>[^<]*)</script>\s*", re.IGNORECASE)


def drop_duplicate_inline_scripts(text: str) -> tuple[str, int]:
    """Remove an attribute-less inline <script> that repeats an earlier one verbatim.

    sphinx-thebe 0.3.1 with Sphinx 7 writes its `const THEBE_JS_URL = ...` block twice
    into every page; the second copy is a SyntaxError in the console ("Identifier
    'THEBE_JS_URL' has already been declared"). Identical blocks are redundant.
    """
    seen: set[str] = set()
    dropped = 0

    def once(match: re.Match) -> str:
        nonlocal dropped
        body = match.group("body").strip()
        if body and body in seen:
            dropped += 1
            return ""
        seen.add(body)
        return match.group(0)

    return INLINE_SCRIPT.sub(once, text), dropped


def remote_assets(text: str) -> list[str]:
    """Remote <script src> and stylesheet <link href> URLs left in a page."""
    found = []
    for tag in SCRIPT_TAG.findall(text):
        src = SRC_ATTR.search(tag)
        if src and REMOTE.match(src.group("url")):
            found.append(src.group("url"))
    for tag in LINK_TAG.findall(text):
        if "stylesheet" not in tag.lower():
            continue
        href = HREF_ATTR.search(tag)
        if href and REMOTE.match(href.group("url")):
            found.append(href.group("url"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", nargs="?", default="_build/html", help="the html folder of a build")
    args = parser.parse_args(argv)
    build = Path(args.build).resolve()
    if not build.is_dir():
        print(f"offline_html.py: no built book at {build}; run 'jupyter-book build .' first.", file=sys.stderr)
        return 2
    if not (build / OFFLINE).is_dir():
        print(f"offline_html.py: {build / OFFLINE} is missing; run scripts/offline_assets.sh.", file=sys.stderr)
        return 2

    pages = sorted(p for p in build.rglob("*.html") if OFFLINE not in p.relative_to(build).parts)
    rewritten = 0
    problems: dict[str, list[str]] = {}
    for page in pages:
        text, count = rewrite_page(page, build)
        if count:
            page.write_text(text, encoding="utf-8")
            rewritten += count
        left = remote_assets(text)
        if left:
            problems[str(page.relative_to(build))] = left

    missing = [
        rel
        for rel in (
            "mathjax/es5/tex-mml-chtml.js",
            "html-manager/dist/embed-amd.js",
            "requirejs/require.js",
            "widgets/mathjax3-bridge.js",
        )
        if not (build / OFFLINE / rel).is_file()
    ]
    print(f"offline_html.py: {len(pages)} pages checked, {rewritten} script tags tidied or pointed at {OFFLINE}/.")
    status = 0
    if missing:
        print(f"offline_html.py: missing local assets under {OFFLINE}/: {', '.join(missing)}", file=sys.stderr)
        status = 1
    if problems:
        print("offline_html.py: pages still load remote scripts or stylesheets:", file=sys.stderr)
        for page, urls in problems.items():
            for url in sorted(set(urls)):
                print(f"  {page}: {url}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
