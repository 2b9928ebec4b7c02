"""Old flat name, kept only for the executed chapter(s) 02, 04-06 in ``book/``.

Their code cells import ``nbs_lib.paper``; the chapters are re-executed with the layered
imports by this round's issues, and this module goes when the last of them has been.
New code imports ``nbs_lib.report.paper``, ``nbs_lib.report.tables``.
"""

from nbs_lib.report.paper import TABLE3, TABLE4, table1, table2, table5  # noqa: F401
from nbs_lib.report.tables import paper_table5_layout as table5_layout  # noqa: F401
