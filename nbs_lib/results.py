"""Old flat name, kept only for the executed chapter(s) 00, 02-07 in ``book/``.

Their code cells import ``nbs_lib.results``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.report.results``.
"""

from nbs_lib.report.results import write_results  # noqa: F401
