"""Issue 33: no star without a finite interval, t (df = n − 1) where n is small."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from test_uncertainty import _run  # a finished run through the worker, fakes inside

from mixviz.report import paired, tables
from mixviz.runs.evaluation.stats import mean_interval, t95
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store

TASKS = ("mixviz_lastword", "mixviz_nextsent")


def test_one_window_against_itself_is_no_finding():
    kld = np.abs(np.random.default_rng(0).normal(size=(1, 511)))
    d = paired.paired_kld(kld, kld)
    assert not d.significant and not d.has_interval
    assert d.format(scale=1.0, digits=6) == "— (1 paired window: no interval)"
    doc = d.to_dict()
    assert doc["significant"] is False and doc["why"] == "1 paired window: no interval"
    assert doc["lo"] is None and doc["hi"] is None  # JSON-safe, never NaN
    json.dumps(doc, allow_nan=False)


def test_a_tiny_difference_on_one_window_is_not_starred():
    a = np.full((1, 511), 0.01)
    d = paired.paired_kld(a, a + 1e-9)
    assert not d.significant and "*" not in d.format(scale=1.0, digits=6)
    assert d.format(scale=1.0, digits=6).startswith("—")


def test_one_item_is_no_finding_binary_or_not():
    one = paired.paired_items({"doc_id": [0], "ppl": [2.0]}, {"doc_id": [0], "ppl": [3.0]}, "ppl")
    assert not one.significant and one.reason() == "1 paired item: no interval"
    binary = paired.paired_items({"doc_id": [0], "acc": [0]}, {"doc_id": [0], "acc": [1]}, "acc")
    assert not binary.significant and binary.format() == "— (1 paired item: no interval)"


def test_an_average_with_a_one_item_task_has_no_interval():
    x = [int(i % 3 == 0) for i in range(300)]
    big = paired.paired_items(
        {"doc_id": list(range(300)), "acc": x},
        {"doc_id": list(range(300)), "acc": [1] * 300},
        "acc",
    )
    assert big.significant  # on its own, a finding
    one = paired.paired_items({"doc_id": [0], "x": [0.2]}, {"doc_id": [0], "x": [0.9]}, "x")
    avg = paired.paired_average([big, one])
    assert not avg.significant and avg.format().startswith("— (a task has 1 paired item")


def test_kld_interval_over_16_windows_is_student_t_with_15_df():
    rng = np.random.default_rng(1)
    a = np.abs(rng.normal(size=(16, 64)))
    b = a + rng.normal(0.05, 0.2, size=(16, 1))  # a per-window shift
    d = paired.paired_kld(a, b)
    per_window = (b - a).mean(axis=1)
    lo, hi = sps.t.interval(0.95, 15, loc=per_window.mean(), scale=sps.sem(per_window))
    assert d.df == 15 and (d.lo, d.hi) == pytest.approx((lo, hi), rel=1e-9)
    assert d.to_dict()["df"] == 15
    assert d.hi - d.delta == pytest.approx(2.131 * d.se, rel=1e-3)  # not 1.96


def test_items_interval_is_t_with_n_minus_1_df():
    x, y = [0.1, 0.5, 0.2, 0.9, 0.4], [0.3, 0.6, 0.2, 1.4, 0.5]
    d = paired.paired_items({"doc_id": range(5), "v": x}, {"doc_id": range(5), "v": y}, "v")
    lo, hi = sps.t.interval(
        0.95, 4, loc=np.mean(np.subtract(y, x)), scale=sps.sem(np.subtract(y, x))
    )
    assert d.df == 4 and (d.lo, d.hi) == pytest.approx((lo, hi))


def test_average_df_is_welch_satterthwaite():
    parts = [paired.Paired(0.01, 0.004, 40, df=39), paired.Paired(0.03, 0.01, 6, df=5)]
    avg = paired.paired_average(parts)
    v = [0.004**2, 0.01**2]
    assert avg.df == pytest.approx(sum(v) ** 2 / (v[0] ** 2 / 39 + v[1] ** 2 / 5))
    assert avg.se == pytest.approx(math.sqrt(sum(v)) / 2)


def test_t95_and_mean_interval():
    assert t95(15) == pytest.approx(sps.t.ppf(0.975, 15)) and math.isnan(t95(0))
    d = mean_interval([3.0])
    assert d["df"] == 0 and math.isnan(d["se"]) and math.isnan(d["lo"])


# --------------------------------------------------------------------------- CLI, JSON, app


def test_cli_json_and_the_table_show_no_star_for_one_item(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    recipe = {"model.layers.0.mlp.up_proj": "MXFP4"}
    _run(store, RunSpec(model="tiny", recipe=None, tasks=TASKS, strategy="bf16"), [1])
    a = _run(
        store, RunSpec(model="tiny", recipe=recipe, tasks=TASKS, strategy="head", budget=5), [0]
    )
    b = _run(
        store, RunSpec(model="tiny", recipe=recipe, tasks=TASKS, strategy="optimal", budget=5), [1]
    )
    from mixviz.cli import main

    assert main(["compare", a, b, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for name in (*TASKS, "average"):
        m = doc["metrics"][name]
        assert m["significant"] is False and m["why"] and m["lo"] is None, name
    assert main(["compare", a, b]) == 0
    text = capsys.readouterr().out
    assert "— (1 paired item: no interval)" in text and "*" not in text.split("\n", 1)[1]
    table = tables.study_table(tables.results_frame(store, "tiny"), list(TASKS))
    col = [c for c in table.columns if c.startswith("Δ average vs")][0]
    cell = table.loc["optimal @5", col]
    assert cell.startswith("— (a task has 1 paired item") and "*" not in cell
