"""Every backbone as ``normalize -> f (features) -> g (classifier)``, images in [0, 1]."""

from __future__ import annotations

import torch
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


