"""Whether a run's worker lives: its process (on this machine) and its heartbeat; stopping
its process group; marking runs whose worker went silent ``lost``."""

from __future__ import annotations

import os
import signal
import socket
import time

from mixviz.runs.store import RunRow, Store

STALE_S = 60.0  # a running worker without a heartbeat for this long is lost
HOST = socket.gethostname()


def on_this_host(row: RunRow) -> bool:
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


def kill_group(pid: int, grace: float = 5.0) -> None:
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


def mark_stale(store: Store, rows: list[RunRow], why: str) -> list[str]:
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
