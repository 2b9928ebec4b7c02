"""Old flat name, kept only for the executed chapter(s) 03 in ``book/``.

Their code cells import ``nbs_lib.uap_probe``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.studies.ch03_uap``.
"""

from nbs_lib.studies.ch03_uap import (  # noqa: F401
    gradient_maps,
    letter_uaps,
    source_uap,
    source_uap_transfer,
    success_along_training,
    uap_results,
    uap_table,
    uap_training_images,
)
