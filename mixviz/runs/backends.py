"""Where runs execute: ``local`` (detached worker processes, a queue in the store) or ``ray``
(the same worker submitted through Ray's Jobs API). Both report into the same store.

Every submission — the CLI's ``run``, ``reproduce``, the app, Ray — goes through
:func:`submit`: a spec identical to a queued, running or finished run (same
:attr:`RunSpec.key`) reuses that run, decided in one store transaction.

>>> backend = get_backend()                  # local unless MIXVIZ_RAY_ADDRESS is set
>>> submit(backend, spec).id                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.device import CUDA, check_dtype, cuda_index
from mixviz.paths import REPO_ROOT, atomic_write_json, worker_env
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import FINAL, SAME, RunRow, Store, read_result, runs_dir

STALE_S = 60.0  # a running worker without a heartbeat for this long is lost
HOST = socket.gethostname()
ACTIVE = ("queued", "starting", "running")
REUSABLE = (*ACTIVE, "done")  # a new identical spec reuses a run in these states

__all__ = ["SAME", "Submitted", "get_backend", "submit", "submit_once", "wait"]


@dataclass(frozen=True)
class Submitted:
    """What :func:`submit` did: the run's ``id``, whether an identical run was ``reused``, and
    that run's ``status`` at the time (``queued`` for a new one)."""

    id: str
    reused: bool
    status: str

    def describe(self, label: str) -> str:
        """The line the CLI prints: ``same as run ID (done): reusing its results``."""
        if self.reused:
            what = "results" if self.status == "done" else "run"
            return f"same as run {self.id} ({self.status}): reusing its {what} ({label})"
        return f"queued run {self.id} ({label})"


def submit(backend, spec: RunSpec, force: bool = False) -> Submitted:
    """Queue ``spec`` on ``backend`` unless an identical run (same :attr:`RunSpec.key`: model,
    recipe, tasks, limit, quantization and evaluation settings) is queued, running or done: that
    run is reused and its label gains this spec's name (``pure MXFP4 = uniform @5``). The check
    and the insert are one store transaction, so two processes submitting the same spec at once
    make one run. ``force`` queues a fresh run on purpose."""
    return backend.enqueue(spec, force=force)


def _store_once(store: Store, spec: RunSpec, backend_name: str, force: bool) -> Submitted:
    """Write the spec file, then insert-or-reuse in one transaction; a reused run's unused
    folder is removed."""
    run_id = new_run_id()
    write_spec(run_id, spec)
    row, reused = store.insert_once(
        run_id,
        spec.key,
        spec.model,
        spec.label,
        spec.to_dict(),
        backend_name,
        reuse=() if force else REUSABLE,
    )
    if reused:
        import shutil

        shutil.rmtree(runs_dir() / run_id, ignore_errors=True)
    return Submitted(row.id, reused, row.status)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def write_spec(run_id: str, spec: RunSpec) -> None:
    """Write ``cache/runs/<id>/spec.json``: what the worker for ``run_id`` reads."""
    folder = runs_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "spec.json", spec.to_dict())


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

    def submit(self, spec: RunSpec, force: bool = False) -> str:
        """:func:`submit`'s run id."""
        return self.enqueue(spec, force).id

    def enqueue(self, spec: RunSpec, force: bool = False) -> Submitted:
        sub = _store_once(self.store, spec, self.name, force)
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
                [sys.executable, "-m", "mixviz.runs.worker", run_id],
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
            _kill_group(proc.pid)
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
        if before.pid and before.status != "queued" and _on_this_host(before):
            _kill_group(before.pid)
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
            here = _on_this_host(row)  # a pid means nothing on another machine
            dead = here and row.pid is not None and not alive(row.pid)
            stale = (row.heartbeat or row.created) < now - STALE_S
            if dead or stale:
                why = "worker process disappeared" if dead else "worker stopped responding"
                if self.store.transition(
                    row.id, ("starting", "running"), status="lost", error=why, finished=now
                ):
                    lost.append(row.id)
                    if row.pid and not dead and here:
                        _kill_group(row.pid)
        return lost


def _on_this_host(row: RunRow) -> bool:
    """Whether the run's worker was started on this machine (``backend_id`` is ``host:pid``;
    rows from before that, or not yet spawned, count as local)."""
    host, sep, _ = (row.backend_id or "").rpartition(":")
    return not sep or host == HOST


def alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) is still running; a zombie is not."""
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
    while time.time() < deadline and alive(pid):
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

    def submit(self, spec: RunSpec, force: bool = False) -> str:
        """:func:`submit`'s run id."""
        return self.enqueue(spec, force).id

    def enqueue(self, spec: RunSpec, force: bool = False) -> Submitted:
        # refuses a spec Ray cannot place before it is stored
        resources = ray_resources(spec, model_size(spec))
        sub = _store_once(self.store, spec, self.name, force)
        if sub.reused:
            return sub
        run_id = sub.id
        env = worker_env(settings_only=True)
        try:
            self.client.submit_job(
                entrypoint=entrypoint(run_id),
                submission_id=run_id,
                runtime_env={"env_vars": env},
                **resources,
            )
        except Exception as e:
            self.store.transition(
                run_id,
                ("queued",),
                status="failed",
                finished=time.time(),
                error=f"Ray refused the job: {str(e)[:300]}",
            )
            raise MixvizError(f"Ray at {self.address} refused the job: {str(e)[:200]}") from None
        # Guarded: the worker may already have claimed the run (running), or a cancel landed.
        if not self.store.transition(
            run_id, ("queued",), backend_id=run_id, status="starting", heartbeat=time.time()
        ):
            self.store.update(run_id, backend_id=run_id)
            if self.store.get(run_id).status == "cancelled":
                self._stop(run_id)
        return sub

    def _stop(self, run_id: str) -> None:
        try:
            self.client.stop_job(run_id)
        except Exception:
            pass

    def kick(self) -> list[str]:
        self.reconcile()
        return []

    def cancel(self, run_id: str) -> RunRow:
        if self.store.cancel(run_id, ACTIVE) is None:
            raise MixvizError(f"run {run_id} is already {self.store.get(run_id).status}")
        self._stop(run_id)
        return self.store.get(run_id)

    def reconcile(self) -> list[str]:
        """A Ray job that ended without the worker recording a final state is ``lost``; so is a
        running one Ray cannot tell about whose worker stopped sending heartbeats."""
        lost = []
        for row in self.store.list(("starting", "running")):
            if row.backend != self.name:
                continue
            try:
                status = str(self.client.get_job_status(row.id)).rsplit(".", 1)[-1]
            except Exception:
                lost += _mark_stale(self.store, [row], "Ray cannot tell about the job")
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


def submit_once(backend, specs: list[RunSpec], force: bool = False) -> list[tuple[str, bool]]:
    """:func:`submit` for each spec in turn (identical ones in ``specs`` are one run too):
    ``(run id, reused)`` per spec."""
    return [(sub.id, sub.reused) for sub in (submit(backend, s, force) for s in specs)]


def ray_resources(spec: RunSpec, size: tuple[int, int] | None = None) -> dict:
    """What a run asks Ray for: one GPU when its device is CUDA (so a cluster with several GPUs
    runs several runs at once, one per GPU), and, given the model's ``size`` (parameters,
    vocabulary: :func:`model_size`), the host memory it needs (:func:`run_memory_bytes`), so
    Ray places no more runs on a node than its memory holds.

    ``auto`` asks for no GPU: on Ray the submitting machine cannot tell where the job will land,
    so a run that must have one says ``--device cuda``.

    >>> ray_resources(RunSpec(model="m", recipe=None, tasks=("t",), device=CUDA))
    {'entrypoint_num_gpus': 1}
    >>> ray_resources(RunSpec(model="m", recipe=None, tasks=("t",)))
    {}
    """
    out = {} if size is None else {"entrypoint_memory": run_memory_bytes(*size, spec)}
    index = cuda_index(spec.device)
    if index is None:
        return out
    if index != 0:
        # the job sees only the GPU Ray gave it, as its first device: an index means nothing
        raise MixvizError(f"on Ray a run asks for a GPU with device {CUDA}, not {spec.device}")
    return {"entrypoint_num_gpus": 1, **out}


def model_size(spec: RunSpec) -> tuple[int, int]:
    """``(parameters, vocabulary size)`` of the run's model, from its config (no weights)."""
    from mixviz.models.loading import meta_model, resolve_model

    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    model = meta_model(ref)
    return sum(p.numel() for p in model.parameters()), int(model.config.vocab_size)


RUNTIME_BYTES = 2 * 2**30
"""Host memory of a worker before its model: Python with torch, transformers, auto-round and
lm-eval imported, and the KLD reference."""

LOGITS_TOKENS = 1024
"""Tokens per sequence assumed for lm-eval's logits when sizing a run (a batch's logits and
their log-softmax are each ``batch × tokens × vocabulary`` floats; the study's tasks, zero-shot,
stay under it)."""


def run_memory_bytes(params: int, vocab: int, spec: RunSpec) -> int:
    """Host memory a run asks Ray for, from the model's size: on the CPU, the weights twice
    (the model and auto-round's working copy while it quantizes) in the run's precision plus
    one batch of float32 logits and their log-softmax; on CUDA, the weights once (they pass
    through host memory while loading); and :data:`RUNTIME_BYTES` either way. It errs high:
    the demo's full-size BF16 run on the CPU peaked at 1.71 GB RSS (sampled every 2 s) against
    6.0 GiB asked, its tasks' sequences being far shorter than :data:`LOGITS_TOKENS`.

    >>> from dataclasses import replace
    >>> spec = RunSpec(model="m", recipe=None, tasks=("t",))
    >>> round(run_memory_bytes(135_000_000, 49152, spec) / 2**30, 1)  # the demo, CPU float32
    6.0
    >>> round(run_memory_bytes(8_000_000_000, 128256, replace(spec, device=CUDA)) / 2**30, 1)
    16.9
    """
    cuda = cuda_index(spec.device) is not None
    dtype = check_dtype(spec.dtype)
    size = 4 if dtype == "float32" or (dtype == "auto" and not cuda) else 2
    if cuda:
        return RUNTIME_BYTES + params * size
    logits = 2 * spec.batch_size * LOGITS_TOKENS * vocab * 4
    return RUNTIME_BYTES + 2 * params * size + logits


def entrypoint(run_id: str) -> str:
    """The worker's shell command line for Ray, every value quoted."""
    return shlex.join([sys.executable, "-m", "mixviz.runs.worker", run_id])


def _mark_stale(store: Store, rows: list[RunRow], why: str) -> list[str]:
    """Running rows whose worker sent no heartbeat for :data:`STALE_S` become ``lost``."""
    lost, now = [], time.time()
    for row in rows:
        if row.status == "running" and (row.heartbeat or row.created) < now - STALE_S:
            if store.transition(
                row.id,
                ("running",),
                status="lost",
                finished=now,
                error=f"worker stopped responding (no heartbeat for {STALE_S:.0f} s; {why})",
            ):
                lost.append(row.id)
    return lost


def reconcile_all(store: Store, backends: dict | None = None) -> list[str]:
    """Reconcile every backend with live runs in the store (local: lost workers and the queue;
    ray: through ``MIXVIZ_RAY_ADDRESS`` when no backend is given, else heartbeats only).
    ``backends`` (name → backend) is reused and filled in. Returns the runs marked lost."""
    backends = {} if backends is None else backends
    names = {r.backend for r in store.list(ACTIVE)}
    lost: list[str] = []
    for name in sorted(names):
        if name not in backends:
            if name == "local":
                backends[name] = LocalBackend(store)
            elif name == "ray" and os.environ.get("MIXVIZ_RAY_ADDRESS"):
                try:
                    backends[name] = RayBackend(os.environ["MIXVIZ_RAY_ADDRESS"], store)
                except MixvizError:
                    backends[name] = None
            else:
                backends[name] = None
        backend = backends[name]
        if backend is None:  # cannot ask the engine: heartbeats are all there is
            rows = [r for r in store.list(("running",)) if r.backend == name]
            lost += _mark_stale(store, rows, f"no {name} backend to ask")
        else:
            lost += backend.reconcile()
    return lost


def wait(
    store: Store,
    run_id: str,
    timeout: float | None = None,
    poll: float = 1.0,
    on_update=None,
    backend=None,
) -> RunRow:
    """Poll until the run reaches a final state. Each poll reconciles: dead workers become
    ``lost`` and the queue moves on, so a waiter never depends on anyone else looking.
    ``backend`` is the one that submitted the run (needed to ask Ray; else built from the
    environment). On ``timeout`` (seconds) raises :class:`MixvizError`; the run is left as is."""
    deadline = None if timeout is None else time.time() + timeout
    backends = {} if backend is None else {backend.name: backend}
    while True:
        row = store.get(run_id)
        if on_update:
            on_update(row)
        if row.status in FINAL:
            return row
        if deadline is not None and time.time() > deadline:
            raise MixvizError(
                f"run {run_id} still {row.status} after {timeout:g} s; it is left as it is "
                f"(`mixviz runs` shows it, `mixviz cancel {run_id}` stops it)"
            )
        reconcile_all(store, backends)
        row = store.get(run_id)
        if row.status in FINAL:
            continue
        pause = poll if deadline is None else max(0.0, min(poll, deadline - time.time()))
        time.sleep(pause)


def run_document(store: Store, run_id: str) -> dict:
    """The ``run --wait --json`` document: id, status, avg_bits, results and their standard
    errors, seconds."""
    row = store.get(run_id)
    result = read_result(run_id)
    return {
        "id": row.id,
        "status": row.status,
        "label": row.label,
        "avg_bits": row.avg_bits,
        "results": store.results(run_id),
        "stderrs": store.stderrs(run_id),
        "seconds": result.seconds if result else None,
        "timings": result.timings if result else {},
        "machine": result.machine if result else {},
        "error": row.error,
    }
