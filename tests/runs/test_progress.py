"""The progress line: an estimate from completed work that never grows at a steady pace, an
elapsed clock that ticks between polls, and auto-round's block count while quantizing."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest

from mixviz.runs.progress import MIN_FRACTION, Pace, eta_text, promise, time_left
from mixviz.runs.store import SCHEMA_VERSION, Store


def steady_polls(total: int, unit_s: float, start_s: float, poll_s: float):
    """(now, estimate) at every poll of a job that loads for ``start_s`` then finishes a unit
    every ``unit_s`` seconds — the estimate as the Runs page computes it from the row."""
    out, done, progressed = [], 0, None
    now = 0.0
    while done < total:
        now += poll_s
        while start_s + (done + 1) * unit_s <= now and done < total:
            done += 1
            progressed = start_s + done * unit_s
        out.append((now, done, time_left(done / total, 0.0, progressed, now)))
    return out


@pytest.mark.parametrize("unit_s, poll_s", [(70.0, 2.0), (3.0, 2.0), (0.5, 2.0)])
def test_estimate_never_grows_at_a_steady_pace(unit_s, poll_s):
    polls = steady_polls(total=40, unit_s=unit_s, start_s=25.0, poll_s=poll_s)
    shown = [(t, left) for t, _, left in polls if left is not None]
    assert len(shown) > 5
    for (t0, a), (t1, b) in zip(shown, shown[1:], strict=False):
        assert b <= a + 1e-9, f"grew from {a:.1f} s at {t0} to {b:.1f} s at {t1}"
    # and it is about right: the last shown estimate is within a unit of the truth
    t_end = 25.0 + 40 * unit_s
    t, left = shown[-1]
    assert abs(t + left - t_end) <= unit_s + poll_s


def uneven_polls(units: list[float], poll_s: float = 1.0):
    """(now, shown estimate) at every poll of a job whose units take ``units`` seconds each,
    the promise kept as the store and :class:`Pace` keep it."""
    ends = [sum(units[: i + 1]) for i in range(len(units))]
    out, done, finish_by, progressed, now = [], 0, None, None, 0.0
    while done < len(units):
        now += poll_s
        while done < len(units) and ends[done] <= now:
            progressed = ends[done]
            done += 1
            finish_by = promise(done / len(units), 0.0, progressed, finish_by)
        out.append((now, time_left(done / len(units), 0.0, progressed, now, finish_by)))
    return out


def test_a_slow_unit_after_fast_ones_does_not_raise_the_estimate():
    """Issue 35's 10 % · ~8:18 left → 10 % · ~20:21 left: 20 units of 2 s, one of 20 s (a
    stage boundary), then 2 s each again. After the slow unit the pace alone says ~54 s
    left; the promise made at 40 s (finish by 80 s) keeps counting down instead."""
    polls = dict(uneven_polls([2.0] * 20 + [20.0] + [2.0] * 19))
    assert time_left(21 / 40, 0.0, 60.0, 60.0) == pytest.approx(54.3, abs=0.1)  # the old way
    assert [polls[t] for t in (40.0, 59.0, 60.0, 61.0)] == pytest.approx([40, 21, 20, 19])
    shown = sorted((t, left) for t, left in polls.items() if left is not None)
    for (t0, a), (t1, b) in zip(shown, shown[1:], strict=False):  # it grows only once run out
        assert b <= a + 1e-9 or t0 + a <= t1, f"grew from {a:.1f} s at {t0} to {b:.1f} s at {t1}"


def test_after_the_promise_runs_out_the_next_unit_makes_a_new_one():
    """A 60 s unit after 20 of 2 s: the promise (finish by 80 s) counts down second by second,
    runs out (no number), and the unit that ends at 100 s gives a new one."""
    polls = dict(uneven_polls([2.0] * 20 + [60.0] + [2.0] * 19))
    assert [polls[t] for t in range(41, 80)] == pytest.approx([80 - t for t in range(41, 80)])
    assert all(polls[t] is None for t in range(80, 100))
    assert polls[100.0] == pytest.approx(100.0 * 19 / 21)


def test_pace_keeps_its_promise_through_a_slow_unit():
    pace = Pace(started=0.0, msg="blocks")
    for i in range(1, 5):  # 4 of 10 blocks, 10 s each: 60 s left at 40 s
        pace.update(i, 10, f"block {i}", now=10.0 * i)
    assert pace.line(now=40.0).endswith("~1:00 left")
    pace.update(5, 10, "block 5", now=60.0)  # a 20 s block: the pace says 60 s more
    assert pace.line(now=60.0).endswith("~0:40 left")  # the promise of 100 s stands
    assert pace.line(now=99.0).endswith("~0:01 left")
    assert "left" not in pace.line(now=101.0)  # run out: no number until the next block
    pace.update(6, 10, "block 6", now=120.0)
    assert pace.line(now=120.0).endswith("~1:20 left")  # a new, later promise


def test_the_store_keeps_the_promise_in_the_update_that_stamps_progressed(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs.db")
    store.insert("r1", "k", "tiny", "optimal @5", {})
    store.transition("r1", ("queued",), status="running", started=0.0, progress=0.0)
    clock = iter([40.0, 60.0, 120.0])
    monkeypatch.setattr("mixviz.runs.store.time.time", lambda: next(clock))
    store.update("r1", progress=0.4)  # at 40 s: finish by 100
    assert store.get("r1").finish_by == pytest.approx(100.0)
    store.update("r1", stage="kld", progress=0.4)  # no new unit: nothing moves
    store.update("r1", progress=0.5)  # at 60 s, slow: the pace says 120, the promise stays
    row = store.get("r1")
    assert row.progressed == 60.0 and row.finish_by == pytest.approx(100.0)
    assert time_left(row.progress, row.started, row.progressed, 60.0, row.finish_by) == 40.0
    assert time_left(row.progress, row.started, row.progressed, 101.0, row.finish_by) is None
    store.update("r1", progress=0.6)  # at 120 s, after it ran out: a new promise, 200
    assert store.get("r1").finish_by == pytest.approx(200.0)


def test_the_old_estimate_grew_between_units():
    """What issue 35 saw (10 % · 0:55, ~8:18 left → 10 % · 2:16, ~20:21 left): pace measured
    up to *now* stretches while a long unit runs; the estimate from completed work does not."""
    assert eta_text(0.1, 0.0, now=55.0) != eta_text(0.1, 0.0, now=136.0)
    grown = [time_left(0.1, 0.0, None, now) for now in (55.0, 136.0)]
    kept = [time_left(0.1, 0.0, 50.0, now) for now in (55.0, 136.0)]
    assert grown[1] > grown[0]
    assert kept[1] < kept[0]


def test_no_estimate_before_enough_work():
    assert time_left(0.0, 0.0, None, 100.0) is None
    assert time_left(MIN_FRACTION / 2, 0.0, 50.0, 100.0) is None
    assert time_left(MIN_FRACTION, 0.0, 50.0, 60.0) is not None
    assert "left" not in eta_text(MIN_FRACTION / 2, 0.0, now=100.0, progressed=99.0)


def test_pace_line_ticks_without_work():
    pace = Pace(started=0.0, msg="loading")
    assert pace.line(now=1.0) == "loading · 0:01 elapsed"
    assert pace.line(now=3.0) == "loading · 0:03 elapsed"
    pace.update(1, 10, "fisher forward 1/16", now=10.0)
    assert pace.line(now=12.0) == "fisher forward 1/16 · 0:12 elapsed, ~1:28 left"
    pace.update(1, 10, "fisher backward", now=20.0)  # no unit done: the pace stays
    assert pace.line(now=20.0).endswith("~1:20 left")


def elapsed_s(text: str) -> int:
    m, s = re.match(r"(\d+):(\d\d) elapsed", text).groups()
    return int(m) * 60 + int(s)


def test_a_running_rows_line_advances_between_polls(tmp_path):
    """A worker writes progress as units finish; two polls of the store 2 s apart show the
    elapsed clock moved on, the bar moved, and the estimate did not grow."""
    store = Store(tmp_path / "runs.db")
    store.insert("r1", "k", "tiny", "optimal @5", {})
    store.transition("r1", ("queued",), status="running", started=time.time(), progress=0.0)
    stop = threading.Event()

    def worker() -> None:  # a unit every 0.3 s, as a KLD reference writes its windows
        i = 0
        while not stop.wait(0.3) and i < 100:
            i += 1
            store.update("r1", progress=i / 100, stage=f"kld reference, window {i}/100")

    t = threading.Thread(target=worker)
    t.start()
    try:
        time.sleep(1.0)
        first = store.get("r1")
        line1 = eta_text(first.progress, first.started, progressed=first.progressed)
        time.sleep(2.0)
        second = store.get("r1")
        line2 = eta_text(second.progress, second.started, progressed=second.progressed)
    finally:
        stop.set()
        t.join()
    assert elapsed_s(line2) >= elapsed_s(line1) + 2
    assert second.progress > first.progress and second.stage != first.stage
    assert second.progressed > first.progressed
    left = [time_left(r.progress, r.started, r.progressed, now) for r, now in
            ((first, first.progressed), (second, second.progressed))]  # fmt: skip
    assert left[0] is not None and left[1] < left[0] + 0.5  # steady pace: no growth


def test_a_version_1_store_gains_progressed(tmp_path):
    path = tmp_path / "runs.db"
    Store(path).insert("old", "k", "tiny", "bf16", {})
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE runs DROP COLUMN progressed")
    con.execute("ALTER TABLE runs DROP COLUMN finish_by")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    store = Store(path)
    assert store.get("old").progressed is None
    store.update("old", progress=0.5)
    assert store.get("old").progressed is not None
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_a_version_2_store_gains_finish_by(tmp_path):
    path = tmp_path / "runs.db"
    Store(path).insert("old", "k", "tiny", "bf16", {})
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET status = 'running', started = ?", (time.time() - 10,))
    con.execute("ALTER TABLE runs DROP COLUMN finish_by")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    store = Store(path)
    assert store.get("old").finish_by is None
    store.update("old", progress=0.5)
    assert store.get("old").finish_by > store.get("old").progressed
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    con.close()


def test_quantizing_reports_auto_rounds_blocks():
    pytest.importorskip("auto_round")
    from auto_round.compressors import orchestrator

    from mixviz.runs.evaluation.quantize import block_progress

    seen = []
    with block_progress(lambda i, n: seen.append((i, n))):
        bar = orchestrator.tqdm(range(3), disable=True)
        for _ in range(3):
            bar.update(1)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert orchestrator.tqdm.__name__ == "tqdm"  # put back


def test_a_checkpoint_jobs_evaluation_leaves_room_for_its_ship_stages(tmp_path):
    """The KLD of a quantize job reports up to 0.7, below the ship stages' first 0.72: its bar
    never falls back (a plain run's evaluation still ends at 1.0)."""
    from mixviz.runs.evaluation.tasks import KLD_TASK
    from mixviz.runs.jobs import steps
    from mixviz.runs.runspec import RunSpec, ShipArgs

    store = Store(tmp_path / "runs.db")
    recipe = {"model.layers.0.mlp.up_proj": "W4A16G32"}
    for ship, top in ((ShipArgs("auto_round", str(tmp_path / "out")), 0.7), (None, 1.0)):
        spec = RunSpec(model="tiny", recipe=recipe, tasks=(KLD_TASK,), ship=ship, limit=2)
        run_id = f"run-{top}"
        store.insert(run_id, spec.key, "tiny", spec.label, spec.to_dict())
        report = steps._progress_writer(store, run_id, spec)
        for done in (0.5, 1.0):
            report(done, f"evaluating {KLD_TASK}")
        assert store.get(run_id).progress == pytest.approx(top)


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_store_migrated_by_another_process_first_still_opens(tmp_path, version):
    """Two processes opening one old store at once: the second finds the columns added."""
    path = tmp_path / "runs.db"
    Store(path).insert("old", "k", "tiny", "bf16", {})
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {version}")  # old on disk, the columns already there
    con.commit()
    con.close()
    store = Store(path)  # raised "run store busy or read-only … duplicate column" before
    store.update("old", progress=0.5)
    assert store.get("old").progressed is not None
