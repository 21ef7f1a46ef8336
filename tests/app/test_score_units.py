"""Numbers with a meaning: every metric says what its score is (quantity and unit), and the
Profile and Allocate pages say it beside the scores and on the axes."""

from __future__ import annotations

import json

import pytest
from apptest import TINY, open_app, profiled_tiny

from mixviz.sensitivity.metrics import METRICS, score_meaning, score_unit


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """tiny profiled through the Profile page, in this module's own cache folder."""
    yield from profiled_tiny(tmp_path_factory)


def test_every_metric_says_what_its_score_is():
    assert {"fisher", "hessian", "delta_loss", "kl"} <= set(METRICS)
    for m in METRICS.values():
        assert m.meaning and m.unit and "\n" not in m.meaning, m.name
    assert score_unit("kl") == "nats per token"  # the one in a measured KLD's unit
    assert "not a loss" in score_unit("hessian")
    assert "sequences" in score_meaning("fisher")  # summed over them: not per token


def test_profile_page_says_what_a_score_is(profiled):
    at = open_app("app_pages/profile.py", **TINY)
    assert not at.exception
    assert any(score_meaning("hessian") in c.value for c in at.caption)
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert heat["colorbar"]["title"]["text"] == f"log₁₀ hessian score<br>({score_unit('hessian')})"
    sidebar_metric = at.selectbox(key="sb_metric")
    assert all(score_meaning(m) in sidebar_metric.help for m in METRICS)


def test_allocate_page_says_what_the_predicted_loss_is(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    assert not at.exception
    (loss,) = [m for m in at.metric if m.label == "Optimal: Σ hessian score"]
    assert "sum over layers" in loss.help and score_meaning("hessian") in loss.help
    frontier = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    y = frontier["layer"][0]["encoding"]["y"]["title"]
    unit = score_unit("hessian")
    assert y == f"predicted loss: Σ over layers of the hessian score ({unit}), log scale"
