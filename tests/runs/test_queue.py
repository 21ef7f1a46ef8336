"""The run queue under failure: killed workers, cancels racing the spawner, Ray rows, the
store on network filesystems, shell quoting."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from cli import run_cli
from fakes import wait_for

from mixviz import MixvizError
from mixviz.runs.jobs.backends import LocalBackend, RayBackend, new_run_id, wait, write_spec
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store, runs_dir

QUICK = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXVIZ_DB_JOURNAL", raising=False)
    monkeypatch.delenv("MIXVIZ_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MIXVIZ_MAX_PARALLEL", raising=False)
    return Store()


def _queue(store: Store, spec: RunSpec = QUICK, backend: str = "local") -> str:
    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict(), backend)
    return run_id


def _wait_for(store, run_id, pred, timeout=120):
    return wait_for(store, run_id, pred, timeout)


def _live_workers() -> list[int]:
    """This process's child ``mixviz.runs.jobs.worker`` processes still alive (not zombies)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state != "Z" and b"mixviz.runs.jobs.worker" in cmd:
            out.append(int(d.name))
    return out


def _sleeper() -> subprocess.Popen:
    """A stand-in worker process in its own session (as the spawner starts workers)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )


# --------------------------------------------------------------------- item 12: kill -9


def test_kill9_worker_and_wait_alone_finishes_the_queue(store):
    """Nobody kicks: ``wait`` on the queued run must notice the dead worker AND start the run."""
    backend = LocalBackend(store, max_parallel=1)
    first = backend.submit(
        RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=200)
    )
    second = backend.submit(QUICK)
    assert store.get(second).status == "queued"
    row = _wait_for(store, first, lambda r: r.status == "running" and r.pid)
    os.killpg(row.pid, signal.SIGKILL)
    done = wait(store, second, timeout=240, poll=0.2)
    assert done.status == "done"
    assert store.get(first).status == "lost"
    assert store.results(second)["mixviz_lastword"]["acc"] >= 0


def test_runs_command_starts_the_queue_after_a_dead_worker(store, monkeypatch, capsys):
    from mixviz import cli

    running, queued = _queue(store), _queue(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update(
        running, status="running", pid=dead.pid, started=time.time(), heartbeat=time.time()
    )
    spawned = []
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: spawned.append(run_id))
    assert cli.main(["runs", "--json"]) == 0
    listed = {r["id"]: r["status"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert listed[running] == "lost" and listed[queued] == "starting"
    assert spawned == [queued]


def test_run_wait_timeout_is_a_clear_error_and_leaves_the_run(store):
    # A live, heartbeating run holds the only slot, so the new run stays queued.
    busy = _queue(store)
    store.update(busy, status="running", pid=os.getpid(), heartbeat=time.time() + 3600)
    r = run_cli(
        "run", "tiny", "--bf16", "--tasks", "mixviz_lastword", "--limit", "2",
        "--wait", "--timeout", "1.5", "--json",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "still queued after 1.5 s" in r.stderr and "Traceback" not in r.stderr
    [row] = [x for x in store.list() if x.id != busy]
    assert row.status == "queued"  # left as it was
    r = run_cli("run", "tiny", "--bf16", "--tasks", "mixviz_lastword", "--timeout", "3")
    assert r.returncode == 2 and "--timeout needs --wait" in r.stderr


# --------------------------------------------------------------------- item 15: cancel races


def test_cancel_sees_a_worker_that_starts_while_it_cancels(store):
    """The worker claims the run (running + pid) while cancel is under way: it must be killed."""
    run_id = _queue(store)
    store.update(run_id, status="starting", heartbeat=time.time())  # claimed, pid not known yet
    worker = _sleeper()
    try:
        lock = sqlite3.connect(store.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the worker's transition holds the write lock …
        out = {}
        t = threading.Thread(
            target=lambda: out.setdefault("row", LocalBackend(store).cancel(run_id))
        )
        t.start()
        time.sleep(0.5)  # … while cancel starts
        lock.execute(
            "UPDATE runs SET status = 'running', pid = ?, heartbeat = ? WHERE id = ?",
            (worker.pid, time.time(), run_id),
        )
        lock.execute("COMMIT")
        lock.close()
        t.join(30)
        assert out["row"].status == "cancelled"
        assert worker.wait(timeout=15) is not None  # killed, not left running the run
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_spawner_kills_a_worker_whose_run_was_cancelled_before_its_pid_was_known(
    store, monkeypatch
):
    import mixviz.runs.jobs.local_backend as backends

    run_id = _queue(store)
    started = []

    class Popen(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__([sys.executable, "-c", "import time; time.sleep(120)"], **k)
            started.append(self)
            # cancel lands between the start and the spawner recording the pid
            assert store.cancel(run_id, ("queued", "starting", "running")) is not None

    monkeypatch.setattr(backends.subprocess, "Popen", Popen)
    LocalBackend(store).kick()
    assert store.get(run_id).status == "cancelled"
    assert started and started[0].wait(timeout=15) is not None


def test_many_cancels_right_after_submit(store, monkeypatch):
    """Submits and cancels race from two threads: every run ends cancelled, with no results
    and no worker process left."""
    monkeypatch.setenv("MIXVIZ_MAX_PARALLEL", "3")
    n = 8
    ids: list[str] = []
    submitted = threading.Semaphore(0)
    errors = []

    def submit():
        backend = LocalBackend(Store(store.path))
        for i in range(n):
            ids.append(
                backend.submit(
                    RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2, seed=i)
                )
            )
            submitted.release()

    def cancel():
        backend = LocalBackend(Store(store.path))
        for i in range(n):
            submitted.acquire()
            try:
                backend.cancel(ids[i])
            except MixvizError as e:  # pragma: no cover - reported below
                errors.append(str(e))

    threads = [threading.Thread(target=submit), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    deadline = time.time() + 30
    while _live_workers() and time.time() < deadline:
        time.sleep(0.2)
    assert _live_workers() == []
    time.sleep(1)  # a worker that outlived its cancel would write now
    for run_id in ids:
        row = store.get(run_id)
        assert row.status == "cancelled", row
        assert store.results(run_id) == {}
        assert not (runs_dir() / run_id / "result.json").exists()


def test_results_never_land_on_a_cancelled_run(store):
    run_id = _queue(store)
    store.update(run_id, status="running")
    store.put_results(run_id, [("t", "acc", 0.5, None)])
    assert store.cancel(run_id, ("running",)).status == "running"
    assert store.results(run_id) == {}  # cleared in the cancelling transaction
    assert store.put_results(run_id, [("t", "acc", 0.5, None)]) is False
    assert store.results(run_id) == {}


# --------------------------------------------------------------------- item 13: Ray


class FakeJobs:
    """Stands in for ``ray.job_submission.JobSubmissionClient``; no Ray head needed."""

    instances: list[FakeJobs] = []

    def __init__(self, address):
        self.address = address
        self.status: dict[str, str] = {}
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.on_submit = None
        FakeJobs.instances.append(self)

    def submit_job(self, **kw):
        self.submitted.append(kw)
        self.status[kw["submission_id"]] = "PENDING"
        if self.on_submit:
            self.on_submit(kw["submission_id"])
        return kw["submission_id"]

    def get_job_status(self, job_id):
        return self.status[job_id]

    def get_job_logs(self, job_id):
        return "Traceback …\nMemoryError\n"

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


@pytest.fixture
def fake_ray(monkeypatch):
    ray = types.ModuleType("ray")
    jobs = types.ModuleType("ray.job_submission")
    jobs.JobSubmissionClient = FakeJobs
    ray.job_submission = jobs
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.job_submission", jobs)
    FakeJobs.instances.clear()
    return FakeJobs


def test_ray_submit_does_not_overwrite_a_worker_that_already_runs(store, fake_ray):
    backend = RayBackend("http://head:8265", store)

    def worker_starts(run_id):  # the job starts before submit_job returns
        store.transition(run_id, ("queued", "starting"), status="running", heartbeat=time.time())

    backend.client.on_submit = worker_starts
    run_id = backend.submit(QUICK)
    row = store.get(run_id)
    assert row.status == "running" and row.backend_id == run_id


def test_wait_on_a_crashed_ray_job_ends_lost(store, fake_ray):
    backend = RayBackend("http://head:8265", store)
    run_id = backend.submit(QUICK)
    assert store.get(run_id).status == "starting"
    store.transition(run_id, ("starting",), status="running", heartbeat=time.time())
    backend.client.status[run_id] = "FAILED"  # the worker was OOM-killed
    row = wait(store, run_id, timeout=10, poll=0.05, backend=backend)
    assert row.status == "lost" and "FAILED" in row.error and "MemoryError" in row.error


def test_wait_builds_the_ray_backend_from_the_environment(store, fake_ray, monkeypatch):
    backend = RayBackend("http://head:8265", store)
    run_id = backend.submit(QUICK)
    backend.client.status[run_id] = "STOPPED"
    monkeypatch.setenv("MIXVIZ_RAY_ADDRESS", "http://head:8265")
    monkeypatch.setattr(fake_ray, "get_job_status", lambda self, job_id: "JobStatus.STOPPED")
    assert wait(store, run_id, timeout=10, poll=0.05).status == "lost"


def test_wait_without_ray_gives_up_on_a_silent_ray_worker(store, monkeypatch):
    import mixviz.runs.jobs.backends as backends

    run_id = _queue(store, backend="ray")
    store.update(run_id, status="running", heartbeat=time.time() - 10 * backends.STALE_S)
    row = wait(store, run_id, timeout=10, poll=0.05)
    assert row.status == "lost" and "heartbeat" in row.error


def test_ray_entrypoint_quotes_every_value(store, fake_ray, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python3;rm -rf ~")
    backend = RayBackend("http://head:8265", store)
    run_id = backend.submit(QUICK)
    entry = backend.client.submitted[0]["entrypoint"]
    assert shlex.split(entry) == [sys.executable, "-m", "mixviz.runs.jobs.worker", run_id]


def test_ray_cancel_of_a_run_being_submitted_stops_the_job(store, fake_ray):
    backend = RayBackend("http://head:8265", store)
    backend.client.on_submit = lambda run_id: backend.cancel(run_id)
    run_id = backend.submit(QUICK)
    assert store.get(run_id).status == "cancelled"
    assert run_id in backend.client.stopped


# --------------------------------------------------------------------- item 14: network fs


MOUNTS = r"""/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/share nfs4 rw,relatime,vers=4.2 0 0
/dev/vdb /mnt/share/scratch ext4 rw 0 0
//nas/runs /mnt/my\040nas cifs rw 0 0
me@host:/data /mnt/sshfs fuse.sshfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
fuse-overlayfs /mnt/overlay fuse.fuse-overlayfs rw 0 0
"""


@pytest.fixture
def mounts(tmp_path, monkeypatch):
    import mixviz.runs.store as store_mod

    f = tmp_path / "mounts"
    f.write_text(MOUNTS)
    monkeypatch.setattr(store_mod, "MOUNTS_FILE", str(f))
    monkeypatch.delenv("MIXVIZ_DB_JOURNAL", raising=False)
    return f


@pytest.mark.parametrize(
    "path, fstype, network",
    [
        ("/mnt/share/cache/mixviz.db", "nfs4", True),
        ("/mnt/share/scratch/cache/mixviz.db", "ext4", False),  # the longest prefix wins
        ("/mnt/sharex/mixviz.db", "ext4", False),  # a prefix of a name is not a parent
        ("/mnt/my nas/cache/mixviz.db", "cifs", True),  # \040 is a space
        ("/mnt/sshfs/mixviz.db", "fuse.sshfs", True),
        ("/mnt/overlay/mixviz.db", "fuse.fuse-overlayfs", False),
        ("/tmp/x/mixviz.db", "tmpfs", False),
    ],
)
def test_mount_detection_with_a_fake_mounts_file(mounts, path, fstype, network):
    from mixviz.runs.store import is_network_fs, mount_of

    assert mount_of(path)[1] == fstype
    assert is_network_fs(fstype) is network


def test_store_refuses_wal_on_a_network_filesystem(mounts, tmp_path, monkeypatch):
    # the store folder (tmp_path) is declared an NFS mount in the fake mounts file
    mounts.write_text(MOUNTS + f"server:/x {tmp_path} nfs rw 0 0\n")
    with pytest.raises(MixvizError, match="network filesystem.*nfs.*MIXVIZ_DB_JOURNAL=delete"):
        Store(tmp_path / "cache" / "mixviz.db")
    assert not (tmp_path / "cache" / "mixviz.db").exists()  # nothing written
    monkeypatch.setenv("MIXVIZ_DB_JOURNAL", "delete")
    s = Store(tmp_path / "cache" / "mixviz.db")
    s.insert("a", "k", "tiny", "bf16", {})
    assert s.get("a").status == "queued"
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not Path(str(s.path) + "-wal").exists()
    monkeypatch.setenv("MIXVIZ_DB_JOURNAL", "bogus")
    with pytest.raises(MixvizError, match="MIXVIZ_DB_JOURNAL"):
        Store(tmp_path / "cache" / "mixviz.db")


def test_store_on_local_disk_keeps_wal(mounts, tmp_path):
    mounts.write_text(MOUNTS + f"/dev/vdc {tmp_path} ext4 rw 0 0\n")
    s = Store(tmp_path / "cache" / "mixviz.db")
    s.insert("a", "k", "tiny", "bf16", {})
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_cuda_run_asks_ray_for_one_gpu(store, fake_ray):
    backend = RayBackend("http://head:8265", store)
    backend.submit(QUICK)
    backend.submit(dataclasses.replace(QUICK, device="cuda"))
    cpu, gpu = backend.client.submitted
    assert "entrypoint_num_gpus" not in cpu and gpu["entrypoint_num_gpus"] == 1
    # and the host memory the model needs: tiny's float32 weights twice, one batch of logits
    # (and its log-softmax) over its vocabulary, the runtime; on CUDA its bf16 weights once
    from mixviz.runs.jobs.ray_backend import LOGITS_TOKENS, RUNTIME_BYTES

    # tiny, by hand: embedding and untied head; 4 blocks of q/o (64×64), k/v (2 heads of 16),
    # gate/up/down (64×128) and two norms; the final norm
    params = 2 * 512 * 64 + 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    logits = 2 * QUICK.batch_size * LOGITS_TOKENS * 512 * 4
    assert cpu["entrypoint_memory"] == RUNTIME_BYTES + 2 * 4 * params + logits
    assert gpu["entrypoint_memory"] == RUNTIME_BYTES + 2 * params
    with pytest.raises(MixvizError, match="device cuda, not cuda:1"):
        backend.submit(dataclasses.replace(QUICK, device="cuda:1"))
    assert len(backend.client.submitted) == 2
