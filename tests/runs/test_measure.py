"""Measuring an allocation in memory (refine's yardstick) and the operating point it rests on."""

from __future__ import annotations

import json

import pytest
import torch
from cli import run_cli

from mixviz.allocation.problem import Problem
from mixviz.allocation.refine import RefineSettings
from mixviz.errors import MixvizError
from mixviz.models.loading import load_model
from mixviz.models.schemes import get_scheme
from mixviz.runs.evaluation.measure import (
    MeasureSettings,
    WindowKLD,
    calibration_windows,
    refine_profile,
)
from mixviz.sensitivity.operating_point import at
from mixviz.sensitivity.profile import profile_model
from mixviz.sensitivity.quantizers import LayerQuantizer


@pytest.fixture(scope="module")
def tiny(tiny_ref):
    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    return model, tok


def _all(layers, option):
    return {x.name: option for x in layers if x.block is not None}


def test_measured_kld_is_zero_unquantized_and_orders_the_formats(tiny, tiny_layers):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    measure = WindowKLD(model, calibration_windows(tok, n=4, seqlen=64))
    bf16 = measure(_all(tiny_layers, "BF16"))
    mx8 = measure(_all(tiny_layers, "MXFP8"))
    mx4 = measure(_all(tiny_layers, "MXFP4"))
    assert bf16.mean == pytest.approx(0.0, abs=1e-6)
    assert 0 < mx8.mean < mx4.mean
    assert len(mx4.windows) == 4 and mx4.se > 0
    # the model is restored after every measurement
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # a second call with the kept quantized weights gives the same number
    assert measure(_all(tiny_layers, "MXFP4")).mean == pytest.approx(mx4.mean, rel=1e-6)


def test_straight_through_point_computes_quantized_but_keeps_the_weight(tiny, tiny_layers):
    model, tok = tiny
    name = next(x.name for x in tiny_layers if x.kind == "down")
    lin = dict(model.named_modules())[name]
    scheme = get_scheme("W4A16G32")
    x = torch.randn(2, lin.in_features, requires_grad=True)
    q = LayerQuantizer(lin, scheme).weight()
    w = lin.weight.detach().clone()
    with at(model, {name: scheme}, straight_through=True):
        y = lin(x)
        assert torch.allclose(y, torch.nn.functional.linear(x, q, lin.bias), atol=1e-6)
        assert torch.equal(lin.weight, w)
    assert torch.allclose(lin(x), torch.nn.functional.linear(x, w, lin.bias))


def test_released_layer_leaves_the_point_for_a_moment(tiny, tiny_layers):
    model, _ = tiny
    name = next(x.name for x in tiny_layers if x.kind == "q")
    lin = dict(model.named_modules())[name]
    w = lin.weight.detach().clone()
    with at(model, {name: get_scheme("W2A16G32")}) as point:
        quantized = lin.weight.detach().clone()
        with point.released(name):
            assert torch.equal(lin.weight, w)
        assert torch.equal(lin.weight, quantized)
    assert torch.equal(lin.weight, w)


def test_refine_profile_is_cached_and_measures_each_round(tiny_ref, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    prof = profile_model(tiny_ref, options="MXFP4,MXFP8", nsamples=4, seqlen=64)
    problem = Problem.from_profile(prof)
    where = MeasureSettings(windows=4, seqlen=64, device="cpu", dtype="float32")
    first = refine_profile(prof, problem, RefineSettings(6.0, rounds=2), where)
    assert first.rounds[0].measured > 0 and first.measurements >= 1
    assert first.rounds[first.best].measured == min(r.measured for r in first.rounds)
    assert list((tmp_path / "refine").glob("*.json"))
    again = refine_profile(prof, problem, RefineSettings(6.0, rounds=2), where)
    assert again.rounds == first.rounds  # from the cache: same rounds, nothing measured again


def test_cli_refine_writes_the_rounds_and_the_best_layers(tmp_path):
    out = tmp_path / "refined.json"
    r = run_cli(
        "refine", "tiny", "--avg-bits", "6", "--rounds", "1", "--nsamples", "4", "--seqlen",
        "64", "--windows", "4", "--window-len", "64", "--heldout", "3", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "selection KLD" in r.stdout and "held-out KLD" in r.stdout and "stopped:" in r.stdout
    assert "95 % t interval" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "mixviz.refinement" and doc["strategy"] == "refined"
    assert set(doc["layers"].values()) <= {"MXFP4", "MXFP8"}
    assert doc["layers"] == doc["rounds"][doc["best"]]["layers"]
    for d in doc["rounds"]:  # both figures, each with its df: selection and held-out
        assert d["measured_df"] == 3 and d["heldout_df"] == 2 and d["heldout"] > 0
    assert doc["best_heldout"] == doc["rounds"][doc["best"]]["heldout"]
    # a job in the one queue: the same command again reuses the finished job, same answer
    assert "queued run" in r.stderr
    again = run_cli(
        "refine", "tiny", "--avg-bits", "6", "--rounds", "1", "--nsamples", "4", "--seqlen",
        "64", "--windows", "4", "--window-len", "64", "--heldout", "3", "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "reusing its results" in again.stderr
    assert json.loads(again.stdout) == doc


def test_heldout_windows_are_the_evaluation_texts_last(tiny):
    from mixviz.runs.evaluation.kld import windows
    from mixviz.runs.evaluation.measure import heldout_windows

    _, tok = tiny
    held = heldout_windows(tok, 3, 64)
    assert torch.equal(held, windows(tok, 64)[-3:])
    calib = calibration_windows(tok, n=4, seqlen=64)
    rows = {tuple(x.tolist()) for x in calib}
    assert not rows & {tuple(x.tolist()) for x in held}
    with pytest.raises(MixvizError, match="held-out"):
        heldout_windows(tok, 10**6, 64)


def test_cli_refine_refuses_a_bad_budget():
    r = run_cli("refine", "tiny", "--avg-bits", "3", "--windows", "4", "--window-len", "64")
    assert r.returncode == 2
    assert "bits" in r.stderr and "Traceback" not in r.stderr


def test_refine_in_context_profiles_around_each_allocation(tiny_ref, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    prof = profile_model(tiny_ref, options="MXFP4,MXFP8", nsamples=4, seqlen=64)
    problem = Problem.from_profile(prof)
    where = MeasureSettings(windows=4, seqlen=64, device="cpu", dtype="float32")
    result = refine_profile(prof, problem, RefineSettings(6.0, 1, "context"), where, rules={})
    around = list((tmp_path / "refine" / "around").glob("*.json"))
    assert len(around) == 1  # round 0's allocation, profiled around
    assert json.loads(around[0].read_text())["layers"] == result.rounds[0].layers
    made = [
        p for p in (tmp_path / "profiles").glob("*.json") if json.loads(p.read_text())["around"]
    ]
    assert len(made) == 1 and made[0].name.startswith("tiny-fisher-")
    assert result.measurements == len(result.rounds)


def test_refine_in_context_refuses_a_metric_that_cannot(tiny_ref, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    prof = profile_model(tiny_ref, options="MXFP4,MXFP8", metric="hessian", nsamples=4, seqlen=64)
    with pytest.raises(MixvizError, match="hessian cannot"):
        refine_profile(prof, Problem.from_profile(prof), RefineSettings(6.0, 1, "context"))
