"""Standard errors and paired comparisons, each against an independent computation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from mixviz.report import paired, tables
from mixviz.runs.evaluation.stats import item_scores, item_stderrs
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store

TASKS = ("mixviz_lastword", "mixviz_nextsent")


def _items(n: int, p: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.random() < p) for _ in range(n)]


def test_stderr_of_a_mean_is_the_sample_formula():
    acc = _items(300, 0.4, 0)
    se = item_stderrs({"t": {"doc_id": list(range(300)), "acc": acc}})["t"]["acc"]
    assert se == pytest.approx(np.std(acc, ddof=1) / math.sqrt(300), rel=1e-12)


def test_stderr_of_a_weighted_perplexity_matches_the_bootstrap():
    rng = np.random.default_rng(0)
    words = rng.integers(10, 80, 200)
    ll = -words * rng.normal(3.0, 0.6, 200)
    pairs = [[float(a), float(b)] for a, b in zip(ll, words, strict=True)]
    se = item_stderrs({"t": {"doc_id": list(range(200)), "word_perplexity": pairs}})["t"]
    boot = []
    for _ in range(4000):
        i = rng.integers(0, 200, 200)
        boot.append(math.exp(-ll[i].sum() / words[i].sum()))
    assert se["word_perplexity"] == pytest.approx(np.std(boot), rel=0.1)


def test_item_scores_reduce_lm_eval_samples_and_merge_groups():
    samples = {
        "a": [{"doc_id": 1, "acc": 1, "doc": {}}, {"doc_id": 0, "acc": 0, "doc": {}}],
        "b": [{"doc_id": 0, "acc": 1, "word_perplexity": (-3.0, 2)}],
    }
    out = item_scores(samples, {"group": ["a", "b"]})
    assert out["a"] == {"doc_id": [0, 1], "acc": [0.0, 1.0]}
    assert out["b"]["word_perplexity"] == [[-3.0, 2.0]]
    assert out["group"]["doc_id"] == ["a:0", "a:1", "b:0"] and out["group"]["acc"] == [0, 1, 1]


def test_a_run_against_itself_is_exactly_zero():
    a = {"doc_id": list(range(240)), "acc": _items(240, 0.3, 1)}
    d = paired.paired_items(a, a, "acc")
    assert (d.delta, d.se, d.lo, d.hi, d.p) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert not d.significant and d.format() == "+0.0 [+0.0, +0.0]"
    kld = np.abs(np.random.default_rng(0).normal(size=(8, 511)))
    k = paired.paired_kld(kld, kld)
    assert (k.delta, k.se) == (0.0, 0.0)


def test_paired_difference_matches_scipy_and_mcnemar():
    x = _items(400, 0.5, 2)
    y = [v if random.Random(i).random() < 0.8 else 1 for i, v in enumerate(x)]  # b better
    d = paired.paired_items(
        {"doc_id": list(range(400)), "acc": x}, {"doc_id": list(range(400)), "acc": y}, "acc"
    )
    t = sps.ttest_rel(y, x)
    assert d.delta == pytest.approx(np.mean(np.subtract(y, x)))
    assert d.se == pytest.approx(d.delta / t.statistic, rel=1e-9)  # t = Δ / se
    b01 = sum(1 for a, b in zip(x, y, strict=True) if (a, b) == (0, 1))
    b10 = sum(1 for a, b in zip(x, y, strict=True) if (a, b) == (1, 0))
    # exact McNemar by hand: two-sided binomial tail of the discordant split
    n, k = b01 + b10, min(b01, b10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert d.p == pytest.approx(min(1.0, 2 * tail))
    assert d.significant


def test_pairing_uses_only_the_items_both_runs_scored():
    a = {"doc_id": [0, 1, 2, 3], "acc": [0, 0, 1, 1]}
    b = {"doc_id": [2, 3, 4], "acc": [1, 0, 1]}
    d = paired.paired_items(a, b, "acc")
    assert d.n == 2 and d.delta == pytest.approx(-0.5)


def test_spearman_interval_covers_the_population_value():
    """Bivariate normal with r = 0.6: population Spearman ρ = (6/π)·asin(r/2)."""
    rng = np.random.default_rng(0)
    r, n = 0.6, 30
    truth = 6 / math.pi * math.asin(r / 2)
    cov = [[1, r], [r, 1]]
    hits = 0
    for _ in range(400):
        x, y = rng.multivariate_normal([0, 0], cov, n).T
        rho, lo, hi = paired.spearman_ci(x, y)
        assert rho == pytest.approx(sps.spearmanr(x, y).statistic)
        hits += lo <= truth <= hi
    assert 0.91 <= hits / 400 <= 0.985
    assert math.isnan(paired.spearman_ci([1, 2, 3], [1, 3, 2])[1])


# --------------------------------------------------------------------------- tables


def _run(store, spec: RunSpec, acc: list[int]) -> str:
    """A finished run whose every task scored ``acc`` item by item (through the worker)."""
    from fakes import fake_quantize

    from mixviz.runs.jobs.backends import new_run_id, write_spec
    from mixviz.runs.jobs.worker import execute

    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict())

    def fake_eval(model, tok, s, on_task):
        samples = [{"doc_id": i, "acc": v} for i, v in enumerate(acc)]
        return {
            t: {
                "results": {t: {"acc,none": float(np.mean(acc)), "acc_stderr,none": "N/A"}},
                "samples": item_scores({t: samples}),
            }
            for t in s.tasks
        }

    execute(run_id, store, quantize_fn=fake_quantize, evaluate_fn=fake_eval, kick=False)
    return run_id


def test_study_table_reads_acc_pm_se_items_and_paired_delta(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    base = _items(200, 0.6, 3)
    better = [1 if (v == 0 and i % 3 == 0) else v for i, v in enumerate(base)]
    recipe = {"model.layers.0.mlp.up_proj": "MXFP4"}
    _run(store, RunSpec(model="tiny", recipe=None, tasks=TASKS, strategy="bf16"), base)
    _run(store, RunSpec(model="tiny", recipe=recipe, tasks=TASKS, strategy="head", budget=5), base)
    _run(
        store,
        RunSpec(model="tiny", recipe=recipe, tasks=TASKS, strategy="optimal", budget=5),
        better,
    )
    frame = tables.results_frame(store, "tiny")
    table = tables.study_table(frame, list(TASKS))
    se = np.std(base, ddof=1) / math.sqrt(200)
    assert table.loc["head @5", "mixviz_lastword"] == f"{np.mean(base):.4f} ± {se:.4f}"
    assert table.loc["head @5", "items"] == "400"
    delta_col = [c for c in table.columns if c.startswith("Δ average vs best baseline")][0]
    cell = table.loc["optimal @5", delta_col]
    want = np.mean(np.subtract(better, base)) * 100
    assert cell.startswith(f"{want:+.1f} [") and cell.endswith("* vs head @5")
    assert table.loc["head @5", delta_col] == ""  # its only same-bits baseline is itself
    # against itself, chosen explicitly: exactly zero
    head_id = frame.loc[frame["label"] == "head @5", "id"].iloc[0]
    table = tables.study_table(frame, list(TASKS), compare=head_id)
    delta_col = [c for c in table.columns if c.startswith("Δ average vs head @5")][0]
    assert table.loc["optimal @5", delta_col].startswith(f"{want:+.1f} [")


def test_a_number_without_an_interval_says_dash_and_why(monkeypatch, tmp_path):
    """One item per task and one KLD window: no ±, and the table says so instead of showing
    the bare number as if it were exact."""
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    recipe = {"model.layers.0.mlp.up_proj": "MXFP4"}
    run_id = _run(store, RunSpec(model="tiny", recipe=recipe, tasks=TASKS, strategy="head"), [1])
    store.put_results(
        run_id,
        [
            *((t, "acc", 1.0, None) for t in TASKS),
            *((t, "items", 1.0, None) for t in TASKS),
            ("mixviz_kld", "kld", 0.05, None),
            ("mixviz_kld", "top1", 0.9, None),
            ("mixviz_kld", "df", 0.0, None),
        ],
    )
    spec = RunSpec(model="tiny", recipe=recipe, tasks=(*TASKS, "mixviz_kld"), strategy="head")
    import json

    store.update(run_id, spec=json.dumps(spec.to_dict()))
    frame = tables.results_frame(store, "tiny")
    row = tables.study_table(frame, list(TASKS)).iloc[0]
    assert row[TASKS[0]] == "1.0000 ± — (1 item: no interval)"
    assert row["KLD"] == "0.0500 ± — (1 window: no interval)" and row["windows"] == "1"
    assert row["top-1 %"] == "90.0 ± — (1 window: no interval)"
    assert row["average"] == "1.0000 ± — (1 item per task: no interval)"  # not "not recorded"
    assert row["items"] == "2"
