"""Mini-batches on the device, from tensors or lazy datasets, and training augmentation."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from nbs_lib.data.images import LabeledImages, loader_workers

# ----------------------------------------------------------------------------------
# batches and augmentation
# ----------------------------------------------------------------------------------


PIXEL_TOLERANCE = 1e-5  # float rounding of images resized or converted to [0, 1]


def check_pixels(x: torch.Tensor, where: str) -> torch.Tensor:
    """``x`` if it is an image batch on the [0, 1] scale with no NaN or Inf; else a clear error.

    Every attack's ball is clipped to [0, 1] and every backbone normalises [0, 1] inputs
    itself, so a batch already normalised (ImageNet mean and std), on the 0-255 scale or
    with NaNs would be attacked and trained on silently and wrongly. One reduction per
    batch (a host synchronisation on a GPU).
    """
    if not x.is_floating_point():
        raise ValueError(f"{where} takes float images on the [0, 1] scale; got dtype {x.dtype} "
                         "(divide uint8 images by 255).")
    low, high = torch.aminmax(x.detach())
    low, high = float(low), float(high)
    if not (low == low and high == high) or abs(low) == float("inf") or abs(high) == float("inf"):
        raise ValueError(f"{where} got images with NaN or Inf values; check the data or the preprocessing.")
    if low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
        raise ValueError(f"{where} takes images on the [0, 1] scale; got values in [{low:.3g}, {high:.3g}]. "
                         "Pass unnormalised images (the model normalises them itself); divide 0-255 images by 255.")
    return x


def iterate_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    shuffle: bool = False, generator: torch.Generator | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of tensors already on their device (no DataLoader, no copies)."""
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(labels.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield images[start:start + batch_size], labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield images[idx], labels[idx]


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the side (``crop``) and horizontal flips (``crop_flip``)."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, [pad] * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip.to(out.device)] = out[flip.to(out.device)].flip(-1)
    return out


def _loader(ds, batch_size: int, shuffle: bool, generator, num_workers: int, device):
    """A DataLoader visiting ``ds`` in the same order as :func:`iterate_batches`."""
    from torch.utils.data import DataLoader

    order = torch.randperm(len(ds), generator=generator).tolist() if shuffle else None
    if num_workers > 0 and len(ds) > 0:
        num_workers = loader_workers(num_workers, batch_size * ds[0][0].nbytes)
    return DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def input_batches(data, labels: torch.Tensor | None, batch_size: int, device, shuffle: bool = False,
                  generator: torch.Generator | None = None, num_workers: int = 0):
    """Batches ``(x, y)`` on ``device`` from a tensor already there, or from a lazy dataset.

    In-memory datasets stay resident on the device (no DataLoader, no copies); datasets
    too large for memory (``images is None``, the paper-scale sets) go through a
    DataLoader with ``num_workers`` worker processes.
    """
    if isinstance(data, torch.Tensor):
        yield from iterate_batches(data, labels, batch_size, shuffle, generator)
        return
    for x, y in _loader(data, batch_size, shuffle, generator, num_workers, device):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y.to(device, non_blocking=True)


def device_data(ds: LabeledImages, device: torch.device):
    """The images on the device when the dataset is held in memory, else the dataset itself."""
    if ds.images is None:
        return ds
    images = ds.images.to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


