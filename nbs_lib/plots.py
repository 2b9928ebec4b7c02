"""Old flat name, kept only for the executed chapter(s) 00, 02-05, 07 in ``book/``.

Their code cells import ``nbs_lib.plots``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.report.plots``.
"""

from nbs_lib.report.plots import (  # noqa: F401
    before_after_grid,
    dr_vs_size,
    example_grid,
    feature_visualisation_grid,
    image_strip,
    mmd_vs_dr,
    similarity_bars,
    training_curves,
    transfer_curve_grid,
    uap_success_curves,
    uap_transfer_bars,
)
