"""How long a quantize job will take, from the finished ones of the same model on this store.

A job's time is a fixed part (load, quantize, write, reload) and a part per KLD window
(reference, in-memory, reloaded and llama.cpp KLD), split by the stage timings in its
``result.json``; the latest finished job with the same model and ``iters`` (the same format
preferred) is scaled to the windows asked.

>>> scaled(fixed=60.0, per_window=2.0, windows=10)
80.0
"""

from __future__ import annotations

from dataclasses import dataclass

from mixviz.runs.evaluation.tasks import KLD_TASK
from mixviz.runs.store import Store, read_result

PER_WINDOW = ("kld reference", "kld", "reload kld", "llama.cpp kld", "vllm")
"""The stages whose time grows with the KLD windows."""


def scaled(fixed: float, per_window: float, windows: int) -> float:
    return fixed + per_window * windows


@dataclass(frozen=True)
class Forecast:
    """A predicted duration (``seconds``, None when nothing to go by) and what it rests on."""

    seconds: float | None
    basis: str


def quantize_forecast(
    store: Store, model: str, limit: int | None, iters: int, fmt: str
) -> Forecast:
    """The time a quantize job of ``model`` with ``limit`` KLD windows (None: all) and
    ``iters`` auto-round steps will take, from the latest like job finished here."""
    jobs = []
    for row in store.list(("done",), model=model):
        ship, quant = row.spec.get("ship"), row.spec.get("quant") or {}
        if ship and quant.get("iters", 0) == iters:
            jobs.append((ship.get("format") == fmt, row.finished or 0, row))
    if not jobs:
        return Forecast(None, f"no finished quantize job of {model} with iters {iters} to go by")
    windows_of = {r.id: _windows(store, r.id) for _, _, r in jobs}
    every = [windows_of[r.id] for _, _, r in jobs if r.spec.get("limit") is None]
    want = limit or (max(w for w in every if w) if any(every) else None)
    if want is None:
        return Forecast(None, "no finished job over all windows to count them by: set a limit")
    _, _, row = max(jobs, key=lambda j: (j[0], j[1]))
    result, have = read_result(row.id), windows_of[row.id]
    if result is None or not have:
        return Forecast(None, f"job {row.id} left no timings to go by")
    grows = sum(result.timings.get(k, 0.0) for k in PER_WINDOW)
    seconds = scaled(max(result.seconds - grows, 0.0), grows / have, want)
    fmt_of = row.spec["ship"]["format"]
    return Forecast(
        seconds,
        f"{want} window(s), scaled from job {row.id} ({fmt_of}, {have} window(s), "
        f"{result.seconds:.0f} s) on this machine",
    )


def _windows(store: Store, run_id: str) -> int | None:
    """The KLD windows a finished job measured (its ``df`` + 1), or None."""
    df = store.results(run_id).get(KLD_TASK, {}).get("df")
    return None if df is None else int(df) + 1
