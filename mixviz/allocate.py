"""Bit allocation under an average-bits budget: the exact solver and the study's baselines.

The problem is a multiple-choice knapsack: pick one option per *unit* (a layer, or a group of
layers that must share a format such as q/k/v) to minimise the summed sensitivity score with
total bits ≤ budget. ``optimal`` solves it exactly in integer bits (:func:`solve_mckp`:
convex-hull LP bound, Lagrangian reduction, then a dynamic program over what is left) in
milliseconds; HiGHS through ``scipy.optimize.milp`` (:func:`solve_milp`) is kept as an
independent reference.

Baselines (never above the budget): ``head`` (whole blocks nearest lm_head at the highest
option), ``tail`` (blocks nearest the embedding), ``uniform`` (one option everywhere, the
largest that fits), ``llamacpp`` (llama.cpp's Q4_K_M rule for attn_v and ffn_down).

>>> problem = Problem.from_profile(profile)                       # doctest: +SKIP
>>> allocate(problem, 5.0).avg_bits <= 5.0                        # doctest: +SKIP
True
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from mixviz.errors import MixvizError
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

    def feasible_range(self) -> tuple[float, float]:
        """The lowest and highest average bits any allocation can reach."""
        lo = sum(min(u.cost) for u in self.units) / self.total_numel
        hi = sum(max(u.cost) for u in self.units) / self.total_numel
        return lo, hi

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
        return cls._build(
            layers,
            options,
            bits,
            nos,
            scores,
            ignore_scale_bits,
            shared,
            pins or {},
            profile.key,
            profile.metric,
        )

    @classmethod
    def _build(
        cls,
        layers,
        options,
        bits,
        nos,
        scores,
        ignore_scale_bits,
        shared,
        pins,
        profile_key,
        metric,
    ) -> Problem:
        names = [x.name for x in layers]
        by_name = {x.name: x for x in layers}
        pins = {k: get_scheme(v).name for k, v in pins.items()}
        for name, opt in pins.items():
            if name not in by_name:
                raise MixvizError(f"pinned layer {name!r} is not among the allocated layers")
            if opt not in options and opt != "BF16":
                raise MixvizError(
                    f"pin {name}={opt}: {opt} is not among the profile's options "
                    f"({', '.join(options)}) or BF16"
                )
            if opt == "BF16" and (name, "BF16") not in bits:
                x = by_name[name]
                b = layer_bits(SCHEMES["BF16"], x.in_features, x.out_features)
                bits[(name, "BF16")] = nos[(name, "BF16")] = b
                scores[(name, "BF16")] = 0.0
        units = []
        for group in _groups(layers, shared or []):
            group_pins = {pins[n] for n in group if n in pins}
            if len(group_pins) > 1:
                raise MixvizError(f"conflicting pins inside the shared group {', '.join(group)}")
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
            profile_key,
            metric,
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


def _budget_bits(problem: Problem, avg_bits: float) -> int:
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)):
        raise MixvizError(f"average bits must be a number, got {avg_bits!r}")
    if not math.isfinite(avg_bits):
        raise MixvizError(f"average bits must be a finite number, got {avg_bits}")
    lo, hi = problem.feasible_range()
    if avg_bits < lo - 1e-12 or avg_bits > hi + 1e-9:
        raise MixvizError(
            f"average bits {avg_bits:g} is outside the feasible range "
            f"{lo:.4f}–{hi:.4f} for these options"
        )
    return math.floor(avg_bits * problem.total_numel + 1e-6)


# --------------------------------------------------------------------------- optimal


def allocate(problem: Problem, avg_bits: float, strategy: str = "optimal") -> Allocation:
    """Allocate at ``avg_bits`` with ``strategy`` (one of :data:`STRATEGIES`)."""
    if strategy not in STRATEGIES:
        raise MixvizError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    t0 = time.perf_counter()
    budget = _budget_bits(problem, avg_bits)
    if strategy == "optimal":
        choice = _solve_optimal(problem, budget)
    elif strategy == "uniform":
        choice = _uniform(problem, budget)
    elif strategy in ("head", "tail"):
        choice = _ends(problem, budget, strategy)
    else:
        choice = _llamacpp(problem, budget)
    return _result(problem, strategy, avg_bits, choice, t0)


def _pareto(unit: Unit) -> list[int]:
    """Indices of the options no other option beats on both cost and score."""
    keep, best = [], math.inf
    for i in sorted(range(len(unit.cost)), key=lambda i: (unit.cost[i], unit.score[i])):
        if unit.score[i] < best:
            keep.append(i)
            best = unit.score[i]
    return keep


def _solve_optimal(problem: Problem, budget: int) -> dict[str, str]:
    units = problem.units
    keep = [_pareto(u) for u in units]
    cost = [[units[i].cost[j] for j in k] for i, k in enumerate(keep)]
    score = [[units[i].score[j] for j in k] for i, k in enumerate(keep)]
    picked = solve_mckp(cost, score, budget)
    if picked is None:
        raise MixvizError(f"no allocation fits {budget / problem.total_numel:.4f} bits")
    return _expand(units, [keep[i][j] for i, j in enumerate(picked)])


def solve_mckp(cost: list[list[int]], score: list[list[float]], budget: int) -> list[int] | None:
    """Exact multiple-choice knapsack: one option per unit, Σ cost ≤ budget, min Σ score.

    Each unit's options must be Pareto-sorted (cost ascending, score strictly descending).
    1. LP relaxation by the convex-hull greedy → multiplier λ, lower bound L, and a greedy
       integer solution (upper bound U).
    2. Lagrangian reduction: any solution scores ≥ L + Σ_u rc_u, with
       ``rc_u(j) = score + λ·cost − min_k(score + λ·cost)``; options with rc > U − L go.
    3. Exact DP over integer costs on what is left, pruning states whose reduced costs
       already exceed U − L. Returns the chosen index per unit, or None if nothing fits.

    >>> solve_mckp([[1, 2], [1, 3]], [[5.0, 1.0], [4.0, 0.0]], 4)
    [0, 1]
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


def _expand(units, picked: list[int]) -> dict[str, str]:
    return {n: u.options[j] for u, j in zip(units, picked, strict=True) for n in u.names}


# --------------------------------------------------------------------------- baselines


def _fits(problem: Problem, choice: dict[str, str], budget: int) -> bool:
    return sum(problem.cost(n, o) for n, o in choice.items()) <= budget


def _pinned(problem: Problem) -> dict[str, str]:
    return {n: u.options[0] for u in problem.units if u.pinned for n in u.names}


def _available(problem: Problem, name: str, option: str) -> bool:
    return problem.scores.get((name, option)) is not None


def _fill(problem: Problem, option: str, fallback: str | None = None) -> dict[str, str]:
    """Every unpinned layer at ``option`` (layers it cannot serve at the nearest lower one)."""
    out = _pinned(problem)
    order = list(problem.options)
    for name in problem.layers:
        if name in out:
            continue
        i = order.index(option)
        while i > 0 and not _available(problem, name, order[i]):
            i -= 1
        while i < len(order) - 1 and not _available(problem, name, order[i]):
            i += 1
        out[name] = order[i]
    return out


def _uniform(problem: Problem, budget: int) -> dict[str, str]:
    for option in reversed(problem.options):
        choice = _fill(problem, option)
        if _fits(problem, choice, budget):
            return choice
    raise MixvizError("no single option fits this budget")


def _ends(problem: Problem, budget: int, which: str) -> dict[str, str]:
    """``head``: blocks nearest lm_head high; ``tail``: blocks nearest the embedding high."""
    low, high = problem.options[0], problem.options[-1]
    blocks = sorted({b for b in problem.block.values() if b is not None})
    order = [None, *reversed(blocks)] if which == "head" else [*blocks, None]
    choice = _fill(problem, low)
    if not _fits(problem, choice, budget):
        raise MixvizError(f"even {low} everywhere does not fit this budget")
    pinned = _pinned(problem)
    for b in order:
        members = [n for n in problem.layers if problem.block[n] == b and n not in pinned]
        if not members:
            continue
        trial = dict(choice)
        trial.update({n: high for n in members if _available(problem, n, high)})
        if not _fits(problem, trial, budget):
            break
        choice = trial
    return choice


def llamacpp_more_bits(block: int, n_blocks: int) -> bool:
    """llama.cpp's ``use_more_bits``: first and last eighth of the blocks, every third between.

    >>> [b for b in range(16) if llamacpp_more_bits(b, 16)]
    [0, 1, 4, 7, 10, 13, 14, 15]
    """
    eighth = n_blocks // 8
    return block < eighth or block >= 7 * n_blocks // 8 or (block - eighth) % 3 == 2


def _llamacpp(problem: Problem, budget: int) -> dict[str, str]:
    """Q4_K_M: attn_v and ffn_down at the higher option where ``use_more_bits``; rest low."""
    low, high = problem.options[0], problem.options[-1]
    n_blocks = len({b for b in problem.block.values() if b is not None})
    choice = _fill(problem, low)
    pinned = _pinned(problem)
    for n in problem.layers:
        b = problem.block[n]
        if n in pinned or b is None or problem.kind[n] not in ("v", "down"):
            continue
        if llamacpp_more_bits(b, n_blocks) and _available(problem, n, high):
            choice[n] = high
    if not _fits(problem, choice, budget):
        need = sum(problem.cost(n, o) for n, o in choice.items()) / problem.total_numel
        raise MixvizError(
            f"the llama.cpp Q4_K_M rule needs {need:.4f} average bits, above this budget"
        )
    return choice


# --------------------------------------------------------------------------- frontier


def frontier(problem: Problem, n: int = 50, strategies=STRATEGIES) -> dict[str, list[dict]]:
    """Predicted loss vs achieved average bits, per strategy, over ``n`` budgets.

    Budgets a strategy cannot meet are skipped (e.g. llama.cpp's fixed rule below its bits).
    """
    lo, hi = problem.feasible_range()
    grid = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [hi]
    out: dict[str, list[dict]] = {}
    for s in strategies:
        pts, seen = [], set()
        for b in grid:
            try:
                a = allocate(problem, b, s)
            except MixvizError:
                continue
            key = tuple(sorted(a.layers.items())) if s != "optimal" else b
            if key in seen:
                continue
            seen.add(key)
            pts.append(
                {
                    "budget": b,
                    "avg_bits": a.avg_bits,
                    "avg_bits_no_scale": a.avg_bits_no_scale,
                    "predicted_loss": a.predicted_loss,
                }
            )
        out[s] = pts
    return out
