"""nbs_lib: the library behind the book "Does ImageNet pre-training transfer non-robustness?".

Reproduces Zhang et al., "ImageNet Pre-training Also Transfers Non-robustness" (AAAI 2023)
and Falck, "Are Adversarially Robust Deep Nets Always Better Transfer Learners?".
Every computation of the book lives here; notebooks only call it.
"""

__version__ = "0.1.0"
