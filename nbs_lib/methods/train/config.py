"""The hyper-parameters of one training run and their cache key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nbs_lib.methods.attacks import parse_attack

REGIMES = ("standard", "partial", "full")
AUGMENTATIONS = ("none", "crop", "crop_flip")
HEADS = ("epochs", "lbfgs")  # how g is trained: epochs of the optimizer, or full-batch L-BFGS to convergence
# Fields of the partial-fine-tuning options and of fresh samples, with their off-values (left out of cache keys).
HEAD_KEY_DEFAULTS = {"head": "epochs", "head_l2_grid": (), "target_bn": False, "fresh_samples": False}
TRAIN_CODE_VERSION = 1  # bump when a change to the training code must invalidate the cache


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    regime: str
    epochs: int
    batch_size: int
    lr_f: float
    lr_g: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    min_lr: float = 1e-6
    augment: str = "none"
    seed: int = 0
    adversarial: str | None = None  # PGD adversarial training (Madry et al. 2018), e.g. "PGD-7#8"
    distill_weight: float = 0.0  # KD@stage-2: weight of the feature distance to ``teacher``
    teacher: str | None = None  # KD@stage-2: weights file of the teacher's f (the robust source)
    lipschitz_weight: float = 0.0  # DM (eq. 5): lambda on the LL term; 0 switches DM off
    lipschitz_eps: float = 0.5  # DM: radius of the LL ball in the paper's units (/255)
    lipschitz_steps: int = 10  # DM: PGD steps of the LL inner max
    dm_beta: float = 0.0  # DM as the authors' code runs it: beta * (1 / batch) * MSE(f(x'), f(x)); 0: off
    head: str = "epochs"  # partial: "lbfgs" fits g to convergence on f's embeddings (methods.train.head)
    head_l2_grid: tuple = ()  # head="lbfgs": L2 strengths on g's weights, the best on the validation split kept
    target_bn: bool = False  # partial: f's BatchNorm statistics re-estimated on the target first
    fresh_samples: bool = False  # every epoch after the first draws new training images (generated sets)

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"Unknown regime {self.regime!r}; use one of {REGIMES}.")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {self.augment!r}; use one of {AUGMENTATIONS}.")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError("optimizer must be 'adam' or 'sgd'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.adversarial is not None:
            spec = parse_attack(self.adversarial)
            if spec.name != "PGD":
                raise ValueError(f"adversarial training needs a PGD spec such as 'PGD-7#8'; got {spec}")
        for name in ("distill_weight", "lipschitz_weight", "dm_beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 switches it off); got {value!r}")
        if self.teacher is not None:
            object.__setattr__(self, "teacher", str(self.teacher))
            if self.distill_weight == 0:
                raise ValueError("teacher is only used by feature distillation: set distill_weight > 0, "
                                 "or leave teacher=None.")
            if self.teacher != "imagenet" and not Path(self.teacher).is_file():
                raise ValueError(f"teacher={self.teacher!r} is not an existing weights file; pass the file "
                                 "of the adversarially pre-trained source (SourceModel.weights).")
        elif self.distill_weight > 0:
            raise ValueError("distill_weight > 0 needs a teacher: pass teacher=<weights file of the "
                             "adversarially pre-trained source> (SourceModel.weights).")
        if not isinstance(self.lipschitz_eps, (int, float)) or not 0 < self.lipschitz_eps <= 255:
            raise ValueError(f"lipschitz_eps is in the paper's units of 1/255 and must be in (0, 255] "
                             f"(0.5 means 0.5/255); got {self.lipschitz_eps!r}")
        if isinstance(self.lipschitz_steps, bool) or int(self.lipschitz_steps) != self.lipschitz_steps \
                or self.lipschitz_steps < 1:
            raise ValueError(f"lipschitz_steps must be a positive integer; got {self.lipschitz_steps!r}")
        if self.dm_beta > 0 and self.lipschitz_weight > 0:
            raise ValueError("dm_beta (the authors' DM code) and lipschitz_weight (eq. 5 as written) are two "
                             "versions of one regulariser: switch on one of them.")
        self._check_head()
        if self.regime == "partial" and self.regularised:
            raise ValueError("feature distillation and DM regularise f, which partial fine-tuning freezes: "
                             "use regime='full' (or 'standard').")

    def _check_head(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}; use one of {HEADS}.")
        object.__setattr__(self, "head_l2_grid", tuple(float(v) for v in self.head_l2_grid))
        if self.head == "lbfgs":
            if self.regime != "partial" or self.augment != "none" or self.adversarial is not None:
                raise ValueError("head='lbfgs' fits g on f's fixed embeddings: it needs regime='partial', "
                                 "augment='none' and no adversarial training.")
            if not self.head_l2_grid or any(not math.isfinite(v) or v <= 0 for v in self.head_l2_grid):
                raise ValueError("head='lbfgs' needs head_l2_grid, positive L2 strengths such as (1e-4, 1e-3): "
                                 "without a penalty the head of separable features grows without bound.")
        elif self.head_l2_grid:
            raise ValueError("head_l2_grid is only used by head='lbfgs'.")
        if self.target_bn and self.regime != "partial":
            raise ValueError("target_bn re-estimates a frozen f's BatchNorm statistics: it needs regime='partial' "
                             "(full fine-tuning adapts them anyway).")
        if self.fresh_samples and self.head != "epochs":
            raise ValueError("fresh_samples draws new images every epoch: it needs head='epochs'.")

    @property
    def regularised(self) -> bool:
        """Whether the loss has a term on f's features (KD or DM) besides the cross-entropy."""
        return self.distill_weight > 0 or self.lipschitz_weight > 0 or self.dm_beta > 0
