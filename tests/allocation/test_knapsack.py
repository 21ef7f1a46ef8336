"""The knapsack solver's three steps, each alone: the hull bound, the Lagrangian reduction and
the exact DP, against brute force and hand examples; then the three together against HiGHS."""

from __future__ import annotations

import doctest
import itertools
import random

import pytest
from milp import solve_milp

import mixviz.allocation.knapsack
from mixviz.allocation.knapsack import (
    exact_dp,
    hull_bound,
    lagrangian_reduction,
    pareto,
    solve_mckp,
)


def _pareto_case(rng: random.Random, units: int, options: int):
    """Options Pareto-sorted per unit (cost ascending, score strictly descending)."""
    cost, score = [], []
    for _ in range(units):
        c = [rng.randint(1, 20) for _ in range(rng.randint(1, options))]
        s = [rng.choice([0.0, 1.0, 2.5, rng.random() * 5]) for _ in c]
        keep = pareto(c, s)
        cost.append([c[j] for j in keep])
        score.append([s[j] for j in keep])
    return cost, score


def _messy_case(rng: random.Random):
    """Unsorted options with repeated costs, repeated scores and dominated options."""
    cost, score = [], []
    for _ in range(rng.randint(1, 5)):
        k = rng.randint(1, 4)
        cost.append([rng.choice([1, 2, 2, 3, 5, 8]) for _ in range(k)])
        score.append([rng.choice([0.0, 0.5, 1.0, 1.0, 2.5, rng.random()]) for _ in range(k)])
    return cost, score


def _all(cost, budget):
    """Every feasible pick."""
    return [
        p
        for p in itertools.product(*[range(len(c)) for c in cost])
        if sum(cost[u][j] for u, j in enumerate(p)) <= budget
    ]


def _value(score, pick) -> float:
    return sum(score[u][j] for u, j in enumerate(pick))


def _interior_cases(seed: int, n: int):
    """Pareto-sorted instances whose budget cuts the hull (cheapest fits, not everything)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        cost, score = _pareto_case(rng, rng.randint(1, 5), 4)
        lo, hi = sum(c[0] for c in cost), sum(c[-1] for c in cost)
        if hi > lo:
            out.append((cost, score, rng.randint(lo, hi - 1)))
    return out


def test_doctests():
    assert doctest.testmod(mixviz.allocation.knapsack).failed == 0


# --------------------------------------------------------------------------- 1. hull bound


def test_hull_bound_hand_example():
    # u0: 4 → 0 for 2 more bits (2 per bit); u1: 3 → 0 for 1 more bit (3 per bit). With 4 bits
    # the greedy buys u1's step, cannot afford u0's: λ = 2, the LP takes half of u0's step.
    b = hull_bound([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 4)
    assert b.lam == 2.0
    assert b.lower == 2.0  # 0 + 4 − ½·4
    assert b.pick == (0, 1) and b.upper == 4.0  # the true optimum, (1, 0), scores 3
    assert b.mins == (6.0, 4.0)


def test_hull_bound_skips_options_off_the_hull():
    # option 1 (cost 2, score 2.9) lies above the chord 0 → 2: the hull steps straight to 2
    b = hull_bound([[1, 2, 3]], [[3.0, 2.9, 0.0]], 2)
    assert b.lam == 1.5 and b.lower == pytest.approx(1.5)
    assert b.pick == (1,)  # the leftover bit still buys the off-hull option
    assert b.upper == 2.9


def test_hull_bound_brackets_the_optimum_and_its_pick_fits():
    for cost, score, budget in _interior_cases(0, 400):
        best = min(_value(score, p) for p in _all(cost, budget))
        b = hull_bound(cost, score, budget)
        assert b.lower <= best + 1e-9
        assert sum(cost[u][j] for u, j in enumerate(b.pick)) <= budget
        assert b.upper == pytest.approx(_value(score, b.pick))
        assert b.upper >= best - 1e-9
        assert b.lam >= 0.0


# --------------------------------------------------------------------------- 2. reduction


def test_reduction_hand_example():
    cost, score = [[1, 4, 5], [1, 5]], [[3.0, 2.0, 0.0], [3.0, 1.0]]
    b = hull_bound(cost, score, 6)
    assert b.lower == b.upper == 3.0  # the greedy is optimal: nothing off its reduced costs
    assert lagrangian_reduction(cost, score, b) == [[2], [0, 1]]


def test_reduction_never_removes_an_option_of_an_optimum():
    removed = 0
    for cost, score, budget in _interior_cases(1, 400):
        feasible = _all(cost, budget)
        best = min(_value(score, p) for p in feasible)
        optima = [p for p in feasible if _value(score, p) <= best + 1e-12]
        b = hull_bound(cost, score, budget)
        if b.lam == 0.0:
            continue
        kept = lagrangian_reduction(cost, score, b)
        for p in optima:
            assert all(j in kept[u] for u, j in enumerate(p)), (cost, score, budget, p, kept)
        removed += sum(len(c) for c in cost) - sum(len(k) for k in kept)
    assert removed > 100  # the reduction does remove options


# --------------------------------------------------------------------------- 3. exact DP


def test_dp_alone_equals_brute_force_on_unreduced_options():
    rng = random.Random(2)
    infeasible = 0
    for _ in range(1500):
        cost, score = _messy_case(rng)  # any order, ties, dominated options: no filter needed
        lo, hi = sum(min(c) for c in cost), sum(max(c) for c in cost)
        budget = rng.randint(lo - 2, hi + 1)
        feasible = _all(cost, budget)
        pick = exact_dp(cost, score, budget)
        if not feasible:
            infeasible += 1
            assert pick is None
            continue
        assert sum(cost[u][j] for u, j in enumerate(pick)) <= budget
        best = min(_value(score, p) for p in feasible)
        assert _value(score, pick) == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert infeasible > 50


def test_dp_on_the_kept_options_with_the_bound_is_exact():
    for cost, score, budget in _interior_cases(3, 400):
        best = min(_value(score, p) for p in _all(cost, budget))
        b = hull_bound(cost, score, budget)
        if b.lam == 0.0:
            continue
        pick = exact_dp(cost, score, budget, lagrangian_reduction(cost, score, b), b)
        assert sum(cost[u][j] for u, j in enumerate(pick)) <= budget
        assert _value(score, pick) == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_dp_returns_the_incumbent_when_nothing_beats_it():
    cost, score = [[1, 4, 5], [1, 5]], [[3.0, 2.0, 0.0], [3.0, 1.0]]
    b = hull_bound(cost, score, 6)
    assert exact_dp(cost, score, 6, lagrangian_reduction(cost, score, b), b) == list(b.pick)


def test_dp_hand_example():
    assert exact_dp([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 4) == [1, 0]
    assert exact_dp([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 5) == [1, 1]
    assert exact_dp([[1, 3], [1, 2]], [[4.0, 0.0], [3.0, 0.0]], 1) is None


# --------------------------------------------------------------------------- all three


def test_solve_mckp_matches_highs_on_larger_instances():
    rng = random.Random(4)
    for _ in range(10):
        cost, score = _pareto_case(rng, 60, 5)
        lo, hi = sum(c[0] for c in cost), sum(c[-1] for c in cost)
        budget = (lo + hi) // 2
        ours = solve_mckp(cost, score, budget)
        ref = solve_milp(cost, score, budget)
        assert sum(cost[u][j] for u, j in enumerate(ours)) <= budget
        assert _value(score, ours) == pytest.approx(_value(score, ref), rel=1e-9, abs=1e-12)
