"""The strategy registry, ``allocate`` and the frontier.

A strategy turns a :class:`~mixviz.allocation.problem.Problem` and an integer bit budget into
an option per layer. ``optimal`` solves the multiple-choice knapsack exactly in integer bits
with :func:`mixviz.allocation.knapsack.solve_mckp` (convex-hull LP bound, Lagrangian
reduction, then a dynamic program over what is left) in milliseconds. The baselines
(``head``, ``tail``, ``uniform``, ``llamacpp``) live in :mod:`mixviz.allocation.baselines`.

Every strategy is a :class:`Strategy` in :data:`STRATEGIES`; :func:`register_strategy` adds
one, and it then reaches ``allocate``, the frontier, the CLI's ``--strategy`` and the app.

>>> problem = Problem.from_profile(profile)                       # doctest: +SKIP
>>> allocate(problem, 5.0).avg_bits <= 5.0                        # doctest: +SKIP
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from mixviz.allocation import baselines
from mixviz.allocation.knapsack import solve_mckp
from mixviz.allocation.problem import Allocation, Problem, budget_bits, make_allocation
from mixviz.errors import MixvizError


@dataclass(frozen=True)
class Strategy:
    """One way to allocate: ``solve(problem, budget)`` → option per layer, within ``budget``
    (an exact integer number of bits in the problem's accounting), or :class:`MixvizError`
    when it cannot meet it.

    ``colour`` draws its line in every chart; ``label`` names it for people. ``baseline``
    marks a rule to compare against (the frontier keeps one point per distinct allocation of
    a baseline, one per budget of a solver). ``budgeted`` is False for a fixed rule that only
    checks the budget (llama.cpp's Q4_K_M): the Runs page queues only budgeted strategies.
    """

    name: str
    solve: Callable[[Problem, int], dict[str, str]]
    colour: str
    label: str
    baseline: bool
    description: str = ""
    budgeted: bool = True
    needs: str = ""
    """An option family the profile must offer (``ggml`` for llama.cpp's own mixes), or ``""``."""

    def applies(self, problem: Problem) -> bool:
        """Whether this strategy can say anything about ``problem`` (its options' families)."""
        from mixviz.models.schemes import get_scheme

        return not self.needs or any(get_scheme(o).family == self.needs for o in problem.options)


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to :data:`STRATEGIES` (a name registered again is replaced) and return
    it. It shows up wherever strategies are listed: :func:`strategy_names`, :func:`frontier`,
    the CLI's ``--strategy``, the app's pages and charts."""
    if not isinstance(strategy.name, str) or not strategy.name.strip():
        raise MixvizError(f"a strategy needs a name, got {strategy.name!r}")
    STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_names(problem: Problem | None = None) -> tuple[str, ...]:
    """The registered strategies' names, in registration order (read at call time); with
    ``problem``, only those that apply to it (:meth:`Strategy.applies`)."""
    return tuple(n for n, s in STRATEGIES.items() if problem is None or s.applies(problem))


def solve_optimal(problem: Problem, budget: int) -> dict[str, str]:
    """The least predicted loss within ``budget``: the exact knapsack over the units."""
    units = problem.units
    picked = solve_mckp([list(u.cost) for u in units], [list(u.score) for u in units], budget)
    if picked is None:
        raise MixvizError(f"no allocation fits {budget / problem.total_numel:.4f} bits")
    return problem.expand(picked)


register_strategy(
    Strategy(
        "optimal",
        solve_optimal,
        "#1f77b4",
        "optimal",
        baseline=False,
        description="the least predicted loss within the budget (exact knapsack)",
    )
)
register_strategy(
    Strategy(
        "head",
        partial(baselines.ends, which="head"),
        "#ff7f0e",
        "head",
        baseline=True,
        description="whole blocks nearest lm_head at the highest option, the rest lowest",
    )
)
register_strategy(
    Strategy(
        "tail",
        partial(baselines.ends, which="tail"),
        "#2ca02c",
        "tail",
        baseline=True,
        description="whole blocks nearest the embedding at the highest option, the rest lowest",
    )
)
register_strategy(
    Strategy(
        "uniform",
        baselines.uniform,
        "#9467bd",
        "uniform",
        baseline=True,
        description="the largest single option that fits",
    )
)
register_strategy(
    Strategy(
        "llamacpp",
        baselines.llamacpp,
        "#8c564b",
        "llama.cpp Q4_K_M",
        baseline=True,
        description="llama.cpp's Q4_K_M rule: attn_v and ffn_down higher in some blocks",
        budgeted=False,
    )
)


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; an unknown name is an error naming the known ones."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise MixvizError(
            f"unknown strategy {name!r}; choose from {', '.join(strategy_names())}"
        ) from None


# --------------------------------------------------------------------------- allocate


def allocate(problem: Problem, avg_bits: float, strategy: str = "optimal") -> Allocation:
    """Allocate at ``avg_bits`` with ``strategy`` (a name in :data:`STRATEGIES`)."""
    return allocate_bits(problem, budget_bits(problem, avg_bits), strategy, avg_bits)


def allocate_bits(
    problem: Problem, budget: int, strategy: str = "optimal", avg_bits: float | None = None
) -> Allocation:
    """Allocate within ``budget`` total bits (an exact integer) with ``strategy``."""
    solve = get_strategy(strategy).solve
    t0 = time.perf_counter()
    if avg_bits is None:
        avg_bits = budget / problem.total_numel
    return make_allocation(problem, strategy, avg_bits, solve(problem, budget), t0)


# --------------------------------------------------------------------------- frontier


def frontier(
    problem: Problem, n: int = 50, strategies: Iterable[str] | None = None
) -> dict[str, list[dict]]:
    """Predicted loss vs achieved average bits, per strategy (all registered by default),
    over ``n`` budgets.

    Budgets a strategy cannot meet are skipped (e.g. llama.cpp's fixed rule below its bits).
    A baseline keeps one point per distinct allocation; a solver one per budget.
    """
    lo, hi = problem.feasible_bits()
    grid = [lo + (hi - lo) * i // (n - 1) for i in range(n)] if n > 1 else [hi]
    names = strategy_names(problem) if strategies is None else tuple(strategies)
    return {s: _curve(problem, grid, s) for s in names}


def _curve(problem: Problem, grid: list[int], strategy: str) -> list[dict]:
    """The frontier points of one strategy over the integer budgets of ``grid``."""
    known = STRATEGIES.get(strategy)  # an unknown name fails every budget: no points
    dedupe = known.baseline if known else True
    pts, seen = [], set()
    for b in grid:
        try:
            a = allocate_bits(problem, b, strategy)
        except MixvizError:
            continue
        key = tuple(sorted(a.layers.items())) if dedupe else b
        if key in seen:
            continue
        seen.add(key)
        pts.append(
            {
                "budget": b / problem.total_numel,
                "avg_bits": a.avg_bits,
                "avg_bits_no_scale": a.avg_bits_no_scale,
                "predicted_loss": a.predicted_loss,
            }
        )
    return pts


for _ftype, _colour in zip(
    baselines.LLAMACPP_FTYPES, ("#bcbd22", "#e377c2", "#17becf"), strict=True
):
    register_strategy(
        Strategy(
            _ftype,
            partial(baselines.llamacpp_ftype, ftype=_ftype),
            _colour,
            f"llama.cpp {_ftype}",
            baseline=True,
            description=f"llama-quantize's own {_ftype} mix in GGML types (profile GGML options)",
            budgeted=False,
            needs="ggml",
        )
    )
