"""Issue 33: refine's stop rule is a t interval (df = windows − 1), and every round is scored
on held-out windows that never take part in the selection."""

from __future__ import annotations

import pytest
from scipy import stats as sps
from test_refine import _compounding, _problem

from mixviz.allocation.refine import Measurement, RefineSettings, refine, rescale

Z = (-1.0, -1.0, 1.0, 1.0)  # four windows: df = 3, t = 3.18


def _windows(loss: float, a: float) -> Measurement:
    """Four windows ``loss·(1 + a·z)``: any paired difference ``d`` has ``|d|/se = 1/(0.577a)``."""
    w = tuple(loss * (1 + a * z) for z in Z)
    return Measurement(sum(w) / 4, 0.0, w)


def test_a_gain_of_2_5_se_over_four_windows_is_not_a_finding():
    problem = _problem(1)
    loss = _compounding(problem)
    a = 1 / (0.5773502691896258 * 2.5)  # sd(z)/√4 = 0.577: |d| / se = 2.5 exactly
    result = refine(problem, RefineSettings(6.0, rounds=5), lambda c: _windows(loss(c), a))
    # 2.5 s.e. clears 2 (the old rule) but not t₃ = 3.18: nothing beat round 0, no rescale
    assert result.best == 0 and len(result.rounds) == 1
    assert result.rounds[0].measured_df == 3
    assert result.rounds[0].half() == pytest.approx(
        sps.t.ppf(0.975, 3) * result.rounds[0].measured_se
    )


def test_the_same_problem_refines_when_the_windows_are_clear():
    problem = _problem(1)
    loss = _compounding(problem)
    result = refine(problem, RefineSettings(6.0, rounds=5), lambda c: _windows(loss(c), 0.01))
    assert result.best > 0 and result.rounds[result.best].gain_df == 3


def test_rescale_takes_the_t_quantile_of_its_df():
    assert rescale(0.25, 0.1, 0.1) == pytest.approx(2.5)  # 2.5 se: beyond z
    assert rescale(0.25, 0.1, 0.1, df=3) is None  # inside t₃ · se


def test_every_round_is_scored_on_held_out_windows_and_never_selected_on():
    problem = _problem(2)
    loss = _compounding(problem)
    seen = []

    def measure(choice):
        return _windows(loss(choice), 0.01)

    def held(choice):  # a different text: reversed preferences, to show it picks nothing
        seen.append(dict(choice))
        return _windows(100.0 - loss(choice), 0.02)

    plain = refine(problem, RefineSettings(6.0, rounds=5), measure)
    scored = refine(problem, RefineSettings(6.0, rounds=5), measure, score=held)
    assert [r.layers for r in scored.rounds] == [r.layers for r in plain.rounds]
    assert scored.best == plain.best and scored.layers == plain.layers
    assert seen == [r.layers for r in scored.rounds]  # each round once, nothing else
    for r in scored.rounds:
        assert r.heldout == pytest.approx(100.0 - loss(r.layers)) and r.heldout_df == 3
        assert r.measured == pytest.approx(loss(r.layers))
    doc = scored.to_dict()
    assert doc["best_heldout"] == scored.rounds[scored.best].heldout
    assert doc["rounds"][0]["heldout_se"] is not None and "heldout" in doc["scored_on"]
