"""Issue 32: KLD, perplexity and top-1 on llama.cpp's positions (``--score-from half``: the second
half of each window, as ``llama-perplexity --kl-divergence`` scores), recorded with the result,
part of the run's key only when asked for, and never paired unmarked with all positions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli import run_cli
from test_kld_exact import _noisy

from mixviz import MixvizError
from mixviz.models.loading import load_model, resolve_model
from mixviz.runs.evaluation import kld
from mixviz.runs.runspec import RunSpec


@pytest.fixture(scope="module")
def tiny_scores():
    model, tok = load_model(resolve_model("tiny"))
    noisy, tokens = _noisy(model), kld.windows(tok, seqlen=64)[:6]
    return model, noisy, tokens, kld.score(noisy, kld.compute_reference(model, tokens))


def test_half_is_the_second_half_of_each_window_by_hand(tiny_scores):
    model, noisy, tokens, scores = tiny_scores
    half = dict((m, v) for m, v, _ in kld.summarize(kld.scored_from(scores, "half")))
    every = dict((m, v) for m, v, _ in kld.summarize(kld.scored_from(scores, "all")))
    # by hand: logits at positions n/2 … n−2 of each 64-token window, each predicting the next
    with torch.no_grad():
        logp = F.log_softmax(model(tokens).logits.float(), -1)[:, 32:63]
        logq = F.log_softmax(noisy(tokens).logits.float(), -1)[:, 32:63]
    target = tokens[:, 33:64, None]
    by_hand = {
        "kld": (logp.exp() * (logp - logq)).sum(-1).mean().item(),
        "top1": (logp.argmax(-1) == logq.argmax(-1)).float().mean().item(),
        "ppl": math.exp(-logq.gather(-1, target).mean().item()),
        "ppl_ref": math.exp(-logp.gather(-1, target).mean().item()),
        "tokens": 6 * 31,
    }
    for metric, value in by_hand.items():
        assert half[metric] == pytest.approx(value, rel=1e-4), metric
    assert half["kld"] != pytest.approx(every["kld"], rel=1e-3)  # other tokens, other numbers
    assert half["ppl"] != pytest.approx(every["ppl"], rel=1e-3)
    assert every["tokens"] == 6 * 63 and half["df"] == every["df"] == 5
    assert "kld_p99" in half  # the percentiles come with the cut (exact per-token values)


def test_half_is_kept_on_disk_and_never_widened_back(tiny_scores, tmp_path):
    half = kld.llamacpp_positions(tiny_scores[3])
    half.save(tmp_path / "k.npz")
    back = kld.TokenScores.load(tmp_path / "k.npz")
    assert back.positions == "half" and back.exact and np.array_equal(back.kld, half.kld)
    assert kld.llamacpp_positions(back).kld.shape == half.kld.shape  # cut once only
    with pytest.raises(MixvizError, match="only llama.cpp's positions"):
        kld.scored_from(back, "all")
    with pytest.raises(MixvizError, match="choose from all, half"):
        kld.scored_from(back, "first")


def test_the_key_changes_only_when_half_is_asked_for():
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_kld",), limit=2, model_hash="abc")
    assert spec.key == "9b7bd1428ea9906a"  # this spec's key before --score-from existed
    half = RunSpec(**{**spec.__dict__, "score_from": "half"})
    assert half.key != spec.key and RunSpec.from_dict(half.to_dict()) == half
    old = {k: v for k, v in spec.to_dict().items() if k != "score_from"}  # a spec.json before
    assert RunSpec.from_dict(old).key == spec.key and half.label == "bf16 · half"
    with pytest.raises(MixvizError, match="--score-from"):
        RunSpec(model="tiny", recipe=None, tasks=("mixviz_kld",), score_from="second")


def test_run_and_compare_on_llamacpp_positions(tmp_path, monkeypatch):
    """``run --score-from half`` records it (result, table, label); ``compare`` against a run
    scored on all positions pairs them on the half and says so."""
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    env = {"MIXVIZ_CACHE": str(tmp_path / "cache")}
    docs = {}
    for where in ("all", "half"):
        r = run_cli("run", "tiny", "--uniform", "MXFP4", "--tasks", "mixviz_kld", "--limit", "2",
                    "--score-from", where, "--wait", "--json", env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        docs[where] = json.loads(r.stdout)
    every, half = docs["all"], docs["half"]
    assert half["id"] != every["id"] and half["score_from"] == "half"
    assert half["results"]["mixviz_kld"]["tokens"] == 2 * 255
    assert every["results"]["mixviz_kld"]["tokens"] == 2 * 511
    from mixviz.report.tables import results_frame, study_table
    from mixviz.runs.store import Store, runs_dir

    result = json.loads((runs_dir() / half["id"] / "result.json").read_text())
    assert result["score_from"] == "half"
    table = study_table(results_frame(Store()))
    assert table.loc["uniform MXFP4 · half", "KLD"].endswith("(half)")
    assert not table.loc["uniform MXFP4", "KLD"].endswith("(half)")
    r = run_cli("compare", every["id"], half["id"], "--json", env=env)
    assert r.returncode == 0, r.stderr
    cmp = json.loads(r.stdout)
    assert cmp["kld_positions"] == "half"  # both on llama.cpp's positions: the same model, Δ 0
    assert cmp["metrics"]["kld"]["delta"] == pytest.approx(0.0, abs=1e-9)
    text = run_cli("compare", every["id"], half["id"], env=env).stdout
    assert "llama.cpp's positions" in text
    r = run_cli("compare", every["id"], half["id"], "--score-from", "all", env=env)
    assert r.returncode != 0 and "only llama.cpp's positions" in r.stderr
