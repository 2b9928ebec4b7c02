"""Old flat name, kept only for the executed chapter(s) 00 in ``book/``.

Their code cells import ``nbs_lib.imagenet``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.models.imagenet``.
"""

from nbs_lib.models.imagenet import sanity_predictions  # noqa: F401
