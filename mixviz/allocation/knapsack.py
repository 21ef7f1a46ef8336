"""The exact multiple-choice knapsack solver behind the ``optimal`` allocation: one option per
unit, total cost within budget, least total score.

:func:`solve_mckp` keeps each unit's Pareto front (:func:`pareto`), then takes three steps,
each a function of its own: :func:`hull_bound` (the convex-hull LP relaxation: multiplier λ,
lower bound L, greedy integer solution U), :func:`lagrangian_reduction` (options whose reduced
cost exceeds U − L go) and :func:`exact_dp` (an integer DP over what is left). HiGHS, the
reference it is tested and benchmarked against, lives in ``tests/milp.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    Then :func:`hull_bound` (LP bound and a greedy incumbent), :func:`lagrangian_reduction`
    (options that cannot be in an optimum go) and :func:`exact_dp` over what is left.
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
    cost = [[c[j] for j in k] for c, k in zip(cost, keep, strict=True)]
    score = [[s[j] for j in k] for s, k in zip(score, keep, strict=True)]
    if sum(c[0] for c in cost) > budget:
        return None
    if sum(c[-1] for c in cost) <= budget:
        picked = [len(c) - 1 for c in cost]
    else:
        bound = hull_bound(cost, score, budget)
        if bound.lam == 0.0:
            picked = list(bound.pick)
        else:
            free = lagrangian_reduction(cost, score, bound)
            picked = exact_dp(cost, score, budget, free, bound)
    return [k[j] for k, j in zip(keep, picked, strict=True)]


# --------------------------------------------------------------------------- 1. hull bound


@dataclass(frozen=True)
class HullBound:
    """What :func:`hull_bound` learns: the multiplier ``lam`` (λ, the gain per bit of the step
    the budget cuts; 0.0 when nothing is cut), the lower bound ``lower`` (L, the LP optimum:
    no solution scores less) and a feasible integer solution ``pick`` scoring ``upper`` (U).
    ``mins`` holds, per unit, ``min_j(score + λ·cost)``: reduced costs are measured from it."""

    lam: float
    lower: float
    pick: tuple[int, ...]
    upper: float
    mins: tuple[float, ...]

    @property
    def slack(self) -> float:
        """``U − L`` plus a relative float tolerance: the most reduced cost an optimum has."""
        gap = self.upper - self.lower
        return gap + 1e-9 * max(abs(self.upper), abs(self.lower), 1e-300)


def hull_bound(cost: list[list[int]], score: list[list[float]], budget: int) -> HullBound:
    """Step 1: the LP relaxation by the convex-hull greedy, and a greedy integer solution.

    Options are Pareto-sorted (cost ascending, score strictly descending) and the cheapest of
    every unit fits. Each unit's lower convex hull is a chain of steps; taking them in order of
    gain per bit while they fit solves the LP relaxation up to the first step that does not
    (its gain is λ). The Lagrangian dual at λ, ``L = Σ_u min_j(score + λ·cost) − λ·budget``, is
    that LP optimum, a lower bound on every solution. The greedy picks, with what budget they
    leave spent on the best single improving change while one fits, are feasible: ``U``.

    >>> b = hull_bound([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 4)
    >>> b.lam, b.lower, b.pick, b.upper, b.mins
    (2.0, 2.0, (0, 1), 4.0, (6.0, 4.0))
    """
    n = len(cost)
    steps = sorted(s for u in range(n) for s in _hull_steps(u, cost[u], score[u]))
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
    if lam != 0.0:
        _spend_left(cost, score, pick, left)
    mins = _mins(cost, score, lam)
    upper = sum(score[u][pick[u]] for u in range(n))
    return HullBound(lam, sum(mins) - lam * budget, tuple(pick), upper, tuple(mins))


def _hull_steps(u: int, cost: list[int], score: list[float]) -> list[tuple]:
    """The lower convex hull of one unit's options as steps ``(−gain per bit, u, from, to)``."""
    hull = [0]
    for j in range(1, len(cost)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is not on the lower hull if the slope a→j is at least as steep as a→b
            if (score[a] - score[j]) * (cost[b] - cost[a]) >= (score[a] - score[b]) * (
                cost[j] - cost[a]
            ):
                hull.pop()
            else:
                break
        hull.append(j)
    return [
        (-(score[a] - score[b]) / (cost[b] - cost[a]), u, a, b)
        for a, b in zip(hull, hull[1:], strict=False)
    ]


def _spend_left(cost, score, pick: list[int], left: int) -> None:
    """Spend ``left`` bits on the single best-improving option change, while one fits."""
    while True:
        best = (0.0, -1, -1)
        for u in range(len(cost)):
            cu, su = cost[u][pick[u]], score[u][pick[u]]
            for j in range(pick[u] + 1, len(cost[u])):
                if cost[u][j] - cu > left:
                    break
                if score[u][j] - su < best[0]:
                    best = (score[u][j] - su, u, j)
        if best[1] < 0:
            return
        _, u, j = best
        left -= cost[u][j] - cost[u][pick[u]]
        pick[u] = j


def _mins(cost, score, lam: float) -> list[float]:
    """Per unit, ``min_j(score + λ·cost)``."""
    return [
        min(s + lam * c for s, c in zip(su, cu, strict=True))
        for cu, su in zip(cost, score, strict=True)
    ]


def _reduced_cost(cost, score, lam: float, mins, u: int, j: int) -> float:
    """Option ``j`` of unit ``u``: ``rc = score + λ·cost − min_k(score + λ·cost)`` (≥ 0)."""
    return score[u][j] + lam * cost[u][j] - mins[u]


# --------------------------------------------------------------------------- 2. reduction


def lagrangian_reduction(
    cost: list[list[int]], score: list[list[float]], bound: HullBound
) -> list[list[int]]:
    """Step 2: the options of each unit that can still be in an optimum.

    Every feasible solution scores at least ``L + Σ_u rc_u`` (``rc = score + λ·cost −
    min_k(score + λ·cost)`` within the unit, ≥ 0), and an optimum scores at most ``U``; so no
    option of an optimum has a reduced cost above ``U − L`` (:attr:`HullBound.slack`), and
    those options go. Returns the kept option indices per unit, ascending (never empty: a unit
    keeps at least its greedy pick).

    >>> cost, score = [[1, 4, 5], [1, 5]], [[3.0, 2.0, 0.0], [3.0, 1.0]]
    >>> b = hull_bound(cost, score, 6)     # λ = 0.5, L = U = 3: the greedy is optimal
    >>> lagrangian_reduction(cost, score, b)
    [[2], [0, 1]]
    """
    lam, mins, limit = bound.lam, bound.mins, bound.slack
    return [
        [j for j in range(len(cost[u])) if _reduced_cost(cost, score, lam, mins, u, j) <= limit]
        or [bound.pick[u]]
        for u in range(len(cost))
    ]


# --------------------------------------------------------------------------- 3. exact DP


def exact_dp(
    cost: list[list[int]],
    score: list[list[float]],
    budget: int,
    keep: list[list[int]] | None = None,
    bound: HullBound | None = None,
) -> list[int] | None:
    """Step 3: the exact optimum by dynamic programming over integer costs.

    Only the options in ``keep`` (per unit; every option when None) are tried. The states after
    each unit are the Pareto front of (cost so far, score so far), trimmed to those the
    remaining units can still complete within ``budget``. Without ``bound`` this is a plain
    exact DP: the optimum, or None when nothing fits. With the :func:`hull_bound` of the
    problem, a state whose reduced costs plus λ·(budget it must leave unused) exceed
    ``U − L`` cannot beat the greedy solution and is dropped, and the greedy solution is
    returned when nothing beats it.

    >>> exact_dp([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 4)
    [1, 0]
    >>> exact_dp([[2], [3]], [[0.0], [0.0]], 4) is None
    True
    """
    n = len(cost)
    keep = [list(range(len(c))) for c in cost] if keep is None else keep
    if bound is None:  # a plain DP: nothing to prune by, no incumbent to fall back on
        lam, mins, limit, upper, incumbent = 0.0, _mins(cost, score, 0.0), math.inf, math.inf, None
    else:
        lam, mins, limit, upper = bound.lam, bound.mins, bound.slack, bound.upper
        incumbent = list(bound.pick)
    fixed = [u for u in range(n) if len(keep[u]) == 1]
    cap = budget - sum(cost[u][keep[u][0]] for u in fixed)
    base = sum(score[u][keep[u][0]] for u in fixed)
    base_rc = sum(_reduced_cost(cost, score, lam, mins, u, keep[u][0]) for u in fixed)
    if cap < 0 or base_rc > limit:
        return incumbent
    order = [u for u in range(n) if len(keep[u]) > 1]
    result = [keep[u][0] for u in range(n)]
    if not order:
        return result if base < upper else incumbent
    options = []
    for u in order:
        oc = np.array([cost[u][j] for j in keep[u]], dtype=np.int64)
        osc = np.array([score[u][j] for j in keep[u]])
        options.append((np.array(keep[u]), oc, osc, osc + lam * oc - mins[u]))
    swept = _sweep(options, cap, lam, limit, base_rc)
    if swept is None:
        return incumbent
    S, trail = swept
    k = int(np.argmin(S))
    if base + S[k] >= upper:
        return incumbent
    for i in range(len(order) - 1, -1, -1):
        parent, choice = trail[i]
        result[order[i]] = int(choice[k])
        k = int(parent[k])
    return result


def _sweep(options: list[tuple], cap: int, lam: float, limit: float, base_rc: float):
    """The DP's forward pass over units given as ``(option indices, costs, scores, reduced
    costs)`` arrays: the final states' scores and, per unit, (parent state, chosen option) of
    every kept state; None when no state survives.

    A state survives when the remaining units' cheapest options still fit ``cap``, its reduced
    costs plus λ·(budget it must leave unused) stay within ``limit``, and it is on the Pareto
    front (more cost must buy a lower score).
    """
    # suffix bounds on the cost the remaining units can still add
    rest_min = np.zeros(len(options) + 1, dtype=np.int64)
    rest_max = np.zeros(len(options) + 1, dtype=np.int64)
    for i in range(len(options) - 1, -1, -1):
        costs = options[i][1].tolist()
        rest_min[i] = rest_min[i + 1] + min(costs)
        rest_max[i] = rest_max[i + 1] + max(costs)
    C = np.zeros(1, dtype=np.int64)
    S = np.zeros(1)
    R = np.full(1, base_rc)
    trail = []
    for i, (opts, oc, osc, orc) in enumerate(options):
        C1 = (C[:, None] + oc[None, :]).ravel()
        S1 = (S[:, None] + osc[None, :]).ravel()
        R1 = (R[:, None] + orc[None, :]).ravel()
        parent = np.repeat(np.arange(len(C)), len(oc))
        choice = np.tile(opts, len(C))
        # any completion scores at least L + Σ rc + λ·(unused budget)
        unused = np.maximum(cap - C1 - rest_max[i + 1], 0)
        ok = (C1 + rest_min[i + 1] <= cap) & (R1 + lam * unused <= limit)
        if not ok.any():
            return None
        C1, S1, R1, parent, choice = C1[ok], S1[ok], R1[ok], parent[ok], choice[ok]
        idx = np.lexsort((S1, C1))
        C1, S1, R1, parent, choice = C1[idx], S1[idx], R1[idx], parent[idx], choice[idx]
        run_min = np.minimum.accumulate(S1)
        keep = np.ones(len(S1), dtype=bool)
        keep[1:] = S1[1:] < run_min[:-1]
        C, S, R = C1[keep], S1[keep], R1[keep]
        trail.append((parent[keep], choice[keep]))
    return S, trail
