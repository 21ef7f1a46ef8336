"""A quantize job's checkpoint delivered to ``--out``: wait for the job, then make ``--out``
hold its verified checkpoint (:mod:`mixviz.runs.ship.delivery` keeps where it lives).

>>> sub = submit(backend, spec)                                      # doctest: +SKIP
>>> deliver(backend, spec, sub, say=print).how                       # doctest: +SKIP
reused run 20261207-104909-1a2b3c, copied to /ckpt/b
'copied'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.runs.jobs.backends import submit, wait
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.delivery import add_location, intact_location, locations, ship_record
from mixviz.runs.ship.staging import copy_verified
from mixviz.runs.store import FINAL

AGAIN_MAX = 2  # times a job is quantized again before delivery gives up


@dataclass(frozen=True)
class Delivered:
    """Where a quantize job left ``--out``: ``how`` is ``written`` (its run wrote it there),
    ``in place`` (already there and intact), ``copied`` (from ``source``), ``again`` (the
    files were gone: run ``run_id`` quantizes anew), ``pending`` (the run is not finished) or
    ``""`` (the run did not finish ``done``: ``status`` says how)."""

    run_id: str
    status: str
    how: str
    message: str = ""
    source: str | None = None


def _filled(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def deliver_now(backend, spec: RunSpec, run_id: str, reused: bool) -> Delivered:
    """One look at the job ``run_id`` (what :func:`~mixviz.runs.jobs.backends.submit` gave for
    ``spec``): if it finished, make ``--out`` hold its verified checkpoint — left where it is,
    copied, or (its files gone or changed) queued again with ``force``. Never waits."""
    row = backend.store.get(run_id)
    if row.status not in FINAL:
        return Delivered(run_id, row.status, "pending")
    if row.status != "done":
        return Delivered(run_id, row.status, "")
    out, doc = Path(spec.ship.out), ship_record(run_id)
    where, why = intact_location(doc)
    if where == out:
        how = "in place" if reused else "written"
        said = f"reused run {run_id}: its verified checkpoint is in {out}" if reused else ""
        return Delivered(run_id, "done", how, said, str(out))
    if _filled(out):
        raise MixvizError(
            f"{out} holds files that are not run {run_id}'s verified checkpoint"
            + (f" ({why})" if where is None else "")
            + ": remove them or choose a new --out"
        )
    if where is not None:
        copy_verified(where, out, doc["files"], f"copy-{os.getpid()}")
        add_location(run_id, out)
        said = f"reused run {run_id}, copied to {out}"
        return Delivered(run_id, "done", "copied", said, str(where))
    gone = not any(p.exists() for p in locations(doc))
    new = submit(backend, spec, force=True)
    said = "are gone" if gone else f"changed since they were verified ({why})"
    said = f"files of run {run_id} {said}: quantizing again (run {new.id})"
    return Delivered(new.id, new.status, "again", said)


def deliver(
    backend,
    spec: RunSpec,
    run_id: str,
    reused: bool,
    say: Callable[[str], None] = lambda _: None,
    follow: Callable[[str, bool], object] | None = None,
) -> Delivered:
    """Wait for the job, then :func:`deliver_now` — again while its files had to be made anew
    — until ``--out`` holds a verified checkpoint or the run did not finish ``done``.
    ``follow(run_id, reused)`` waits instead of a plain wait (the CLI's line, whose Ctrl-C
    cancels a job the command queued)."""
    for _ in range(AGAIN_MAX + 1):
        if follow is None:
            wait(backend.store, run_id, backend=backend)
        else:
            follow(run_id, reused)
        got = deliver_now(backend, spec, run_id, reused)
        if got.message:
            say(got.message)
        if got.how != "again":
            return got
        run_id, reused = got.run_id, False
    raise MixvizError(f"the checkpoint for {spec.ship.out} went missing {AGAIN_MAX + 1} times")
