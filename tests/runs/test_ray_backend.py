"""The Ray backend against a real local Ray head: a run completes, a cancel stops its Ray job,
and a job that dies behind the store's back is found by ``reconcile()``.

One head serves every Ray test of the session (the ``ray_head`` fixture, :mod:`rayhead`).
Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal

import pytest
from rayhead import until
from test_tasks import lastword_direct

from mixviz.runs.evaluation.tasks import lastword_items
from mixviz.runs.jobs.backends import RayBackend, alive, wait
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store

pytestmark = pytest.mark.ray

TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")


@pytest.fixture(scope="module")
def ray_address(ray_head):
    return ray_head.dashboard


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return Store()


@pytest.fixture
def backend(ray_address, store):
    return RayBackend(ray_address, store)


def _job_status(backend: RayBackend, run_id: str) -> str:
    return str(backend.client.get_job_status(run_id)).rsplit(".", 1)[-1]


def _running(backend: RayBackend, run_id: str):
    """Wait until the worker under Ray has claimed the run (status running, pid recorded)."""

    def claimed():
        row = backend.store.get(run_id)
        assert row.status in ("queued", "starting", "running"), (row.status, row.error)
        return row if row.status == "running" and row.pid else None

    return until(f"run {run_id} to run", claimed, timeout=180)


def _long_spec() -> RunSpec:
    return RunSpec(model="tiny", recipe=None, tasks=("mixviz_ppl", "mixviz_lastword"), limit=200)


def test_run_completes_with_the_numbers_of_the_model(backend, store, tiny_ref):
    from mixviz.models.loading import load_model

    run_id = backend.submit(RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=4))
    row = wait(store, run_id, timeout=600, poll=2, backend=backend)
    assert row.status == "done", (row.error, backend.client.get_job_logs(run_id)[-2000:])
    assert until("the Ray job to end", lambda: _job_status(backend, run_id) in TERMINAL, 60)
    assert _job_status(backend, run_id) == "SUCCEEDED"
    model, tok = load_model(tiny_ref)
    want = lastword_direct(model, tok, lastword_items()[:4])
    got = store.results(run_id)["mixviz_lastword"]
    assert got.pop("items") == 4
    assert got == pytest.approx(want, rel=1e-4)


def test_cancel_stops_the_ray_job(backend, store):
    run_id = backend.submit(_long_spec())
    pid = _running(backend, run_id).pid
    assert backend.cancel(run_id).status == "cancelled"
    until("the Ray job to stop", lambda: _job_status(backend, run_id) in TERMINAL, 90)
    assert _job_status(backend, run_id) == "STOPPED"
    until("the worker process to end", lambda: not alive(pid), 30)
    assert backend.reconcile() == []
    row = store.get(run_id)
    assert row.status == "cancelled" and store.results(run_id) == {}


def test_job_stopped_behind_the_stores_back_is_lost(backend, store):
    run_id = backend.submit(_long_spec())
    _running(backend, run_id)
    backend.client.stop_job(run_id)  # not through the backend: the store still says running
    lost = until("reconcile() to mark the run lost", lambda: run_id in backend.reconcile(), 90, 1)
    assert lost
    row = store.get(run_id)
    assert row.status == "lost" and "Ray job ended STOPPED" in row.error


def test_killed_worker_is_lost(backend, store):
    run_id = backend.submit(_long_spec())
    pid = _running(backend, run_id).pid
    os.kill(pid, signal.SIGKILL)  # the worker this test's run started (an OOM kill, say)
    row = wait(store, run_id, timeout=90, poll=1, backend=backend)  # wait() reconciles
    assert row.status == "lost" and "Ray job ended FAILED" in row.error
    assert _job_status(backend, run_id) == "FAILED"


def test_worker_failure_is_kept_not_turned_lost(backend, store):
    """A spec the worker fails on (the model changed since queueing): the worker records
    ``failed`` with its reason, the Ray job fails, and reconcile() leaves the row alone."""
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), model_hash="0" * 16)
    run_id = backend.submit(spec)
    row = wait(store, run_id, timeout=300, poll=1, backend=backend)
    assert row.status == "failed" and "changed since the run was queued" in row.error
    until("the Ray job to end", lambda: _job_status(backend, run_id) in TERMINAL, 60)
    assert _job_status(backend, run_id) == "FAILED"
    assert backend.reconcile() == []
    assert store.get(run_id).status == "failed"
