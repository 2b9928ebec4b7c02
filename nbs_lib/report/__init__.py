"""Report layer: the papers' published numbers, table layouts, plots, widgets, results files.
Imports the layers below it but never a study; studies and notebooks import it."""
