"""Old flat name, kept only for the executed chapter(s) 04 in ``book/``.

Their code cells import ``nbs_lib.distance``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.ch04_mmd_vs_dr``.
"""

from nbs_lib.studies.ch04_mmd_vs_dr import correlations, mmd_study  # noqa: F401
