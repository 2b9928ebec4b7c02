"""Old flat name, kept only for the executed chapter(s) 00, 02, 03 in ``book/``.

Their code cells import ``nbs_lib.widgets``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.report.widgets``.
"""

from nbs_lib.report.widgets import (  # noqa: F401
    adversarial_explorer,
    dataset_browser,
    linked_selector,
    png_widget,
    uap_explorer,
)
