"""The reference study's protocol on any model, from library calls: profile → allocate → run →
tables. Resumable: runs already in the store (same spec) are not run again.

The plan of runs is :mod:`mixviz.report.study_plan`, the tables :mod:`mixviz.report.study_tables`;
what callers use of them is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mixviz.models.loading import resolve_model
from mixviz.report.study_plan import (
    Protocol,
    Row,
    autoscheme_key,
    autoscheme_recipe,
    int_options,
    model_layers,
    plan,
    plan_protocol,
    reports_dir,
)
from mixviz.report.study_tables import write_report
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import RunRow, Store
from mixviz.sensitivity.profile import DEFAULT_METRIC

__all__ = [
    "Protocol",
    "Row",
    "RunOptions",
    "autoscheme_key",
    "autoscheme_recipe",
    "int_options",
    "plan",
    "plan_protocol",
    "reports_dir",
    "run_protocol",
    "submit",
    "write_report",
]


def _quiet(message: str) -> None:
    """No progress messages."""


@dataclass(frozen=True)
class RunOptions:
    """How and where the protocol runs: the ``store`` its runs go to, the progress ``log``, the
    ``device`` and ``dtype`` of every profile, run and AutoScheme call, and ``tables_only``
    (queue and wait for nothing: the tables show what the store holds now)."""

    store: Store | None = None
    log: Callable[[str], None] = _quiet
    device: str = "auto"
    dtype: str = "auto"
    tables_only: bool = False


def run_protocol(
    model: str,
    *,
    tasks: tuple[str, ...],
    limit: int | None = None,
    metric: str = DEFAULT_METRIC,
    nsamples: int = 16,
    seqlen: int = 256,
    with_autoscheme: bool = True,
    **options,
) -> dict[int, object]:
    """Run (or resume) the protocol; write the tables under ``cache/reports/<model>/``, after
    every finished run (rows still to run show their state) and at the end. The keywords
    before ``options`` are the :class:`Protocol`; ``options`` are :class:`RunOptions` fields
    (``store``, ``log``, ``device``, ``dtype``, ``tables_only``). With ``tables_only`` nothing
    is queued or waited for: the tables show what the store holds now (a protocol running
    elsewhere, or interrupted).

    The model is resolved and its layers listed once, here, and handed down; ``device`` and
    ``dtype`` go to every profile, run and AutoScheme call."""
    from mixviz.runs.jobs.backends import wait

    protocol = Protocol(tuple(tasks), limit, metric, nsamples, seqlen, with_autoscheme)
    how = RunOptions(**options)
    store, log = how.store or Store(), how.log
    ref = resolve_model(model)
    layers = model_layers(ref)
    rows = plan_protocol(ref, protocol, log, layers, device=how.device, dtype=how.dtype)
    if how.tables_only:
        runs = submit(rows, store, queue=False)
        log(f"{sum(r.status == 'done' for r in runs.values())} of {len(runs)} distinct runs done")
        return write_report(ref.name, rows, runs, store, tasks, layers)
    runs = submit(rows, store)
    todo = [r.id for r in runs.values() if r.status != "done"]  # one run per key
    log(f"{len(rows)} table rows, {len(runs)} distinct runs, {len(todo)} to run")
    final = {}
    for n, run_id in enumerate(todo, 1):
        r = final[run_id] = wait(store, run_id, poll=2)
        log(f"[{n}/{len(todo)}] {r.label}: {r.status}" + (f" ({r.error})" if r.error else ""))
        if n < len(todo):  # the tables so far: a protocol of days can be read as it goes
            now = {key: final.get(x.id, x) for key, x in runs.items()}
            write_report(ref.name, rows, now, store, tasks, layers)
    runs = {key: final.get(r.id, r) for key, r in runs.items()}
    return write_report(ref.name, rows, runs, store, tasks, layers)


def submit(rows: list[Row], store: Store, queue: bool = True) -> dict[str, RunRow]:
    """Each distinct run of ``rows`` (by spec key), through the queue's one
    :func:`~mixviz.runs.jobs.backends.submit`: an identical run queued, running or done is reused
    (and gains the row's name), else a new one is queued on the local backend. With
    ``queue=False`` nothing is queued: the latest done run, else a queued or running one, else
    a placeholder whose status is ``not run``."""
    from mixviz.runs.jobs.local_backend import LocalBackend
    from mixviz.runs.jobs.submission import REUSABLE
    from mixviz.runs.jobs.submission import submit as submit_spec

    runs: dict[str, RunRow] = {}
    if queue:
        backend = LocalBackend(store)
        for row in rows:
            runs[row.spec.key] = store.get(submit_spec(backend, row.spec).id)
        return runs
    latest = {r.key: r for r in store.list(REUSABLE)}  # the latest per key
    done = {r.key: r for r in store.list(("done",))}
    for row in rows:
        key = row.spec.key
        runs[key] = done.get(key) or latest.get(key) or _not_run(row.spec)
    return runs


def _not_run(spec: RunSpec) -> RunRow:
    """A row's run that was never queued, as the tables show it."""
    nothing = dict.fromkeys(("started", "finished", "backend_id", "pid", "heartbeat", "error"))
    return RunRow(
        id="", key=spec.key, model=spec.model, label=spec.label, spec=spec.to_dict(),
        status="not run", stage="", progress=0.0, created=0.0, backend="local",
        avg_bits=None, **nothing,
    )  # fmt: skip
