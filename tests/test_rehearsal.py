"""The ``paper`` path rehearsed (issue 21): every chapter at ``profile=paper`` on stand-ins.

The stand-ins (:mod:`rehearsal.standins`) are tiny copies of the paper's datasets in the
on-disk formats torchvision 0.29 reads, random ResNet weights under torchvision's file
names and MadryLab-format checkpoints; :mod:`rehearsal.run` runs each notebook through
papermill at ``paper`` with tiny ``overrides``. The notebook runs take minutes, so they
run under ``make rehearse`` (``NBS_REHEARSAL=1``; ``NBS_REHEARSAL_EXTENDED=1`` adds chapter 1
at 224 px); otherwise a slice of them (:data:`CI_SLICE`) runs; the tests
of the stand-ins themselves run whenever slow tests do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehearsal import run as rehearsal
from rehearsal import standins

ROOT = Path(__file__).resolve().parents[1]
REHEARSE = os.environ.get("NBS_REHEARSAL") == "1"
EXTENDED = os.environ.get("NBS_REHEARSAL_EXTENDED") == "1"  # also chapter 1 at 224 px (about 10 minutes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("rehearsal")
    return work, standins.build(work)


# ---------------------------------------------------------------------------
# The stand-ins: read by torchvision through nbs_lib, checked honestly
# ---------------------------------------------------------------------------

_READ = """
import json, sys
from nbs_lib.core.profiles import get_profile
from nbs_lib.data.registry import load_dataset
from nbs_lib.models.registry import load_model
prof = get_profile("paper", image_size=16)
out = {}
for name in sys.argv[1].split(","):
    try:
        ds = load_dataset(name, "test", prof)
        out[name] = [len(ds.classes), len(ds), list(ds[0][0].shape), ds.images is None]
    except Exception as err:
        out[name] = f"{type(err).__name__}: {err}"
for arch in ("resnet18", "resnet50"):
    try:
        load_model(arch, "imagenet", num_classes=10)
        out[arch] = "ok"
    except Exception as err:
        out[arch] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
"""


def _read_in_subprocess(work: Path, manifest: dict, switch: bool) -> dict:
    import json

    env = rehearsal.environment(work, manifest)
    if not switch:  # the rehearsal's test-only switch off: the published checksums are checked
        env.pop("NBS_REHEARSAL_MANIFEST")
    names = ",".join(standins.DATASETS)
    proc = subprocess.run([sys.executable, "-c", _READ, names], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_standins_are_read_by_torchvision_through_the_registry(built):
    work, manifest = built
    read = _read_in_subprocess(work, manifest, switch=True)
    expected_classes = {"cifar10": 10, "pets": 37, "flowers": 102, "cars": 196, "food": 101, "nico": 10}
    for name, classes in expected_classes.items():
        assert isinstance(read[name], list), read[name]
        n_classes, n, shape, lazy = read[name]
        assert n_classes == classes and n == 2 * classes, (name, read[name])
        assert shape == [3, 16, 16] and lazy, (name, read[name])
    assert read["resnet18"] == read["resnet50"] == "ok"


@pytest.mark.slow
def test_without_the_switch_the_published_checksums_reject_the_standins(built):
    """The switch lives only on the rehearsal's PYTHONPATH; without it, user code paths check as always."""
    work, manifest = built
    read = _read_in_subprocess(work, manifest, switch=False)
    assert "not found" in read["cifar10"] and "not found" in read["flowers"]  # torchvision's MD5 checks
    assert "not the published file" in read["resnet18"]  # nbs_lib.models.checksums
    assert isinstance(read["pets"], list)  # sets torchvision does not checksum are read as they are


@pytest.mark.slow
def test_a_standin_changed_after_it_was_built_fails_its_check(built, tmp_path):
    work, manifest = built
    weights = next(p for p in manifest["files"] if p.endswith(".pth"))
    code = ("from pathlib import Path; from nbs_lib.models import resnet; "
            f"resnet.verified(Path({weights!r}), 'x'); print('ok')")
    env = rehearsal.environment(work, manifest)
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=ROOT).stdout.strip() == "ok"
    manifest_file = tmp_path / "standins.json"
    import json

    changed = dict(manifest, files={**manifest["files"], weights: {"md5": "0", "sha256": "0" * 64}})
    manifest_file.write_text(json.dumps(changed))
    env["NBS_REHEARSAL_MANIFEST"] = str(manifest_file)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "changed since it was built" in proc.stderr


@pytest.mark.slow
def test_madry_checkpoint_loads_as_a_resnet18(built):
    import torch

    from nbs_lib.models.registry import load_model
    from nbs_lib.models.resnet import _read_state_dict

    _, manifest = built
    path = Path(manifest["checkpoints"]["4.0"])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "optimizer", "schedule", "epoch"}
    assert any(k.startswith("module.attacker.model.") for k in raw["model"])
    state = _read_state_dict(path)
    assert state["conv1.weight"].equal(raw["model"]["module.model.conv1.weight"])
    load_model("resnet18", weights=path, num_classes=1000)


# ---------------------------------------------------------------------------
# The notebooks at paper (make rehearse)
# ---------------------------------------------------------------------------


def test_every_notebook_is_rehearsed_at_paper_with_valid_overrides():
    from nbs_lib.core.profiles import get_profile

    manifest = {"checkpoints": {"0.0": "a.ckpt", "4.0": "b.ckpt"}}
    assert {r.notebook for r in rehearsal.runs(manifest)} == {p.stem for p in rehearsal.NOTEBOOKS}
    for run in rehearsal.runs(manifest, extended=True):
        prof = get_profile("paper", {**rehearsal.SHRINK, **run.overrides})  # a renamed field fails here
        assert prof.natural_sets_whole and prof.arch == "resnet18"  # still the paper's code path
    assert any(get_profile("paper", {**rehearsal.SHRINK, **r.overrides}).image_size == 224
               for r in rehearsal.runs(manifest))

RUN_NAMES = [r.name for r in rehearsal.runs({"checkpoints": {"0.0": "", "4.0": ""}}, EXTENDED)]


def _rehearse(name, built):
    work, manifest = built
    run = next(r for r in rehearsal.runs(manifest, EXTENDED) if r.name == name)
    outcome = rehearsal.rehearse(run, work, manifest)
    assert outcome.ok, f"{name} at paper: {outcome.error} (outputs in {work / 'runs' / name})"


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.skipif(not REHEARSE, reason="the paper rehearsal runs under `make rehearse` (NBS_REHEARSAL=1)")
@pytest.mark.parametrize("name", RUN_NAMES)
def test_notebook_runs_at_paper_on_standins(name, built):
    _rehearse(name, built)


# The slice `make test` (and so CI) runs, about 3 minutes: the paper's 224 px with every set lazy through
# torchvision's readers, and chapter 5 at paper (ResNet-18 and -50 from torchvision-named weights, training
# through 2 DataLoader workers, attacks and radius searches on memory-mapped samples). `make rehearse` runs
# them all (chapter 1 alone takes 5 minutes).
CI_SLICE = ("00-224", "05")


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.skipif(REHEARSE, reason="`make rehearse` runs every run, these among them")
@pytest.mark.parametrize("name", CI_SLICE)
def test_a_slice_of_the_rehearsal_runs_in_every_test_run(name, built):
    _rehearse(name, built)
