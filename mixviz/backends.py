"""Where runs execute: ``local`` (detached worker processes, a queue in the store) or ``ray``
(the same worker submitted through Ray's Jobs API). Both report into the same store.

>>> backend = get_backend()                  # local unless MIXVIZ_RAY_ADDRESS is set
>>> run_id = backend.submit(spec)            # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import REPO_ROOT, atomic_write_json, cache_dir
from mixviz.runspec import RunSpec
from mixviz.store import FINAL, RunRow, Store, runs_dir

STALE_S = 60.0  # a running worker without a heartbeat for this long is lost


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _write_spec(run_id: str, spec: RunSpec) -> None:
    folder = runs_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "spec.json", spec.to_dict())


def _worker_env() -> dict:
    env = dict(os.environ)
    env["MIXVIZ_CACHE"] = str(cache_dir())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def log_path(run_id: str) -> Path:
    return runs_dir() / run_id / "log.txt"


def read_log(run_id: str, tail: int = 20000) -> str:
    p = log_path(run_id)
    if not p.is_file():
        return ""
    data = p.read_bytes()[-tail:]
    return data.decode("utf-8", errors="replace")


class LocalBackend:
    """One detached worker process per run, ``max_parallel`` at a time (1 by default)."""

    name = "local"

    def __init__(self, store: Store | None = None, max_parallel: int | None = None):
        self.store = store or Store()
        self.max_parallel = max_parallel or int(os.environ.get("MIXVIZ_MAX_PARALLEL", "1"))

    def submit(self, spec: RunSpec) -> str:
        run_id = new_run_id()
        _write_spec(run_id, spec)
        self.store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict(), self.name)
        self.kick()
        return run_id

    def kick(self) -> list[str]:
        """Start queued runs while fewer than ``max_parallel`` are running."""
        self.reconcile()
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
                [sys.executable, "-m", "mixviz.worker", run_id],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=_worker_env(),
                cwd=str(REPO_ROOT),
            )
        except OSError as e:
            self.store.update(
                run_id, status="failed", error=f"could not start worker: {e}", finished=time.time()
            )
            return
        finally:
            log.close()
        self.store.update(run_id, pid=proc.pid, backend_id=str(proc.pid))

    def cancel(self, run_id: str) -> RunRow:
        row = self.store.get(run_id)
        if row.status in FINAL:
            raise MixvizError(f"run {run_id} is already {row.status}")
        if self.store.transition(
            run_id,
            ("queued", "starting", "running"),
            status="cancelled",
            finished=time.time(),
            stage="cancelled",
        ):
            if row.pid:
                _kill_group(row.pid)
        self.kick()
        return self.store.get(run_id)

    def reconcile(self) -> list[str]:
        """Runs whose worker is gone (killed, machine restarted) become ``lost``."""
        lost = []
        now = time.time()
        for row in self.store.list(("starting", "running")):
            if row.backend != self.name:
                continue
            dead = row.pid is not None and not _alive(row.pid)
            stale = (row.heartbeat or row.created) < now - STALE_S
            if dead or stale:
                why = "worker process disappeared" if dead else "worker stopped responding"
                if self.store.transition(
                    row.id, ("starting", "running"), status="lost", error=why, finished=now
                ):
                    lost.append(row.id)
                    if row.pid and not dead:
                        _kill_group(row.pid)
        return lost


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kill_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the worker's whole process group, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class RayBackend:
    """Submits the worker through Ray's Jobs API; assumes the cache folder is shared."""

    name = "ray"

    def __init__(self, address: str, store: Store | None = None):
        self.store = store or Store()
        self.address = address
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise MixvizError("the ray backend needs `pip install 'ray[default]'`") from None
        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:
            raise MixvizError(f"cannot reach Ray at {address}: {str(e)[:200]}") from None

    def submit(self, spec: RunSpec) -> str:
        run_id = new_run_id()
        _write_spec(run_id, spec)
        self.store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict(), self.name)
        env = {
            k: v
            for k, v in _worker_env().items()
            if k.startswith(("MIXVIZ_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "PYTHONPATH"))
        }
        try:
            self.client.submit_job(
                entrypoint=f"{sys.executable} -m mixviz.worker {run_id}",
                submission_id=run_id,
                runtime_env={"env_vars": env},
            )
        except Exception as e:
            self.store.update(
                run_id,
                status="failed",
                finished=time.time(),
                error=f"Ray refused the job: {str(e)[:300]}",
            )
            raise MixvizError(f"Ray at {self.address} refused the job: {str(e)[:200]}") from None
        self.store.update(run_id, backend_id=run_id, status="starting", heartbeat=time.time())
        return run_id

    def kick(self) -> list[str]:
        self.reconcile()
        return []

    def cancel(self, run_id: str) -> RunRow:
        row = self.store.get(run_id)
        if row.status in FINAL:
            raise MixvizError(f"run {run_id} is already {row.status}")
        self.store.transition(
            run_id,
            ("queued", "starting", "running"),
            status="cancelled",
            finished=time.time(),
            stage="cancelled",
        )
        try:
            self.client.stop_job(run_id)
        except Exception:
            pass
        return self.store.get(run_id)

    def reconcile(self) -> list[str]:
        """A Ray job that ended without the worker recording a final state is ``lost``."""
        lost = []
        for row in self.store.list(("starting", "running")):
            if row.backend != self.name:
                continue
            try:
                status = str(self.client.get_job_status(row.id)).rsplit(".", 1)[-1]
            except Exception:
                continue
            if status in ("FAILED", "STOPPED", "SUCCEEDED"):
                try:
                    logs = self.client.get_job_logs(row.id)[-1500:]
                except Exception:
                    logs = ""
                if self.store.transition(
                    row.id,
                    ("starting", "running"),
                    status="lost",
                    finished=time.time(),
                    error=f"Ray job ended {status}: {logs}",
                ):
                    lost.append(row.id)
        return lost


def get_backend(
    name: str | None = None, store: Store | None = None, ray_address: str | None = None
):
    """``local`` (default) or ``ray`` (when asked, or when ``MIXVIZ_RAY_ADDRESS`` is set)."""
    address = ray_address or os.environ.get("MIXVIZ_RAY_ADDRESS")
    name = name or ("ray" if address else "local")
    if name == "local":
        return LocalBackend(store)
    if name == "ray":
        if not address:
            raise MixvizError("the ray backend needs --ray-address or MIXVIZ_RAY_ADDRESS")
        return RayBackend(address, store)
    raise MixvizError(f"unknown backend {name!r}; use local or ray")


def wait(
    store: Store, run_id: str, timeout: float | None = None, poll: float = 1.0, on_update=None
) -> RunRow:
    """Poll until the run reaches a final state (re-checking for lost workers)."""
    deadline = None if timeout is None else time.time() + timeout
    backend = LocalBackend(store)
    while True:
        row = store.get(run_id)
        if on_update:
            on_update(row)
        if row.status in FINAL:
            return row
        if deadline is not None and time.time() > deadline:
            raise MixvizError(f"run {run_id} still {row.status} after {timeout:.0f} s")
        if row.backend == "local":
            backend.reconcile()
        time.sleep(poll)


def run_document(store: Store, run_id: str) -> dict:
    """The ``run --wait --json`` document: id, status, avg_bits, results, seconds."""
    row = store.get(run_id)
    result_file = runs_dir() / run_id / "result.json"
    seconds = None
    if result_file.is_file():
        seconds = json.loads(result_file.read_text()).get("seconds")
    return {
        "id": row.id,
        "status": row.status,
        "label": row.label,
        "avg_bits": row.avg_bits,
        "results": store.results(run_id),
        "seconds": seconds,
        "error": row.error,
    }
