"""One spec, one run, from every door: the CLI's ``run``, ``reproduce``, the app and concurrent
submitters all reuse a queued, running or finished run with the same ``RunSpec.key``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from cli import REPO, run_cli

from mixviz.runs.jobs.backends import LocalBackend, submit, wait
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store, runs_dir

QUICK = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2)
RUN = ["run", "tiny", "--bf16", "--tasks", "mixviz_lastword", "--limit", "2", "--no-kld"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    for var in ("MIXVIZ_DB_JOURNAL", "MIXVIZ_RAY_ADDRESS", "MIXVIZ_MAX_PARALLEL"):
        monkeypatch.delenv(var, raising=False)
    return {"MIXVIZ_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def no_workers(monkeypatch):
    """Queued runs are claimed (``starting``) but no worker process starts."""
    spawned: list[str] = []
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: spawned.append(run_id))
    return spawned


def test_the_same_run_twice_from_the_cli_is_one_run(cache):
    first = run_cli(*RUN, "--json", env=cache)
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert one["reused"] is False and one["status"] == "queued"
    second = run_cli(*RUN, "--json", env=cache)
    assert second.returncode == 0, second.stderr
    two = json.loads(second.stdout)
    assert two["id"] == one["id"] and two["reused"] is True
    assert f"same as run {one['id']} (" in second.stderr
    store = Store()
    assert [r.id for r in store.list()] == [one["id"]]
    assert sorted(p.name for p in runs_dir().iterdir()) == [one["id"]]  # no stray folder
    assert wait(store, one["id"], timeout=300, poll=0.2).status == "done"

    # --wait on the finished identical run: its results at once, no worker started
    t0 = time.time()
    done = run_cli(*RUN, "--wait", "--json", env=cache)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["id"] == one["id"] and doc["reused"] and doc["status"] == "done"
    assert f"same as run {one['id']} (done): reusing its results" in done.stderr
    assert doc["results"]["mixviz_lastword"]["acc"] >= 0
    assert store.get(one["id"]).finished < t0  # it is the old run, not a new one

    forced = run_cli(*RUN, "--force", "--json", env=cache)
    assert forced.returncode == 0, forced.stderr
    fresh = json.loads(forced.stdout)
    assert fresh["id"] != one["id"] and fresh["reused"] is False
    assert len(store.list()) == 2
    wait(store, fresh["id"], timeout=300, poll=0.2)


def test_a_reused_run_gains_the_new_label(cache, no_workers):
    backend = LocalBackend(Store())
    pure = RunSpec(**{**_fields(QUICK), "recipe": {"model.layers.0.mlp.up_proj": "MXFP4"}})
    a = submit(backend, pure)
    b = submit(backend, RunSpec(**{**_fields(pure), "strategy": "uniform", "budget": 5.0}))
    assert b.id == a.id and b.reused and not a.reused
    assert Store().get(a.id).label == "uniform MXFP4 = uniform @5"
    again = submit(backend, pure)  # a name it already has is not added twice
    assert again.id == a.id and Store().get(a.id).label == "uniform MXFP4 = uniform @5"
    assert no_workers == [a.id]


def test_failed_and_cancelled_runs_are_not_reused(cache, no_workers):
    store = Store()
    backend = LocalBackend(store)
    first = submit(backend, QUICK)
    store.update(first.id, status="failed")
    second = submit(backend, QUICK)
    assert second.id != first.id and not second.reused
    backend.cancel(second.id)
    third = submit(backend, QUICK)
    assert third.id not in (first.id, second.id) and not third.reused


def test_a_done_run_is_reused_before_a_newer_queued_duplicate(cache, no_workers):
    store = Store()
    backend = LocalBackend(store)
    old = submit(backend, QUICK)
    store.update(old.id, status="done")
    forced = submit(backend, QUICK, force=True)
    assert forced.id != old.id
    assert submit(backend, QUICK).id == old.id


def test_concurrent_submits_from_processes_make_one_run(cache):
    """Four processes submit the same spec at the same instant: one run, one worker claim."""
    script = textwrap.dedent(
        """
        import sys, time
        from mixviz.runs.jobs.backends import LocalBackend, submit
        from mixviz.runs.runspec import RunSpec
        from mixviz.runs.store import Store
        LocalBackend._spawn = lambda self, run_id: None  # claim, start nothing
        spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2)
        backend = LocalBackend(Store())
        start = float(sys.argv[1])
        while time.time() < start:
            time.sleep(0.001)
        sub = submit(backend, spec)
        print(sub.id, sub.reused)
        """
    )
    start = time.time() + 3.0
    env = {**os.environ, **cache, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = {o[0] for o in outs}
    assert len(ids) == 1, outs
    assert sorted(o[1] for o in outs) == ["False", "True", "True", "True"]
    rows = Store().list()
    assert [r.id for r in rows] == list(ids) and rows[0].status == "starting"


def test_reproduce_after_a_run_of_one_of_its_specs_reuses_it(cache, no_workers):
    from mixviz.report import reproduce

    args = ["--tasks", "mixviz_lastword", "--limit", "3", "--json"]
    r = run_cli("run", "tiny", "--bf16", *args, env=cache)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["id"]
    store = Store()
    wait(store, run_id, timeout=300, poll=0.2)
    assert store.get(run_id).status == "done"

    tasks = ("mixviz_lastword", "mixviz_kld")  # as `run` adds KLD by default
    rows = reproduce.plan("tiny", tasks, 3, "hessian", 2, 32, False, lambda m: None)
    bf16 = next(row for row in rows if row.label == "BF16")
    runs = reproduce.submit(rows, store)
    assert runs[bf16.spec.key].id == run_id  # reused, not queued again
    assert store.get(run_id).label == "bf16"  # the same name both ways
    queued = [x for x in store.list() if x.id != run_id]
    assert len(queued) == len({row.spec.key for row in rows}) - 1
    assert reproduce.submit(rows, store).keys() == runs.keys()
    assert len(store.list()) == len(queued) + 1  # a second reproduce queues nothing new


def _fields(spec: RunSpec) -> dict:
    return {k: getattr(spec, k) for k in spec.__dataclass_fields__}
