"""The reference-study protocol: the plan of runs, AutoScheme's own rows, the written tables."""

from __future__ import annotations

import pytest

from mixviz.report.reproduce import int_options, plan, reports_dir, run_protocol, write_report


def test_int_options_fall_back_to_a_dividing_group(tiny_layers, demo_layers):
    assert int_options([x for x in tiny_layers if x.block is not None]) == ("W2A16G64", "W4A16G64")
    assert int_options([x for x in demo_layers if x.block is not None]) == ("W2A16G64", "W4A16G64")


def test_plan_has_every_row_of_the_study(tiny_layers):
    rows = plan("tiny", ("mixviz_lastword",), 2, "hessian", 2, 32, True, lambda m: None)
    by_table = {t: [r.label for r in rows if r.table == t] for t in (1, 2, 3, 4)}
    assert by_table[1] == [
        "BF16",
        "pure 4-bit",
        "mixviz 4.5",
        "AutoScheme 4.5",
        "mixviz 5",
        "AutoScheme 5",
        "mixviz 6",
        "AutoScheme 6",
    ]
    for t in (2, 3, 4):
        high = "4" if t == 4 else "8"
        assert by_table[t] == [
            f"tail layers {high}-bit",
            f"head layers {high}-bit",
            "mixviz (optimal)",
            "AutoScheme",
        ]
    from mixviz.report.recipe import Recipe

    layers = [x for x in tiny_layers if x.block is not None]
    for r in rows:
        if r.spec.budget is not None and r.spec.strategy != "autoscheme":
            avg = Recipe("tiny", "", r.spec.recipe).average_bits(layers, ignore_scale_bits=True)
            assert avg <= r.spec.budget + 1e-9, r.label
    auto = [r for r in rows if r.spec.strategy == "autoscheme"]
    assert len(auto) == 6 and all(len(r.spec.recipe) == 28 for r in auto)
    assert len({r.spec.key for r in auto}) == 4  # 4.5, 5 and 6 bits MX, 3 bits W2+W4
    assert set(auto[-1].spec.recipe.values()) <= {"W2A16G64", "W4A16G64"}


def test_plan_resolves_the_model_once(monkeypatch):
    import sys

    import mixviz.models.loading

    real, calls = mixviz.models.loading.resolve_model, []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for name, module in list(sys.modules.items()):  # and wherever it was imported by name
        if name.startswith("mixviz") and getattr(module, "resolve_model", None) is real:
            monkeypatch.setattr(module, "resolve_model", counting)
    rows = plan("tiny", ("mixviz_lastword",), 2, "hessian", 2, 32, False, lambda m: None)
    assert rows and calls == [("tiny",)]


def _record_reports(monkeypatch, reproduce) -> list[int]:
    """Runs done at each writing of the tables (write_report still writes them)."""
    written, real = [], reproduce.write_report

    def spy(model, rows, runs, *args):
        written.append(sum(r.status == "done" for r in runs.values()))
        return real(model, rows, runs, *args)

    monkeypatch.setattr(reproduce, "write_report", spy)
    return written


def test_run_protocol_on_tiny_writes_the_tables(tiny_layers, monkeypatch):
    from mixviz.models.schemes import get_scheme
    from mixviz.report import reproduce
    from mixviz.runs.store import Store
    from mixviz.sensitivity.profile import DEFAULT_METRIC

    store = Store()
    written = _record_reports(monkeypatch, reproduce)
    tables = run_protocol(
        "tiny",
        tasks=("mixviz_nextsent",),
        limit=8,
        nsamples=2,
        seqlen=32,
        with_autoscheme=False,
        store=store,
    )
    folder = reports_dir("tiny")
    text = (folder / "tables.md").read_text()
    for t in (1, 2, 3, 4):
        assert f"Table {t}" in text and (folder / f"table{t}.csv").is_file()
    assert (folder / "chart.html").is_file()

    # Every cell against the run in the store it came from (the same plan: its keys find them).
    rows = plan("tiny", ("mixviz_nextsent",), 8, DEFAULT_METRIC, 2, 32, False, lambda m: None)
    numel = {x.name: x.numel for x in tiny_layers}
    # the tables were written after each run, one more done each time, and at the end
    distinct = len({r.spec.key for r in rows})
    assert written[-1] == distinct and written == list(
        range(distinct - len(written) + 1, distinct + 1)
    )

    def run_of(row):
        run = store.find_done(row.spec.key)
        assert run is not None, row.label
        return run, store.results(run.id)["mixviz_nextsent"]["acc"]

    def se_of(run):
        return store.stderrs(run.id)["mixviz_nextsent"]["acc"]

    _, ref = run_of(rows[0])
    assert rows[0].label == "BF16" and ref > 0
    for t in (1, 2, 3, 4):
        table_rows = [r for r in rows if r.table == t]
        assert list(tables[t].index) == [r.label for r in table_rows]
        for row in table_rows:
            run, acc = run_of(row)
            cells = tables[t].loc[row.label]
            share = f"({100 * acc / ref:.1f}%)"
            assert cells["accuracy"] == f"{acc:.4f} ± {se_of(run):.4f} {share}", (t, row.label)
            assert cells["items"] == "8"
            # avg bits without scale bits: Σ bits·numel / Σ numel over the recipe's layers
            recipe = row.spec.recipe
            if recipe is None:
                no_scale = 16.0
            else:
                bits = sum(get_scheme(o).bits * numel[n] for n, o in recipe.items())
                no_scale = bits / sum(numel[n] for n in recipe)
            assert cells["avg bits"] == f"{no_scale:.2f}", (t, row.label)
            assert cells["with scale bits"] == (f"{run.avg_bits:.2f}" if run.avg_bits else "")
    # the paired Δ against the better of tail/head at the same budget: on the same items the
    # mean of per-item differences is the difference of the accuracies
    t2 = {r.label: run_of(r)[1] for r in rows if r.table == 2}
    best = max(("tail layers 8-bit", "head layers 8-bit"), key=lambda k: t2[k])
    delta = 100 * (t2["mixviz (optimal)"] - t2[best])
    cell = tables[2].loc["mixviz (optimal)", "Δ vs best baseline"]
    assert cell.startswith(f"{delta:+.1f} [") and f"vs {best}" in cell, cell
    assert tables[2].loc[best, "Δ vs best baseline"] == ""  # a baseline is not compared
    assert tables[1].loc["BF16", "accuracy"].endswith("(100.0%)")
    assert tables[1].loc["BF16", "avg bits"] == "16.00"
    assert tables[1].loc["pure 4-bit", "avg bits"] == "4.00"
    assert tables[1].loc["pure 4-bit", "with scale bits"] == "4.25"  # MXFP4: 8-bit scale / 32

    again = run_protocol(
        "tiny", tasks=("mixviz_nextsent",), limit=8, nsamples=2, seqlen=32, with_autoscheme=False
    )  # resumable: nothing to run, same tables
    assert again[1].equals(tables[1])

    # tiny scores alike on 8 items, so a mixed-up row would pass the checks above: write the
    # report again from the same runs, each with its own accuracy, and find each in its row.
    runs = {r.spec.key: run_of(r)[0] for r in rows}
    ids = {k: run.id for k, run in runs.items()}
    accs = {i: 0.25 + n / 32 for n, i in enumerate(dict.fromkeys(ids.values()))}
    assert len(set(accs.values())) == len(accs) > 5, len(accs)

    class Distinct:  # the store's runs, each with its own result
        def get(self, run_id):
            return store.get(run_id)

        def list(self, *args, **kwargs):
            return store.list(*args, **kwargs)

        def results(self, run_id):  # runs outside the plan (none here) read 0
            return {"mixviz_nextsent": {"acc": accs.get(run_id, 0.0), "acc_norm": 0.0}}

        def stderrs(self, run_id):
            return {"mixviz_nextsent": {"acc": accs.get(run_id, 0.0) / 10}}

    distinct = write_report("tiny", rows, runs, Distinct(), ("mixviz_nextsent",), tiny_layers)
    ref = accs[ids[rows[0].spec.key]]
    for row in rows:
        acc = accs[ids[row.spec.key]]
        cell = distinct[row.table].loc[row.label, "accuracy"]
        want = f"{acc:.4f} ± {acc / 10:.4f} ({100 * acc / ref:.1f}%)"
        assert cell == want, (row.table, row.label)


@pytest.mark.slow
def test_demo_is_planned_with_group_64_for_w2_w4():
    rows = plan("demo", ("mixviz_lastword",), 2, "hessian", 2, 64, False, lambda m: None)
    table4 = [r for r in rows if r.table == 4]
    assert {o for r in table4 for o in r.spec.recipe.values()} <= {"W2A16G64", "W4A16G64"}


def test_tables_only_queues_nothing_and_shows_what_is_missing(tmp_path, monkeypatch):
    """``reproduce --tables-only``: the tables from the store as it is, every row not run yet
    saying so, and not one run queued."""
    from mixviz.runs.store import Store

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    store = Store()
    kw = dict(tasks=("mixviz_lastword",), limit=3, nsamples=2, seqlen=32, with_autoscheme=False)
    tables = run_protocol("tiny", **kw, store=store, tables_only=True)
    assert store.list() == []
    assert set(tables[1]["accuracy"]) == {"not run"} and len(tables[1]) == 5
    assert "not run" in (reports_dir("tiny") / "tables.md").read_text()
    from cli import run_cli

    args = ["--limit", "3", "--nsamples", "2", "--seqlen", "32", "--no-autoscheme"]
    r = run_cli("reproduce", "tiny", "--tables-only", *args, env={"MIXVIZ_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "0 of 10 distinct runs done" in r.stderr and "| not run" in r.stdout
    assert store.list() == []
