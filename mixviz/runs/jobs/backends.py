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
import time

from mixviz.errors import MixvizError
from mixviz.runs.jobs.local_backend import LocalBackend
from mixviz.runs.jobs.logs import log_path, read_log
from mixviz.runs.jobs.ray_backend import RayBackend
from mixviz.runs.jobs.submission import (
    ACTIVE,
    REUSABLE,
    Submitted,
    new_run_id,
    submit,
    submit_once,
    write_spec,
)
from mixviz.runs.liveness import STALE_S, alive, mark_stale
from mixviz.runs.store import FINAL, SAME, RunRow, Store, read_result

__all__ = [  # the backends, and what callers of one need beside it
    "ACTIVE",
    "FINAL",
    "REUSABLE",
    "SAME",
    "STALE_S",
    "LocalBackend",
    "RayBackend",
    "Submitted",
    "alive",
    "get_backend",
    "log_path",
    "new_run_id",
    "read_log",
    "reconcile_all",
    "run_document",
    "submit",
    "submit_once",
    "wait",
    "write_spec",
]


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
            lost += mark_stale(store, rows, f"no {name} backend to ask")
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
    errors, seconds, and the positions its KLD task scored."""
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
        "score_from": (row.spec or {}).get("score_from", "all"),  # KLD's positions
        "error": row.error,
    }
