"""Old flat name, kept only for the executed chapter(s) 00, 02-07 in ``book/``.

Their code cells import ``nbs_lib.profiles``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.core.profiles``, ``nbs_lib.core.device``.
"""

from nbs_lib.core.device import resolve_device, seed_everything  # noqa: F401
from nbs_lib.core.profiles import get_profile  # noqa: F401
