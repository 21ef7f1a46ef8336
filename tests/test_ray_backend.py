"""The Ray backend against a real local Ray head: a run completes, a cancel stops its Ray job,
and a job that dies behind the store's back is found by ``reconcile()``.

One head serves the module. It runs as ``ray start --head --block`` in its own session, with its
own temporary folder and free ports, so it neither meets another head on this machine nor
needs ``ray stop`` (which stops every Ray process of the user): teardown signals the head's
process group only. Every wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_tasks import lastword_direct

from mixviz.runs.backends import RayBackend, alive, wait
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store
from mixviz.runs.tasks import lastword_items

pytestmark = pytest.mark.ray

TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(what: str, check, timeout: float, poll: float = 0.5):
    """``check()`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


@pytest.fixture(scope="module")
def ray_address():
    pytest.importorskip("ray.job_submission")
    from ray.job_submission import JobSubmissionClient

    ray = Path(sys.executable).parent / "ray"
    temp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")  # short: Ray's socket paths live here
    dashboard = _free_port()
    ports = {
        "--dashboard-port": dashboard,
        "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
    }
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115 — closed in teardown
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--port=0",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            *(f"{k}={v}" for k, v in ports.items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    address = f"http://127.0.0.1:{dashboard}"

    def ready():
        if head.poll() is not None:
            raise AssertionError(
                f"ray start exited {head.returncode}: "
                + (Path(temp) / "head.log").read_text(errors="replace")[-2000:]
            )
        try:
            JobSubmissionClient(address).list_jobs()
        except Exception:
            return False
        return True

    try:
        _until("the Ray head", ready, timeout=180, poll=1)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


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

    return _until(f"run {run_id} to run", claimed, timeout=180)


def _long_spec() -> RunSpec:
    return RunSpec(model="tiny", recipe=None, tasks=("mixviz_ppl", "mixviz_lastword"), limit=200)


def test_run_completes_with_the_numbers_of_the_model(backend, store, tiny_ref):
    from mixviz.models.loading import load_model

    run_id = backend.submit(RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=4))
    row = wait(store, run_id, timeout=600, poll=2, backend=backend)
    assert row.status == "done", (row.error, backend.client.get_job_logs(run_id)[-2000:])
    assert _until("the Ray job to end", lambda: _job_status(backend, run_id) in TERMINAL, 60)
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
    _until("the Ray job to stop", lambda: _job_status(backend, run_id) in TERMINAL, 90)
    assert _job_status(backend, run_id) == "STOPPED"
    _until("the worker process to end", lambda: not alive(pid), 30)
    assert backend.reconcile() == []
    row = store.get(run_id)
    assert row.status == "cancelled" and store.results(run_id) == {}


def test_job_stopped_behind_the_stores_back_is_lost(backend, store):
    run_id = backend.submit(_long_spec())
    _running(backend, run_id)
    backend.client.stop_job(run_id)  # not through the backend: the store still says running
    lost = _until("reconcile() to mark the run lost", lambda: run_id in backend.reconcile(), 90, 1)
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
    _until("the Ray job to end", lambda: _job_status(backend, run_id) in TERMINAL, 60)
    assert _job_status(backend, run_id) == "FAILED"
    assert backend.reconcile() == []
    assert store.get(run_id).status == "failed"
