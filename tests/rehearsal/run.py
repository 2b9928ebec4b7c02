"""The ``paper`` path rehearsed on a CPU: every chapter at ``profile=paper``, shrunk (TEST TOOLING).

``make rehearse`` (or ``python -m rehearsal.run`` with ``tests/`` on ``PYTHONPATH``)
builds the stand-ins of :mod:`rehearsal.standins` in a temporary folder and runs each
source notebook through the papermill command line as a GPU user would, with
``-p profile paper`` and an ``overrides`` dict (:data:`SHRINK`) that keeps the paper's
code path (its datasets through torchvision, lazily decoded; ResNet backbones from
weights found under torchvision's file names; MadryLab checkpoints as sources; the
generator UAPs) but makes every size tiny. ``NBS_DATA``, ``NBS_CACHE`` and
``TORCH_HOME`` point into the temporary folder; results go to a temporary
``results_dir``; nothing under ``book/``, ``~/.cache/nbs_lib`` or ``notebooks/`` is written.

A run passes when papermill ends without error and the notebook wrote at least one CSV,
every one of them recording the ``paper`` profile. Every dataset is decoded lazily, as
at paper scale (where every set but ``digits`` is over the 2 GiB in-memory limit): the
rehearsal's ``sitecustomize`` lowers the limit to 0, so in-memory assumptions cannot
hide. The run ``00-224`` keeps the paper's 224 px (``--extended`` adds ``01-224``, about 10 minutes).

    PYTHONPATH=tests .venv/bin/python -m rehearsal.run              # every run
    PYTHONPATH=tests .venv/bin/python -m rehearsal.run --only 00 01 # some
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from rehearsal import standins

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Every size of `paper` made tiny; the code path (datasets, backbones, methods) stays the paper's.
SHRINK = {
    "image_size": 16, "source_image_size": 16,
    "train_per_class": 3, "test_per_class": 2, "source_per_class": 3,
    "epochs": 1, "epochs_standard": 1, "epochs_fresh": 1, "source_epochs": 1, "transfer_epochs": 2,
    "batch_size": 16, "num_workers": 0,
    "attack_samples": 16, "autoattack_samples": 8, "autoattack_steps": 2, "autoattack_queries": 10,
    "lr_grid_f": [3e-4], "lr_grid_g": [3e-3], "lr_grid_standard": [1e-3],
    "head_l2_grid": [1e-3], "head_rounds": 2,
    "similarity_images": 32, "uap_steps": 2, "feature_vis_steps": 2, "robustify_steps": 2,
    "train_seeds": [0], "radius_grid": [0.5, 2.0, 16.0], "radius_floor_iterations": 1,
    "distill_steps": 2, "distill_batch_size": 4, "ladder_validation_crops": 8,
    "robustify_pool": 8, "pool_distill_steps": 2, "transfer_seeds": [0],
}


@dataclass
class Run:
    """One papermill run of a notebook: its extra parameters and overrides."""

    name: str  # e.g. "00" or "00-224"
    notebook: str  # stem of the source notebook
    parameters: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    source: Path | None = None  # another copy of the notebook (default: notebooks/<notebook>.ipynb)
    raw: dict = field(default_factory=dict)  # parameters given as strings with `-p`, as the README shows


def runs(manifest: dict, extended: bool = False) -> list[Run]:
    """The rehearsal's runs, in order: every chapter at 16 px (chapter 7 twice: from checkpoints and with a
    self-distilled ladder), then chapter 0 (and, ``extended``, chapter 1) at the paper's 224 px; every set lazy."""
    ckpt = manifest["checkpoints"]
    by_stem = {p.stem[:2]: p.stem for p in NOTEBOOKS}
    extra = {
        # the five ResNets of Table 3 are too big for a CPU rehearsal; two of them keep the code path
        "05": {"archs": ["resnet18", "resnet50"]},
        # the paper's sources: Salman et al.'s standard and robust ImageNet ResNet-18s
        "06": {"standard_checkpoint": ckpt["0.0"], "robust_checkpoint": ckpt["4.0"], "adversarial": "PGD-3#4"},
    }
    # lists and dicts with -p as JSON strings (keys of a dict are strings there), as the README shows
    raw = {"00": {"datasets": json.dumps(["pets", "nico", "flowers", "cars", "food", "cifar10", "alphabet"])},
           "07": {"robust_checkpoints": json.dumps({"0": ckpt["0.0"], "4": ckpt["4.0"]})}}
    # At paper every set but `digits` is over the in-memory limit (2 GiB) and decoded lazily; so are they all here.
    lazy = {"NBS_REHEARSAL_MAX_IN_MEMORY_BYTES": "0"}
    out = [Run(k, stem, extra.get(k, {}), env=lazy, raw=raw.get(k, {})) for k, stem in by_stem.items()]
    # the paper's DataLoader workers (8 there) on lazy sets, in one chapter that trains many models (+30 s)
    next(r for r in out if r.name == "05").overrides["num_workers"] = 2
    # chapter 7 also with its own ladder (the paper's ResNet-18 self-distilled on the photographs)
    out.append(Run("07-ladder", by_stem["07"], {"ladder": [0, 4]}, env=lazy))
    at_224 = {"image_size": 224, "source_image_size": 224}
    out.append(Run("00-224", by_stem["00"], overrides=at_224, env=lazy))
    if extended:  # chapter 1 at 224 px: 551 s here (2 cores shared), so not in the default rehearsal
        out.append(Run("01-224", by_stem["01"], {"datasets": ["cifar10", "alphabet"]}, overrides=at_224, env=lazy))
    return out


@dataclass
class Outcome:
    run: str
    ok: bool
    seconds: float
    csvs: list
    error: str = ""


def _first_error(notebook: Path) -> str:
    """``cell N: first line | ename: evalue`` of the first cell that raised, from papermill's output."""
    if not notebook.is_file():
        return ""
    nb = nbformat.read(notebook, as_version=4)
    for k, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                # the line the arrow points at in the cell's own frame, else the cell's first line
                frames = [re.sub(r"\x1b\[[0-9;]*m", "", f) for f in output.get("traceback", [])]
                arrows = [line for f in frames[2:3] for line in f.splitlines() if line.lstrip().startswith("---->")]
                first = next((line for line in cell.source.splitlines() if line.strip()
                              and not line.startswith("#")), "")
                where = arrows[0].split(maxsplit=2)[-1].strip() if arrows else first
                return f"cell {k}: {where[:100]} | {output['ename']}: {output['evalue'][:400]}"
    return ""


def environment(work: Path, manifest: dict, extra: dict | None = None) -> dict:
    """The kernels' environment: stand-in data, weights and cache, the rehearsal's switches."""
    env = dict(os.environ)
    env.update({
        "NBS_DATA": manifest["data"], "TORCH_HOME": manifest["torch_home"], "NBS_CACHE": str(work / "cache"),
        "NBS_REHEARSAL_MANIFEST": str(work / standins.MANIFEST),
        "PYTHONPATH": os.pathsep.join([str(SITE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "MPLBACKEND": "Agg",
    })
    env.pop("NBS_PUBLISH", None)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")  # tiny models run fastest on one thread (and leave the machine to others)
    env.update(extra or {})
    return env


def rehearse(run: Run, work: Path, manifest: dict, timeout: float = 1800) -> Outcome:
    """Run one notebook through the papermill command line at ``paper``, shrunk; check its CSVs."""
    source = run.source or ROOT / "notebooks" / f"{run.notebook}.ipynb"
    out_dir = work / "runs" / run.name
    results = out_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": "paper", "device": "cpu", "results_dir": str(results),
                  "overrides": {**SHRINK, **run.overrides}, **run.parameters}
    (out_dir / "parameters.yaml").write_text(yaml.safe_dump(parameters))
    executed = out_dir / f"{run.notebook}.ipynb"
    command = [str(Path(sys.executable).with_name("papermill")), str(source), str(executed),
               "-f", str(out_dir / "parameters.yaml"), "--cwd", str(ROOT), "--no-progress-bar"]
    for name, text in run.raw.items():  # papermill -p hands a list or dict over as its JSON text
        command += ["-p", name, text]
    started = time.time()
    try:
        proc = subprocess.run(command, env=environment(work, manifest, run.env), capture_output=True, text=True,
                              timeout=timeout)
        failed, log = proc.returncode != 0, proc.stderr
    except subprocess.TimeoutExpired as err:
        failed, log = True, f"timed out after {timeout:.0f} s ({(err.stderr or b'')[-2000:]!r})"
    seconds = time.time() - started
    (out_dir / "papermill.log").write_text(log or "")
    csvs = sorted(results.glob("*.csv")) if results.is_dir() else []
    error = _first_error(executed) or (log or "").strip()[-600:] if failed else ""
    if not failed and not csvs:
        error = "the notebook wrote no results CSV"
    not_paper = [p.name for p in csvs if "paper" not in p.read_text()]
    if not failed and not_paper:
        error = f"CSVs without the paper profile: {not_paper}"
    return Outcome(run.name, not error, round(seconds, 1), [p.name for p in csvs], error)


def build(work: Path) -> dict:
    return standins.build(work)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="runs to do, e.g. 00 01 00-224 (default: all)")
    parser.add_argument("--workdir", help="folder for stand-ins, cache and outputs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--extended", action="store_true", help="also chapter 1 at 224 px (about 10 minutes)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per notebook")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nbs-rehearsal-"))
    started = time.time()
    manifest = build(work) if not (work / standins.MANIFEST).is_file() else json.loads(
        (work / standins.MANIFEST).read_text())
    print(f"stand-ins in {work} ({time.time() - started:.0f} s)", flush=True)
    todo = [r for r in runs(manifest, args.extended) if not args.only or r.name in args.only]
    outcomes = []
    for run in todo:
        print(f"== {run.name} ({run.notebook}) {time.strftime('%H:%M:%S')}", flush=True)
        outcome = rehearse(run, work, manifest, args.timeout)
        outcomes.append(outcome)
        print(f"   {'pass' if outcome.ok else 'FAIL'} in {outcome.seconds:.0f} s"
              + (f": {outcome.error}" if outcome.error else f"; wrote {', '.join(outcome.csvs)}"), flush=True)
    total = time.time() - started
    (work / "report.json").write_text(json.dumps({"seconds": round(total, 1),
                                                  "runs": [o.__dict__ for o in outcomes]}, indent=1))
    failed = [o.run for o in outcomes if not o.ok]
    print(f"rehearsal: {len(outcomes) - len(failed)} of {len(outcomes)} runs pass in {total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if not args.workdir and not args.keep and not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"outputs kept in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
