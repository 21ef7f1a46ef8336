"""The local backend: one detached worker process per run on this machine, started from a
queue in the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mixviz.errors import MixvizError
from mixviz.paths import REPO_ROOT, worker_env
from mixviz.runs.jobs.logs import log_path
from mixviz.runs.jobs.submission import ACTIVE, Submitted, store_once
from mixviz.runs.liveness import HOST, STALE_S, alive, kill_group, on_this_host
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.staging import discard
from mixviz.runs.store import RunRow, Store


class LocalBackend:
    """One detached worker process per run, ``max_parallel`` at a time (1 by default)."""

    name = "local"

    def __init__(self, store: Store | None = None, max_parallel: int | None = None):
        self.store = store or Store()
        self.max_parallel = max_parallel or int(os.environ.get("MIXVIZ_MAX_PARALLEL", "1"))

    def submit(self, spec: RunSpec, force: bool = False) -> str:
        """:func:`submit`'s run id."""
        return self.enqueue(spec, force).id

    def enqueue(self, spec: RunSpec, force: bool = False) -> Submitted:
        sub = store_once(self.store, spec, self.name, force)
        if not sub.reused:
            self.kick()
        return sub

    def kick(self) -> list[str]:
        """Mark dead workers ``lost``, then start queued runs while fewer than ``max_parallel``
        are running; returns the runs started."""
        self._mark_lost()
        return self._start_queued()

    def _start_queued(self) -> list[str]:
        started = []
        while True:
            with self.store.tx() as con:
                busy = con.execute(
                    "SELECT COUNT(*) FROM runs WHERE backend = 'local' AND "
                    "status IN ('starting', 'running')"
                ).fetchone()[0]
                if busy >= self.max_parallel:
                    break
                row = con.execute(
                    "SELECT id FROM runs WHERE backend = 'local' AND status = "
                    "'queued' ORDER BY created, id LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                run_id = row["id"]
                con.execute(
                    "UPDATE runs SET status = 'starting', stage = 'starting', "
                    "heartbeat = ? WHERE id = ?",
                    (time.time(), run_id),
                )
            self._spawn(run_id)
            started.append(run_id)
        return started

    def _spawn(self, run_id: str) -> None:
        log = open(log_path(run_id), "ab")  # noqa: SIM115 — handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mixviz.runs.jobs.worker", run_id],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=worker_env(),
                cwd=str(REPO_ROOT),
            )
        except OSError as e:
            self.store.transition(
                run_id,
                ("starting",),
                status="failed",
                error=f"could not start worker: {e}",
                finished=time.time(),
            )
            return
        finally:
            log.close()
        # Record the pid only while the run is still live; a cancel that came first found no
        # pid to stop, so the spawner stops the worker (which would also refuse to run: it
        # claims the run with a guarded transition).
        if not self.store.transition(
            run_id, ("starting", "running"), pid=proc.pid, backend_id=f"{HOST}:{proc.pid}"
        ):
            kill_group(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def cancel(self, run_id: str) -> RunRow:
        """Race-free: the run becomes ``cancelled`` and its pid is read in one transaction; then
        its process group is stopped. A worker that claims the run later finds it cancelled."""
        before = self.store.cancel(run_id, ACTIVE)
        if before is None:
            raise MixvizError(f"run {run_id} is already {self.store.get(run_id).status}")
        if before.pid and before.status != "queued" and on_this_host(before):
            kill_group(before.pid)
            discard(run_id, before.spec)  # a checkpoint it was writing never reaches --out
        self.kick()
        return self.store.get(run_id)

    def reconcile(self) -> list[str]:
        """Runs whose worker is gone (killed, OOM, machine restarted) become ``lost``, and the
        queue moves on: the next queued runs start. Returns the runs marked lost."""
        lost = self._mark_lost()
        self._start_queued()
        return lost

    def _mark_lost(self) -> list[str]:
        lost = []
        now = time.time()
        for row in self.store.list(("starting", "running")):
            if row.backend != self.name:
                continue
            here = on_this_host(row)  # a pid means nothing on another machine
            dead = here and row.pid is not None and not alive(row.pid)
            stale = (row.heartbeat or row.created) < now - STALE_S
            if dead or stale:
                why = "worker process disappeared" if dead else "worker stopped responding"
                if self.store.transition(
                    row.id, ("starting", "running"), status="lost", error=why, finished=now
                ):
                    lost.append(row.id)
                    if row.pid and not dead and here:
                        kill_group(row.pid)
                    if here:
                        discard(row.id, row.spec)
        return lost
