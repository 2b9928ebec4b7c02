"""Studies layer: one module per chapter, named after its notebook, and the kit they share
(:mod:`~nbs_lib.studies.common`, :mod:`~nbs_lib.studies.sources`). A chapter never imports another chapter."""
