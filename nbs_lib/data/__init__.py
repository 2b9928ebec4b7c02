"""Data layer: the dataset registry, readers of the files on disk and the generated sets.

Everything enters the models as labelled images in [0, 1] (:class:`LabeledImages`).
:func:`load_dataset` is the one entry point; the modules behind it are

* :mod:`~nbs_lib.data.registry`: names, splits, variants, profile sizes;
* :mod:`~nbs_lib.data.images`: the dataset class, splits, balanced samples, resizing;
* :mod:`~nbs_lib.data.readers`: IDX files, scikit-learn's digits, torchvision's sets;
* :mod:`~nbs_lib.data.alphabet`: the Alphabet of Zhang et al., rendered from fonts;
* :mod:`~nbs_lib.data.generators`: photo patches, textures, shapes, natural photographs.
"""

from nbs_lib.data.alphabet import LETTERS, alphabet_fonts, render_letter
from nbs_lib.data.generators import natural_photo_sample
from nbs_lib.data.images import (
                                   LabeledImages,
                                   balanced_indices,
                                   data_root,
                                   train_val_split,
)
from nbs_lib.data.registry import (
                                   GENERATED_DATASETS,
                                   OFFLINE_DATASETS,
                                   PAPER_DATASETS,
                                   available_datasets,
                                   balanced_sample,
                                   dataset_summary,
                                   load_dataset,
                                   split_variant,
)

__all__ = ["LETTERS", "alphabet_fonts", "render_letter", "natural_photo_sample", "LabeledImages",
           "balanced_indices", "data_root", "split_variant", "train_val_split", "GENERATED_DATASETS",
           "OFFLINE_DATASETS", "PAPER_DATASETS", "available_datasets", "balanced_sample", "dataset_summary",
           "load_dataset"]
