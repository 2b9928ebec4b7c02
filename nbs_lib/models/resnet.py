"""torchvision ResNets and Wide-ResNets as split classifiers; MadryLab checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from nbs_lib.models.checksums import verified
from nbs_lib.models.split import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    Normalize,
    SplitClassifier,
)

# ----------------------------------------------------------------------------------
# torchvision ResNets
# ----------------------------------------------------------------------------------

_RESNETS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights",
}


def _torchvision_imagenet_state(arch: str) -> dict:
    """torchvision's ImageNet weights, from its cache, or downloaded where online."""
    weights = getattr(torchvision.models, _RESNETS[arch]).IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cache.is_file():
        verified(cache, f"torchvision's ImageNet {arch}")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, proxy refusal, ...
        raise FileNotFoundError(
            f"torchvision's ImageNet weights for {arch} are not in the cache and could not be "
            f"downloaded ({type(err).__name__}). Put the file {Path(weights.url).name} at "
            f"{cache} (or set TORCH_HOME), or pass weights=<path to a state dict>."
        ) from err


def _read_state_dict(path: Path) -> dict:
    """A plain state dict, or a MadryLab ``robustness`` checkpoint (``module.model.`` keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({err}).") from err
    for key in ("model", "state_dict", "model_state"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    prefix = "module.model."
    if any(k.startswith(prefix) for k in checkpoint):
        checkpoint = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _load_checked(net: nn.Module, state: dict, arch: str, source) -> None:
    """``net.load_state_dict(state)``, with an error that says which file does not fit which backbone."""
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        missing = sorted(set(net.state_dict()) - set(state))[:3]
        wrong = [k for k, v in net.state_dict().items() if k in state and state[k].shape != v.shape][:3]
        raise ValueError(f"The weights {source!s} do not fit {arch}: missing {missing}, shapes differ for "
                         f"{wrong}. Pass the checkpoint of a {arch} (or arch= of the checkpoint's backbone)."
                         ) from err


def build_resnet(arch: str, num_classes: int, weights: str | None, bn_momentum: float) -> SplitClassifier:
    net = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        state = _torchvision_imagenet_state(arch) if weights == "imagenet" else _read_state_dict(Path(weights))
        if "fc.weight" in state and state["fc.weight"].shape != net.fc.weight.shape:
            # a source model pre-trained here on a task with another number of classes
            net.fc = nn.Linear(net.fc.in_features, state["fc.weight"].shape[0])
        _load_checked(net, state, arch, weights)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = bn_momentum
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    features = FeatureExtractor(Normalize(IMAGENET_MEAN, IMAGENET_STD), stem,
                                [net.layer1, net.layer2, net.layer3, net.layer4])
    model = SplitClassifier(features, net.fc.in_features, num_classes, 0.0, arch)
    if num_classes == net.fc.out_features and weights is not None:
        model.classifier[1].load_state_dict(net.fc.state_dict())
    return model


def torchvision_resnet_state(model: SplitClassifier) -> dict:
    """A ResNet :class:`SplitClassifier`'s weights under torchvision's key names.

    The format ``load_model(arch, weights=<file>)`` reads (like torchvision's and
    MadryLab's checkpoints), so a source model pre-trained here can be fine-tuned with
    ``weights=`` a file (:func:`nbs_lib.studies.sources.source_weights_file`).
    """
    if not model.arch.startswith(("resnet", "wide_resnet")):
        raise ValueError(f"torchvision_resnet_state needs a ResNet; got {model.arch!r}")
    renames = {"features.stem.0.": "conv1.", "features.stem.1.": "bn1.", "classifier.1.": "fc.",
               **{f"features.stages.{i}.": f"layer{i + 1}." for i in range(4)}}
    out = {}
    for key, value in model.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value.detach().cpu().clone()
                break
    return out


