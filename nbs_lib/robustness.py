"""Old flat name, kept only for the executed chapter(s) 03, 04, 06 in ``book/``.

Their code cells import ``nbs_lib.robustness``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.common``, ``nbs_lib.studies.ch01_robustness``, ``nbs_lib.report.tables``.
"""

from nbs_lib.report.tables import compare_with_paper, paper_layout, table2_layout  # noqa: F401
from nbs_lib.studies.ch01_robustness import attack_sanity, observations  # noqa: F401
from nbs_lib.studies.common import (  # noqa: F401
    attack_sample,
    histories,
    robustness_study,
    train_three,
    training_summary,
)
