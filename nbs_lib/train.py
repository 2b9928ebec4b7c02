"""Old flat name, kept only for the executed chapter(s) 06 in ``book/``.

Their code cells import ``nbs_lib.train``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.methods.train``.
"""

from nbs_lib.methods.train import train_model  # noqa: F401
