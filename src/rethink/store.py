"""The results store: one SQLite file holding every run's spec, status, summary and metrics.

Writes happen in transactions (WAL mode), so an interrupted process leaves whole runs or none,
and several processes may share one store. Each store has an id (its ``meta`` table), which its
runs' checkpoints record, and each running or queued run the process that owns it, so that two
processes do not train one run and a run whose process is gone shows as interrupted. The store
knows nothing of torch.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError, make_folder

SCHEMA_VERSION = 4  # 2: the meta table (store id) and the owner of a running run; 3: measures; 4: examples
# An evaluation's metrics (rethink.train.engine.evaluate), stored after its place and time.
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc")
EVAL_COLUMNS = ("step", "epoch", "seconds", "lr", *METRICS)
RUN_COLUMNS = (
    "run_id",
    "status",
    "spec",
    "summary",
    "created",
    "updated",
    "package_version",
    "git_commit",
    "data_checksum",
    "device",
    "num_params",
)
OWNER_COLUMNS = ("owner_pid", "owner_host", "owner_started")  # the process that trains a running run
ACTIVE = ("running", "queued")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, spec TEXT NOT NULL, summary TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, package_version TEXT, git_commit TEXT,
    data_checksum TEXT, device TEXT, num_params INTEGER, owner_pid INTEGER, owner_host TEXT, owner_started INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    {", ".join(c + (" INTEGER NOT NULL" if c == "step" else " REAL") for c in EVAL_COLUMNS)},
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recipes (
    name TEXT NOT NULL, scale TEXT NOT NULL, options TEXT NOT NULL, run_ids TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (name, scale, options));
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL, loss REAL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS measures (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    name TEXT NOT NULL, options TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (run_id, name, options)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS examples (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL, correct BLOB NOT NULL, loss BLOB NOT NULL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
"""
# From each older schema version to the next (CREATE TABLE IF NOT EXISTS adds the new tables).
_MIGRATIONS = {
    1: [f"ALTER TABLE runs ADD COLUMN {c} {t}" for c, t in zip(OWNER_COLUMNS, ("INTEGER", "TEXT", "INTEGER"))],
    2: [],
    3: [],
}


class Store:
    """A SQLite results file. ``Store(path)`` creates it (and its folder) when missing, and
    upgrades a store of an older schema version; ``Store(path, readonly=True)`` opens an existing
    store for reading and never writes to it (read commands: runs, export, report)."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = str(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):
            raise UserError(
                f"--store {self.path} is a folder; pass the path of a store file in it, "
                f"e.g. {os.path.join(self.path, 'rethink.sqlite')}"
            )
        if readonly:
            self._open_readonly()
            return
        make_folder(folder, "the store's folder", "--store")
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise UserError(f"store {self.path} is not writable; fix its permissions or pass another --store")
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            with _Transaction(self.db, "BEGIN"):  # one snapshot: another process may be creating the store
                self._check_schema()
            self._use_wal()
            with self.transaction():
                version = self._check_schema()
                upgrade = [s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS.get(v, [])] if version else []
                for statement in upgrade + list(filter(str.strip, _SCHEMA.split(";"))):
                    self.db.execute(statement)
                self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as e:
            if not os.access(folder, os.W_OK):  # SQLite writes its journal (-wal, -shm) beside the store
                raise UserError(
                    f"cannot write the store {self.path}: its folder {folder} is not writable and SQLite "
                    "keeps its journal beside the store; make the folder writable or pass another --store"
                ) from None
            raise UserError(f"cannot write the store {self.path} ({e}); pass --store with a writable path") from None
        except sqlite3.DatabaseError as e:
            raise UserError(
                f"store {self.path} is not a rethink SQLite store ({e}); pass another --store or move the file away"
            ) from None
        self.version = SCHEMA_VERSION
        self.store_id = self._store_id()

    def _open_readonly(self) -> None:
        """Open with ``mode=ro``, which still sees other processes' writes; in a folder where SQLite
        cannot create a WAL store's shared-memory file, as ``immutable=1`` (nothing can write there)."""
        if not os.path.exists(self.path):
            raise UserError(
                f"store {self.path} does not exist; pass --store with the file that 'rethink run' or "
                "'rethink sweep' wrote"
            )
        uri = Path(os.path.abspath(self.path)).as_uri()
        try:
            try:
                self.db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
                with _Transaction(self.db, "BEGIN"):
                    self.version = self._check_schema()
            except sqlite3.OperationalError:
                self.db.close()
                if os.access(os.path.dirname(os.path.abspath(self.path)), os.W_OK):
                    raise
                self.db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
                with _Transaction(self.db, "BEGIN"):
                    self.version = self._check_schema()
        except sqlite3.OperationalError as e:
            raise UserError(
                f"cannot read the store {self.path} ({e}); check its permissions or pass another --store"
            ) from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"store {self.path} is not a rethink SQLite store ({e}); pass another --store") from None
        if not self.version:
            raise UserError(f"{self.path} is not a rethink store (it has none of its tables); pass another --store")
        self.store_id = self._store_id() if self.version >= 2 else None

    def _use_wal(self) -> None:
        """Switch the file to WAL mode (it stays so). SQLite answers 'database is locked' at once,
        without waiting, while another process switches the same new file (torchrun's ranks and a
        sweep's workers open it together), so wait here as the busy timeout would."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e):
                    raise
            time.sleep(0.01)
        raise sqlite3.OperationalError("database is locked: no switch to WAL mode within 60 s")

    def _check_schema(self) -> int:
        """The store's schema version (0: an empty file); refuses one this rethink cannot read or
        upgrade. Call inside a transaction, so that the version and the tables are read from one
        state of the file."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION and version not in _MIGRATIONS:
            raise UserError(
                f"store {self.path} has schema version {version}, this rethink reads version {SCHEMA_VERSION}; "
                "use a store written by this version or pass another --store"
            )
        return version if tables else 0

    def _store_id(self) -> str:
        return self.db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    # -- writes -------------------------------------------------------------------------------
    def start_runs(self, runs: list[tuple[str, dict]], status: str = "running", **info) -> list[dict]:
        """Record runs (run id, spec) as running or queued by this process, in one transaction (a
        rerun of the same id replaces its metrics when it ends). Refuses when another live process
        on this machine trains one of them; returns the owners of those that a process on another
        machine had, whose liveness cannot be checked from here."""
        now, me = time.time(), _this_process()
        busy, elsewhere = [], []
        with self.transaction():  # the check and the claim in one write transaction: no other claim between them
            for run_id, _ in runs:
                row = self.db.execute(
                    f"SELECT status, {', '.join(OWNER_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)
                ).fetchone()
                owner = dict(zip(OWNER_COLUMNS, row[1:])) if row and row[0] in ACTIVE and row[1] is not None else None
                if owner is None or tuple(owner.values()) == me:
                    continue
                alive = _alive(owner)
                (elsewhere if alive is None else busy if alive else []).append({"run_id": run_id, **owner})
            if busy:
                b = busy[0]
                more = f" (and {len(busy) - 1} more of these runs)" if len(busy) > 1 else ""
                raise UserError(
                    f"run {b['run_id']}{more} is being trained by process {b['owner_pid']} on this machine "
                    f"({b['owner_host']}) in store {self.path}; wait for it to end, or stop it (kill "
                    f"{b['owner_pid']}) and run the same command again to resume"
                )
            self.db.executemany(
                "INSERT INTO runs (run_id, status, spec, created, updated, package_version, git_commit, owner_pid,"
                " owner_host, owner_started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET"
                " status=excluded.status, updated=excluded.updated, package_version=excluded.package_version,"
                " git_commit=excluded.git_commit, owner_pid=excluded.owner_pid, owner_host=excluded.owner_host,"
                " owner_started=excluded.owner_started",
                [
                    (
                        run_id,
                        status,
                        json.dumps(spec, sort_keys=True),
                        now,
                        now,
                        info.get("package_version"),
                        info.get("git_commit"),
                        *me,
                    )
                    for run_id, spec in runs
                ],
            )
        return elsewhere

    def start_run(self, run_id: str, spec: dict, status: str = "running", **info) -> list[dict]:
        """:meth:`start_runs` for one run."""
        return self.start_runs([(run_id, spec)], status, **info)

    def finish_run(
        self,
        run_id: str,
        status: str,
        summary: dict,
        evals: list[dict],
        step_losses: list[float],
        examples: list[dict] = (),
        **info,
    ) -> None:
        """Write a run's status, summary, all its metrics, its per-example records (``examples``:
        step, correct, loss, as :func:`rethink.train.engine.example_record` makes them; stored
        zlib-compressed) and ``info`` (data_checksum, device, num_params) in one transaction."""
        with self.transaction():
            for table in ("evals", "steps", "examples"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            self.db.executemany(
                "INSERT INTO examples (run_id, step, correct, loss) VALUES (?, ?, ?, ?)",
                [(run_id, e["step"], zlib.compress(e["correct"]), zlib.compress(e["loss"])) for e in examples],
            )
            self.db.executemany(
                f"INSERT INTO evals (run_id, {', '.join(EVAL_COLUMNS)}) VALUES (?{', ?' * len(EVAL_COLUMNS)})",
                [(run_id, *(row.get(c) for c in EVAL_COLUMNS)) for row in evals],
            )
            self.db.executemany(
                "INSERT INTO steps (run_id, step, loss) VALUES (?, ?, ?)",
                [(run_id, i + 1, _finite_or_none(v)) for i, v in enumerate(step_losses)],
            )
            self.db.execute(
                "UPDATE runs SET status = ?, summary = ?, updated = ?, data_checksum = ?, device = ?,"
                " num_params = ? WHERE run_id = ?",
                (
                    status,
                    json.dumps(summary, sort_keys=True),
                    time.time(),
                    info.get("data_checksum"),
                    info.get("device"),
                    info.get("num_params"),
                    run_id,
                ),
            )

    def record_recipe(self, name: str, scale: str, options: dict, run_ids: list[str]) -> None:
        """Remember which runs make up a recipe's output, so that a report can rebuild it."""
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO recipes (name, scale, options, run_ids, created) VALUES (?, ?, ?, ?, ?)",
                (name, scale, json.dumps(options, sort_keys=True), json.dumps(run_ids), time.time()),
            )

    # -- reads --------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict | None:
        """A run's row; its ``state`` is its status, except that a running or queued run whose
        process is gone from this machine is ``interrupted``, and one that a process on another
        machine owns says which (``running (host X)``)."""
        row = self.db.execute(f"SELECT {self._columns} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def runs(self, status: str | None = None) -> list[dict]:
        """Every run's row (as :meth:`get_run`), oldest first; ``status``: only those stored with it."""
        q = f"SELECT {self._columns} FROM runs"
        rows = self.db.execute(
            q + (" WHERE status = ?" if status else "") + " ORDER BY created", (status,) if status else ()
        ).fetchall()
        return [_run_row(r) for r in rows]

    @property
    def _columns(self) -> str:
        return ", ".join(RUN_COLUMNS + (OWNER_COLUMNS if self.version >= 2 else ()))

    def evals(self, run_id: str) -> list[dict]:
        rows = self.db.execute(
            f"SELECT {', '.join(EVAL_COLUMNS)} FROM evals WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        return [dict(zip(EVAL_COLUMNS, r)) for r in rows]

    def step_losses(self, run_id: str) -> list[float]:
        rows = self.db.execute("SELECT loss FROM steps WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
        return [r[0] if r[0] is not None else float("nan") for r in rows]

    def examples(self, run_id: str) -> list[dict]:
        """A run's per-example records, one per evaluation: step, correct (a bitset), loss (float16),
        in :mod:`rethink.memorization.tracking`'s format; none in an older store."""
        if self.version < 4:
            return []
        rows = self.db.execute(
            "SELECT step, correct, loss FROM examples WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        return [{"step": s, "correct": zlib.decompress(c), "loss": zlib.decompress(v)} for s, c, v in rows]

    def examples_bytes(self) -> dict[str, int]:
        """Bytes each run's per-example records take in the store (runs without records left out)."""
        if self.version < 4:
            return {}
        rows = self.db.execute(
            "SELECT run_id, SUM(length(correct) + length(loss)) FROM examples GROUP BY run_id"
        ).fetchall()
        return dict(rows)

    def record_measures(self, run_id: str, values: dict, options: dict) -> None:
        """Store a run's measures (name -> a number, None, or a list), computed with ``options``
        (JSON-able; the same measure under other options is kept beside it)."""
        key, now = json.dumps(options, sort_keys=True), time.time()
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO measures (run_id, name, options, value, created) VALUES (?, ?, ?, ?, ?)",
                [(run_id, name, key, json.dumps(value), now) for name, value in values.items()],
            )

    def measures(self, run_id: str | None = None) -> list[dict]:
        """Stored measures (of one run, or all): run_id, name, options, value; none in an older
        store a reader opened without upgrading."""
        if self.version < 3:
            return []
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        rows = self.db.execute(
            f"SELECT run_id, name, options, value FROM measures {where} ORDER BY run_id, name, options", args
        ).fetchall()
        return [{"run_id": r, "name": n, "options": json.loads(o), "value": json.loads(v)} for r, n, o, v in rows]

    def recipes(self) -> list[dict]:
        rows = self.db.execute("SELECT name, scale, options, run_ids, created FROM recipes ORDER BY created").fetchall()
        return [
            {"name": n, "scale": sc, "options": json.loads(o), "run_ids": json.loads(r), "created": c}
            for n, sc, o, r, c in rows
        ]

    def export_rows(self, what: str = "evals", run_ids: list[str] | None = None) -> tuple[list[str], Iterator[list]]:
        """The header and rows (read as they are iterated) that ``rethink export`` writes:
        evaluations, per-step losses, or the runs table (spec and summary as JSON); a run id not in
        the store is a UserError."""
        runs = self.runs()
        known = [r["run_id"] for r in runs]
        missing = [rid for rid in run_ids or () if rid not in known]
        if missing:
            raise UserError(
                f"run {missing[0]} is not in the store {self.path}; 'rethink runs --store {self.path}' lists its runs"
            )
        ids = run_ids or known
        if what == "runs":
            wanted = set(ids)
            header = ["run_id", "status", "created", "num_params", "data_checksum", "spec", "summary"]
            rows = (
                [
                    r["run_id"],
                    r["state"],
                    r["created"],
                    r["num_params"],
                    r["data_checksum"],
                    json.dumps(r["spec"]),
                    json.dumps(r["summary"]),
                ]
                for r in runs
                if r["run_id"] in wanted
            )
        elif what == "steps":
            header = ["run_id", "step", "loss"]
            rows = ([rid, i + 1, loss] for rid in ids for i, loss in enumerate(self.step_losses(rid)))
        else:
            header = ["run_id", *EVAL_COLUMNS]
            rows = ([rid, *(row[c] for c in EVAL_COLUMNS)] for rid in ids for row in self.evals(rid))
        return header, rows

    def export_csv(self, path: str, what: str = "evals", run_ids: list[str] | None = None) -> int:
        """Write evaluations (or per-step losses, or the runs table) as CSV; returns the row count."""
        header, rows = self.export_rows(what, run_ids)
        try:
            f = open(path, "w", newline="") if path != "-" else None
        except OSError as e:
            raise UserError(f"cannot write {path} ({e.strerror}); pass --out with a writable path") from None
        w = csv.writer(f or sys.stdout)
        w.writerow(header)
        count = 0
        for row in rows:
            w.writerow(row)
            count += 1
        if f:
            f.close()
        return count


class _Transaction:
    def __init__(self, db, begin: str = "BEGIN IMMEDIATE"):
        self.db, self.begin = db, begin

    def __enter__(self):
        self.db.execute(self.begin)

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _finite_or_none(v: float):
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _run_row(row) -> dict:
    d = dict(zip(RUN_COLUMNS, row))
    d["spec"] = json.loads(d["spec"])
    d["summary"] = json.loads(d["summary"]) if d["summary"] else None
    owner = dict(zip(OWNER_COLUMNS, row[len(RUN_COLUMNS) :]))
    d["owner"] = owner if owner.get("owner_pid") is not None else None
    d["state"] = d["status"]
    if d["status"] in ACTIVE and d["owner"]:
        alive = _alive(owner)
        d["state"] = (
            f"{d['status']} (host {owner['owner_host']})" if alive is None else d["status"] if alive else "interrupted"
        )
    return d


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19);
    None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _this_process() -> tuple:
    """This process as a run's owner: pid, host, and its start time (clock ticks after boot, where
    /proc gives it), which tells a reused pid from the process that had it."""
    fields = _proc_stat(os.getpid())
    return os.getpid(), socket.gethostname(), int(fields[19]) if fields else None


def _alive(owner: dict) -> bool | None:
    """Whether the process that owns a run still runs; None when it is on another machine."""
    if owner["owner_host"] != socket.gethostname():
        return None
    pid, started = owner["owner_pid"], owner["owner_started"]
    if started is None:  # no /proc where it ran
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == started  # Z: a zombie
