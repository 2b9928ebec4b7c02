"""Old flat name, kept only for the executed chapter(s) 02 in ``book/``.

Their code cells import ``nbs_lib.knowledge``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.ch02_cca_similarity``.
"""

from nbs_lib.studies.ch02_cca_similarity import (  # noqa: F401
    claims_vs_paper,
    figure3_table,
    knowledge_observations,
    similarity_study,
)
