"""Old flat name, kept only for the executed chapter 06 in ``book/``.

Its code cells import ``nbs_lib.mitigation``; the chapter is re-executed with the layered
imports by this round's issues, and this module goes then.
New code imports ``nbs_lib.studies.ch06_dm_regularisation`` and ``nbs_lib.report.tables``.
"""

from nbs_lib.report.tables import table5_layout  # noqa: F401
from nbs_lib.studies.ch06_dm_regularisation import (  # noqa: F401
    best_method,
    lambda_sweep,
    method_study,
    steepness_table,
)
