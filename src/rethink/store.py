"""The results store: one SQLite file holding every run's spec, status, summary and metrics.

Writes happen in transactions (WAL mode), so an interrupted process leaves whole runs or none,
and several processes may share one store. The store knows nothing of torch.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
import time

from .errors import UserError

SCHEMA_VERSION = 1
EVAL_COLUMNS = ("step", "epoch", "seconds", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc")
RUN_COLUMNS = ("run_id", "status", "spec", "summary", "created", "updated", "package_version",
               "git_commit", "data_checksum", "device", "num_params")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, spec TEXT NOT NULL, summary TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, package_version TEXT, git_commit TEXT,
    data_checksum TEXT, device TEXT, num_params INTEGER);
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
"""


class Store:
    """A SQLite results file. ``Store(path)`` creates it (and its folder) when missing."""

    def __init__(self, path: str):
        self.path = str(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the store's folder {folder} ({e.strerror}); pass --store with a writable path") from None
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise UserError(f"store {self.path} is not writable; fix its permissions or pass another --store")
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            with _Transaction(self.db, "BEGIN"):  # one snapshot: another process may be creating the store
                self._check_schema()
        except sqlite3.DatabaseError as e:
            raise UserError(f"store {self.path} is not a rethink SQLite store ({e}); pass another --store or move the file away") from None
        try:
            self._use_wal()
            with self.transaction():
                self._check_schema()
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as e:
            raise UserError(f"cannot write the store {self.path} ({e}); pass --store with a writable path") from None

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

    def _check_schema(self) -> None:
        """Refuse a store written with another schema; call inside a transaction, so that the
        version and the tables are read from one state of the file."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            raise UserError(f"store {self.path} has schema version {version}, this rethink reads version {SCHEMA_VERSION}; "
                            "use a store written by this version or pass another --store")

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    # -- writes -------------------------------------------------------------------------------
    def start_run(self, run_id: str, spec: dict, status: str = "running", **info) -> None:
        """Record a run as running or queued (a rerun of the same id replaces its metrics when it ends)."""
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO runs (run_id, status, spec, created, updated, package_version, git_commit)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET status=excluded.status,"
                " updated=excluded.updated, package_version=excluded.package_version, git_commit=excluded.git_commit",
                (run_id, status, json.dumps(spec, sort_keys=True), now, now, info.get("package_version"),
                 info.get("git_commit")))

    def finish_run(self, run_id: str, status: str, summary: dict, evals: list[dict], step_losses: list[float],
                   **info) -> None:
        """Write a run's status, summary, all its metrics and ``info`` (data_checksum, device,
        num_params) in one transaction."""
        with self.transaction():
            self.db.execute("DELETE FROM evals WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
            self.db.executemany(
                f"INSERT INTO evals (run_id, {', '.join(EVAL_COLUMNS)}) VALUES (?{', ?' * len(EVAL_COLUMNS)})",
                [(run_id, *(row.get(c) for c in EVAL_COLUMNS)) for row in evals])
            self.db.executemany("INSERT INTO steps (run_id, step, loss) VALUES (?, ?, ?)",
                                [(run_id, i + 1, _finite_or_none(v)) for i, v in enumerate(step_losses)])
            self.db.execute("UPDATE runs SET status = ?, summary = ?, updated = ?, data_checksum = ?, device = ?,"
                            " num_params = ? WHERE run_id = ?",
                            (status, json.dumps(summary, sort_keys=True), time.time(), info.get("data_checksum"),
                             info.get("device"), info.get("num_params"), run_id))

    def record_recipe(self, name: str, scale: str, options: dict, run_ids: list[str]) -> None:
        """Remember which runs make up a recipe's output, so that a report can rebuild it."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO recipes (name, scale, options, run_ids, created)"
                            " VALUES (?, ?, ?, ?, ?)", (name, scale, json.dumps(options, sort_keys=True),
                                                        json.dumps(run_ids), time.time()))

    # -- reads --------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def runs(self, status: str | None = None) -> list[dict]:
        q = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        rows = self.db.execute(q + (" WHERE status = ?" if status else "") + " ORDER BY created",
                               (status,) if status else ()).fetchall()
        return [_run_row(r) for r in rows]

    def evals(self, run_id: str) -> list[dict]:
        rows = self.db.execute(f"SELECT {', '.join(EVAL_COLUMNS)} FROM evals WHERE run_id = ? ORDER BY step",
                               (run_id,)).fetchall()
        return [dict(zip(EVAL_COLUMNS, r)) for r in rows]

    def step_losses(self, run_id: str) -> list[float]:
        rows = self.db.execute("SELECT loss FROM steps WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
        return [r[0] if r[0] is not None else float("nan") for r in rows]

    def recipes(self) -> list[dict]:
        rows = self.db.execute("SELECT name, scale, options, run_ids, created FROM recipes ORDER BY created").fetchall()
        return [{"name": n, "scale": sc, "options": json.loads(o), "run_ids": json.loads(r), "created": c}
                for n, sc, o, r, c in rows]

    def export_csv(self, path: str, what: str = "evals", run_ids: list[str] | None = None) -> int:
        """Write evaluations (or per-step losses, or the runs table) as CSV; returns the row count."""
        ids = run_ids or [r["run_id"] for r in self.runs()]
        wanted = set(ids)
        try:
            f = open(path, "w", newline="") if path != "-" else None
        except OSError as e:
            raise UserError(f"cannot write {path} ({e.strerror}); pass --out with a writable path") from None
        out = f or sys.stdout
        w = csv.writer(out)
        count = 0
        if what == "runs":
            w.writerow(["run_id", "status", "created", "num_params", "data_checksum", "spec", "summary"])
            for r in self.runs():
                if r["run_id"] in wanted:
                    w.writerow([r["run_id"], r["status"], r["created"], r["num_params"], r["data_checksum"],
                                json.dumps(r["spec"]), json.dumps(r["summary"])])
                    count += 1
        elif what == "steps":
            w.writerow(["run_id", "step", "loss"])
            for rid in ids:
                for i, loss in enumerate(self.step_losses(rid)):
                    w.writerow([rid, i + 1, loss])
                    count += 1
        else:
            w.writerow(["run_id", *EVAL_COLUMNS])
            for rid in ids:
                for row in self.evals(rid):
                    w.writerow([rid, *(row[c] for c in EVAL_COLUMNS)])
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
    return d
