"""The run store: one SQLite database (WAL, versioned schema) indexing runs and their results.

Runs live on disk as ``cache/runs/<id>/{spec.json, result.json, lm_eval.json, log.txt}``;
this table says where each one stands (queued → running → done | failed | cancelled | lost)
so the UI, the CLI and the workers agree without talking to each other.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import cache_dir

SCHEMA_VERSION = 1
FINAL = ("done", "failed", "cancelled", "lost")
STATUSES = ("queued", "starting", "running", *FINAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    label TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    backend TEXT NOT NULL DEFAULT 'local',
    backend_id TEXT,
    pid INTEGER,
    heartbeat REAL,
    avg_bits REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    stderr REAL,
    PRIMARY KEY (run_id, task, metric)
);
"""


def db_path() -> Path:
    return cache_dir() / "mixviz.db"


def runs_dir() -> Path:
    return cache_dir() / "runs"


@dataclass(frozen=True)
class RunRow:
    id: str
    key: str
    model: str
    label: str
    spec: dict
    status: str
    stage: str
    progress: float
    created: float
    started: float | None
    finished: float | None
    backend: str
    backend_id: str | None
    pid: int | None
    heartbeat: float | None
    avg_bits: float | None
    error: str | None

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


class Store:
    """A thin, safe wrapper over the SQLite file: short transactions, retries on busy."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._connect()
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise MixvizError(
                        f"run store {self.path} has schema version {version}, newer than this "
                        f"mixviz ({SCHEMA_VERSION}); upgrade mixviz"
                    )
                if version < SCHEMA_VERSION:  # only a new store is written to on open
                    con.executescript(_SCHEMA)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                con.close()
        except sqlite3.OperationalError as e:
            raise MixvizError(f"run store busy or read-only ({self.path}): {e}") from None
        except sqlite3.DatabaseError as e:
            raise MixvizError(f"cannot open the run store {self.path}: {e}") from None
        except OSError as e:
            raise MixvizError(f"cannot create the run store at {self.path}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        wait_s = float(os.environ.get("MIXVIZ_DB_TIMEOUT", "30"))
        con = sqlite3.connect(self.path, timeout=wait_s, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
        return con

    @contextmanager
    def tx(self):
        """An IMMEDIATE transaction: writers queue up instead of failing."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except sqlite3.OperationalError as e:
            con.execute("ROLLBACK") if con.in_transaction else None
            raise MixvizError(f"run store busy or read-only ({self.path}): {e}") from None
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    # ---------------------------------------------------------------- runs

    def insert(
        self, run_id: str, key: str, model: str, label: str, spec: dict, backend: str = "local"
    ) -> None:
        with self.tx() as con:
            con.execute(
                "INSERT INTO runs (id, key, model, label, spec, status, created, backend) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (run_id, key, model, label, json.dumps(spec), time.time(), backend),
            )

    def update(self, run_id: str, **fields) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as con:
            con.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))

    def transition(self, run_id: str, from_status: tuple[str, ...], **fields) -> bool:
        """Update only if the run is still in one of ``from_status`` (no lost updates)."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" for _ in from_status)
        with self.tx() as con:
            cur = con.execute(
                f"UPDATE runs SET {cols} WHERE id = ? AND status IN ({marks})",
                (*fields.values(), run_id, *from_status),
            )
            return cur.rowcount == 1

    def get(self, run_id: str) -> RunRow:
        con = self._connect()
        try:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        finally:
            con.close()
        if row is None:
            raise MixvizError(f"no run with id {run_id!r}")
        return _row(row)

    def list(self, status: tuple[str, ...] | None = None, model: str | None = None) -> list[RunRow]:
        sql, args = "SELECT * FROM runs", []
        where = []
        if status:
            where.append(f"status IN ({', '.join('?' for _ in status)})")
            args += list(status)
        if model:
            where.append("model = ?")
            args.append(model)
        if where:
            sql += " WHERE " + " AND ".join(where)
        con = self._connect()
        try:
            return [_row(r) for r in con.execute(sql + " ORDER BY created, id", args)]
        finally:
            con.close()

    def find_done(self, key: str) -> RunRow | None:
        """The latest finished run with this content key (for resumable protocols)."""
        rows = [r for r in self.list(("done",)) if r.key == key]
        return rows[-1] if rows else None

    # ---------------------------------------------------------------- results

    def put_results(
        self, run_id: str, rows: list[tuple[str, str, float | None, float | None]]
    ) -> None:
        with self.tx() as con:
            con.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            con.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?)", [(run_id, *r) for r in rows]
            )

    def results(self, run_id: str) -> dict[str, dict[str, float]]:
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT task, metric, value FROM results WHERE run_id = ?", (run_id,)
            ).fetchall()
        finally:
            con.close()
        out: dict[str, dict[str, float]] = {}
        for r in rows:
            out.setdefault(r["task"], {})[r["metric"]] = r["value"]
        return out

    def all_results(self) -> list[dict]:
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT r.run_id, r.task, r.metric, r.value, r.stderr FROM results r "
                "JOIN runs u ON u.id = r.run_id WHERE u.status = 'done'"
            ).fetchall()
        finally:
            con.close()
        return [dict(r) for r in rows]


def _row(r: sqlite3.Row) -> RunRow:
    d = dict(r)
    d["spec"] = json.loads(d["spec"])
    return RunRow(**d)
