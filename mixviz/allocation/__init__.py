"""Stage 3 — allocation: one option per layer under an average-bits budget.

Takes a Profile; gives an :class:`~mixviz.allocation.problem.Allocation`. The problem and its
integer bit budget live in :mod:`~mixviz.allocation.problem`; the exact solver in
:mod:`~mixviz.allocation.knapsack`; the study's baselines in :mod:`~mixviz.allocation.baselines`;
the strategy registry, ``allocate`` and the frontier in :mod:`~mixviz.allocation.strategies`;
hand edits (locks, undo) in :mod:`~mixviz.allocation.edits`.
"""
