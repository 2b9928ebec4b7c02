"""Device choice, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import itertools
import os
import random

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available; use device='auto'.")
    return dev


def autocast(device: torch.device, amp: bool, dtype: torch.dtype = torch.bfloat16):
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere (the CPU path stays float32)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def channels_last(x):
    """``x`` in the channels_last memory layout: a module's 4-D weights, or a 4-D image batch.

    Convolutions run faster in that layout on the CPU as well as on CUDA (EfficientNet-Lite0
    at 64 px, 2 cores: training step 2.13x, attack step 1.48x; ``benchmarks/RESULTS.md``),
    and compute the same numbers up to float rounding. An attack needs both the model and
    its input in the layout. Anything else is returned unchanged.
    """
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module, device: str | torch.device | None = None):
    """Run ``model`` in eval mode with frozen parameters (on ``device``); restore all of it afterwards.

    The one context of every eval-mode forward pass of the book (attacks, accuracies,
    embeddings, layer outputs, probes). Every module's ``training`` flag, every
    parameter's ``requires_grad`` flag and the model's device are recorded and put back
    exactly on exit, also after an exception: a frozen, eval-mode backbone inside a
    training-mode classifier comes back as it was. Frozen parameters mean that a backward
    pass computes gradients for the input only and leaves no ``.grad`` on the weights.
    ``device=None`` leaves the model where it is. Nested use is fine.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    home = next(itertools.chain((p.device for p in model.parameters()), (b.device for b in model.buffers())), None)
    target = None if device is None else resolve_device(device)
    moved = target is not None and home is not None and target != home
    try:
        if moved:
            model.to(target)
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        if moved:
            model.to(home)
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
