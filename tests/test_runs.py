import json

import pytest
import torch

from nbs_lib.core.runs import RunCache, config_key, default_cache_dir


def test_key_depends_on_every_field_and_not_on_order():
    a = {"arch": "resnet18", "lr": 1e-3, "seed": 0}
    assert config_key(a) == config_key(dict(reversed(list(a.items()))))
    assert config_key(a) != config_key({**a, "seed": 1})
    assert config_key(a) != config_key({**a, "lr": 1e-4})


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NBS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert RunCache().root == tmp_path / "c"


def test_memo_computes_once_per_config(tmp_path):
    cache = RunCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5}

    assert cache.memo("r", {"a": 1}, compute, code_version=1) == {"acc": 0.5}
    assert cache.memo("r", {"a": 1}, compute, code_version=1) == {"acc": 0.5}
    assert len(calls) == 1
    cache.memo("r", {"a": 2}, compute, code_version=1)
    assert len(calls) == 2


def test_corrupted_result_is_discarded_and_recomputed(tmp_path):
    cache = RunCache(tmp_path)
    cache.memo("r", {"a": 1}, lambda: [1, 2], code_version=1)
    (cache.entry_dir("r", RunCache.versioned({"a": 1}, 1)) / "result.json").write_text("{truncated")
    with pytest.warns(UserWarning, match="Discarding cache entry"):
        assert cache.memo("r", {"a": 1}, lambda: [3], code_version=1) == [3]


def test_mismatched_config_is_never_reused(tmp_path):
    cache = RunCache(tmp_path)
    cache.save_model_state("m", {"a": 1}, {"model": {"w": torch.ones(1)}})
    entry = cache.entry_dir("m", {"a": 1})
    (entry / "config.json").write_text(json.dumps({"a": 999}))
    with pytest.warns(UserWarning, match="does not match"):
        assert cache.load_model_state("m", {"a": 1}) is None
    assert not entry.exists()


def test_truncated_model_file_is_discarded(tmp_path):
    cache = RunCache(tmp_path)
    path = cache.save_model_state("m", {"a": 1}, {"model": {"w": torch.ones(100)}})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match="Discarding"):
        assert cache.load_model_state("m", {"a": 1}) is None


def test_writes_are_atomic_no_temp_files_left(tmp_path):
    cache = RunCache(tmp_path)
    cache.save_checkpoint("m", {"a": 1}, {"x": 1})
    cache.save_model_state("m", {"a": 1}, {"x": 2})
    names = sorted(p.name for p in cache.entry_dir("m", {"a": 1}).iterdir())
    assert names == ["config.json", "model.pt"]  # the checkpoint is gone once the model is final


def test_content_hash_is_sha256_of_the_parts_in_order(tmp_path):
    import hashlib

    import numpy as np
    import torch

    from nbs_lib.core.runs import content_hash

    t = torch.arange(6, dtype=torch.float32).view(2, 3).t()  # not contiguous
    raw = t.contiguous().numpy().tobytes() + b"x" + np.arange(3).tobytes()
    assert content_hash(t, "x", np.arange(3)) == hashlib.sha256(raw).hexdigest()[:16]
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert content_hash(tmp_path / "w.pt", digits=20) == hashlib.sha256(b"weights").hexdigest()[:20]
    assert content_hash("a", "b") != content_hash("b", "a")


def test_cached_artifacts_need_a_code_version_and_a_bump_recomputes(tmp_path):
    import torch

    cache = RunCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"delta": torch.ones(2), "rate": 0.5}

    with pytest.raises(TypeError):
        cache.artifact("u", {"a": 1}, compute)  # no code version: refused
    first = cache.artifact("u", {"a": 1}, compute, code_version=1)
    again = cache.artifact("u", {"a": 1}, compute, code_version=1)
    assert torch.equal(first["delta"], again["delta"]) and len(calls) == 1
    cache.artifact("u", {"a": 1}, compute, code_version=2)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="code_version"):
        cache.memo("r", {"code_version": 3}, lambda: 1, code_version=4)


_CONCURRENT = """
import sys, time
from nbs_lib.core.runs import RunCache
cache, log = RunCache(sys.argv[1]), sys.argv[2]
def compute():
    with open(log, "a") as f:
        f.write("computed\\n")
    time.sleep(1.0)
    return {"x": 1}
print(cache.memo("results", {"a": 1}, compute, code_version=1))
"""


def test_two_processes_sharing_the_cache_compute_an_entry_once(tmp_path):
    """make book's lanes share one cache: the second process waits for the entry, then loads it."""
    import subprocess
    import sys
    log = tmp_path / "computed.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tmp_path / "cache"), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("computed") == 1
    assert all("{'x': 1}" in out for out in outputs)


def test_entries_do_not_wait_on_each_other(tmp_path):
    cache = RunCache(tmp_path)
    with cache.exclusive("models", {"a": 1}):
        with cache.exclusive("models", {"a": 2}):  # another entry: no deadlock
            assert cache.memo("results", {"b": 1}, lambda: 3, code_version=1) == 3
