"""The ImageNet sanity check of the offline weights (book chapter 0).

Natural photographs bundled with scikit-image are classified by a backbone with
``weights="imagenet"``: real ImageNet weights call ``chelsea`` an Egyptian cat
(class 285) and ``coffee`` an espresso (class 967).
"""

from __future__ import annotations

import pandas as pd
import skimage.data
import torch
import torch.nn.functional as F
import torchvision

from nbs_lib.models.registry import load_model

EXPECTED_CLASSES = {"chelsea": 285, "coffee": 967}


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names (from torchvision's weight metadata; no download)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photograph as a [1, 3, size, size] tensor in [0, 1] (centre square crop)."""
    array = getattr(skimage.data, name)()
    img = torch.from_numpy(array).float() / 255
    img = img.permute(2, 0, 1)[None] if img.ndim == 3 else img[None, None].repeat(1, 3, 1, 1)
    img = img[:, :3]
    h, w = img.shape[-2:]
    side = min(h, w)
    img = img[..., (h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def sanity_predictions(archs, photos=("chelsea", "coffee"), size: int = 224, top: int = 1) -> pd.DataFrame:
    """Top-``top`` ImageNet predictions of each backbone on each photograph."""
    names = imagenet_class_names()
    rows = []
    for arch in archs:
        model = load_model(arch, weights="imagenet").eval()
        for name in photos:
            probs = model(photo(name, size)).softmax(-1)[0]
            values, indices = probs.topk(top)
            for p, i in zip(values.tolist(), indices.tolist()):
                rows.append({"backbone": arch, "photo": name, "class_id": i, "class": names[i],
                             "probability": round(p, 3),
                             "expected": EXPECTED_CLASSES.get(name) == i})
    return pd.DataFrame(rows)
