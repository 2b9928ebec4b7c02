"""Old flat name, kept only for the executed chapter 07 in ``book/``.

Its code cells use ``nbs_lib.robust_transfer as rt``; the chapter is re-executed with the
layered imports by this round's issues, and this module goes then. New code imports
``nbs_lib.studies.ch07_robust_transfer``.
"""

from nbs_lib.studies.ch07_robust_transfer import *  # noqa: F401,F403
