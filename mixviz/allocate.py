"""Bit allocation under an average-bits budget: the problem, the strategies, the frontier.

The problem is a multiple-choice knapsack: pick one option per *unit* (a layer, or a group of
layers that must share a format such as q/k/v) to minimise the summed sensitivity score with
total bits ≤ budget. ``optimal`` solves it exactly in integer bits with
:func:`mixviz.knapsack.solve_mckp` (convex-hull LP bound, Lagrangian reduction, then a dynamic
program over what is left) in milliseconds; HiGHS (``solve_milp``) is the reference.

The baselines (``head``, ``tail``, ``uniform``, ``llamacpp``) live in :mod:`mixviz.baselines`.

>>> problem = Problem.from_profile(profile)                       # doctest: +SKIP
>>> allocate(problem, 5.0).avg_bits <= 5.0                        # doctest: +SKIP
True
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction

from mixviz import baselines
from mixviz.errors import MixvizError
from mixviz.knapsack import solve_mckp
from mixviz.schemes import SCHEMES, get_scheme, layer_bits

STRATEGIES = ("optimal", "head", "tail", "uniform", "llamacpp")


@dataclass(frozen=True)
class Unit:
    """Layers that take one option together, with each option's summed cost and score."""

    names: tuple[str, ...]
    options: tuple[str, ...]  # sorted by cost
    cost: tuple[int, ...]  # bits in the chosen accounting
    score: tuple[float, ...]
    pinned: bool = False


@dataclass(frozen=True)
class Problem:
    """Everything the solvers need: layers, their blocks/kinds/sizes, units and costs."""

    layers: tuple[str, ...]
    block: dict[str, int | None]
    kind: dict[str, str]
    numel: dict[str, int]
    bits: dict[tuple[str, str], int]  # with scale bits
    bits_no_scale: dict[tuple[str, str], int]
    scores: dict[tuple[str, str], float]
    options: tuple[str, ...]  # profile options, sorted by bits
    units: tuple[Unit, ...]
    ignore_scale_bits: bool = False
    profile_key: str = ""
    metric: str = ""
    pins: dict[str, str] = field(default_factory=dict)

    @property
    def total_numel(self) -> int:
        return sum(self.numel.values())

    def feasible_bits(self) -> tuple[int, int]:
        """The lowest and highest total bits any allocation can reach (exact integers)."""
        return sum(min(u.cost) for u in self.units), sum(max(u.cost) for u in self.units)

    def feasible_range(self) -> tuple[float, float]:
        """The lowest and highest average bits any allocation can reach."""
        lo, hi = self.feasible_bits()
        return lo / self.total_numel, hi / self.total_numel

    def cost(self, name: str, option: str) -> int:
        table = self.bits_no_scale if self.ignore_scale_bits else self.bits
        return table[(name, option)]

    @classmethod
    def from_profile(
        cls,
        profile,
        *,
        ignore_scale_bits: bool = False,
        shared: list[str] | None = None,
        pins: dict[str, str] | None = None,
        include_lm_head: bool = False,
    ) -> Problem:
        """Build the allocation problem from a :class:`~mixviz.profile.Profile`."""
        layers = [
            x
            for x in profile.layers
            if x.block is not None or (include_lm_head and x.kind == "lm_head")
        ]
        if include_lm_head and not any(x.kind == "lm_head" for x in layers):
            raise MixvizError(
                "this profile has no lm_head scores: profile with "
                "--include-lm-head to put lm_head in the budget"
            )
        options = tuple(profile.options)
        bits, nos, scores = {}, {}, {}
        for r in profile.rows:
            bits[(r.layer, r.option)] = r.bits
            nos[(r.layer, r.option)] = r.bits_no_scale
            scores[(r.layer, r.option)] = r.score
        names = [x.name for x in layers]
        by_name = {x.name: x for x in layers}
        pins = {k: get_scheme(v).name for k, v in (pins or {}).items()}
        for name, opt in pins.items():
            if name not in by_name:
                raise MixvizError(f"pinned layer {name!r} is not among the allocated layers")
            if opt not in options and opt != "BF16":
                raise MixvizError(
                    f"pin {name}={opt}: {opt} is not among the profile's options "
                    f"({', '.join(options)}) or BF16"
                )
        units = []
        for group in _groups(layers, shared or []):
            group_pins = {pins[n] for n in group if n in pins}
            if len(group_pins) > 1:
                raise MixvizError(f"conflicting pins inside the shared group {', '.join(group)}")
            if group_pins == {"BF16"}:  # a BF16 pin on one member holds its whole group
                for name in group:
                    if (name, "BF16") not in bits:
                        x = by_name[name]
                        b = layer_bits(SCHEMES["BF16"], x.in_features, x.out_features)
                        bits[(name, "BF16")] = nos[(name, "BF16")] = b
                        scores[(name, "BF16")] = 0.0
            candidates = list(group_pins) if group_pins else list(options)
            opts = []
            for o in candidates:
                if all(scores.get((n, o)) is not None for n in group):
                    table = nos if ignore_scale_bits else bits
                    opts.append(
                        (sum(table[(n, o)] for n in group), sum(scores[(n, o)] for n in group), o)
                    )
            if not opts:
                raise MixvizError(
                    f"no option is available for every layer of {group[0]}"
                    + (f" (+{len(group) - 1} shared)" if len(group) > 1 else "")
                )
            opts.sort()
            units.append(
                Unit(
                    tuple(group),
                    tuple(o for _, _, o in opts),
                    tuple(c for c, _, _ in opts),
                    tuple(s for _, s, _ in opts),
                    pinned=bool(group_pins),
                )
            )
        return cls(
            tuple(names),
            {x.name: x.block for x in layers},
            {x.name: x.kind for x in layers},
            {x.name: x.numel for x in layers},
            bits,
            nos,
            scores,
            options,
            tuple(units),
            ignore_scale_bits,
            profile.key,
            profile.metric,
            pins,
        )


def _groups(layers, shared: list[str]) -> list[list[str]]:
    """Partition layers into units. ``qkv``/``gate_up`` use the fused group of the inventory;
    any other entry is a regex whose matches are tied together within each block.

    >>> # with shared=["qkv"], q/k/v of one block form one unit; o_proj stays alone
    """
    specs = []
    for s in shared:
        s = s.strip()
        if not s:
            continue
        if s in ("qkv", "gate_up"):
            specs.append(("group", s))
        else:
            try:
                specs.append(("regex", re.compile(s)))
            except re.error as e:
                raise MixvizError(f"bad --shared regex {s!r}: {e}") from None
    out: dict[tuple, list[str]] = {}
    for x in layers:
        key: tuple = ("own", x.name)
        for i, (how, what) in enumerate(specs):
            if how == "group" and x.group == what:
                key = ("spec", i, x.block)
                break
            if how == "regex" and what.search(x.name):
                key = ("spec", i, x.block)
                break
        out.setdefault(key, []).append(x.name)
    return list(out.values())


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Allocation:
    """One option per layer, its achieved bits both ways and its predicted loss."""

    strategy: str
    budget_avg_bits: float
    avg_bits: float
    avg_bits_no_scale: float
    predicted_loss: float
    layers: dict[str, str]
    seconds: float
    profile_key: str = ""
    metric: str = ""
    ignore_scale_bits: bool = False
    pins: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "budget_avg_bits": self.budget_avg_bits,
            "avg_bits": self.avg_bits,
            "avg_bits_no_scale": self.avg_bits_no_scale,
            "predicted_loss": self.predicted_loss,
            "layers": dict(self.layers),
            "seconds": self.seconds,
            "profile_key": self.profile_key,
            "metric": self.metric,
            "ignore_scale_bits": self.ignore_scale_bits,
            "pins": dict(self.pins),
        }


def _result(
    problem: Problem, strategy: str, budget: float, choice: dict[str, str], t0: float
) -> Allocation:
    n = problem.total_numel
    return Allocation(
        strategy=strategy,
        budget_avg_bits=budget,
        avg_bits=sum(problem.bits[(k, o)] for k, o in choice.items()) / n,
        avg_bits_no_scale=sum(problem.bits_no_scale[(k, o)] for k, o in choice.items()) / n,
        predicted_loss=float(sum(problem.scores[(k, o)] for k, o in choice.items())),
        layers={name: choice[name] for name in problem.layers},
        seconds=time.perf_counter() - t0,
        profile_key=problem.profile_key,
        metric=problem.metric,
        ignore_scale_bits=problem.ignore_scale_bits,
        pins=dict(problem.pins),
    )


def budget_bits(problem: Problem, avg_bits: float) -> int:
    """The integer bit budget for an average: ``⌊avg · numel⌋``, exactly.

    An average within float tolerance (1e-12 relative) of a whole number of bits is that
    number, so the averages this module reports — the ends of :meth:`Problem.feasible_range`
    included — map back to the bit sums they came from. Outside the feasible range (beyond
    that tolerance) is an error naming the range.

    >>> p = Problem((), {}, {}, {"a": 3}, {}, {}, {}, (), (Unit(("a",), ("X", "Y"), (4, 8),
    ...     (1.0, 0.0)),))
    >>> budget_bits(p, 4 / 3), budget_bits(p, 8 / 3), budget_bits(p, 2.0)
    (4, 8, 6)
    """
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)):
        raise MixvizError(f"average bits must be a number, got {avg_bits!r}")
    if not math.isfinite(avg_bits):
        raise MixvizError(f"average bits must be a finite number, got {avg_bits}")
    lo, hi = problem.feasible_bits()
    exact = Fraction(avg_bits) * problem.total_numel
    nearest = round(exact)
    bits = nearest if abs(exact - nearest) <= 1e-12 * max(abs(exact), 1) else math.floor(exact)
    if bits < lo or bits > hi:
        n = problem.total_numel
        raise MixvizError(
            f"average bits {avg_bits:g} is outside the feasible range "
            f"{lo / n:.4f}–{hi / n:.4f} for these options"
        )
    return bits


# --------------------------------------------------------------------------- optimal


def allocate(problem: Problem, avg_bits: float, strategy: str = "optimal") -> Allocation:
    """Allocate at ``avg_bits`` with ``strategy`` (one of :data:`STRATEGIES`)."""
    return allocate_bits(problem, budget_bits(problem, avg_bits), strategy, avg_bits)


def allocate_bits(
    problem: Problem, budget: int, strategy: str = "optimal", avg_bits: float | None = None
) -> Allocation:
    """Allocate within ``budget`` total bits (an exact integer) with ``strategy``."""
    if strategy not in STRATEGIES:
        raise MixvizError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    t0 = time.perf_counter()
    if avg_bits is None:
        avg_bits = budget / problem.total_numel
    if strategy == "optimal":
        choice = _solve_optimal(problem, budget)
    elif strategy == "uniform":
        choice = baselines.uniform(problem, budget)
    elif strategy in ("head", "tail"):
        choice = baselines.ends(problem, budget, strategy)
    else:
        choice = baselines.llamacpp(problem, budget)
    return _result(problem, strategy, avg_bits, choice, t0)


def _solve_optimal(problem: Problem, budget: int) -> dict[str, str]:
    units = problem.units
    picked = solve_mckp([list(u.cost) for u in units], [list(u.score) for u in units], budget)
    if picked is None:
        raise MixvizError(f"no allocation fits {budget / problem.total_numel:.4f} bits")
    return _expand(units, picked)


def _expand(units, picked: list[int]) -> dict[str, str]:
    return {n: u.options[j] for u, j in zip(units, picked, strict=True) for n in u.names}


# --------------------------------------------------------------------------- frontier


def frontier(problem: Problem, n: int = 50, strategies=STRATEGIES) -> dict[str, list[dict]]:
    """Predicted loss vs achieved average bits, per strategy, over ``n`` budgets.

    Budgets a strategy cannot meet are skipped (e.g. llama.cpp's fixed rule below its bits).
    """
    lo, hi = problem.feasible_bits()
    grid = [lo + (hi - lo) * i // (n - 1) for i in range(n)] if n > 1 else [hi]
    out: dict[str, list[dict]] = {}
    for s in strategies:
        pts, seen = [], set()
        for b in grid:
            try:
                a = allocate_bits(problem, b, s)
            except MixvizError:
                continue
            key = tuple(sorted(a.layers.items())) if s != "optimal" else b
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
        out[s] = pts
    return out
