"""Measures of how alike two representations or two samples are.

* :mod:`.cca`: SVCCA-style mean canonical correlation and linear CKA between two
  layers (paper section "Difference between Fine-tuned Model and Standard Model:
  On the Learned Knowledge", Figure 3).
* :mod:`.discrepancy`: maximum mean discrepancy between source and target embeddings
  (section "The factors affecting the transfer of non-robust features", Figure 6).
"""

from .cca import UndefinedCCA, canonical_correlations, cca_similarity, debiased_linear_cka, linear_cka  # noqa: F401
from .discrepancy import median_bandwidth, mmd, mmd_permutation_test  # noqa: F401
from .lipschitz import local_lipschitz  # noqa: F401
