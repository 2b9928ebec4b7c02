"""The rehearsal's test-only switches, loaded by the kernels it starts (TEST TOOLING).

:mod:`rehearsal.run` puts this folder first on ``PYTHONPATH`` of every papermill kernel
and sets ``NBS_REHEARSAL_MANIFEST`` to the stand-ins' ``standins.json``
(:mod:`rehearsal.standins`). Nothing else ever imports it: a user's run keeps every check.

1. **Checksums of the stand-ins.** The stand-in files cannot have the published
   checksums that torchvision (CIFAR-10's pickles, Flowers102's ``.mat`` files) and
   :func:`nbs_lib.models.checksums.verified` (the SHA-256 prefix in a torchvision weights
   file's name) check. For the files listed in the manifest, those checks compare the
   file with the digest the builder recorded instead; a stand-in changed after it was
   built still fails. Every other file is checked as before.
2. **Lazy everywhere** (``NBS_REHEARSAL_MAX_IN_MEMORY_BYTES``): lowers
   :data:`nbs_lib.data.images.MAX_IN_MEMORY_BYTES`, so that a tiny rehearsal set is decoded
   lazily as a paper-size one would be (a set over 2 GiB), and in-memory assumptions cannot hide.

The patches are applied when the patched module is first imported (an import hook), so
the kernel does not import torch before the notebook does.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import json
import os
import sys
from pathlib import Path

_MANIFEST = os.environ.get("NBS_REHEARSAL_MANIFEST")
_FILES = json.loads(Path(_MANIFEST).read_text())["files"] if _MANIFEST and Path(_MANIFEST).is_file() else {}


def _digest(path, kind: str) -> str:
    h = hashlib.new(kind)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _standin(path) -> dict | None:
    return _FILES.get(str(Path(path)))


def _patch_torchvision_md5(module) -> None:
    original = module.check_integrity

    def check_integrity(fpath, md5=None):
        recorded = _standin(fpath)
        if recorded is None:
            return original(fpath, md5)
        return os.path.isfile(fpath) and _digest(fpath, "md5") == recorded["md5"]

    module.check_integrity = check_integrity


def _patch_verified(module) -> None:
    original = module.verified

    def verified(path, what):
        recorded = _standin(path)
        if recorded is None:
            return original(path, what)
        if _digest(path, "sha256") != recorded["sha256"]:
            raise ValueError(f"{path}: the rehearsal's stand-in of {what} changed since it was built.")
        return Path(path)

    module.verified = verified


def _patch_memory(module) -> None:
    limit = os.environ.get("NBS_REHEARSAL_MAX_IN_MEMORY_BYTES")
    if limit is not None:
        module.MAX_IN_MEMORY_BYTES = int(limit)


_PATCHES = {
    "torchvision.datasets.cifar": _patch_torchvision_md5,
    "torchvision.datasets.flowers102": _patch_torchvision_md5,
    # `verified` is imported by name into each module that checks weights files
    "nbs_lib.models.resnet": _patch_verified,
    "nbs_lib.models.efficientnet_lite": _patch_verified,
    "nbs_lib.data.images": _patch_memory,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the patched modules with the other finders and patches them once executed."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader, patch = spec.loader, _PATCHES[name]
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            patch(module)

        loader.exec_module = exec_module
        return spec


if _FILES:
    sys.meta_path.insert(0, _PatchAfterImport())
