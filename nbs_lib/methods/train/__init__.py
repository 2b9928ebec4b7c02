"""One ``fit`` for every training regime of the book, and the cached models of the chapters.

* :mod:`~nbs_lib.methods.train.config`: :class:`TrainConfig` and its cache key;
* :mod:`~nbs_lib.methods.train.terms`: adversarial inputs and the KD and DM loss terms;
* :mod:`~nbs_lib.methods.train.loop`: :func:`fit` (optimiser, schedule, DDP, compile);
* :mod:`~nbs_lib.methods.train.recipes`: :func:`train_model`, cached, with the learning-rate search;
* :mod:`~nbs_lib.methods.train.launch`: the ``torchrun`` entry point.
"""

from nbs_lib.methods.train.config import REGIMES, TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.methods.train.recipes import (
           TrainedModel,
           model_config,
           train_model,
           weights_id,
)
from nbs_lib.methods.train.terms import config_key

__all__ = ["REGIMES", "TrainConfig", "config_key", "fit", "TrainedModel", "model_config", "train_model",
           "weights_id"]
