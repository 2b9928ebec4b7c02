"""Host memory at paper scale: samples decoded once and memory-mapped, hashing without a
copy, DataLoader workers fitted to /dev/shm (issue: the paper path rehearsed, part 3)."""

import hashlib
from collections import namedtuple

import numpy as np
import pytest
import torch

from nbs_lib.core import runs
from nbs_lib.core.runs import RunCache, content_hash
from nbs_lib.data import images as images_module
from nbs_lib.data import registry
from nbs_lib.data.images import LabeledImages, loader_workers, shared_memory_need

MIB = 2**20
LINUX = pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps")


def mapped_files(root) -> list[str]:
    """The files under ``root`` this process has memory-mapped (Linux)."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if str(root) in line})


class CountingFetch:
    """A lazy dataset's decoder that counts how often it is called."""

    def __init__(self, images):
        self.images, self.calls = images, 0

    def __call__(self, i):
        self.calls += 1
        return self.images[i].clone()


def lazy_set(n=12, size=8, seed=0):
    pixels = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    fetch = CountingFetch(pixels)
    return LabeledImages("stand-in", "test", ["a", "b"], torch.arange(n) % 2, fetch=fetch), fetch, pixels


def test_content_hash_in_chunks_equals_the_whole(monkeypatch):
    array = np.random.default_rng(0).random((50, 3, 4, 4), dtype=np.float32)
    whole = hashlib.sha256(array.tobytes()).hexdigest()[:16]
    monkeypatch.setattr(runs, "HASH_CHUNK_BYTES", 1000)  # 5 rows of 192 bytes per chunk
    assert content_hash(array) == whole
    assert content_hash(torch.from_numpy(array)) == whole
    assert content_hash(torch.from_numpy(array)[::2]) == hashlib.sha256(array[::2].tobytes()).hexdigest()[:16]


@LINUX
def test_mapped_tensor_is_filled_once_and_kept_on_disk(tmp_path):
    cache, calls = RunCache(tmp_path), []

    def fill(out):
        calls.append(1)
        out.copy_(torch.arange(24.0).reshape(2, 3, 4))

    first = cache.mapped_tensor("samples", {"x": 1}, (2, 3, 4), fill, code_version=1)
    again = cache.mapped_tensor("samples", {"x": 1}, (2, 3, 4), fill, code_version=1)
    assert len(calls) == 1 and torch.equal(first, again)
    assert [p.endswith("tensor.f32") for p in mapped_files(tmp_path)] == [True]
    again[0] = -1  # copy-on-write: the stored file keeps its values
    assert float(cache.mapped_tensor("samples", {"x": 1}, (2, 3, 4), fill, code_version=1)[0, 0, 0]) == 0.0


def test_mapped_tensor_with_a_truncated_file_is_recomputed(tmp_path):
    cache = RunCache(tmp_path)
    cache.mapped_tensor("samples", {"x": 1}, (4, 4), lambda out: out.fill_(2.0), code_version=1)
    (stored,) = tmp_path.glob("samples/*/tensor.f32")
    stored.write_bytes(stored.read_bytes()[:10])
    with pytest.warns(UserWarning, match="Discarding cache entry"):
        again = cache.mapped_tensor("samples", {"x": 1}, (4, 4), lambda out: out.fill_(3.0), code_version=1)
    assert torch.all(again == 3.0)


@LINUX
def test_a_large_lazy_sample_is_decoded_once_into_the_run_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MAX_IN_MEMORY_BYTES", 1000)  # 12 images of 768 bytes do not fit
    monkeypatch.setenv("NBS_CACHE", str(tmp_path))
    ds, fetch, pixels = lazy_set()
    sample = registry.sample_images(ds)
    decoded = fetch.calls
    assert torch.equal(sample, pixels) and len(mapped_files(tmp_path)) == 1
    ds_again, fetch_again, _ = lazy_set()
    assert torch.equal(registry.sample_images(ds_again), pixels)
    assert fetch_again.calls == 1, "the second chapter re-decoded a sample already on disk (1: its shape)"
    assert decoded <= len(ds) + 1  # once per image (and one look at the first for its shape)
    other, _, other_pixels = lazy_set(seed=1)
    other.name = "another set"  # another sample never reuses the file
    assert torch.equal(registry.sample_images(other), other_pixels)


@LINUX
def test_a_small_lazy_sample_is_decoded_into_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("NBS_CACHE", str(tmp_path))
    ds, _, pixels = lazy_set()
    sample = registry.sample_images(ds)
    assert torch.equal(sample, pixels)
    assert not list(tmp_path.glob("samples/*")) and not mapped_files(tmp_path)


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("free_mib, expected", [(64, 0), (1024, 6), (100_000, 8)])
def test_loader_workers_fit_shared_memory(monkeypatch, free_mib, expected):
    monkeypatch.setattr(images_module.shutil, "disk_usage", lambda path: Usage(0, 0, free_mib * MIB))
    batch = 77 * MIB  # 128 images at 224 px
    if expected < 8:
        with pytest.warns(UserWarning, match="--shm-size"):
            assert loader_workers(8, batch) == expected
    else:
        assert loader_workers(8, batch) == expected
    assert shared_memory_need(expected, batch) <= free_mib * MIB or expected == 0


def test_loader_workers_without_dev_shm_keep_the_request(monkeypatch):
    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(images_module.shutil, "disk_usage", missing)
    assert loader_workers(8, 77 * MIB) == 8
    assert loader_workers(0, 77 * MIB) == 0


def test_host_memory_estimate_bounds_each_part_by_the_in_memory_cap():
    from nbs_lib.core.profiles import get_profile
    from nbs_lib.data.images import MAX_IN_MEMORY_BYTES, host_memory_estimate

    paper = {row["part"]: row for row in host_memory_estimate(get_profile("paper"))}
    cap = MAX_IN_MEMORY_BYTES / 2**30
    assert paper["training set"]["GiB"] == 2 * cap  # a set just under the cap, and its split copy
    assert paper["attack or similarity sample"]["GiB"] == cap
    assert "memory-mapped" in paper["attack or similarity sample"]["why"]
    assert paper["loader shared memory"]["GiB"] == pytest.approx(shared_memory_need(8, 128 * 3 * 224 ** 2 * 4) / 2**30)
    assert paper["peak, at most"]["GiB"] == pytest.approx(sum(r["GiB"] for p, r in paper.items() if p != "peak, at most"))
    mini = {row["part"]: row for row in host_memory_estimate(get_profile("mini"))}
    assert mini["loader shared memory"]["GiB"] == 0 and mini["peak, at most"]["GiB"] < paper["peak, at most"]["GiB"]
