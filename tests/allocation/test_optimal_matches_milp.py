"""The optimal allocation against an exact reference written here: HiGHS (scipy.optimize.milp)
on a per-layer formulation built straight from the profile rows.

The path under test is mixviz's whole one — ``Problem.from_profile`` (shared groups, pins,
BF16 pins), Pareto filtering, ``budget_bits``, ``solve_mckp`` and the expansion of units back to
layers. The reference knows none of it: one binary ``x[layer, option]`` per profile row with a
score, exactly one option per layer, every layer of a shared group (q/k/v, gate/up of one
block) on the same option, pinned layers fixed, ``Σ bits·x ≤ ⌊avg · numel⌋``. Costs are real
(Qwen3-32B shapes, scale and zero-point bits counted); scores are synthetic with per-row noise
so that the MX formats are not always dominated. ``tests/milp.py`` (HiGHS on the units) is not
used.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import allocate
from mixviz.errors import MixvizError
from mixviz.sensitivity.profile import Profile, Row
from mixviz.sensitivity.synthetic import QWEN3_32B_SHAPES, synthetic_profile

OPTIONS = ["W2A16", "W3A16", "W4A16", "W8A16", "MXFP4", "MXFP8"]
SHARED = ["qkv", "gate_up"]


# --------------------------------------------------------------------------- instances


def _profile(seed: int, n_blocks: int, options: list[str]) -> Profile:
    """Qwen3-32B-shaped synthetic profile, each row's score jittered (log-normal, σ 0.4)."""
    base = synthetic_profile(QWEN3_32B_SHAPES, n_blocks, options, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    rows = tuple(
        Row(r.layer, r.option, r.bits, r.bits_no_scale, r.score * float(rng.lognormal(0, 0.4)))
        for r in base.rows
    )
    return Profile(
        base.model,
        base.model_hash,
        base.metric,
        base.options,
        base.calib,
        base.seconds,
        base.layers,
        rows,
        {},
        None,
    )


def _group_of(name: str) -> str | None:
    """The fused group a layer belongs to, from its name alone (block-relative)."""
    leaf = name.rsplit(".", 1)[-1]
    fused = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv"}
    return fused.get(leaf) or ("gate_up" if leaf in ("gate_proj", "up_proj") else None)


def _groups(profile: Profile) -> list[list[str]]:
    """Layers that must share an option: q/k/v and gate/up within one block."""
    out: dict[tuple, list[str]] = {}
    for x in profile.layers:
        block = int(x.name.split(".")[2])
        g = _group_of(x.name)
        out.setdefault((block, g) if g else ("own", x.name), []).append(x.name)
    return list(out.values())


def _random_pins(profile: Profile, rng: np.random.Generator) -> dict[str, str]:
    """A random set of pins: each unit pinned with probability ~0.2, to one of the options or
    BF16. A shared group's pin goes on a random non-empty subset of its layers (same option);
    a BF16 pin on a shared group names every layer of the group (one member alone: below).
    """
    pins: dict[str, str] = {}
    for group in _groups(profile):
        if rng.random() > 0.2:
            continue
        option = str(rng.choice([*profile.options, "BF16"]))
        if option == "BF16" or len(group) == 1:
            chosen = group
        else:
            k = int(rng.integers(1, len(group) + 1))
            chosen = [str(n) for n in rng.choice(group, size=k, replace=False)]
        pins.update({n: option for n in chosen})
    return pins


# --------------------------------------------------------------------------- the reference


class Reference:
    """The allocation problem as a 0/1 program, built from the profile rows alone."""

    def __init__(self, profile: Profile, pins: dict[str, str]):
        shapes = {x.name: (x.in_features, x.out_features) for x in profile.layers}
        self.numel = sum(i * o for i, o in shapes.values())
        self.cost: dict[tuple[str, str], int] = {}
        self.score: dict[tuple[str, str], float] = {}
        for r in profile.rows:
            if r.score is not None:
                self.cost[(r.layer, r.option)] = r.bits
                self.score[(r.layer, r.option)] = r.score
        for name, option in pins.items():
            if option == "BF16":  # unquantized: 16 bits a weight, no loss
                i, o = shapes[name]
                self.cost[(name, "BF16")] = 16 * i * o
                self.score[(name, "BF16")] = 0.0
        self.layers = [x.name for x in profile.layers]
        self.groups = _groups(profile)
        self.pins = pins
        self.cols = [(n, o) for n in self.layers for o in [*profile.options, "BF16"]]
        self.cols = [c for c in self.cols if c in self.cost]

    def allowed(self, name: str, option: str) -> bool:
        """Whether a layer may take an option: its own pin or any pin in its group binds it."""
        for g in self.groups:
            if name in g:
                pinned = {self.pins[n] for n in g if n in self.pins}
                return not pinned or option in pinned
        raise AssertionError(name)

    def extreme_bits(self) -> tuple[int, int]:
        """Least and most total bits over feasible choices (group-wise enumeration)."""
        lo = hi = 0
        for g in self.groups:
            sums = [
                sum(self.cost[(n, o)] for n in g)
                for o in {o for _, o in self.cols}
                if all((n, o) in self.cost and self.allowed(n, o) for n in g)
            ]
            lo, hi = lo + min(sums), hi + max(sums)
        return lo, hi

    def solve(self, budget: int) -> tuple[float, dict[str, str]]:
        """HiGHS optimum: (objective, layer → option). Raises if infeasible."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        index = {c: j for j, c in enumerate(self.cols)}
        n = len(self.cols)
        rows, lo, hi = [], [], []
        for name in self.layers:  # exactly one option per layer
            a = np.zeros(n)
            for o in {o for nn, o in self.cols if nn == name}:
                a[index[(name, o)]] = 1
            rows.append(a)
            lo.append(1)
            hi.append(1)
        for g in self.groups:  # a shared group moves together
            for other in g[1:]:
                for o in {o for _, o in self.cols}:
                    a = np.zeros(n)
                    if (g[0], o) in index:
                        a[index[(g[0], o)]] = 1
                    if (other, o) in index:
                        a[index[(other, o)]] = -1
                    if a.any():
                        rows.append(a)
                        lo.append(0)
                        hi.append(0)
        upper = np.ones(n)
        for j, (name, o) in enumerate(self.cols):  # pins (on the layer or in its group)
            if not self.allowed(name, o):
                upper[j] = 0
        # Σ bits ≤ budget, divided by the gcd of all costs so HiGHS sees small integers:
        # the left side is then an integer, so rounding the right side down is exact.
        cost = [self.cost[c] for c in self.cols]
        g = math.gcd(*cost)
        rows.append(np.array([c // g for c in cost], dtype=float))
        lo.append(-np.inf)
        hi.append(budget // g)
        res = milp(
            np.array([self.score[c] for c in self.cols]),
            integrality=np.ones(n),
            bounds=Bounds(np.zeros(n), upper),
            constraints=[LinearConstraint(np.array(rows), lo, hi)],
            options={"mip_rel_gap": 0.0},
        )
        assert res.status == 0, res.message
        choice = {self.cols[j][0]: self.cols[j][1] for j in np.flatnonzero(res.x > 0.5)}
        assert len(choice) == len(self.layers)
        self.check(choice, budget)  # the reference's own answer is exactly feasible
        return self.objective(choice), choice

    def objective(self, choice: dict[str, str]) -> float:
        return math.fsum(self.score[(n, o)] for n, o in choice.items())

    def bits(self, choice: dict[str, str]) -> int:
        return sum(self.cost[(n, o)] for n, o in choice.items())

    def check(self, choice: dict[str, str], budget: int) -> None:
        """A choice is feasible: every layer, its pin, its group together, within budget."""
        assert set(choice) == set(self.layers)
        for name, option in self.pins.items():
            assert choice[name] == option, (name, choice[name], option)
        for g in self.groups:
            assert len({choice[n] for n in g}) == 1, {n: choice[n] for n in g}
        for name, option in choice.items():
            assert (name, option) in self.cost, (name, option)
            assert self.allowed(name, option), (name, option)
        assert self.bits(choice) <= budget, (self.bits(choice), budget)


def _budget(avg: float, numel: int) -> int:
    """``⌊avg · numel⌋``, except that an average within 1e-12 (relative) of a whole number
    of bits is that number (the documented rule that makes range ends map back exactly)."""
    exact = Fraction(avg) * numel
    nearest = round(exact)
    return nearest if abs(exact - nearest) <= 1e-12 * max(abs(exact), 1) else math.floor(exact)


# --------------------------------------------------------------------------- the tests


def _check_instance(profile: Profile, pins: dict[str, str], avg: float) -> None:
    ref = Reference(profile, pins)
    budget = _budget(avg, ref.numel)
    problem = Problem.from_profile(profile, ignore_scale_bits=False, shared=SHARED, pins=pins)
    assert problem.total_numel == ref.numel
    got = allocate(problem, avg)
    ref.check(got.layers, budget)
    want, _ = ref.solve(budget)
    mine = ref.objective(got.layers)
    assert mine == pytest.approx(want, rel=1e-9, abs=0), (avg, pins)
    assert got.predicted_loss == pytest.approx(mine, rel=1e-12)
    assert got.avg_bits == pytest.approx(ref.bits(got.layers) / ref.numel, rel=1e-15)
    assert got.layers == {n: got.layers[n] for n in ref.layers}  # every layer, in order


def _mixviz_range(profile: Profile, pins: dict[str, str]) -> tuple[int, int]:
    return Problem.from_profile(profile, shared=SHARED, pins=pins).feasible_bits()


@pytest.mark.parametrize("seed", range(8))
def test_optimal_matches_exact_milp_on_random_instances(seed):
    """Per seed: a profile (6–8 blocks, a random subset of the options), random pins, and
    five budgets drawn uniformly from the feasible range (as the reference computes it)."""
    rng = np.random.default_rng(seed)
    n_blocks = int(rng.integers(6, 9))
    k = int(rng.integers(3, len(OPTIONS) + 1))
    options = [str(o) for o in rng.choice(OPTIONS, size=k, replace=False)]
    profile = _profile(seed, n_blocks, options)
    pins = _random_pins(profile, rng) if seed % 4 else {}
    ref = Reference(profile, pins)
    lo, hi = ref.extreme_bits()
    assert _mixviz_range(profile, pins) == (lo, hi)
    for _ in range(5):
        avg = float(rng.uniform(lo / ref.numel, hi / ref.numel))
        _check_instance(profile, pins, avg)


@pytest.mark.parametrize("seed", [11, 12])
def test_optimal_matches_exact_milp_at_the_ends_of_the_range(seed):
    """The averages at the ends of the feasible range, and one just above the least, map
    back to the exact bit sums and the exact optimum there."""
    rng = np.random.default_rng(seed)
    profile = _profile(seed, 6, OPTIONS)
    pins = _random_pins(profile, rng)
    ref = Reference(profile, pins)
    lo, hi = ref.extreme_bits()
    for avg in (lo / ref.numel, hi / ref.numel, (lo + 1e7) / ref.numel):
        _check_instance(profile, pins, avg)


def test_optimal_with_every_pin_kind_in_one_instance():
    """Pins on a lone layer, on one layer of a shared group (its group follows), BF16 on a
    lone layer and BF16 on a whole group, at a budget in the middle of the range."""
    profile = _profile(5, 6, OPTIONS)
    pins = {
        "model.layers.0.self_attn.o_proj": "W2A16",
        "model.layers.1.self_attn.k_proj": "MXFP8",
        "model.layers.2.mlp.up_proj": "W3A16",
        "model.layers.3.mlp.down_proj": "BF16",
        "model.layers.4.mlp.gate_proj": "BF16",
        "model.layers.4.mlp.up_proj": "BF16",
    }
    ref = Reference(profile, pins)
    lo, hi = ref.extreme_bits()
    for t in (0.1, 0.5, 0.9):
        _check_instance(profile, pins, (lo + t * (hi - lo)) / ref.numel)


def test_budget_outside_the_reference_range_is_refused():
    profile = _profile(3, 6, ["W2A16", "W4A16", "MXFP8"])
    ref = Reference(profile, {})
    lo, hi = ref.extreme_bits()
    problem = Problem.from_profile(profile, shared=SHARED)
    for avg in ((lo - 1e6) / ref.numel, (hi + 1e6) / ref.numel):
        with pytest.raises(MixvizError, match="outside the feasible range"):
            allocate(problem, avg)


def test_bf16_pin_on_one_layer_of_a_shared_group():
    """The reference puts the whole q/k/v group at BF16, as it does for a quantized pin."""
    profile = _profile(7, 6, OPTIONS)
    pins = {"model.layers.2.self_attn.q_proj": "BF16"}
    # the reference is told the whole group's pin (it needs BF16 costs for k and v too)
    ref = Reference(profile, {f"model.layers.2.self_attn.{n}_proj": "BF16" for n in "qkv"})
    lo, hi = ref.extreme_bits()
    avg = (lo + hi) / 2 / ref.numel
    problem = Problem.from_profile(profile, shared=SHARED, pins=pins)
    got = allocate(problem, avg)
    budget = _budget(avg, ref.numel)
    ref.check(got.layers, budget)
    assert ref.objective(got.layers) == pytest.approx(ref.solve(budget)[0], rel=1e-9)
