#!/usr/bin/env bash
# Make a built book work with no network.
#
# Run after `jupyter-book build .`:
#
#     bash scripts/offline_assets.sh [BUILD_HTML_DIR]      (default: _build/html)
#
# It fetches, with the ordinary npm client and at pinned versions,
#   - MathJax 3 (npm `mathjax`: es5/tex-mml-chtml.js, its components and CHTML fonts),
#   - the Jupyter widgets embed manager (npm `@jupyter-widgets/html-manager`:
#     dist/embed-amd.js and the icon fonts beside it),
#   - RequireJS (npm `requirejs`: require.js), which embed-amd.js needs,
# into a cache outside the tracked files (.cache/npm-assets/, gitignored), and copies
# them into BUILD_HTML_DIR/_offline/. Nothing third-party is committed, and nothing
# goes into _static/ (which Jupyter Book copies into every page's head).
#
# The pages already point at _offline/ through _config.yml (`mathjax_path` and
# `nb_ipywidgets_js`, made relative per page by Sphinx). As a safety net,
# scripts/offline_html.py then rewrites any remaining CDN <script src> of these
# three libraries to the local copies and fails if a remote script is left.
#
# Environment: OFFLINE_ASSETS_CACHE (cache dir), PYTHON (interpreter for the
# post-processing step; default .venv/bin/python, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/_build/html}"
CACHE="${OFFLINE_ASSETS_CACHE:-$ROOT/.cache/npm-assets}"

MATHJAX_VERSION="3.2.2"
HTML_MANAGER_VERSION="1.0.15"   # @jupyter-widgets/html-manager for ipywidgets 8.x
REQUIREJS_VERSION="2.3.8"

if [ -x "$ROOT/.venv/bin/python" ]; then PY_DEFAULT="$ROOT/.venv/bin/python"; else PY_DEFAULT="python3"; fi
PYTHON="${PYTHON:-$PY_DEFAULT}"

die() { echo "offline_assets.sh: $*" >&2; exit 1; }

[ -d "$BUILD" ] || die "no built book at '$BUILD': run 'jupyter-book build .' first."
[ -f "$BUILD/index.html" ] || [ -n "$(ls "$BUILD"/*.html 2>/dev/null)" ] \
  || die "'$BUILD' holds no HTML page: is it the html folder of a build?"
command -v npm >/dev/null 2>&1 \
  || die "npm is not installed; install it (Debian: 'apt-get install -y npm') and re-run."

mkdir -p "$CACHE"

# fetch NAME VERSION -> prints the folder holding the unpacked package
fetch() {
  local name="$1" version="$2"
  local slug dest tgz
  slug="$(echo "$name" | sed -e 's/^@//' -e 's#/#-#g')"
  dest="$CACHE/$slug-$version"
  if [ ! -f "$dest/package/package.json" ]; then
    echo "offline_assets.sh: fetching $name@$version with npm pack" >&2
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    # npm pack downloads the published tarball and checks its integrity.
    tgz="$(cd "$dest.tmp" && npm pack --silent --pack-destination . "$name@$version" 2>/dev/null | tail -n 1)" \
      || die "npm pack $name@$version failed (is the npm registry reachable?)"
    [ -f "$dest.tmp/$tgz" ] || die "npm pack $name@$version produced no tarball"
    tar -xzf "$dest.tmp/$tgz" -C "$dest.tmp"
    rm -f "$dest.tmp/$tgz"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
  fi
  echo "$dest/package"
}

MJ="$(fetch mathjax "$MATHJAX_VERSION")"
HM="$(fetch @jupyter-widgets/html-manager "$HTML_MANAGER_VERSION")"
RJ="$(fetch requirejs "$REQUIREJS_VERSION")"

[ -f "$MJ/es5/tex-mml-chtml.js" ] || die "mathjax@$MATHJAX_VERSION has no es5/tex-mml-chtml.js"
[ -f "$HM/dist/embed-amd.js" ] || die "html-manager@$HTML_MANAGER_VERSION has no dist/embed-amd.js"
[ -f "$RJ/require.js" ] || die "requirejs@$REQUIREJS_VERSION has no require.js"

OFF="$BUILD/_offline"
rm -rf "$OFF"
mkdir -p "$OFF/mathjax" "$OFF/html-manager/dist" "$OFF/requirejs"

# MathJax: the whole es5 tree (components load further pieces, e.g. TeX extensions,
# the menu and fonts, relative to the script's own location).
cp -R "$MJ/es5" "$OFF/mathjax/es5"
cp "$MJ/LICENSE" "$OFF/mathjax/LICENSE"

# Widgets: the AMD embed bundle plus the fonts it references; no source maps.
find "$HM/dist" -maxdepth 1 -type f \
  \( -name 'embed-amd.js' -o -name '*.woff' -o -name '*.woff2' -o -name '*.ttf' \
     -o -name '*.eot' -o -name '*.svg' -o -name '*.LICENSE.txt' \) \
  -exec cp {} "$OFF/html-manager/dist/" \;
[ -f "$HM/LICENSE" ] && cp "$HM/LICENSE" "$OFF/html-manager/LICENSE"

cp "$RJ/require.js" "$OFF/requirejs/require.js"
[ -f "$RJ/LICENSE" ] && cp "$RJ/LICENSE" "$OFF/requirejs/LICENSE"

# Our own few lines (not third-party): the embed manager typesets widget labels with
# the MathJax 2 call MathJax.Hub.Queue(["Typeset", MathJax.Hub, el]); the book loads
# MathJax 3, which has no Hub. _config.yml loads this before embed-amd.js.
mkdir -p "$OFF/widgets"
cat > "$OFF/widgets/mathjax3-bridge.js" <<'EOF'
/* Written by scripts/offline_assets.sh. Lets the Jupyter widgets embed manager, which
   speaks the MathJax 2 API (MathJax.Hub.Queue), typeset widget labels with MathJax 3. */
(function () {
  "use strict";
  function typeset(el) {
    var MJ = window.MathJax;
    if (!MJ || typeof MJ.typesetPromise !== "function") return;
    if (el && el.childElementCount === 0 && /\$[^$]+\$/.test(el.textContent || "")) {
      /* A label such as "$\epsilon$ (x/255)": the book's MathJax knows only \( \) as
         inline delimiters, and the page body is in its ignore list. */
      el.textContent = el.textContent.replace(/\$([^$]+)\$/g, "\\($1\\)");
      el.classList.add("mathjax_process");
    }
    var ready = MJ.startup && MJ.startup.promise ? MJ.startup.promise : Promise.resolve();
    ready.then(function () { return MJ.typesetPromise(el ? [el] : undefined); })
      .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
  }
  function install() {
    var MJ = window.MathJax;
    if (!MJ || MJ.Hub || String(MJ.version || "").charAt(0) !== "3") return;
    MJ.Hub = {
      Queue: function () {
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset") typeset(job[2]);
        }
      }
    };
  }
  /* MathJax 3 (a deferred script) replaces window.MathJax when it runs, before
     DOMContentLoaded; the embed manager draws the widgets after that. */
  document.addEventListener("DOMContentLoaded", install);
})();
EOF

cat > "$OFF/README.txt" <<EOF
Third-party files served locally so that this book works offline.
Copied by scripts/offline_assets.sh from the npm packages:
  mathjax@$MATHJAX_VERSION                       (Apache-2.0)   mathjax/
  @jupyter-widgets/html-manager@$HTML_MANAGER_VERSION   (BSD-3-Clause) html-manager/
  requirejs@$REQUIREJS_VERSION                     (MIT)          requirejs/
widgets/mathjax3-bridge.js is the book's own (see scripts/offline_assets.sh).
EOF

"$PYTHON" "$ROOT/scripts/offline_html.py" "$BUILD"
echo "offline_assets.sh: $(du -sh "$OFF" | cut -f1) of offline assets in $OFF"
