"""Refinement of the additive model from measured losses, on synthetic problems whose true,
non-additive loss is known (so the true optimum is found by enumeration)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from mixviz.allocation.problem import Problem, budget_bits
from mixviz.allocation.refine import (
    Measurement,
    RefineSettings,
    groups_of,
    moved,
    predicted,
    refine,
    rescale,
    scaled,
)
from mixviz.allocation.strategies import allocate
from mixviz.errors import MixvizError
from mixviz.sensitivity.synthetic import synthetic_profile

SHAPES = {"self_attn.q_proj": (64, 64), "mlp.down_proj": (64, 128)}


def _problem(seed: int, **kw) -> Problem:
    return Problem.from_profile(synthetic_profile(SHAPES, 4, ["MXFP4", "MXFP8"], seed=seed), **kw)


def _compounding(problem: Problem):
    """Attention errors compound with each other (A + A²/20), the MLP's add up (B)."""

    def loss(choice: dict[str, str]) -> float:
        a = sum(problem.scores[(n, o)] for n, o in choice.items() if problem.kind[n] == "q")
        b = sum(problem.scores[(n, o)] for n, o in choice.items() if problem.kind[n] != "q")
        return a * (1 + a / 20.0) + b

    return loss


def _true_optimum(problem: Problem, avg_bits: float, loss) -> dict[str, str]:
    budget = budget_bits(problem, avg_bits)
    best = None
    for combo in itertools.product(problem.options, repeat=len(problem.layers)):
        choice = dict(zip(problem.layers, combo, strict=True))
        if sum(problem.bits[(n, o)] for n, o in choice.items()) > budget:
            continue
        if best is None or loss(choice) < loss(best):
            best = choice
    return best


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_refine_finds_the_true_optimum_the_additive_model_misses(seed):
    problem = _problem(seed)
    loss = _compounding(problem)
    truth = _true_optimum(problem, 6.0, loss)
    additive = allocate(problem, 6.0).layers
    assert loss(additive) > loss(truth) * 1.05  # the additive answer is clearly worse

    result = refine(problem, RefineSettings(6.0, rounds=5), lambda c: Measurement(loss(c), 0.0))

    assert result.layers == truth
    assert result.rounds[result.best].measured == pytest.approx(loss(truth))
    assert result.rounds[0].layers == additive
    # every round's allocation stays within the budget
    budget = budget_bits(problem, 6.0)
    for r in result.rounds:
        assert sum(problem.bits[(n, o)] for n, o in r.layers.items()) <= budget


@pytest.mark.parametrize("seed", [0, 3])
def test_refine_keeps_an_additive_optimum_that_is_already_true(seed):
    problem = _problem(seed)
    loss = _compounding(problem)
    assert allocate(problem, 6.0).layers == _true_optimum(problem, 6.0, loss)
    result = refine(problem, RefineSettings(6.0), lambda c: Measurement(loss(c), 0.0))
    assert result.layers == allocate(problem, 6.0).layers
    assert "same allocation" in result.stopped


def test_corrected_prediction_is_in_the_measured_units():
    problem = _problem(1)
    loss = _compounding(problem)
    result = refine(problem, RefineSettings(6.0, rounds=1), lambda c: Measurement(loss(c), 0.0))
    first = result.rounds[0]
    assert first.corrected == pytest.approx(first.measured)  # one global factor at round 0
    assert first.predicted == pytest.approx(predicted(problem, first.layers))


def test_a_round_inside_the_noise_stops_refining_and_the_best_is_kept():
    problem = _problem(1)
    loss = _compounding(problem)
    rng = random.Random(0)

    def measure(choice):  # windows so noisy that no paired difference is significant
        w = tuple(loss(choice) + rng.gauss(0.0, 1e4) for _ in range(8))
        return Measurement(sum(w) / 8, 1e4 / 8**0.5, w)

    result = refine(problem, RefineSettings(6.0, rounds=5), measure)
    assert result.best == 0  # nothing measured beat the first allocation beyond its interval
    assert result.layers == allocate(problem, 6.0).layers


def test_paired_difference_uses_the_windows():
    a = Measurement(2.0, 1.0, (1.0, 2.0, 3.0))
    b = Measurement(1.0, 1.0, (0.0, 1.0, 2.0))
    assert a.minus(b) == (1.0, 0.0)  # the same shift in every window: no spread
    assert Measurement(2.0, 0.3).minus(Measurement(1.0, 0.4)) == pytest.approx((1.0, 0.5))


def test_rescale_ignores_moves_inside_the_noise_and_caps_each_step():
    assert rescale(0.3, 0.1, 0.0) == pytest.approx(3.0)
    assert rescale(0.001, 0.1, 0.01) is None  # inside 2 s.e.
    assert rescale(-0.3, 0.1, 0.0) is None  # opposite signs say nothing
    assert rescale(1000.0, 0.1, 0.0) == 8.0


def test_groups_follow_units_and_skip_pins():
    problem = _problem(0, shared=["qkv"], pins={"model.layers.0.mlp.down_proj": "MXFP8"})
    groups = groups_of(problem, "kind")
    assert set(groups) == {"q", "down"}
    pinned = [i for i, u in enumerate(problem.units) if u.pinned]
    assert pinned and not set(pinned) & set(groups["down"])
    by_block = groups_of(problem, "block")
    assert set(by_block) == {f"block {b}" for b in range(4)}
    with pytest.raises(MixvizError, match="grouping"):
        groups_of(problem, "layer")


def test_moved_raises_a_group_then_lowers_it():
    problem = _problem(0)
    low = {n: "MXFP4" for n in problem.layers}
    down = groups_of(problem)["down"]
    up = moved(problem, low, down)
    assert {o for n, o in up.items() if problem.kind[n] == "down"} == {"MXFP8"}
    assert {o for n, o in up.items() if problem.kind[n] == "q"} == {"MXFP4"}
    assert moved(problem, up, down) == low


def test_scaled_multiplies_a_groups_scores_and_units():
    problem = _problem(0)
    groups = groups_of(problem)
    twice = scaled(problem, {"down": 2.0, "q": 1.0}, groups)
    name = "model.layers.1.mlp.down_proj"
    assert twice.scores[(name, "MXFP4")] == pytest.approx(2 * problem.scores[(name, "MXFP4")])
    q = "model.layers.1.self_attn.q_proj"
    assert twice.scores[(q, "MXFP4")] == problem.scores[(q, "MXFP4")]


def test_settings_refuse_nonsense():
    with pytest.raises(MixvizError, match="rounds"):
        RefineSettings(5.0, rounds=0)
    with pytest.raises(MixvizError, match="grouping"):
        RefineSettings(5.0, grouping="nope")


def _around(problem: Problem, loss):
    """``reprofile``: each layer's score at the operating point, measured on the true loss —
    what moving it alone from its highest option to each option costs there."""

    def reprofile(choice: dict[str, str]) -> Problem:
        scores = {}
        for n in problem.layers:
            top = loss({**choice, n: problem.options[-1]})
            for o in problem.options:
                scores[(n, o)] = loss({**choice, n: o}) - top
        units = tuple(
            replace(u, score=tuple(sum(scores[(n, o)] for n in u.names) for o in u.options))
            for u in problem.units
        )
        return replace(problem, scores=scores, units=units)

    return reprofile


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_refining_in_context_finds_the_true_optimum(seed):
    problem = _problem(seed)
    loss = _compounding(problem)
    truth = _true_optimum(problem, 6.0, loss)
    result = refine(
        problem,
        RefineSettings(6.0, rounds=5, grouping="context"),
        lambda c: Measurement(loss(c), 0.0),
        reprofile=_around(problem, loss),
    )
    assert result.layers == truth
    assert result.measurements == len(result.rounds)  # one measurement a round, no probes


def test_refining_in_context_needs_a_way_to_profile():
    with pytest.raises(MixvizError, match="profile around"):
        refine(_problem(0), RefineSettings(6.0, grouping="context"), lambda c: None)


def test_round_zero_in_context_is_also_in_the_measured_units():
    problem = _problem(1)
    loss = _compounding(problem)
    result = refine(
        problem,
        RefineSettings(6.0, rounds=1, grouping="context"),
        lambda c: Measurement(loss(c), 0.0),
        reprofile=_around(problem, loss),
    )
    assert result.rounds[0].corrected == pytest.approx(result.rounds[0].measured)
