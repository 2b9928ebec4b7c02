"""Old flat name, kept only for the executed chapter(s) 05-07 in ``book/``.

Their code cells import ``nbs_lib.pretrain``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.sources``.
"""

from nbs_lib.studies.sources import (  # noqa: F401
    checkpoint_source,
    pretrain_source,
    source_profile,
    source_table,
    target_profile,
)
