"""AppTest for every page: the model inventory, profiling, the slider, runs and results."""

from __future__ import annotations

import json
import time

import pytest
from apptest import TINY, open_app, profiled_tiny

from mixviz.report import charts
from mixviz.runs.jobs.backends import LocalBackend
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store

_app = open_app


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Profile tiny through the Profile page's button (cached for the other pages), in this
    module's own cache folder: a profile an earlier test made is not found there."""
    yield from profiled_tiny(tmp_path_factory)


def test_model_page_shows_tiny_inventory():
    at = _app(model="tiny")
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Linear layers in blocks"] == "28"
    assert metrics["Blocks"] == "4"
    schemes = at.dataframe[0].value
    assert set(schemes["scheme"]) >= {"MXFP4", "MXFP8", "NVFP4", "W4A16G64", "BF16"}
    layers = at.dataframe[1].value
    assert len(layers) == 29 and layers.iloc[-1]["name"] == "lm_head"


def test_model_page_explains_unavailable_formats():
    import ui

    layers = [{"name": "a", "in_features": 576}, {"name": "b", "in_features": 1536}]
    report = {
        "layers": layers,
        "schemes": {
            "W4A16": {"avg_bits": 4.17, "avg_bits_no_scale": 4.0, "unavailable": ["a"]},
            "MXFP8": {"avg_bits": 8.25, "avg_bits_no_scale": 8.0, "unavailable": []},
            "MXFP4": {"avg_bits": 4.25, "avg_bits_no_scale": 4.0, "unavailable": []},
        },
    }
    frame = ui.schemes_frame(report)
    assert list(frame["scheme"]) == ["MXFP4", "MXFP8", "W4A16"]  # usable first, by bits
    assert frame.iloc[2]["available"] == (
        "not for 1 of 2 layers: group 128 does not divide 576 input features"
    )


@pytest.mark.parametrize("page", [None, "app_pages/profile.py", "app_pages/allocate.py"])
def test_unknown_model_is_an_error_not_a_traceback(page):
    at = _app(page, model="no-such-model-xyz")
    assert not at.exception
    assert len(at.error) == 1 and "unknown model 'no-such-model-xyz'" in at.error[0].value


def test_profile_page_heatmaps_and_tables(profiled):
    at = profiled
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Profiled tiny with hessian in ")
    assert not [b for b in at.button if b.key == "profile_start"]  # now: Recompute, confirmed
    keys = {c.key for c in at.get("plotly_chart")}
    assert {"profile_heat_MXFP4", "profile_heat_MXFP8"} <= keys  # one heatmap per option
    most = at.dataframe[0].value  # "Most sensitive" in MXFP4
    assert len(most) == 10 and most["score"].is_monotonic_decreasing
    # most / least per format tab, never one ranking that mixes them
    formats = [set(d.value["format"]) for d in at.dataframe]
    assert formats == [{"MXFP4"}, {"MXFP4"}, {"MXFP8"}, {"MXFP8"}]
    heat = {
        c.key: json.loads(c.proto.spec)["data"][0]
        for c in at.get("plotly_chart")
        if c.key.startswith("profile_heat_")
    }
    ends = {(h["zmin"], h["zmax"]) for h in heat.values()}
    assert len(ends) == 1  # one colour scale for every format by default
    at.toggle(key="profile_shared_scale").set_value(False).run()
    heat = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    assert all("zmin" not in h for h in heat)


def test_profile_page_asks_before_recomputing(profiled):
    at = _app("app_pages/profile.py", **TINY)
    assert not at.exception and not at.error
    assert not [b for b in at.button if b.key == "profile_start"]  # no one-click re-profile
    (pop,) = [p for p in at.get("popover") if p.proto.popover.label.startswith("Recompute (cached")]
    assert at.button(key="profile_recompute_confirm").label == "Yes, recompute"


def test_allocate_slider_changes_allocation_within_budget(profiled):
    at = _app("app_pages/allocate.py", **TINY)
    assert not at.exception and not at.error
    slider = at.slider(key="allocate_avg_bits")
    seen = {}
    for bits in (4.5, 6.0, 7.5):
        slider.set_value(bits).run()
        assert not at.exception
        alloc = at.session_state["allocation"]
        assert alloc["avg_bits_no_scale"] <= bits + 1e-9
        seen[bits] = alloc["layers"]
        summary = at.dataframe[1].value.set_index("strategy")  # [0] is the allocation grid
        assert set(summary.index) == {"optimal", "head", "tail", "uniform", "llamacpp"}
        for s in ("head", "tail", "uniform"):
            assert summary.loc[s, "avg bits"] <= bits + 1e-9
            assert summary.loc[s, "predicted loss"] >= summary.loc["optimal", "predicted loss"]
    assert seen[4.5] != seen[6.0] != seen[7.5]
    grid = at.dataframe[0].value  # block × module, the option in each cell
    assert grid.shape == (4, 7) and list(grid.columns) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert grid.loc[2, "down"] == seen[7.5]["model.layers.2.mlp.down_proj"]
    frontier = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    marks = [layer["mark"]["type"] for layer in frontier["layer"]]
    assert marks == ["line", "point", "rule", "text"]  # baselines are points, never a line
    assert frontier["layer"][1]["transform"] == [{"filter": "!datum.solver"}]
    x_scale = frontier["layer"][0]["encoding"]["x"]["scale"]
    assert x_scale["domainMin"] == pytest.approx(4.0)  # tiny's feasible minimum (all MXFP4)
    assert frontier["title"]
    legend = next(h.proto.body for h in at.get("html") if "MXFP4" in h.proto.body)  # the grid's
    # format legend, fewest bits first (the first html element is the URL-history script)
    assert legend.index("MXFP4") < legend.index("MXFP8")
    assert charts.format_colour("MXFP4") in legend
    assert not at.get("plotly_chart")
    labels = [d.proto.label for d in at.get("download_button")]
    assert labels[:3] == ["mixviz recipe", "auto-round layer_config", "auto-round script"]
    why = [c.value for c in at.caption if c.value.startswith("Not available")]
    assert any("GPTQModel quantizes integer weights only" in w for w in why)  # beside it
    at.radio(key="allocate_draw").set_value("chart").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1  # the plotly heatmap
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert heat["colorscale"][0][1] == charts.format_colour(heat["colorbar"]["ticktext"][0])
    at.radio(key="allocate_draw").set_value("grid").run()
    at.radio(key="allocate_view").set_value("head").run()  # not editable: no lock caption
    assert not any("locked" in c.value for c in at.caption)
    at.radio(key="allocate_view").set_value("diff").run()
    assert not at.exception and not at.error


def test_allocate_lock_a_column_resolves_and_undo_restores(profiled):
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    assert not at.exception and not at.error
    before = at.session_state["allocation"]
    assert at.button(key="edit_set").disabled  # nothing selected yet

    # select a whole column (every down_proj) and lock it to MXFP8
    at.multiselect(key="edit_kinds").set_value(["down"]).run()
    at.selectbox(key="edit_option").set_value("MXFP8").run()
    at.button(key="edit_set").click().run()
    assert not at.exception and not at.error
    downs = [f"model.layers.{b}.mlp.down_proj" for b in range(4)]
    assert at.session_state["allocate_pins"] == dict.fromkeys(downs, "MXFP8")
    after = at.session_state["allocation"]
    assert after["budget_avg_bits"] == 6.0 and after["avg_bits_no_scale"] <= 6.0 + 1e-9
    assert all(after["layers"][n] == "MXFP8" for n in downs)
    assert after["pins"] == dict.fromkeys(downs, "MXFP8")
    assert after["predicted_loss"] >= before["predicted_loss"]
    moved = [
        n for n in after["layers"] if n not in downs and after["layers"][n] != before["layers"][n]
    ]
    _, loss, _, counts = (m.value for m in at.metric)  # predicted KLD first
    assert float(loss) == pytest.approx(after["predicted_loss"], rel=1e-3)
    assert counts == f"4 / {len(moved)}"
    cost = next(c.value for c in at.caption if "pay for the locks" in c.value)
    assert f"{len(moved)} other layers moved" in cost
    grid = at.dataframe[0].value  # the locks and the moved layers are marked in the grid
    assert list(grid["down"]) == ["✕ MXFP8"] * 4
    assert sum(str(v).startswith("•") for v in grid.to_numpy().ravel()) == len(moved)
    at.radio(key="allocate_draw").set_value("chart").run()
    heat = next(c for c in at.get("plotly_chart") if c.key.startswith("allocate_heatmap_"))
    traces = {t.get("name"): t for t in json.loads(heat.proto.spec)["data"]}
    assert len(traces["locked"]["x"]) == 4  # ... and drawn on the chart
    if moved:
        assert len(traces["moved by the re-solve"]["x"]) == len(moved)
    at.radio(key="allocate_draw").set_value("grid").run()

    # undo → the optimum before the edit, exactly; redo → the locks again
    at.button(key="edit_undo").click().run()
    assert at.session_state["allocate_pins"] == {}
    assert at.session_state["allocation"]["layers"] == before["layers"]
    assert at.session_state["allocation"]["predicted_loss"] == before["predicted_loss"]
    at.button(key="edit_redo").click().run()
    assert at.session_state["allocation"]["layers"] == after["layers"]
    at.button(key="edit_reset").click().run()
    assert at.session_state["allocate_pins"] == {}
    assert at.session_state["allocation"]["layers"] == before["layers"]


def test_allocate_grid_selection_locks_a_block(profiled):
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    grid_key = "allocate_grid_optimal_0_1"  # view, history position, history length
    at.session_state[grid_key] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    at.button(key="edit_lock").click().run()  # lock block 1 as it is
    assert not at.exception and not at.error
    pins = at.session_state["allocate_pins"]
    assert sorted(pins) == sorted(n for n in at.session_state["allocation"]["layers"] if ".1." in n)
    grid = at.dataframe[0].value
    assert all(str(v).startswith("✕") for v in grid.loc[1])


def test_allocate_grid_clicks_add_up_until_cleared(profiled):
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    grid_key = "allocate_grid_optimal_0_1"
    at.session_state[grid_key] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    at.session_state[grid_key] = {"selection": {"rows": [], "columns": [], "cells": [[2, "down"]]}}
    at.run()
    assert not at.exception
    assert any(c.value.startswith("8 selected") for c in at.caption)  # block 1 + one cell
    at.button(key="edit_clear").click().run()
    assert any(c.value.startswith("0 selected") for c in at.caption)


def test_allocate_locks_beyond_the_budget_are_refused(profiled):
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "5"})
    assert not at.exception and not at.error
    before = at.session_state["allocation"]
    at.multiselect(key="edit_blocks").set_value([0, 1, 2]).run()
    at.selectbox(key="edit_option").set_value("BF16").run()
    at.button(key="edit_set").click().run()
    assert not at.exception
    # 3 of tiny's 4 equal blocks at BF16 need (3·16 + 4) / 4 = 13 bits (block 3 at MXFP4) to
    # (3·16 + 8) / 4 = 14 bits: 5 bits cannot hold them, so nothing changes and the range is said
    assert [e.value for e in at.error] == [
        "Setting 21 layers to BF16 needs an average of 13.00–14.00 bits; the budget is 5 bits. "
        "Nothing was changed."
    ]
    assert at.session_state["allocate_pins"] == {}
    assert at.session_state["allocation"]["layers"] == before["layers"]
    assert at.slider(key="allocate_avg_bits").value == 5.0
    # ... unless the budget is raised explicitly
    at.button(key="edit_move_budget").click().run()
    assert not at.exception and not at.error
    assert len(at.session_state["allocate_pins"]) == 21
    assert at.slider(key="allocate_avg_bits").value == 13.0
    assert at.session_state["allocation"]["avg_bits_no_scale"] == 13.0
    assert at.multiselect(key="edit_blocks").value == []  # the pickers start empty again
    # every layer locked: the range collapses to the locks' bits, nothing is lost
    at.multiselect(key="edit_blocks").set_value([3]).run()
    at.button(key="edit_set").click().run()
    assert "needs an average of 16.00 bits" in at.error[0].value
    at.button(key="edit_move_budget").click().run()
    assert not at.exception and not at.error
    assert len(at.session_state["allocate_pins"]) == 28
    assert at.session_state["allocation"]["avg_bits_no_scale"] == 16.0
    assert "The locks fix every layer: 16.000 average bits" in at.info[0].value
    # undo and reset bring the budget back with the locks
    at.button(key="edit_undo").click().run()
    assert len(at.session_state["allocate_pins"]) == 21
    assert at.slider(key="allocate_avg_bits").value == 13.0
    at.button(key="edit_reset").click().run()
    assert not at.exception and not at.error
    assert at.session_state["allocate_pins"] == {}
    assert at.slider(key="allocate_avg_bits").value == 5.0
    assert at.session_state["allocation"]["layers"] == before["layers"]


def test_allocate_budget_outside_range_is_an_error(profiled):
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "2.5"})
    assert not at.exception
    assert any("outside the feasible range" in e.value for e in at.error)


def test_runs_page_queues_the_comparison(profiled):
    at = _app("app_pages/runs.py", **{**TINY, "bits": "6"})
    assert not at.exception
    store = Store()
    before = {r.id for r in store.list()}  # runs of earlier tests in this session
    at.number_input(key="runs_limit").set_value(2).run()
    at.button(key="runs_start").click().run()
    assert not at.exception and not at.error
    labels = {r.label for r in store.list() if r.id not in before}
    # "uniform @6" has the very recipe of "pure MXFP4": one run, named both ways
    assert labels == {"bf16", "pure MXFP4 = uniform @6", "optimal @6", "head @6", "tail @6"}
    assert at.success[0].value.startswith("Queued 5 runs (1 identical")
    at.button(key="runs_start").click().run()  # a double click: says what the first one did
    assert at.success[0].value.startswith("Queued 0 runs (5 queued by your earlier click; 1 ident")
    assert len([r for r in store.list() if r.id not in before]) == 5
    queue = at.dataframe[0].value
    assert queue["bits"].notna().all()  # known from the recipe before a run quantizes
    assert queue.set_index("run").loc["BF16", "bits"] == 16.0
    backend = LocalBackend(store)
    for r in store.list(("queued", "starting", "running")):
        backend.cancel(r.id)


def test_runs_page_details_log_and_headlines(monkeypatch, tmp_path):
    from mixviz.runs.jobs.backends import log_path, new_run_id, write_spec

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    tasks = ("mixviz_lastword",)
    done = _fake_run(store, RunSpec(model="tiny", recipe=None, tasks=tasks, limit=2), 0.5)
    running = new_run_id()
    spec = RunSpec(model="tiny", recipe={"model.layers.0.mlp.up_proj": "MXFP8"}, tasks=tasks)
    write_spec(running, spec)
    store.insert(running, spec.key, spec.model, spec.label, spec.to_dict())
    store.update(running, status="running", stage="evaluating mixviz_lastword", progress=0.5)
    store.update(running, started=time.time() - 60)
    log_path(running).parent.mkdir(parents=True, exist_ok=True)
    log_path(running).write_text("\x1b[1mloading\x1b[0m\n 10%|#  |\r 90%|#### |\nok\n")
    at = _app("app_pages/runs.py", model="tiny")
    assert not at.exception and not at.error
    first = ["run", "status", "stage", "progress", "time", "bits"]  # on screen; the id last
    assert list(at.dataframe[0].proto.column_order)[:6] == first
    queue = at.dataframe[0].value.set_index("id")
    assert queue.loc[done, "mixviz_lastword"] == "0.5000 acc"  # the headline, on this page
    assert queue.loc[running, "time"].startswith("1:0") and "left" in queue.loc[running, "time"]
    assert at.selectbox(key="runs_pick").value == running  # Details opens on the running run
    now = next(c.value for c in at.caption if "evaluating mixviz_lastword, 50%" in c.value)
    assert "1:0" in now and "left" in now  # elapsed and ETA
    (log,) = at.code
    assert log.value.strip() == "loading\n 90%|#### |\nok" and log.language == "plaintext"
    at.selectbox(key="runs_pick").set_value(done).run()  # a finished run: what it rests on
    import platform

    (measured,) = [c.value for c in at.caption if c.value.startswith("Measured on ")]
    assert measured.startswith(f"Measured on {platform.node()} (") and "cpu float32" in measured
    assert "peak memory " in measured and "evaluate " in measured


def _fake_run(store, spec, acc):
    from mixviz.runs.jobs.backends import new_run_id, write_spec
    from mixviz.runs.jobs.worker import execute

    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict())

    def fake_eval(model, tok, s, on_task):
        return {t: {"results": {t: {"acc,none": acc}}} for t in s.tasks}

    from fakes import fake_quantize

    execute(run_id, store, quantize_fn=fake_quantize, evaluate_fn=fake_eval, kick=False)
    return run_id


def test_results_page_table_in_study_style(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    tasks = ("mixviz_lastword",)
    _fake_run(
        store, RunSpec(model="tiny", recipe=None, tasks=tasks, strategy="bf16", limit=2), 0.7076
    )
    for budget, acc in ((4.5, 0.62), (5.0, 0.6857)):
        for strategy, delta in (("optimal", 0.0), ("head", -0.02)):
            _fake_run(
                store,
                RunSpec(
                    model="tiny",
                    recipe={"model.layers.0.mlp.up_proj": "MXFP4"},
                    tasks=tasks,
                    strategy=strategy,
                    budget=budget,
                    limit=2,
                ),
                acc + delta,
            )
    at = _app("app_pages/results.py", model="tiny")
    assert not at.exception and not at.error
    table = at.table[0].value
    none = "± — (no standard error recorded)"  # these fake runs keep no stderr: said, not hidden
    assert table.loc["optimal @5", "average"] == f"0.6857 {none} (96.9%)"
    assert table.loc["BF16", "average"] == f"0.7076 {none} (100.0%)"  # one name for BF16
    assert len(at.get("download_button")) == 3
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    layout = chart["layout"]
    assert layout["title"]["text"].endswith("vs average bits")
    assert layout["showlegend"] is True
    assert {t["name"] for t in chart["data"]} == {"optimal", "head", "BF16"}
    y_title = layout["yaxis"]["title"]["text"]
    assert "acc" in y_title and "(up to 2 items per task)" in y_title  # metric, item count
    bits = [r.avg_bits for r in store.list() if r.label != "bf16"]
    lo, hi = layout["xaxis"]["range"]
    assert lo < min(bits) <= max(bits) < hi < lo + (max(bits) - min(bits)) + 1  # fitted, padded
    lo, hi = layout["yaxis"]["range"]
    assert lo < 0.6 < 0.7076 < hi < 0.8
    assert any("Spearman" in i.value for i in at.info)  # the empty state says what is missing
    # no ± on the chart either: said under it, as the table says it, and in each point's hover
    assert f"No error bar on 4 of 4 points: {none}" in [c.value for c in at.caption]
    assert chart["data"][0]["customdata"] == [none, none]


def test_results_charts_say_a_one_item_run_has_no_interval(monkeypatch, tmp_path):
    """Issue 35: "acc ± standard error" with no ± and no reason. Runs of 1 item per task over
    two tasks: the average's chart says "1 item per task" (as the table), each task's chart
    "1 item", under them and per point; a run with a standard error keeps its ±."""
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store, tasks = Store(), ("mixviz_lastword", "mixviz_nextsent")
    for budget, se in ((4.5, None), (5.0, None), (6.0, 0.02)):
        spec = RunSpec(
            model="tiny",
            recipe={"model.layers.0.mlp.up_proj": "MXFP4" if budget < 6 else "MXFP8"},
            tasks=tasks,
            strategy="optimal",
            budget=budget,
            limit=1,
        )
        run_id = _fake_run(store, spec, 0.5)
        items = 1.0 if se is None else 50.0
        for task in tasks:
            store.put_results(run_id, [(task, "acc", 0.5, se), (task, "items", items, None)])
    at = _app("app_pages/results.py", model="tiny")
    assert not at.exception and not at.error
    captions = [c.value for c in at.caption]
    per_task = "± — (1 item: no interval)"
    average = "± — (1 item per task: no interval)"
    assert captions.count(f"No error bar on 2 of 3 points: {per_task}") == 1  # the task's chart
    assert captions.count(f"No error bar on 2 of 3 points: {average}") == 1
    notes = [json.loads(e.proto.spec)["data"][0]["customdata"] for e in at.get("plotly_chart")]
    assert sorted(n[:2] for n in notes) == [[average] * 2, [per_task] * 2], notes
    for line_notes in notes:
        assert line_notes[2] == "± 0.0200"


def test_results_page_one_run_has_sensible_axes(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    spec = RunSpec(
        model="tiny",
        recipe={"model.layers.0.mlp.up_proj": "MXFP4"},
        tasks=("mixviz_lastword",),
        strategy="optimal",
        budget=5.0,
        limit=2,
    )
    _fake_run(Store(), spec, 0.5)
    at = _app("app_pages/results.py", model="tiny")
    assert not at.exception and not at.error
    layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    (x,) = {r.avg_bits for r in Store().list()}
    lo, hi = layout["xaxis"]["range"]
    assert lo < x < hi and hi - lo < 1
    lo, hi = layout["yaxis"]["range"]
    assert lo < 0.5 < hi and hi - lo < 0.1


def test_pages_log_no_warnings(profiled, caplog):
    """No deprecation (``use_container_width``) or widget-state warning from our pages."""
    caplog.set_level("WARNING")
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    at.slider(key="allocate_avg_bits").set_value(6.5).run()
    at.radio(key="allocate_draw").set_value("chart").run()
    at.multiselect(key="edit_blocks").set_value([0]).run()
    at.button(key="edit_set").click().run()
    at.button(key="edit_undo").click().run()
    for page in (
        "app_pages/model.py",
        "app_pages/profile.py",
        "app_pages/runs.py",
        "app_pages/results.py",
    ):
        at.switch_page(page).run()
    assert not at.exception
    ours = [r.getMessage() for r in caplog.records if "ScriptRunContext" not in r.getMessage()]
    assert ours == []


def test_format_colours_are_one_ramp_by_bits():
    from mixviz.models.schemes import SCHEMES, get_scheme

    order = sorted(SCHEMES, key=lambda o: (get_scheme(o).bits, o))
    colours = [charts.format_colour(o) for o in order]
    assert len(set(colours)) == len(order)  # one colour per format
    assert colours[0] == "rgb(68, 1, 84)" and colours[-1] == "rgb(253, 231, 37)"  # viridis
    assert charts.format_colour("BF16") == colours[-1]


def test_accuracy_chart_draws_error_bars_when_the_results_have_them():
    import pandas as pd

    frame = pd.DataFrame(
        {"strategy": ["optimal"] * 2, "avg_bits": [4.5, 5.0], "accuracy": [0.6, 0.65]}
    )
    assert "error_y" not in charts.accuracy_chart(frame).to_dict()["data"][0]
    fig = charts.accuracy_chart(frame.assign(accuracy_se=[0.03, 0.02]), 0.7)
    assert list(fig.to_dict()["data"][0]["error_y"]["array"]) == [0.03, 0.02]
    assert fig.layout.yaxis.range[0] < 0.57 and fig.layout.yaxis.range[1] > 0.7


def test_frontier_draws_baselines_as_points():
    pt = {"avg_bits": 4.0, "avg_bits_no_scale": 4.0, "predicted_loss": 1.0}
    spec = charts.frontier_chart({"optimal": [pt], "uniform": [pt, {**pt, "avg_bits": 8.0}]})
    solver = {r["strategy"]: r["solver"] for r in spec["datasets"]["frontier"]}
    assert solver == {"optimal": True, "uniform": False}


def test_kld_chart_has_error_bars_when_the_results_carry_them():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "strategy": ["optimal"] * 2,
            "avg_bits": [4.5, 5.0],
            "kld": [0.2, 0.1],
            "kld_se": [0.01, 0.02],
        }
    )
    fig = charts.accuracy_chart(frame, y="kld", y_title="KLD")
    assert list(fig.to_dict()["data"][0]["error_y"]["array"]) == [0.01, 0.02]
    assert fig.layout.title.text == "KLD vs average bits"


def test_sidebar_device_and_precision_reach_profile_and_runs(profiled):
    """The sidebar's "Where it runs": the choice is in the URL, keys the profile (a bfloat16
    profile is another profile than the float32 one the fixture made) and goes into every
    queued run's spec; float16 on the CPU is refused with the reason, not a traceback."""
    at = _app("app_pages/profile.py", **TINY)
    assert at.selectbox(key="sb_device").options[:2] == ["auto", "cpu"]
    assert at.caption and any(c.value == "Runs on cpu in float32" for c in at.caption)
    at.selectbox(key="sb_dtype").set_value("float16").run()
    assert not at.exception
    assert any("float16 is about 50× slower on the CPU" in e.value for e in at.error)
    at = _app("app_pages/profile.py", **{**TINY, "device": "cpu", "dtype": "bfloat16"})
    assert not at.exception and not at.error
    assert at.query_params["dtype"] == "bfloat16"
    # not the fixture's float32 profile: this one is still to be made
    assert [b for b in at.button if b.key == "profile_start"]
    at = _app("app_pages/runs.py", **{**TINY, "bits": "6", "device": "cpu"})
    store = Store()
    before = {r.id for r in store.list()}
    at.number_input(key="runs_limit").set_value(2).run()
    at.button(key="runs_start").click().run()
    assert not at.exception and not at.error
    new = [r for r in store.list() if r.id not in before]
    assert new and {(r.spec["device"], r.spec["dtype"]) for r in new} == {("cpu", "auto")}
    backend = LocalBackend(store)
    for r in store.list(("queued", "starting", "running")):
        backend.cancel(r.id)


def test_allocate_quantize_button_queues_a_checkpoint_job(profiled, monkeypatch, tmp_path):
    """The Allocate page's *Quantize* queues a quantize job (a run with ``ship``) for the
    slider's allocation; a format that cannot hold it is refused on the page."""
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: None)
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    assert not at.exception
    at.text_input(key="allocate_quantize_out_auto_round").set_value(str(tmp_path / "ckpt"))
    at.button(key="allocate_quantize").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (ok,) = [s.value for s in at.success if "quantize auto_round" in s.value]
    jobs = [r for r in Store().list() if r.spec.get("ship")]
    want = {"format": "auto_round", "out": str(tmp_path / "ckpt"), "verify_with": [],
            "vllm_isa": None}  # fmt: skip
    assert jobs and jobs[-1].spec["ship"] == want
    assert jobs[-1].spec["tasks"] == ["mixviz_kld"] and "Runs page" in ok
    at.selectbox(key="allocate_quantize_format").set_value("auto_gptq").run()  # MX: no GPTQ
    at.button(key="allocate_quantize").click().run()
    assert any("integer weights only" in e.value for e in at.error)
    for r in Store().list(("queued", "starting")):
        LocalBackend(Store()).cancel(r.id)


def test_runs_page_shows_what_a_checkpoint_job_verified(monkeypatch, tmp_path):
    from mixviz.runs.store import runs_dir

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    run_id = _fake_run(
        store, RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2), 0.5
    )
    summary = [("kld", 0.0123, 0.0004), ("top1", 0.91, 0.01), ("tokens", 2044.0, None)]
    doc = {
        "format": "gguf", "file": "/x/m.gguf", "total_bytes": 3 * 2**20, "ok": True,
        "layers": {"a": {"ok": True}, "b": {"ok": True}}, "quantized_bytes_ratio": 1.0,
        "kld_memory": summary, "kld_reloaded": summary,
        "delta_kld": {"delta": 1e-6, "lo": -2e-6, "hi": 4e-6},
        "llama_cpp": {"kld": [0.0119, 0.0003], "top1": [0.92, 0.004]},
        "vllm": {"dtype": "float16", "version": "0.32.0", "ok": True, "kld": summary,
                 "delta_kld": {"delta": 2e-6, "lo": -1e-6, "hi": 5e-6, "tolerance": 8e-4},
                 "also": [{"dtype": "bfloat16", "version": "0.32.0", "ok": False,
                           "kld": [("kld", 0.0163, 0.0005), ("top1", 0.9, 0.01)],
                           "delta_kld": {"delta": 4e-3, "lo": 3e-3, "hi": 5e-3}}]},
    }  # fmt: skip
    (runs_dir() / run_id / "ship.json").write_text(json.dumps(doc))
    at = _app("app_pages/runs.py", model="tiny")
    at.selectbox(key="runs_pick").set_value(run_id).run()
    assert not at.exception
    assert any("2 of 2 layers carry the recipe's format" in s.value for s in at.success)
    table = at.dataframe[1].value  # after the queue
    assert list(table["model"]) == [
        "in memory",
        "reloaded from disk",
        "llama.cpp (llama-perplexity)",
        "vLLM 0.32.0 (float16)",
        "vLLM 0.32.0 (bfloat16)",
    ]
    assert table["KLD"].iloc[2] == "0.01190 ± 0.00030"
    assert table["KLD"].iloc[4] == "0.01630 ± 0.00050"
    assert any("vLLM 0.32.0 in float16: KLD 0.01230" in c.value for c in at.caption)


def test_sidebar_target_runtime_constrains_the_allocation(profiled):
    """?target=vllm (the sidebar's *Target runtime*) gives fused q/k/v and gate/up one format."""
    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6", "target": "vllm"})
    assert not at.exception and not at.error
    assert at.selectbox(key="sb_target").value == "vllm"
    layers = at.session_state["allocation"]["layers"]
    for b in range(4):
        p = f"model.layers.{b}."
        assert len({layers[p + f"self_attn.{k}_proj"] for k in "qkv"}) == 1
        assert len({layers[p + "mlp.gate_proj"], layers[p + "mlp.up_proj"]}) == 1


def test_allocate_shows_the_budget_as_bpw_and_file_size(profiled, tiny_ref, tiny_layers):
    """With scale bits counted the slider's average is llama.cpp's bpw, shown with the file size
    it makes (the size ``allocate --size`` solves for)."""
    import re

    import mixviz

    at = _app("app_pages/allocate.py", **{**TINY, "noscale": "0", "bits": "6"})
    assert not at.exception and not at.error
    (shown,) = [c.value for c in at.caption if "bpw (scales included)" in c.value]
    assert shown.startswith("= 6.00 bpw")
    from mixviz.models.file_size import overhead

    numel = sum(x.numel for x in tiny_layers if x.block is not None)
    names = {x.name for x in tiny_layers if x.block is not None}
    meta = mixviz.meta_model(tiny_ref)
    rest = overhead(meta, names, "auto_round", dtype="float32", folder=tiny_ref.path).bytes
    # the page's promise is allocate --size's pricing: the embedding stored in float32 here
    assert rest > 4 * meta.model.embed_tokens.weight.numel()
    want = (6.0 * numel / 8 + rest) / 1e6
    assert "as auto_round" in shown
    assert float(re.search(r"about ([0-9.]+) MB", shown)[1]) == pytest.approx(want, abs=0.05)


def test_allocate_refine_is_a_queued_job_followed_and_found_again(profiled):
    """*Refine* queues ``mixviz refine`` on the page's problem as a job beside the runs (stage,
    progress, clock, cancel); a reload (a fresh session) follows the same job; when it has
    written its rounds, the page draws them (measured vs corrected) and puts them on the
    frontier."""
    from mixviz.runs.store import Store

    at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    assert not at.exception
    assert any("How far to trust the prediction" in c.value for c in at.caption)
    at.number_input(key="allocate_refine_rounds").set_value(1).run()
    at.button(key="allocate_refine").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("queued run" in s.value for s in at.success)
    (job,) = [r for r in Store().list() if r.spec.get("refine")]
    assert job.label == "refine @6 (kind, 1 rounds)" and job.spec["refine"]["rounds"] == 1
    seen = set()
    deadline = time.time() + 600
    while time.time() < deadline:
        at = _app("app_pages/allocate.py", **{**TINY, "bits": "6"})  # a reload: a new session
        at.session_state["allocate_refine_rounds"] = 1
        at.run()
        if any(c.value.startswith("Best: round") for c in at.caption):
            break
        bars = [b.proto.text for b in at.get("progress")]
        seen.update(bars)
        if bars:
            assert at.button(key="allocate_refine_cancel")  # a running job can be stopped
        time.sleep(1)
    assert not at.exception
    assert any(" elapsed" in b for b in seen), seen  # followed while it ran: stage · clock
    (best,) = [c.value for c in at.caption if c.value.startswith("Best: round")]
    assert "chosen on calibration windows" in best and "held-out windows" in best
    chart = at.get("plotly_chart")[-1].proto.spec
    assert "measured KLD (selection: calibration windows)" in chart
    assert "held-out KLD (never selected on)" in chart
    frontier = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    domain = frontier["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert "refined (measured rounds)" in domain
