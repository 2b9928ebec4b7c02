"""Old flat name, kept only for the executed chapter(s) 05 in ``book/``.

Their code cells import ``nbs_lib.capacity``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.ch05_capacity_difficulty``.
"""

from nbs_lib.studies.ch05_capacity_difficulty import (  # noqa: F401
    capacity_archs,
    capacity_study,
    chapter_results,
    difficulty_study,
    table3_layout,
    table4_layout,
)
