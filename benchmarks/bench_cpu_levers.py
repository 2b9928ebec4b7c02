"""CPU speed levers for the book's hot paths, as ratios against the plain float32 path.

Usage::

    python benchmarks/bench_cpu_levers.py [--quick] [--json rows.json]

Setting: the book's `mini` workload, EfficientNet-Lite0 (ImageNet weights, 10 classes) at
64x64, batch 64, random images in [0, 1]. Two hot paths:

* **training step** (full fine-tuning: forward, cross-entropy, backward, Adam step);
* **attack step** (forward and backward with respect to the input only, weights frozen,
  eval mode: one PGD iteration).

Levers, each timed against the baseline (float32, contiguous, ``torch.get_num_threads()``
threads) in the same run: ``channels_last`` memory format; bf16 autocast (training only:
an attack at 0.5/255 moves pixels by less than bf16 resolves after normalisation); one
thread instead of all; and ``torch.compile`` (inductor), whose first call (the compile)
is reported on its own. Each row: median seconds per step over the timed steps after a
warm-up, baseline/lever (> 1: the lever is faster), and for training the loss after the
timed steps next to the baseline's (the same initial weights and batches), so a lever that
changes the numbers shows it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbs_lib.core.device import frozen_eval  # noqa: E402
from nbs_lib.models.registry import load_model  # noqa: E402

BATCH, SIZE, ARCH = 64, 64, "efficientnet_lite0"


def _batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(n)]


def _model(channels_last: bool):
    torch.manual_seed(0)
    model = load_model(ARCH, weights="imagenet", num_classes=10)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _timed_steps(step, batches, warmup: int) -> dict:
    """``step(x, y)`` (returning a loss) on every batch: median seconds after ``warmup`` steps,
    the first step's seconds (a compile happens there) and the last loss."""
    times = []
    for x, y in batches:
        start = time.perf_counter()
        loss = step(x, y)
        times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times[warmup:]), "first_s": times[0], "loss": float(loss)}


def _layout(lever: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if lever == "channels_last" else x


def _train(lever: str, batches, warmup: int) -> dict:
    model = _model(lever == "channels_last").train()
    optimizer = torch.optim.Adam(model.parameters(), 5e-4)
    forward = torch.compile(model) if lever == "compile" else model
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "bf16")

    def step(x, y):
        with cast:
            loss = F.cross_entropy(forward(_layout(lever, x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return _timed_steps(step, batches, warmup)


def _attack(lever: str, batches, warmup: int) -> dict:
    model = _model(lever == "channels_last").eval()
    forward = torch.compile(model) if lever == "compile" else model

    def step(x, y):
        x = _layout(lever, x).clone().requires_grad_(True)
        loss = F.cross_entropy(forward(x), y, reduction="sum")
        torch.autograd.grad(loss, x)
        return loss

    with frozen_eval(model):
        return _timed_steps(step, batches, warmup)


def _with_threads(threads: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run(quick: bool = False) -> list[dict]:
    steps, warmup = (8, 3) if quick else (30, 5)
    batches = _batches(steps)
    threads = torch.get_num_threads()
    rows = []
    for path, fn, levers in (("training step", _train, ("baseline", "channels_last", "bf16", "one thread", "compile")),
                             ("attack step", _attack, ("baseline", "channels_last", "one thread", "compile"))):
        baseline = None
        for lever in levers:
            start = time.perf_counter()
            if lever == "one thread":
                result = _with_threads(1, fn, "baseline", batches, warmup)
            else:
                result = fn(lever, batches, warmup)
            baseline = baseline or result
            rows.append({"path": path, "lever": lever, **result, "threads": 1 if lever == "one thread" else threads,
                         "speedup": baseline["s_per_step"] / result["s_per_step"],
                         "baseline_loss": baseline["loss"], "wall_s": time.perf_counter() - start})
    print(to_markdown(rows))
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ("| path | lever | threads | s per step | baseline / lever | first step (s) | loss after the steps "
            "| baseline loss |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['path']} | {r['lever']} | {r['threads']} | {r['s_per_step']:.3f} | {r['speedup']:.2f} "
                     f"| {r['first_s']:.1f} | {r['loss']:.4f} | {r['baseline_loss']:.4f} |")
    lines += ["", f"{ARCH} at {SIZE}x{SIZE}, batch {BATCH}, CPU; medians over the timed steps after a warm-up. "
              "'first step' includes torch.compile's compilation for the compile rows, which reuses kernels "
              "inductor cached on disk from earlier runs (/tmp/torchinductor_<user>; empty it to time a cold "
              "compile, about 100 s for training here). Attack rows: the loss is the last batch's summed "
              "cross-entropy (weights do not change). Used in the book: channels_last for the attacks only; "
              "training in that layout moved a short fine-tuning run by more than rounding (chapter 6's eq. 5 "
              "test lost its effect), so training stays contiguous on the CPU, and bf16 and torch.compile "
              "stay off."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
