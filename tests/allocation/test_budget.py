"""Exact integer budgets and a solver that needs no caller's help.

Issue 13 items 6 and 8: the very ends of the feasible range must be solvable on large problems
(an average is turned into an integer bit budget exactly), and :func:`solve_mckp` must take
options in any order, with ties, equal costs and infeasible budgets, checked against brute force.
"""

from __future__ import annotations

import itertools
import random

import pytest

from mixviz import MixvizError
from mixviz.allocation.knapsack import pareto, solve_mckp
from mixviz.allocation.problem import Problem, budget_bits
from mixviz.allocation.strategies import allocate, frontier
from mixviz.sensitivity.synthetic import synthetic_profile


def _brute(cost, score, budget):
    best = None
    for p in itertools.product(*[range(len(c)) for c in cost]):
        if sum(cost[u][j] for u, j in enumerate(p)) <= budget:
            v = sum(score[u][j] for u, j in enumerate(p))
            best = v if best is None else min(best, v)
    return best


def _messy_case(rng: random.Random):
    """Unsorted options with repeated costs, repeated scores and dominated options."""
    units = rng.randint(1, 5)
    cost, score = [], []
    for _ in range(units):
        k = rng.randint(1, 4)
        cost.append([rng.choice([1, 2, 2, 3, 5, 8]) for _ in range(k)])
        score.append([rng.choice([0.0, 0.5, 1.0, 1.0, 2.5, rng.random()]) for _ in range(k)])
    return cost, score


def test_solver_against_brute_force_with_ties_and_equal_costs():
    rng = random.Random(13)
    infeasible = 0
    for _ in range(3000):
        cost, score = _messy_case(rng)
        lo, hi = sum(min(c) for c in cost), sum(max(c) for c in cost)
        budget = rng.randint(lo - 2, hi + 1)
        best = _brute(cost, score, budget)
        pick = solve_mckp(cost, score, budget)
        if best is None:
            infeasible += 1
            assert pick is None
            continue
        assert pick is not None and len(pick) == len(cost)
        assert sum(cost[u][j] for u, j in enumerate(pick)) <= budget
        got = sum(score[u][j] for u, j in enumerate(pick))
        assert got == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert infeasible > 100  # the generator does reach infeasible budgets


def test_solver_equal_cost_options_do_not_divide_by_zero():
    # two options of the same cost (the old hull step divided by a zero cost difference)
    assert solve_mckp([[4, 4, 8], [4, 8]], [[3.0, 1.0, 0.0], [2.0, 0.0]], 12) == [1, 1]
    assert solve_mckp([[4, 4]], [[1.0, 1.0]], 4) in ([0], [1])
    assert solve_mckp([[4, 4]], [[1.0, 1.0]], 3) is None


def test_pareto_front():
    assert pareto([3, 1, 1, 2], [0.0, 2.0, 1.0, 1.0]) == [2, 0]
    assert pareto([1], [0.0]) == [0]


def _pinned_problem(seed: int) -> Problem:
    """A 64-block problem with Qwen-sized layers of mixed shapes, 10 % of layers pinned."""
    rng = random.Random(seed)
    dims = [576, 1536, 3584, 5120, 8192, 18944, 25600]
    shapes = {f"mlp.l{i}": (rng.choice(dims), rng.randint(1000, 30000)) for i in range(7)}
    options = ["W2A16G64", "W3A16G64", "W4A16G64", "W8A16G64"]
    prof = synthetic_profile(shapes, 64, options, seed=seed, model="q")
    names = [x.name for x in prof.layers]
    pins = {n: rng.choice([*options, "BF16"]) for n in rng.sample(names, len(names) // 10)}
    return Problem.from_profile(prof, ignore_scale_bits=bool(seed % 2), pins=pins)


def test_exact_ends_of_the_feasible_range_are_solvable():
    # before the fix, floor(avg·N + 1e-6) refused ~2.5 % of these ends
    for seed in range(100):
        problem = _pinned_problem(seed)
        lo_bits, hi_bits = problem.feasible_bits()
        lo, hi = problem.feasible_range()
        assert budget_bits(problem, lo) == lo_bits
        assert budget_bits(problem, hi) == hi_bits
        cost = problem.bits_no_scale if problem.ignore_scale_bits else problem.bits
        for avg, bits in ((lo, lo_bits), (hi, hi_bits)):
            a = allocate(problem, avg)
            assert sum(cost[(k, o)] for k, o in a.layers.items()) == bits, (seed, avg)


def test_frontier_keeps_both_ends():
    problem = _pinned_problem(3)
    lo_bits, hi_bits = problem.feasible_bits()
    n = problem.total_numel
    f = frontier(problem, 5, ["optimal"])["optimal"]
    assert len(f) == 5
    assert f[0]["budget"] == lo_bits / n and f[-1]["budget"] == hi_bits / n
    assert f[0]["avg_bits_no_scale" if problem.ignore_scale_bits else "avg_bits"] == lo_bits / n


def test_budget_bits_is_exact_and_refuses_outside():
    problem = _pinned_problem(1)
    lo_bits, hi_bits = problem.feasible_bits()
    n = problem.total_numel
    mid = (lo_bits + hi_bits) // 2
    assert budget_bits(problem, mid / n) == mid
    assert budget_bits(problem, (mid + 0.5) / n) == mid  # floor, never above
    with pytest.raises(MixvizError, match="feasible range"):
        budget_bits(problem, (lo_bits - 1) / n)
    with pytest.raises(MixvizError, match="feasible range"):
        budget_bits(problem, (hi_bits + 1) / n)
