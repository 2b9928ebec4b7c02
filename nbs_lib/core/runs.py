"""Content-addressed cache of trained models and computed results.

Every entry lives under ``<cache>/<kind>/<key>/`` where ``key`` is the SHA-256 of the
entry's full config (architecture, weights, dataset, regime, hyper-parameters, seed,
profile sizes, ...), so a changed config can never reuse a stale entry. The cache is
outside the repository by default (``~/.cache/nbs_lib``); ``NBS_CACHE`` overrides it.

* Writes are atomic: a temporary file in the same folder, then ``os.replace``.
* Training saves a checkpoint after every epoch, so an interrupted run resumes from
  its last finished epoch (:meth:`RunCache.save_checkpoint` / :meth:`load_checkpoint`).
* Each entry stores its config beside it; an entry whose config does not match or
  whose files do not load is reported, discarded and recomputed, never silently used.
* Processes sharing one cache (``make book LANES=2``) take an entry's lock while they
  look it up and compute it (:meth:`RunCache.exclusive`), so no entry is computed twice:
  the second process waits, then loads what the first stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nbs_lib.core import distributed

CACHE_ENV = "NBS_CACHE"
LOCKS = ".locks"  # the entries' lock files (not entries themselves)


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nbs_lib"


def canonical_json(config: dict) -> str:
    """The config as sorted, compact JSON (tuples become lists, other objects ``str``)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(*parts, digits: int = 16) -> str:
    """SHA-256 (first ``digits`` hex digits) of ``parts`` in order: the one content hash of the book.

    A part is bytes, a string (UTF-8), a tensor or array (its raw bytes, C order) or a
    :class:`~pathlib.Path` (the file's bytes). Hashing parts one after the other equals
    hashing their concatenation.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = part.read_bytes()
        elif isinstance(part, str):
            part = part.encode()
        elif isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        if isinstance(part, bytes):
            digest.update(part)
        else:
            _hash_array(digest, np.asarray(part))
    return digest.hexdigest()[:digits]


HASH_CHUNK_BYTES = 64 * 2**20


def _hash_array(digest, array: np.ndarray) -> None:
    """Feed ``array``'s C-order bytes to ``digest`` in slices of the first axis, so that a
    memory-mapped sample of several GiB is hashed without a copy of it in memory."""
    if array.ndim == 0 or array.nbytes <= HASH_CHUNK_BYTES:
        digest.update(np.ascontiguousarray(array).tobytes())
        return
    rows = max(1, HASH_CHUNK_BYTES // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        digest.update(np.ascontiguousarray(array[start:start + rows]).tobytes())


def config_key(config: dict) -> str:
    """SHA-256 (first 20 hex digits) of the canonical JSON of ``config``."""
    return content_hash(canonical_json(config), digits=20)


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CorruptEntry(RuntimeError):
    """A cache entry that exists but cannot be trusted."""


class RunCache:
    """Models and results keyed by the hash of their config."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    # -- layout -------------------------------------------------------------------
    def entry_dir(self, kind: str, config: dict) -> Path:
        return self.root / kind / config_key(config)

    def _check_config(self, entry: Path, config: dict) -> None:
        stored = entry / "config.json"
        if not stored.is_file():
            raise CorruptEntry(f"{entry} has no config.json")
        if stored.read_text() != canonical_json(config):
            raise CorruptEntry(f"{entry}/config.json does not match the requested config")

    def _write_config(self, entry: Path, config: dict) -> None:
        atomic_write_bytes(entry / "config.json", lambda f: f.write(canonical_json(config).encode()))

    def discard(self, kind: str, config: dict, reason: str = "") -> None:
        entry = self.entry_dir(kind, config)
        if entry.exists():
            warnings.warn(f"Discarding cache entry {entry}: {reason}. It will be recomputed.",
                          stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)

    @contextlib.contextmanager
    def exclusive(self, kind: str, config: dict):
        """Hold the lock of one entry (an advisory file lock under ``<cache>/.locks``).

        Another process asking for the same entry waits until this one leaves the block;
        the lock goes with the process if it dies. Different entries never wait on each other.
        The ranks of one distributed run do not lock (they compute together; rank 0 writes).
        """
        if distributed.is_distributed():
            yield
            return
        folder = self.root / LOCKS / kind
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{config_key(config)}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- cached artifacts: load, or compute and save ------------------------------
    @staticmethod
    def versioned(config: dict, code_version: int) -> dict:
        """``config`` with the code version of what computes it (a bump invalidates old entries)."""
        if isinstance(code_version, bool) or not isinstance(code_version, int):
            raise TypeError(f"code_version must be an int; got {code_version!r}")
        if config.get("code_version", code_version) != code_version:
            raise ValueError(f"config says code_version={config['code_version']}, the caller {code_version}")
        return {**config, "code_version": code_version}

    def memo(self, kind: str, config: dict, compute: Callable[[], Any], *, code_version: int) -> Any:
        """``compute()``'s JSON-serialisable value, computed once per config and code version."""
        config = self.versioned(config, code_version)
        with self.exclusive(kind, config):
            entry = self.entry_dir(kind, config)
            result = entry / "result.json"
            if result.exists():
                try:
                    self._check_config(entry, config)
                    return json.loads(result.read_text())
                except (CorruptEntry, json.JSONDecodeError, UnicodeDecodeError) as err:
                    self.discard(kind, config, str(err))
            value = compute()
            self._write_config(entry, config)
            atomic_write_bytes(result, lambda f: f.write(json.dumps(value, default=float).encode()))
            return value

    def artifact(self, kind: str, config: dict, compute: Callable[[], dict], *, code_version: int) -> dict:
        """``compute()``'s payload (a dict of tensors and plain values), computed once per config
        and code version and stored with ``torch.save``; a corrupt entry is discarded and recomputed."""
        config = self.versioned(config, code_version)
        with self.exclusive(kind, config):
            stored = self.load_model_state(kind, config)
            if stored is None:
                stored = compute()
                self.save_model_state(kind, config, stored)
            return stored

    def mapped_tensor(self, kind: str, config: dict, shape: tuple[int, ...],
                      fill: Callable[[torch.Tensor], None], *, code_version: int) -> torch.Tensor:
        """A float32 tensor of ``shape`` kept on disk and memory-mapped: ``fill(out)`` writes
        it once per config and code version; later calls map the stored file.

        For what is too large to hold in host memory (a paper-scale attack sample: 10,000
        images at 224 px are 6 GiB). Slices are read from disk as they are used; writes to
        the returned tensor stay in memory (copy-on-write), never reach the stored file.
        A file of the wrong size or a mismatched config is discarded and recomputed.
        """
        config = self.versioned({**config, "shape": list(shape)}, code_version)
        with self.exclusive(kind, config):
            return self._mapped_tensor(kind, config, shape, fill)

    def _mapped_tensor(self, kind: str, config: dict, shape: tuple[int, ...],
                       fill: Callable[[torch.Tensor], None]) -> torch.Tensor:
        entry = self.entry_dir(kind, config)
        stored = entry / "tensor.f32"
        nbytes = int(np.prod(shape)) * 4
        if stored.exists():
            try:
                self._check_config(entry, config)
                if stored.stat().st_size != nbytes:
                    raise CorruptEntry(f"{stored} has {stored.stat().st_size} bytes, expected {nbytes}")
                return torch.from_numpy(np.memmap(stored, np.float32, mode="c", shape=tuple(shape)))
            except CorruptEntry as err:
                self.discard(kind, config, str(err))
        entry.mkdir(parents=True, exist_ok=True)
        partial = entry / f".tensor.f32.{os.getpid()}.partial"
        try:
            out = np.memmap(partial, np.float32, mode="w+", shape=tuple(shape))
            fill(torch.from_numpy(out))
            out.flush()
            del out
            self._write_config(entry, config)
            os.replace(partial, stored)
        finally:
            partial.unlink(missing_ok=True)
        return torch.from_numpy(np.memmap(stored, np.float32, mode="c", shape=tuple(shape)))

    # -- models ---------------------------------------------------------------------
    def load_model_state(self, kind: str, config: dict) -> dict | None:
        """The finished model's stored payload, or ``None`` when there is none (or it was corrupt)."""
        entry = self.entry_dir(kind, config)
        final = entry / "model.pt"
        if not final.exists():
            return None
        try:
            self._check_config(entry, config)
            return torch.load(final, map_location="cpu", weights_only=False)
        except Exception as err:  # unreadable pickle, truncated file, mismatched config
            self.discard(kind, config, f"{type(err).__name__}: {err}")
            return None

    def save_model_state(self, kind: str, config: dict, payload: dict) -> Path:
        entry = self.entry_dir(kind, config)
        self._write_config(entry, config)
        atomic_write_bytes(entry / "model.pt", lambda f: torch.save(payload, f))
        (entry / "checkpoint.pt").unlink(missing_ok=True)
        return entry / "model.pt"

    def save_checkpoint(self, kind: str, config: dict, payload: dict) -> None:
        """The state after a finished epoch, so an interrupted run can resume."""
        entry = self.entry_dir(kind, config)
        self._write_config(entry, config)
        atomic_write_bytes(entry / "checkpoint.pt", lambda f: torch.save(payload, f))

    def load_checkpoint(self, kind: str, config: dict) -> dict | None:
        entry = self.entry_dir(kind, config)
        ckpt = entry / "checkpoint.pt"
        if not ckpt.exists():
            return None
        try:
            self._check_config(entry, config)
            return torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as err:
            warnings.warn(f"Ignoring unreadable checkpoint {ckpt} ({err}); training restarts.",
                          stacklevel=2)
            ckpt.unlink(missing_ok=True)
            return None
