"""Layer outputs of f as matrices (data points x neurons), for the similarity measures.

The paper (section "On the Learned Knowledge", Figure 3) compares models "using the
output of bottom-layer feature (only conv2_x) and the output of total feature
extractor (considering features of all 4 layers)". Every backbone here exposes the
four stages of f (:meth:`nbs_lib.models.split.FeatureExtractor.stage_outputs`; for ResNets
conv2_x ... conv5_x). ``LAYER_SETS`` names the two choices: ``bottom`` is stage 1,
``all`` is the four stages side by side; ``stage2`` to ``stage4`` are the other stages
one by one (for similarities computed per stage and then averaged).

A convolutional map (n x c x h x w) becomes a matrix in one of two ways:

* ``mode="pool"``: average pooling per channel, one row per image (n x c). With
  ``all`` the four pooled vectors are concatenated (n x sum of c).
* ``mode="positions"``: every spatial position of every image is a data point
  (SVCCA's practice for convolutional layers, Raghu et al. 2017), rows n*p x c. With
  ``all`` each stage is first average-pooled to the grid of the coarsest stage so
  that the positions line up, then the channels are concatenated. At most
  ``max_positions`` positions per image are kept, the same ones for every image and
  every model (chosen by ``seed``), so rows of two models always correspond.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nbs_lib.core.device import frozen_eval, resolve_device

LAYER_SETS = {"bottom": (0,), "stage2": (1,), "stage3": (2,), "stage4": (3,), "all": (0, 1, 2, 3)}
MODES = ("pool", "positions")


def _check(layers: str, mode: str) -> tuple[int, ...]:
    if layers not in LAYER_SETS:
        raise ValueError(f"Unknown layer set {layers!r}; use one of {list(LAYER_SETS)}.")
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    return LAYER_SETS[layers]


def position_choice(h: int, w: int, max_positions: int | None, seed: int) -> torch.Tensor:
    """Indices of the positions kept on an h x w grid (all of them, or a seeded subset)."""
    if max_positions is None or h * w <= max_positions:
        return torch.arange(h * w)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(h * w, generator=g)[:max_positions].sort().values


def maps_to_matrix(maps: list[torch.Tensor], mode: str, max_positions: int | None = 256,
                   seed: int = 0) -> torch.Tensor:
    """Feature maps of some stages (each n x c x h x w) as one matrix, see the module doc."""
    if mode == "pool":
        return torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1)
    h = min(m.shape[2] for m in maps)
    w = min(m.shape[3] for m in maps)
    aligned = torch.cat([F.adaptive_avg_pool2d(m.float(), (h, w)) for m in maps], dim=1)
    keep = position_choice(h, w, max_positions, seed).to(aligned.device)
    n, c = aligned.shape[:2]
    rows = aligned.flatten(2)[:, :, keep]  # n x c x p
    return rows.permute(0, 2, 1).reshape(n * len(keep), c)


@torch.no_grad()
def layer_matrices(model, images: torch.Tensor, layer_sets=("bottom", "all"), modes=("pool",),
                   max_positions: int | None = 256, seed: int = 0, device="auto",
                   batch_size: int = 128) -> dict[str, dict[str, torch.Tensor]]:
    """``{mode: {layer set: matrix}}`` of ``model``'s f on ``images`` (eval mode, float32, CPU).

    One forward pass serves every mode and layer set; maps are reduced batch by
    batch, so large inputs never hold all the maps at once.
    """
    wanted = [(mode, name, _check(name, mode)) for mode in modes for name in layer_sets]
    device = resolve_device(device)
    features = model.features if hasattr(model, "features") else model
    parts: dict[tuple[str, str], list[torch.Tensor]] = {(m, n): [] for m, n, _ in wanted}
    with frozen_eval(features, device):
        for start in range(0, len(images), batch_size):
            outputs = features.stage_outputs(images[start:start + batch_size].to(device))
            for mode, name, stages in wanted:
                chosen = [outputs[i] for i in stages]
                parts[(mode, name)].append(maps_to_matrix(chosen, mode, max_positions, seed).cpu())
    return {mode: {name: torch.cat(parts[(mode, name)]) for name in layer_sets} for mode in modes}


@torch.no_grad()
def embeddings(model, images: torch.Tensor, device="auto", batch_size: int = 256) -> torch.Tensor:
    """The embedding e_x = f(x) of every image (frozen, eval mode; float32 on the CPU)."""
    device = resolve_device(device)
    with frozen_eval(model.features, device) as features:
        out = [features(images[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out)
