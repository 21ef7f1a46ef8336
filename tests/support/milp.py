"""HiGHS (``scipy.optimize.milp``) on the multiple-choice knapsack: the reference the exact
solver :func:`mixviz.allocation.knapsack.solve_mckp` is tested and benchmarked against.

Not part of the package: ``bench/allocate.py`` puts ``tests/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import numpy as np


def solve_milp(cost: list[list[int]], score: list[list[float]], budget: int) -> list[int] | None:
    """One option per unit, Σ cost ≤ budget, min Σ score, through HiGHS: the chosen index per
    unit, or None when nothing fits. Slower than ``solve_mckp`` by two orders of magnitude on
    large problems.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    cols = [(u, j) for u in range(len(cost)) for j in range(len(cost[u]))]
    s = np.array([score[u][j] for u, j in cols])
    c = np.array([cost[u][j] for u, j in cols], dtype=float)
    own = csr_array(
        (np.ones(len(cols)), ([u for u, _ in cols], np.arange(len(cols)))),
        shape=(len(cost), len(cols)),
    )
    res = milp(
        s / max(np.abs(s).max(), 1e-300),
        integrality=np.ones(len(cols)),
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(own, 1, 1),
            LinearConstraint((c / budget)[None, :], -np.inf, 1.0),
        ],
        options={"mip_rel_gap": 0.0},
    )
    if res.x is None:
        return None
    out = [0] * len(cost)
    for v, (u, j) in zip(res.x, cols, strict=True):
        if v > 0.5:
            out[u] = j
    return out
