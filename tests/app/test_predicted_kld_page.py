"""The Allocate page shows the predicted KLD to the unquantized model ± its interval and what
it rests on: nothing yet (and how to get it), then one measured anchor."""

from __future__ import annotations

import re

import pytest
from apptest import TINY, open_app, profiled_tiny

from mixviz.sensitivity.metrics import score_meaning

LABEL = "Optimal: predicted KLD to the unquantized model"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    yield from profiled_tiny(tmp_path_factory)


def test_predicted_kld_from_nothing_then_from_a_measured_anchor(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    assert not at.exception
    (kld,) = [m for m in at.metric if m.label == LABEL]
    assert kld.value == "—" and "nats" in kld.help
    assert any(c.value.startswith("— no runs yet: run") for c in at.caption)
    (score,) = [m for m in at.metric if m.label == "Optimal: Σ hessian score"]
    assert score_meaning("hessian") in score.help  # the Σ score keeps what it is
    at.button(key="allocate_anchor").click().run(timeout=600)
    assert not at.exception, at.exception
    (kld,) = [m for m in at.metric if m.label == LABEL]
    assert re.fullmatch(r"\d[\d.e-]* ± \d[\d.e-]*", kld.value), kld.value
    assert any(
        re.search(r"from the one measured anchor at \d\.\d\d bits \(8×512 calibration", c.value)
        for c in at.caption
    )
    again = open_app("app_pages/allocate.py", **{**TINY, "bits": "6"})  # cached: no button
    assert [m.value for m in again.metric if m.label == LABEL] == [kld.value]
    assert not [b for b in again.button if b.key == "allocate_anchor"]
