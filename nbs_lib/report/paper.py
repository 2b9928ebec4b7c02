"""The numbers the two works report, for side-by-side tables.

Zhang et al., "ImageNet Pre-training Also Transfers Non-robustness" (AAAI 2023),
ResNet-18 backbone, accuracies in percent. Table 1: AOI, AAI and DR under
PGD-10#0.5. Table 2: AAI under more attacks for the standard and the (full)
fine-tuned model.
"""

from __future__ import annotations

import pandas as pd

from nbs_lib.methods.evaluate import decline_ratio

# The attacks of Tables 1 and 2 in the paper's notation (L-inf, eps in 1/255).
TABLE1_ATTACK = "PGD-10#0.5"
TABLE2_ATTACKS = ["PGD-10#2.0", "FGSM#0.5", "FGSM#2.0", "AA#0.5"]

PAPER_DATASETS = ["pets", "nico", "flowers", "cars", "food", "cifar10", "alphabet"]

# model -> metric -> values in the order of PAPER_DATASETS
TABLE1 = {
    "standard": {"aoi": [60.62, 81.29, 61.29, 74.54, 74.52, 95.44, 100.00],
                 "aai": [40.23, 53.45, 55.96, 53.61, 28.24, 57.33, 99.92],
                 "dr": [33.63, 34.24, 8.69, 28.07, 62.10, 39.93, 0.06]},
    "partial": {"aoi": [86.45, 91.03, 87.98, 41.90, 58.59, 78.48, 59.60],
                "aai": [3.38, 10.34, 8.23, 0.12, 0.74, 0.00, 0.00],
                "dr": [96.09, 88.64, 90.64, 99.76, 98.73, 100.00, 100.00]},
    "full": {"aoi": [89.78, 94.27, 91.98, 81.25, 78.93, 95.54, 99.94],
             "aai": [15.7, 28.33, 27.86, 18.57, 22.30, 1.34, 2.90],
             "dr": [82.51, 69.95, 69.71, 77.14, 71.74, 98.59, 97.10]},
}

# attack -> model -> AAI in the order of PAPER_DATASETS ("full" is the paper's "fine-tuned model")
TABLE2 = {
    "PGD-10#2.0": {"standard": [5.45, 3.89, 39.31, 6.90, 0.61, 1.14, 95.73],
                   "full": [0.00, 0.08, 0.24, 0.00, 0.02, 0.00, 0.00]},
    "FGSM#0.5": {"standard": [38.18, 51.88, 55.20, 52.20, 28.86, 63.10, 99.87],
                 "full": [26.25, 39.02, 39.00, 25.06, 12.19, 24.52, 75.83]},
    "FGSM#2.0": {"standard": [6.54, 9.74, 37.94, 13.79, 4.29, 22.02, 97.33],
                 "full": [1.39, 6.13, 8.81, 1.68, 4.97, 9.34, 53.13]},
    "AA#0.5": {"standard": [5.61, 13.06, 3.48, 3.46, 2.45, 18.61, 99.69],
               "full": [1.04, 5.57, 11.35, 2.46, 0.20, 0.41, 0.00]},
}


def table1() -> pd.DataFrame:
    """Table 1 as tidy rows: dataset, model, attack, aoi, aai, dr."""
    rows = []
    for model, metrics in TABLE1.items():
        for i, dataset in enumerate(PAPER_DATASETS):
            rows.append({"dataset": dataset, "model": model, "attack": "PGD-10#0.5",
                         **{m: values[i] for m, values in metrics.items()}})
    return pd.DataFrame(rows)


def table2() -> pd.DataFrame:
    """Table 2 as tidy rows: dataset, model, attack, aai."""
    rows = []
    for attack, models in TABLE2.items():
        for model, values in models.items():
            for dataset, value in zip(PAPER_DATASETS, values):
                rows.append({"dataset": dataset, "model": model, "attack": attack, "aai": value})
    return pd.DataFrame(rows)


# Figure 3 is a bar chart without printed values; the text states two claims.
FIGURE3_CLAIMS = {
    "ft closer to pt than to st (bottom)": "most of the examined datasets",
    "ft closer to pt than to st (all)": "most of the examined datasets",
    "ft closer to pt than to st (per-stage mean)": "not reported (bottom and all layers only)",
    "ft-st: bottom more alike than all": "yes (bottom layers share edges and simple textures)",
}


# Table 3: fine-tuned models averaged over the 7 targets, per pre-training backbone.
TABLE3 = pd.DataFrame({
    "backbone": ["resnet18", "resnet50", "resnet101", "wide_resnet50_2", "wide_resnet101_2"],
    "size_mb": [42.7, 90.1, 162.8, 255.4, 477.0],
    "aoi": [90.24, 92.36, 92.58, 92.91, 93.01],
    "aai": [16.71, 21.07, 23.43, 26.73, 29.64],
    "dr": [81.47, 78.11, 75.53, 72.01, 69.12],
})

# Table 4: fine-tuned ResNet-18 from two sources of 50,000 images and 10 classes.
TABLE4 = pd.DataFrame({
    "source": ["ImageNet-10animals", "ImageNet-10animals", "CIFAR10", "CIFAR10"],
    "dataset": ["pets", "nico", "pets", "nico"],
    "aoi": [75.91, 88.90, 62.85, 77.76],
    "aai": [17.03, 41.71, 26.49, 47.72],
})
TABLE4["dr"] = decline_ratio(TABLE4.aoi, TABLE4.aai).round(2)


# Table 5: ResNet-18 from ImageNet, AOI and AAI under PGD-10#0.5 (the paper's "MD@stage-1&2"
# row is its DM@stage-1&2).
TABLE5 = {
    "full": {"aoi": [89.78, 94.27, 91.98, 81.25, 78.93, 95.54, 99.94],
             "aai": [15.7, 28.33, 27.86, 18.57, 22.30, 1.34, 2.90]},
    "AT@stage-1": {"aoi": [86.02, 92.31, 86.23, 61.87, 70.48, 95.78, 99.94],
                   "aai": [75.44, 83.93, 77.98, 45.49, 44.50, 66.10, 99.31]},
    "AT@stage-2": {"aoi": [40.28, 91.55, 90.55, 70.38, 70.35, 80.68, 99.92],
                   "aai": [31.56, 80.89, 71.93, 44.04, 52.77, 74.53, 99.79]},
    "AT@stage-1&2": {"aoi": [71.52, 82.61, 81.31, 65.39, 67.54, 90.88, 99.88],
                     "aai": [64.49, 76.68, 77.28, 59.02, 58.48, 86.93, 99.83]},
    "KD@stage-2": {"aoi": [87.74, 91.87, 90.71, 68.09, 74.41, 94.56, 99.98],
                   "aai": [21.37, 31.97, 42.06, 4.75, 5.43, 44.28, 89.50]},
    "DM@stage-1&2": {"aoi": [86.48, 91.71, 87.17, 64.83, 70.04, 95.62, 99.96],
                     "aai": [77.73, 85.50, 81.41, 53.46, 47.93, 88.63, 99.90]},
}


TABLE5_METHODS = tuple(TABLE5)  # the paper's row order


def table5() -> pd.DataFrame:
    """Table 5 as tidy rows: dataset, method, aoi, aai, dr."""
    rows = [{"dataset": d, "method": m, "aoi": v["aoi"][i], "aai": v["aai"][i]}
            for m, v in TABLE5.items() for i, d in enumerate(PAPER_DATASETS)]
    frame = pd.DataFrame(rows)
    return frame.assign(dr=decline_ratio(frame.aoi, frame.aai).round(2))
