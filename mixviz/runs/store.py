"""The run store: one SQLite database (WAL, versioned schema) indexing runs and their results.

Runs live on disk as ``cache/runs/<id>/{spec.json, result.json, lm_eval.json, log.txt}``;
this table says where each one stands (queued → running → done | failed | cancelled | lost)
so the UI, the CLI and the workers agree without talking to each other.

WAL needs every process that opens the database on one host (it shares memory through the
``-shm`` file): it breaks on network filesystems. A store whose folder is on one (found from
``/proc/mounts``) is refused unless ``MIXVIZ_DB_JOURNAL`` says what to do: ``delete`` (SQLite's
rollback journal, which relies on the share's POSIX locks; set it on every machine) or ``wal``
(for a share only one host ever opens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import cache_dir
from mixviz.runs.progress import eta_text, promise

SCHEMA_VERSION = 3  # 2: ``progressed``, when the progress last advanced; 3: ``finish_by``
ADDED = {2: "progressed REAL", 3: "finish_by REAL"}  # the column each version added
FINAL = ("done", "failed", "cancelled", "lost")
SAME = " = "  # joins the names of specs that are one run: "pure MXFP4 = uniform @5"

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
    error TEXT,
    progressed REAL,
    finish_by REAL
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


MOUNTS_FILE = "/proc/mounts"

# Filesystem types (as /proc/mounts names them) whose files are shared between hosts.
NETWORK_FS = frozenset(
    "nfs nfs4 cifs smb smb3 smbfs ncpfs afs coda 9p lustre gpfs ceph glusterfs ocfs2 gfs2 "
    "beegfs orangefs pvfs2 davfs panfs wekafs".split()
)
NETWORK_FUSE = frozenset(  # fuse.<name>
    "sshfs s3fs rclone gcsfuse goofys geesefs juicefs glusterfs ceph ceph-fuse cephfs mfs "
    "lizardfs beegfs blobfuse blobfuse2 davfs seaweedfs alluxio-fuse mountpoint-s3 "
    "objectivefs xtreemfs cvmfs weka".split()
)


def mount_of(path: str | Path, mounts_file: str | Path | None = None) -> tuple[str, str] | None:
    """``(mount point, filesystem type)`` of the mount holding ``path``: the longest mount point
    in ``/proc/mounts`` that is ``path`` or one of its parents. ``None`` where that file is
    unreadable (not Linux)."""
    try:
        text = Path(mounts_file or MOUNTS_FILE).read_text(errors="replace")
    except OSError:
        return None
    target = os.path.realpath(os.path.abspath(path))
    best: tuple[str, str] | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
        inside = mnt == "/" or target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[0])):  # later mounts hide earlier
            best = (mnt, parts[2])
    return best


def is_network_fs(fstype: str) -> bool:
    t = fstype.lower()
    if t.startswith("fuse."):
        return t[5:] in NETWORK_FUSE
    return t in NETWORK_FS or t.startswith("nfs")


def db_path() -> Path:
    return cache_dir() / "mixviz.db"


def runs_dir() -> Path:
    return cache_dir() / "runs"


def read_result(run_id: str):
    """The finished run's :class:`~mixviz.runs.runspec.RunResult` (``result.json``), or None
    while it has none or when the file cannot be read."""
    from mixviz.runs.runspec import RunResult

    path = runs_dir() / run_id / "result.json"
    try:
        return RunResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, MixvizError):
        return None


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
    progressed: float | None = None  # when ``progress`` last advanced (the estimate's pace)
    finish_by: float | None = None  # the estimate's promise, only ever brought forward

    def eta(self) -> str:
        """``'0:40 elapsed, ~2:00 left'`` for this job now (:func:`~mixviz.runs.progress.eta_text`
        with its pace and its promise); ``''`` before it started."""
        return eta_text(self.progress, self.started, progressed=self.progressed,
                        finish_by=self.finish_by)  # fmt: skip

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


class Store:
    """A thin, safe wrapper over the SQLite file: short transactions, retries on busy."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else db_path()
        self.journal, self.network_fs = self._journal_mode()
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
                for added, column in ADDED.items():  # an older store gains what it lacks
                    if 0 < version < added:
                        _add_column(con, "runs", column)
                if version < SCHEMA_VERSION:  # only a new or older store is written to on open
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

    def _journal_mode(self) -> tuple[str, str | None]:
        """``(journal mode, network filesystem type or None)``; refuses WAL on a share."""
        asked = os.environ.get("MIXVIZ_DB_JOURNAL", "").strip().lower()
        if asked not in ("", "wal", "delete"):
            raise MixvizError(f"MIXVIZ_DB_JOURNAL must be wal or delete, not {asked!r}")
        folder = self.path.parent
        try:
            while not folder.exists() and folder != folder.parent:  # the nearest that exists
                folder = folder.parent
        except OSError:
            folder = self.path.parent
        where = mount_of(folder)
        network = where[1] if where and is_network_fs(where[1]) else None
        if network and not asked:
            raise MixvizError(
                f"the run store {self.path} is on a network filesystem ({network} at "
                f"{where[0]}): SQLite's WAL mode needs every process on one host and corrupts "
                "over a share. Put MIXVIZ_CACHE on a local disk, or set "
                "MIXVIZ_DB_JOURNAL=delete on every machine that opens it (rollback journal; "
                "needs working file locks on the share), or MIXVIZ_DB_JOURNAL=wal if only "
                "this host ever opens it"
            )
        return asked or "wal", network

    def _connect(self) -> sqlite3.Connection:
        wait_s = float(os.environ.get("MIXVIZ_DB_TIMEOUT", "30"))
        con = sqlite3.connect(self.path, timeout=wait_s, isolation_level=None)
        con.row_factory = sqlite3.Row
        mode = con.execute(f"PRAGMA journal_mode={self.journal}").fetchone()[0]
        if mode == "wal" and self.journal != "wal" and self.network_fs:
            con.close()
            raise MixvizError(
                f"the run store {self.path} is still in WAL mode (another process has it "
                "open): stop it and set MIXVIZ_DB_JOURNAL=delete for every process"
            )
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
        """A new queued run, whatever else the store holds (:meth:`insert_once` reuses)."""
        self.insert_once(run_id, key, model, label, spec, backend)

    def insert_once(
        self,
        run_id: str,
        key: str,
        model: str,
        label: str,
        spec: dict,
        backend: str = "local",
        reuse: tuple[str, ...] = (),
    ) -> tuple[RunRow, bool]:
        """Insert the run unless one with the same ``key`` is in one of the ``reuse`` states;
        that one (the latest done one, else the latest) is kept and gains ``label`` among its
        names. One IMMEDIATE transaction, so two processes submitting the same spec at once
        make one run.
        Returns ``(the row, reused)``."""
        with self.tx() as con:
            row = None
            if reuse:
                marks = ", ".join("?" for _ in reuse)
                row = con.execute(
                    f"SELECT * FROM runs WHERE key = ? AND status IN ({marks}) "
                    "ORDER BY status = 'done' DESC, created DESC, id DESC LIMIT 1",
                    (key, *reuse),
                ).fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO runs (id, key, model, label, spec, status, created, backend) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (run_id, key, model, label, json.dumps(spec), time.time(), backend),
                )
                reused = False
            else:
                names = row["label"].split(SAME)
                if label not in names:
                    con.execute(
                        "UPDATE runs SET label = ? WHERE id = ?",
                        (SAME.join([*names, label]), row["id"]),
                    )
                run_id, reused = row["id"], True
            got = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            return _row(got), reused

    def update(self, run_id: str, **fields) -> None:
        """Set ``fields``; a ``progress`` above the stored one also stamps ``progressed`` and
        keeps the estimate's ``finish_by`` (:func:`~mixviz.runs.progress.promise`), in the
        same UPDATE."""
        if not fields:
            return
        with self.tx() as con:
            if "progress" in fields and "progressed" not in fields:
                fields = {**fields, **_advanced(con, run_id, fields)}
            cols = ", ".join(f"{k} = ?" for k in fields)
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

    def cancel(self, run_id: str, from_status: tuple[str, ...]) -> RunRow | None:
        """Mark the run ``cancelled`` and drop any results, in one transaction, if it is still
        in one of ``from_status``. Returns the row as it stood just before (its ``pid`` is the
        process to stop), or ``None`` when the run was not in those states."""
        with self.tx() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] not in from_status:
                return None
            con.execute(
                "UPDATE runs SET status = 'cancelled', stage = 'cancelled', finished = ? "
                "WHERE id = ?",
                (time.time(), run_id),
            )
            con.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            return _row(row)

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
    ) -> bool:
        """Replace the run's results; refused (``False``) once it is cancelled or lost."""
        with self.tx() as con:
            row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row["status"] in ("cancelled", "lost"):
                return False
            con.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            con.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?)", [(run_id, *r) for r in rows]
            )
        return True

    def results(self, run_id: str) -> dict[str, dict[str, float]]:
        """The run's results: ``{task: {metric: value}}``."""
        return self._by_task(run_id, "value")

    def stderrs(self, run_id: str) -> dict[str, dict[str, float]]:
        """The standard error of each result that has one: ``{task: {metric: se}}``."""
        return self._by_task(run_id, "stderr")

    def _by_task(self, run_id: str, column: str) -> dict[str, dict[str, float]]:
        con = self._connect()
        try:
            rows = con.execute(
                f"SELECT task, metric, {column} AS x FROM results "  # column: ours, not input
                f"WHERE run_id = ? AND {column} IS NOT NULL",
                (run_id,),
            ).fetchall()
        finally:
            con.close()
        out: dict[str, dict[str, float]] = {}
        for r in rows:
            out.setdefault(r["task"], {})[r["metric"]] = r["x"]
        return out


_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRow))


def _row(r: sqlite3.Row) -> RunRow:
    """A row as a :class:`RunRow`; columns a newer schema added (another process migrated
    the store while this one had it open) are left out, not an error."""
    d = {k: v for k, v in dict(r).items() if k in _ROW_FIELDS}
    d["spec"] = json.loads(d["spec"])
    return RunRow(**d)


def _advanced(con: sqlite3.Connection, run_id: str, fields: dict) -> dict:
    """``{progressed, finish_by}`` when ``fields["progress"]`` is above the stored progress
    (a unit finished now), else ``{}``."""
    row = con.execute(
        "SELECT progress, started, finish_by FROM runs WHERE id = ?", (run_id,)
    ).fetchone()
    if row is None or not fields["progress"] > row["progress"]:
        return {}
    now, started = time.time(), fields.get("started", row["started"])
    by = None if started is None else promise(fields["progress"], started, now, row["finish_by"])
    return {"progressed": now, "finish_by": by}


def _add_column(con: sqlite3.Connection, table: str, column: str) -> None:
    """``ALTER TABLE … ADD COLUMN``, where another process opening the same old store at the
    same moment may have added it first (then there is nothing left to do)."""
    try:
        con.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    except sqlite3.OperationalError as e:
        if "duplicate column" not in str(e):
            raise
