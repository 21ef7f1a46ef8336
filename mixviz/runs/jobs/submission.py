"""Submission to the queue: one run per distinct spec (:func:`submit`), its id, its folder
and ``spec.json``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from mixviz.paths import atomic_write_json
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store, runs_dir

ACTIVE = ("queued", "starting", "running")
REUSABLE = (*ACTIVE, "done")  # a new identical spec reuses a run in these states


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


def submit_once(backend, specs: list[RunSpec], force: bool = False) -> list[tuple[str, bool]]:
    """:func:`submit` for each spec in turn (identical ones in ``specs`` are one run too):
    ``(run id, reused)`` per spec."""
    return [(sub.id, sub.reused) for sub in (submit(backend, s, force) for s in specs)]


def store_once(store: Store, spec: RunSpec, backend_name: str, force: bool) -> Submitted:
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
