"""The run worker: one process per run — claim it, keep its heartbeat, run its steps
(:mod:`mixviz.runs.jobs.steps`), leave it in a final state, start the next queued run.

``python -m mixviz.runs.jobs.worker RUN_ID`` reads ``cache/runs/<id>/spec.json``, reports its stage,
progress and a heartbeat to the store, writes ``lm_eval.json`` and ``result.json`` beside the
spec, and finally starts the next queued run. The quantize and evaluate steps are plain
functions passed to :func:`execute`, so tests can swap in fakes; the real ones are
:func:`mixviz.runs.evaluation.quantize.quantize` and
:func:`mixviz.runs.evaluation.evaluate.evaluate`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

from mixviz.errors import MixvizError
from mixviz.runs.evaluation.evaluate import evaluate
from mixviz.runs.evaluation.quantize import quantize
from mixviz.runs.jobs.steps import run_steps
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store, runs_dir

HEARTBEAT_S = 2.0


def execute(
    run_id: str,
    store: Store | None = None,
    quantize_fn=quantize,
    evaluate_fn=evaluate,
    kick: bool = True,
) -> str:
    """Run one queued run to a final state; returns that state.

    The steps: :func:`claim` the run, then (:func:`~mixviz.runs.jobs.steps.run_steps`) load the
    model, quantize it and verify what it carries (skipped for the BF16 reference), evaluate it
    and record the result (a refine job: :func:`~mixviz.runs.jobs.refine.refine_steps`); any
    failure leaves it ``failed`` (:func:`fail`). Then the next
    queued local run starts."""
    store = store or Store()
    spec = claim(store, run_id)
    if not isinstance(spec, RunSpec):
        return spec  # unreadable (failed) or cancelled before it started
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, run_id, stop), daemon=True)
    beat.start()
    try:
        if spec.refine is not None:
            from mixviz.runs.jobs.refine import refine_steps

            return refine_steps(store, run_id, spec)
        return run_steps(store, run_id, spec, quantize_fn, evaluate_fn)
    except BaseException as e:  # noqa: BLE001 — every way out must leave a final state
        return fail(store, run_id, e)
    finally:
        stop.set()
        if kick:
            kick_next(store, run_id)


def claim(store: Store, run_id: str) -> RunSpec | str:
    """Read the run's ``spec.json`` and mark it running (only from queued or starting).

    Returns the spec, or the run's final state when it cannot run: ``failed`` for an
    unreadable spec, or whatever it became before this worker got to it (cancelled)."""
    now = time.time()
    try:
        spec = RunSpec.from_dict(json.loads((runs_dir() / run_id / "spec.json").read_text()))
    except (OSError, ValueError, MixvizError) as e:
        store.transition(
            run_id,
            ("queued", "starting"),
            status="failed",
            finished=now,
            error=f"unreadable spec.json: {e}",
        )
        return "failed"
    if not store.transition(
        run_id,
        ("queued", "starting"),
        status="running",
        started=now,
        heartbeat=now,
        pid=os.getpid(),
        stage="loading",
        progress=0.0,
        progressed=None,
        finish_by=None,
    ):
        return store.get(run_id).status  # cancelled before it started
    return spec


def fail(store: Store, run_id: str, e: BaseException) -> str:
    """Mark the run ``failed`` with ``e`` as its error (unless it is final already); returns
    its state. A KeyboardInterrupt is raised again once recorded."""
    msg = str(e) if isinstance(e, MixvizError) else f"{type(e).__name__}: {e}"
    traceback.print_exc()
    store.transition(run_id, ("running",), status="failed", error=msg[:2000], finished=time.time())
    status = store.get(run_id).status
    if isinstance(e, KeyboardInterrupt):
        raise e
    return status


def kick_next(store: Store, run_id: str) -> None:
    """Start the next queued local run. Only after a local run: a Ray worker on another node
    must not start the head's local runs on its own machine."""
    if store.get(run_id).backend != "local":
        return
    from mixviz.runs.jobs.local_backend import LocalBackend

    try:
        LocalBackend(store).kick()
    except MixvizError:
        pass


def _heartbeat(store: Store, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.update(run_id, heartbeat=time.time())
        except MixvizError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m mixviz.runs.jobs.worker RUN_ID\n")
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = execute(argv[0])
    return 0 if status == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
