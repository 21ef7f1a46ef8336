"""How far to trust the prediction: ρ with its interval, the calibration line, the rounds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mixviz.allocation.problem import Problem
from mixviz.allocation.refine import Measurement, RefineSettings, refine
from mixviz.report.trust import (
    kld_trust,
    prediction_trust,
    refinement_chart,
    refinement_points,
    run_points,
)
from mixviz.sensitivity.synthetic import synthetic_profile


def test_a_perfect_ordering_and_its_line():
    t = prediction_trust([1, 2, 3, 4, 5, 6], [0.3, 0.5, 0.7, 0.9, 1.1, 1.3])
    assert t.rho == pytest.approx(1.0) and t.n == 6
    assert t.slope == pytest.approx(0.2) and t.intercept == pytest.approx(0.1)
    assert t.slope_se == pytest.approx(0.0, abs=1e-9)


def test_a_shuffled_ordering_has_an_interval_that_spans_zero():
    t = prediction_trust([1, 2, 3, 4, 5, 6, 7, 8], [0.5, 0.1, 0.8, 0.2, 0.6, 0.3, 0.7, 0.4])
    assert abs(t.rho) < 0.5 and t.rho_lo < 0 < t.rho_hi
    assert "Spearman ρ" in t.sentence() and "8 runs" in t.sentence()


def test_too_few_or_flat_points_say_nothing():
    assert prediction_trust([1, 2], [1, 2]) is None
    assert prediction_trust([1, 2, 3], [1, 1, 1]) is None
    t = prediction_trust([1, 2, 3], [1, 2, 4])
    assert t is not None and math.isnan(t.rho_lo)  # ρ, but no interval below 4 points


def test_run_points_take_only_runs_the_profile_scores():
    prof = synthetic_profile({"mlp.down_proj": (64, 64)}, 2, ["MXFP4", "MXFP8"])
    names = [x.name for x in prof.layers]
    runs = pd.DataFrame(
        {
            "label": ["a", "b", "other"],
            "recipe": [
                {names[0]: "MXFP4", names[1]: "MXFP4"},
                {names[0]: "MXFP8", names[1]: "MXFP4"},
                {"model.layers.9.mlp.down_proj": "MXFP4"},
            ],
            "kld": [0.2, 0.1, 0.5],
            "kld_se": [0.01, 0.01, 0.01],
        }
    )
    pts = run_points(prof, runs)
    assert [p["label"] for p in pts] == ["a", "b"]
    want = prof.score(names[0], "MXFP4") + prof.score(names[1], "MXFP4")
    assert pts[0]["predicted_loss"] == pytest.approx(want)
    assert kld_trust(pts) is None  # two points: nothing to say


def test_the_rounds_are_drawn_measured_beside_predicted():
    prof = synthetic_profile({"self_attn.q_proj": (64, 64), "mlp.down_proj": (64, 128)}, 4,
                             ["MXFP4", "MXFP8"], seed=1)  # fmt: skip
    problem = Problem.from_profile(prof)

    def loss(c):
        a = sum(problem.scores[(n, o)] for n, o in c.items() if problem.kind[n] == "q")
        b = sum(problem.scores[(n, o)] for n, o in c.items() if problem.kind[n] != "q")
        return Measurement(a * (1 + a / 20) + b, 0.0)

    r = refine(problem, RefineSettings(6.0), loss)
    fig = refinement_chart(r)
    measured = next(t for t in fig.data if t.name.startswith("measured"))
    assert list(measured.y) == [x.measured for x in r.rounds]
    assert r.stopped in fig.layout.title.text
    pts = refinement_points(r)
    assert [p["predicted_loss"] for p in pts] == [x.predicted for x in r.rounds]
    # the hover gives each point's ± (its error bar), as the Results charts do
    assert [c[0] for c in measured.customdata] == [f"± {x.half():.4f}" for x in r.rounds]
    assert "%{customdata[0]}" in measured.hovertemplate

    # a round on 1 window (no interval), one with no standard error: a dash and why
    from dataclasses import replace

    one = replace(r.rounds[0], measured_se=0.0, measured_df=0, heldout=0.1, heldout_se=0.01,
                  heldout_df=15)  # fmt: skip
    none = replace(one, index=1, measured_se=None, measured_df=None, heldout_se=None)
    fig = refinement_chart(replace(r, rounds=(one, none), best=0))
    measured = next(t for t in fig.data if t.name.startswith("measured"))
    held = next(t for t in fig.data if t.name.startswith("held-out"))
    assert [c[0] for c in measured.customdata] == [
        "± — (1 window: no interval)",
        "± — (no standard error recorded)",
    ]
    want = [f"± {one.half('heldout'):.4f}", "± — (no standard error recorded)"]
    assert list(held.customdata) == want


def test_one_point_per_distinct_recipe():
    """A quantize job and the run it came from share a recipe: one point, both labels, the
    measurement that rests on more tokens (two points counted that recipe twice in ρ)."""
    prof = synthetic_profile({"mlp.down_proj": (64, 64)}, 2, ["MXFP4", "MXFP8"])
    names = [x.name for x in prof.layers]
    same = {names[0]: "MXFP4", names[1]: "MXFP8"}
    runs = pd.DataFrame(
        {
            "label": ["optimal @5", "quantize auto_round (optimal @5)", "b"],
            "recipe": [same, dict(same), {names[0]: "MXFP8", names[1]: "MXFP8"}],
            "kld": [0.2, 0.25, 0.1],
            "kld_se": [0.01, 0.02, 0.01],
            "tokens": [2044.0, 511.0, 2044.0],
        }
    )
    pts = run_points(prof, runs)
    assert [p["label"] for p in pts] == ["optimal @5 = quantize auto_round (optimal @5)", "b"]
    assert pts[0]["kld"] == 0.2 and "_weight" not in pts[0]


def test_rho_always_says_its_interval_or_why_not():
    from mixviz.report.charts import loss_vs_accuracy

    frame = pd.DataFrame(
        {"label": ["a", "b", "c"], "predicted_loss": [1.0, 2.0, 3.0], "kld": [0.1, 0.2, 0.3]}
    )
    title = loss_vs_accuracy(frame, 1.0, y="kld", ci=(math.nan, math.nan)).layout.title.text
    assert title.endswith(
        "ρ = 1.000 [no interval: under 4 runs] (3 runs; few runs: the interval is wide)"
    )
