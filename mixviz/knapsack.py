"""The exact multiple-choice knapsack solver behind the ``optimal`` allocation, and HiGHS as a
reference: one option per unit, total cost within budget, least total score.
"""

from __future__ import annotations

import numpy as np


def pareto(cost: list[int], score: list[float]) -> list[int]:
    """Indices of the options no other option beats: cost ascending, score strictly descending.

    Among options of equal cost only the lowest score survives; an option that costs more and
    scores no better is dropped.

    >>> pareto([2, 1, 2, 3], [1.0, 5.0, 0.5, 0.5])
    [1, 2]
    """
    keep: list[int] = []
    best = float("inf")
    for i in sorted(range(len(cost)), key=lambda i: (cost[i], score[i])):
        if score[i] < best:
            keep.append(i)
            best = score[i]
    return keep


def solve_mckp(cost: list[list[int]], score: list[list[float]], budget: int) -> list[int] | None:
    """Exact multiple-choice knapsack: one option per unit, Σ cost ≤ budget, min Σ score.

    Options may come in any order, with ties and equal costs: each unit is first reduced to
    its Pareto front (:func:`pareto`) and the answer mapped back to the caller's indices.
    Returns None when even the cheapest option of every unit does not fit.

    >>> solve_mckp([[1, 2], [1, 3]], [[5.0, 1.0], [4.0, 0.0]], 3)
    [1, 0]
    >>> solve_mckp([[2, 2, 1]], [[1.0, 0.0, 3.0]], 2)   # equal costs: the better one
    [1]
    """
    if any(not c for c in cost):
        raise ValueError("every unit needs at least one option")
    if len(cost) != len(score) or any(len(c) != len(s) for c, s in zip(cost, score, strict=True)):
        raise ValueError("cost and score must have the same shape")
    keep = [pareto(c, s) for c, s in zip(cost, score, strict=True)]
    picked = _solve_front(
        [[c[j] for j in k] for c, k in zip(cost, keep, strict=True)],
        [[s[j] for j in k] for s, k in zip(score, keep, strict=True)],
        budget,
    )
    return None if picked is None else [k[j] for k, j in zip(keep, picked, strict=True)]


def _solve_front(cost: list[list[int]], score: list[list[float]], budget: int) -> list[int] | None:
    """:func:`solve_mckp` on Pareto-sorted options (cost ascending, score strictly descending).

    1. LP relaxation by the convex-hull greedy → multiplier λ, lower bound L, and a greedy
       integer solution (upper bound U).
    2. Lagrangian reduction: any solution scores ≥ L + Σ_u rc_u, with
       ``rc_u(j) = score + λ·cost − min_k(score + λ·cost)``; options with rc > U − L go.
    3. Exact DP over integer costs on what is left, pruning states whose reduced costs
       already exceed U − L. Returns the chosen index per unit, or None if nothing fits.
    """
    n = len(cost)
    if sum(c[0] for c in cost) > budget:
        return None
    if sum(c[-1] for c in cost) <= budget:
        return [len(c) - 1 for c in cost]
    # 1. convex hull increments, taken greedily by gain per bit
    steps = []
    for u in range(n):
        hull = [0]
        for j in range(1, len(cost[u])):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # b is not on the lower hull if the slope a→j is at least as steep as a→b
                if (score[u][a] - score[u][j]) * (cost[u][b] - cost[u][a]) >= (
                    score[u][a] - score[u][b]
                ) * (cost[u][j] - cost[u][a]):
                    hull.pop()
                else:
                    break
            hull.append(j)
        for a, b in zip(hull, hull[1:], strict=False):
            gain = (score[u][a] - score[u][b]) / (cost[u][b] - cost[u][a])
            steps.append((-gain, u, a, b))
    steps.sort()
    pick = [0] * n
    left = budget - sum(c[0] for c in cost)
    lam, blocked = 0.0, set()
    for neg_gain, u, a, b in steps:
        if u in blocked or pick[u] != a:
            continue
        dc = cost[u][b] - cost[u][a]
        if dc <= left:
            pick[u], left = b, left - dc
        else:
            if lam == 0.0:
                lam = -neg_gain  # the critical (fractional) step sets the multiplier
            blocked.add(u)
    if lam == 0.0:
        return pick
    # Spend what the greedy left on the single best-improving option change, while one fits.
    while True:
        best = (0.0, -1, -1)
        for u in range(n):
            cu, su = cost[u][pick[u]], score[u][pick[u]]
            for j in range(pick[u] + 1, len(cost[u])):
                if cost[u][j] - cu > left:
                    break
                if score[u][j] - su < best[0]:
                    best = (score[u][j] - su, u, j)
        if best[1] < 0:
            break
        _, u, j = best
        left -= cost[u][j] - cost[u][pick[u]]
        pick[u] = j
    upper = sum(score[u][pick[u]] for u in range(n))
    # 2. Lagrangian reduction
    mins = [min(s + lam * c for s, c in zip(score[u], cost[u], strict=True)) for u in range(n)]
    lower = sum(mins) - lam * budget
    gap = upper - lower
    tol = 1e-9 * max(abs(upper), abs(lower), 1e-300)
    free: list[list[int]] = []
    for u in range(n):
        ok = [
            j for j in range(len(cost[u])) if score[u][j] + lam * cost[u][j] - mins[u] <= gap + tol
        ]
        free.append(ok or [pick[u]])
    # 3. exact DP over the reduced options: state cost → (score, rc sum, parent)
    fixed = [u for u in range(n) if len(free[u]) == 1]
    cap = budget - sum(cost[u][free[u][0]] for u in fixed)
    base = sum(score[u][free[u][0]] for u in fixed)
    base_rc = sum(score[u][free[u][0]] + lam * cost[u][free[u][0]] - mins[u] for u in fixed)
    if cap < 0 or base_rc > gap + tol:
        return pick
    order = [u for u in range(n) if len(free[u]) > 1]
    # suffix bounds on the cost the remaining free units can still add
    rest_min = np.zeros(len(order) + 1, dtype=np.int64)
    rest_max = np.zeros(len(order) + 1, dtype=np.int64)
    for i in range(len(order) - 1, -1, -1):
        u = order[i]
        rest_min[i] = rest_min[i + 1] + min(cost[u][j] for j in free[u])
        rest_max[i] = rest_max[i + 1] + max(cost[u][j] for j in free[u])
    C = np.zeros(1, dtype=np.int64)
    S = np.zeros(1)
    R = np.full(1, base_rc)
    trail = []  # per free unit: (parent state index, chosen option) of every kept state
    for i, u in enumerate(order):
        opts = np.array(free[u])
        oc = np.array([cost[u][j] for j in free[u]], dtype=np.int64)
        osc = np.array([score[u][j] for j in free[u]])
        orc = osc + lam * oc - mins[u]
        C1 = (C[:, None] + oc[None, :]).ravel()
        S1 = (S[:, None] + osc[None, :]).ravel()
        R1 = (R[:, None] + orc[None, :]).ravel()
        parent = np.repeat(np.arange(len(C)), len(oc))
        choice = np.tile(opts, len(C))
        # feasible, and not provably worse than the incumbent: any completion scores at least
        # L + Σ rc + λ·(unused budget)
        unused = np.maximum(cap - C1 - rest_max[i + 1], 0)
        ok = (C1 + rest_min[i + 1] <= cap) & (R1 + lam * unused <= gap + tol)
        if not ok.any():
            return pick
        C1, S1, R1, parent, choice = C1[ok], S1[ok], R1[ok], parent[ok], choice[ok]
        order_idx = np.lexsort((S1, C1))
        C1, S1, R1 = C1[order_idx], S1[order_idx], R1[order_idx]
        parent, choice = parent[order_idx], choice[order_idx]
        run_min = np.minimum.accumulate(S1)
        keep = np.ones(len(S1), dtype=bool)
        keep[1:] = S1[1:] < run_min[:-1]  # Pareto: more cost must buy a lower score
        C, S, R = C1[keep], S1[keep], R1[keep]
        trail.append((parent[keep], choice[keep]))
    result = [free[u][0] for u in range(n)]
    if not order:
        return result if base < upper else pick
    k = int(np.argmin(S))
    if base + S[k] >= upper:
        return pick
    for i in range(len(order) - 1, -1, -1):
        parent, choice = trail[i]
        result[order[i]] = int(choice[k])
        k = int(parent[k])
    return result


def solve_milp(cost: list[list[int]], score: list[list[float]], budget: int) -> list[int] | None:
    """The same problem through HiGHS (scipy.optimize.milp): a reference for tests and the
    benchmark. Slower than :func:`solve_mckp` by two orders of magnitude on large problems.
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
