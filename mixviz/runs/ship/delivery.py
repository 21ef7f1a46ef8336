"""A quantize job's checkpoint delivered to ``--out``, whether its run is new or reused.

One spec is one run (:func:`~mixviz.runs.jobs.backends.submit`), and ``--out`` is not part of the
spec's key: the same recipe asked for a second folder, or again after its folder was
deleted, reuses the finished run. Its record (``ship.json``) keeps where its checkpoint lives
(``out`` and ``locations``) and every file's size and sha256 taken at verify time
(``files``). Delivering then means: the files in one of those folders still match → copied
to ``--out`` (checked again there) or, already there, left as they are; none matches → the
job is quantized again into ``--out``.

Waiting for the job and delivering is :mod:`mixviz.runs.jobs.deliver`'s; this module keeps the
record and the checks that need no queue.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_json
from mixviz.runs.liveness import alive
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.staging import changed, check_room, discard_partials
from mixviz.runs.store import FINAL, Store, runs_dir


def ship_record(run_id: str) -> dict:
    """The run's ``ship.json`` (:mod:`mixviz.runs.ship.step` writes it), ``{}`` when it has none."""
    try:
        doc = json.loads((runs_dir() / run_id / "ship.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def locations(doc: dict) -> list[Path]:
    """The folders a finished quantize run's checkpoint was put in: where it was written, then
    every verified copy."""
    where = [doc["out"]] if doc.get("out") else []
    return [Path(p) for p in dict.fromkeys([*where, *doc.get("locations", [])])]


def intact_location(doc: dict, hashes: bool = True) -> tuple[Path | None, str]:
    """The first of the run's folders whose files still match its fingerprint, and why the
    first one does not (``""`` when one matches)."""
    why = ""
    for folder in locations(doc):
        problem = changed(folder, doc.get("files") or {}, hashes)
        if problem is None:
            return folder, ""
        why = why or problem
    return None, why or "the run recorded no checkpoint"


def checkpoint_state(run_id: str) -> dict | None:
    """For ``mixviz runs``: a finished quantize run's checkpoint, by names and sizes (quick):
    ``{"state": "intact" | "missing" | "changed", "where": folder or None, "why"}``; None for
    a run that wrote none."""
    doc = ship_record(run_id)
    if not doc:
        return None
    where, why = intact_location(doc, hashes=False)
    if where is not None:
        return {"state": "intact", "where": str(where), "why": ""}
    gone = not any(p.exists() for p in locations(doc))
    return {"state": "missing" if gone else "changed", "where": None, "why": why}


def as_delivered(doc: dict, out: str | Path) -> dict:
    """``ship.json`` as the job that put the checkpoint in ``out`` reports it: ``out`` and
    ``file`` (the GGUF file, or the folder) name that folder."""
    old, out = Path(doc["out"]), Path(out)
    return {**doc, "out": str(out), "file": str(out / Path(doc["file"]).relative_to(old))}


def add_location(run_id: str, out: Path) -> None:
    doc = ship_record(run_id)
    doc["locations"] = [*doc.get("locations", []), str(out)]
    atomic_write_json(runs_dir() / run_id / "ship.json", doc)


def holds(store: Store, spec: RunSpec) -> bool:
    """Whether ``--out`` is where a finished run of this very spec put its checkpoint (it may
    then hold files: they are that run's)."""
    out = Path(spec.ship.out)
    rows = [r for r in store.list(("done",)) if r.key == spec.key]
    return any(out in locations(ship_record(r.id)) for r in rows)


def predicted_bytes(ref, spec: RunSpec) -> int:
    """The checkpoint's predicted size, as ``allocate --size`` prices it
    (:func:`mixviz.models.file_size.predicted_bytes`, on the model's meta copy)."""
    from mixviz.models import file_size
    from mixviz.models.device import placement
    from mixviz.models.loading import meta_model

    dtype = str(placement(spec.device, spec.dtype)[1]).removeprefix("torch.")
    model = meta_model(ref)
    return file_size.predicted_bytes(model, dict(spec.recipe or {}), spec.ship.format,
                                     dtype=dtype, folder=ref.path)  # fmt: skip


def check_out(ref, spec: RunSpec, store: Store) -> None:
    """At submit, before any work: partial folders that ended runs left beside ``--out`` are
    removed, and ``--out`` must be writable with room for the checkpoint
    (:func:`~mixviz.runs.ship.staging.check_room`)."""
    out = Path(spec.ship.out)
    discard_partials(out, lambda run_id: _over(store, run_id))
    check_room(out, predicted_bytes(ref, spec))


def _over(store: Store, run_id: str) -> bool:
    if run_id.startswith("copy-"):  # a copy in progress: its process's id
        pid = run_id.split("-")[1]
        return not (pid.isdigit() and alive(int(pid)))
    try:
        return store.get(run_id).status in FINAL
    except MixvizError:  # no such run (another store's): leave it
        return False
