"""Predicted KLD in nats per token: from the calibration line over runs, from one measured
anchor before, and nothing (with what would give one) without either."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from cli import run_cli

from mixviz.report.predicted_kld import (
    from_anchor,
    from_line,
    how_to_get,
    nearest_anchor,
    predict_kld,
)
from mixviz.runs.evaluation.anchor import Anchor, anchor_path, cached_anchors, measure_anchor
from mixviz.runs.evaluation.measure import MeasureSettings


def synthetic_runs(n: int, a: float = 0.002, b: float = 0.05, noise: float = 0.001, seed=0):
    rng = random.Random(seed)
    xs = [0.1 + 0.9 * i / (n - 1) for i in range(n)]
    return [{"predicted_loss": x, "kld": a + b * x + rng.gauss(0, noise)} for x in xs]


def test_the_line_predicts_with_a_prediction_interval():
    pts = synthetic_runs(12)
    got = from_line(pts, 0.5)
    truth = 0.002 + 0.05 * 0.5
    assert got.basis == "line" and got.n == 12 and got.source == "calibration line over 12 runs"
    assert got.lo <= truth <= got.hi
    assert 0.001 < got.half < 0.01  # about 2 × the noise, not 0 and not huge
    far = from_line(pts, 3.0)  # outside the runs: a wider interval
    assert far.half > got.half
    exact = from_line([{"predicted_loss": x, "kld": 0.1 * x} for x in (1.0, 2.0, 3.0)], 2.5)
    assert exact.value == pytest.approx(0.25) and exact.half == pytest.approx(0.0, abs=1e-12)


def test_the_line_needs_three_runs_with_kld_and_spread():
    pts = synthetic_runs(3)
    assert from_line(pts[:2], 0.5) is None
    assert from_line([{**p, "predicted_loss": 1.0} for p in pts], 0.5) is None
    assert from_line([*pts[:2], {"predicted_loss": 0.7, "kld": None}], 0.5) is None


def test_the_anchor_scales_by_the_score_and_says_so():
    a = Anchor(5.0, 2.0, 0.04, 0.004, 8, 512, {})
    same = from_anchor(a, 2.0)
    assert same.value == pytest.approx(0.04) and same.basis == "anchor"
    assert same.half == pytest.approx(2.3646 * 0.004, rel=1e-3)  # t(7) × se
    assert same.source == "one measured anchor at 5.00 bits (8×512 calibration tokens)"
    away = from_anchor(a, 1.0)  # scaled: its ± is the anchor's measurement, no more
    assert away.value == pytest.approx(0.02)
    assert "scaled ×0.50" in away.source and away.source.endswith("± its measurement only")
    assert predict_kld(0.0, [], [a]) is None  # nothing to scale from a Σ score of 0
    b = Anchor(4.5, 8.0, 0.15, 0.01, 8, 512, {})
    assert nearest_anchor([a, b], 6.0) is b and nearest_anchor([a, b], 2.5) is a
    assert nearest_anchor([], 1.0) is None


def test_runs_win_over_the_anchor():
    a = Anchor(5.0, 2.0, 0.04, 0.004, 8, 512, {})
    assert predict_kld(0.5, synthetic_runs(5), [a]).basis == "line"
    assert predict_kld(0.5, synthetic_runs(5)[:2], [a]).basis == "anchor"
    assert predict_kld(0.5, [], []) is None
    assert how_to_get(0, "mixviz allocate X --anchor").startswith("— no runs yet: run mixviz")


def test_an_anchor_is_measured_once_and_cached(tiny_ref, tiny_layers, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    profile = SimpleNamespace(key="tinyprof", model="tiny", model_hash=tiny_ref.hash)
    layers = {x.name: "MXFP4" for x in tiny_layers if x.block == 0}
    alloc = SimpleNamespace(layers=layers, avg_bits=4.25, predicted_loss=0.5)
    where = MeasureSettings(windows=2, seqlen=64, heldout=0)
    got = measure_anchor(profile, alloc, where)
    assert got.kld > 0 and got.kld_se >= 0 and got.windows == 2
    assert anchor_path(profile, layers, where).is_file()
    assert cached_anchors(profile) == [got]
    import mixviz.runs.evaluation.anchor as anchor_module

    monkeypatch.setattr(anchor_module, "calibration_measure", None)  # measuring again would fail
    assert measure_anchor(profile, alloc, where) == got


def test_cli_allocate_json_says_predicted_kld_and_what_it_rests_on(tmp_path):
    from mixviz.sensitivity.synthetic import synthetic_profile

    shapes = {"mlp.down_proj": (128, 64), "mlp.up_proj": (64, 128)}
    prof = synthetic_profile(shapes, 2, ["MXFP4", "MXFP8"], seed=1, model="tiny")
    path = tmp_path / "profile.json"
    prof.save(path)
    env = {"MIXVIZ_CACHE": str(tmp_path / "cache")}
    r = run_cli("allocate", str(path), "--avg-bits", "6", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["predicted_kld"] is None
    assert doc["predicted_kld_note"].startswith("— no runs yet: run this allocate command again")
    assert "--anchor" in doc["predicted_kld_note"]
    # an anchor measured earlier (as --anchor writes it) is what it then rests on
    monkey = pytest.MonkeyPatch()
    monkey.setenv("MIXVIZ_CACHE", env["MIXVIZ_CACHE"])
    try:
        a = Anchor(6.0, doc["predicted_loss"], 0.03, 0.003, 8, 512, doc["layers"])
        out = anchor_path(prof, doc["layers"])
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps(a.to_dict()))
    finally:
        monkey.undo()
    r = run_cli("allocate", str(path), "--avg-bits", "6", "--json", env=env)
    got = json.loads(r.stdout)["predicted_kld"]
    assert got["value"] == pytest.approx(0.03) and got["lo"] < 0.03 < got["hi"]
    assert got["source"] == "one measured anchor at 6.00 bits (8×512 calibration tokens)"
    assert got["unit"].startswith("nats per token")
    text = run_cli("allocate", str(path), "--avg-bits", "6", env=env).stdout
    assert "predicted KLD to the unquantized model 0.03 ± 0.0071 nats/token (one measured" in text
