"""Stage 5 — report: what leaves mixviz.

Takes allocations and finished runs; gives a versioned :class:`~mixviz.report.recipe.Recipe`,
its exports to the formats people ship (:mod:`~mixviz.report.export` names them,
:mod:`~mixviz.report.formats` writes them), the study-style tables
(:mod:`~mixviz.report.tables`), the figures (:mod:`~mixviz.report.charts`) and the reference
study's whole protocol (:mod:`~mixviz.report.reproduce`).
"""
