"""Bad input, locked or read-only stores, restarts: clear errors and nothing lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.paths import MAX_BYTES, read_json, safe_filename
from mixviz.runs.jobs.backends import LocalBackend, new_run_id, write_spec
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store
from mixviz.sensitivity.profile import profiles_dir

REPO = Path(__file__).resolve().parents[2]


_cli = run_cli


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return Store()


@pytest.mark.parametrize(
    "bits, message",
    [
        ("abc", "must be a number"),
        ("nan", "finite number"),
        ("2", "outside the feasible range"),
        ("99", "outside the feasible range"),
    ],
)
def test_cli_bad_budget_is_one_line(bits, message):
    r = _cli("allocate", "tiny", "--avg-bits", bits, "--nsamples", "2", "--seqlen", "32")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1


@pytest.mark.parametrize("body", ["", "   \n\n"])
def test_cli_empty_calibration_text(tmp_path, body):
    f = tmp_path / "empty.txt"
    f.write_text(body)
    r = _cli("profile", "tiny", "--calib", str(f), "--nsamples", "2", "--seqlen", "32")
    assert r.returncode == 2 and "holds no text" in r.stderr and "Traceback" not in r.stderr


def test_oversized_upload_is_refused(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(MixvizError, match="larger than"):
        read_json(big, "recipe")


def test_user_names_never_become_paths():
    for evil in ("../../etc/passwd", "/abs/path", "a/../../b", "..", ""):
        name = safe_filename(evil)
        assert "/" not in name and not name.startswith(".")
        assert (profiles_dir() / f"{name}.json").resolve().parent == profiles_dir().resolve()


def test_locked_database_is_a_clear_error_and_data_survives(store, monkeypatch):
    store.insert("keep", "k", "tiny", "bf16", {"x": 1})
    monkeypatch.setenv("MIXVIZ_DB_TIMEOUT", "0.5")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(MixvizError, match="busy or read-only"):
            Store(store.path).insert("new", "k2", "tiny", "bf16", {})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get("keep").spec == {"x": 1}
    assert [r.id for r in store.list()] == ["keep"]


def test_unwritable_cache_folder(tmp_path, monkeypatch):
    """A cache folder that cannot be written (a file in its way; root ignores chmod)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MIXVIZ_CACHE", str(blocker / "cache"))
    with pytest.raises(MixvizError, match="cannot create the run store"):
        Store()
    r = _cli("runs")
    assert r.returncode == 2 and "cannot create the run store" in r.stderr


def test_read_only_store_file_keeps_its_data(store):
    store.insert("keep", "k", "tiny", "bf16", {"x": 1})
    store.path.chmod(0o444)
    try:
        assert Store(store.path).get("keep").spec == {"x": 1}  # reading still works
        if os.geteuid() != 0:
            with pytest.raises(MixvizError, match="busy or read-only"):
                Store(store.path).insert("new", "k2", "tiny", "bf16", {})
    finally:
        store.path.chmod(0o644)


def test_two_sessions_submit_at_once_one_runs(store, monkeypatch):
    backend = LocalBackend(store)
    spawned = []
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: spawned.append(run_id))
    ids = []
    barrier = threading.Barrier(2)

    def submit(seed):  # two different specs: identical ones are one run (test_one_run_per_spec)
        spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2, seed=seed)
        barrier.wait()
        ids.append(LocalBackend(Store(store.path)).submit(spec))

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(store.get(i).status for i in ids)
    assert len(set(ids)) == 2 and statuses == ["queued", "starting"] and len(spawned) == 1
    del backend


def test_app_restart_marks_dead_runs_lost_and_starts_the_queue(store, monkeypatch):
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2)
    running, queued = new_run_id(), new_run_id() + "b"
    for run_id in (running, queued):
        write_spec(run_id, spec)
        store.insert(run_id, spec.key, "tiny", spec.label, spec.to_dict())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update(
        running, status="running", pid=dead.pid, started=time.time(), heartbeat=time.time()
    )
    spawned = []
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: spawned.append(run_id))
    LocalBackend(store).kick()  # what the app does when it comes back
    assert store.get(running).status == "lost"
    assert "disappeared" in store.get(running).error
    assert spawned == [queued]


def test_newer_store_schema_is_refused(store):
    con = sqlite3.connect(store.path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(MixvizError, match="newer than this mixviz"):
        Store(store.path)


def test_corrupt_run_spec_fails_the_run_not_the_store(store):
    from mixviz.runs.jobs.worker import execute

    run_id = new_run_id()
    folder = Path(os.environ["MIXVIZ_CACHE"]) / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"format": "nope"}))
    store.insert(run_id, "k", "tiny", "x", {})
    assert execute(run_id, store, kick=False) == "failed"
    assert "not a mixviz run spec" in store.get(run_id).error
