"""The job store: every job's state in SQLite, so that none is lost across a restart.

One file in the data folder, WAL mode (readers never wait for the writer; a crash cannot corrupt it),
``synchronous=NORMAL`` (a power cut may lose the last transaction, never the file), one connection behind
a lock. The service calls it from its event loop; each call is a sub-millisecond indexed statement, and
progress is written at most once a second per job.

The same database holds the result cache's table (:mod:`freestems.service.cache`): one file to back up,
one place where results are accounted for; and ``usage``, one row per computed job (model, GPU type,
audio and GPU seconds, cost, timings: no file name, no address), which outlives the job's record so that
``freestems cost`` can project prices from more than the last hour. The table was added without a schema
version change: ``CREATE TABLE IF NOT EXISTS`` adds it to an older file; so were the ``duration`` and
``cost`` (model-seconds, :mod:`.pricing`) columns of ``jobs``, added at open to a file that lacks them.

A job goes ``queued -> running -> done | failed | cancelled``. Terminal jobs get ``expires_at``; the sweeper
deletes them (record and files) after it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from freestems.cost import UsageRecord
from freestems.errors import FailureCode

from .errors import ServiceError

SCHEMA_VERSION = 1
STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled")
RESTART_REASON = "interrupted by a server restart, and its upload is gone; please submit it again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    options TEXT NOT NULL,
    model TEXT NOT NULL,
    client TEXT NOT NULL,
    session TEXT,
    filename TEXT NOT NULL DEFAULT '',
    input_path TEXT,
    result_path TEXT,
    cache_key TEXT,
    cache_hit INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    timings TEXT,
    duration REAL,
    cost REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, state);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS results (
    cache_key TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT PRIMARY KEY,
    finished_at REAL NOT NULL,
    model TEXT NOT NULL,
    gpu TEXT,
    audio_seconds REAL,
    gpu_seconds REAL,
    cost_usd REAL,
    timings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS usage_time ON usage (finished_at);
"""
_ADDED_COLUMNS = {"duration": "REAL", "cost": "REAL NOT NULL DEFAULT 0"}
"""Columns of ``jobs`` added after schema version 1 (without a version change): a file that lacks them gets
them at open, with their defaults (an older job's cost is 0: it is priced at the ceiling while it waits)."""


class StoreError(ServiceError):
    """The database cannot be used (wrong schema version, unreadable file); the message says which file."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "store_unavailable", message)


@dataclass
class Job:
    """One row of ``jobs``. Paths are absolute; ``options`` and ``timings`` are decoded JSON."""

    id: str
    token: str
    state: str
    options: dict[str, Any]
    model: str
    client: str
    created_at: float
    progress: float = 0.0
    session: str | None = None
    filename: str = ""
    input_path: Path | None = None
    result_path: Path | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    error_code: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    duration: float | None = None
    """Seconds of audio, as the upload's probe found them (None: not known)."""
    cost: float = 0.0
    """What the job was priced at, in model-seconds (:mod:`.pricing`); 0 for a job stored before prices."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


_COLUMNS = [f.name for f in fields(Job)]


class JobStore:
    """Jobs (and cached results) in a SQLite file. Thread-safe; every method is one short transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has job store schema version {row['value']}, this freestems expects "
                    f"{SCHEMA_VERSION}; move the file away (or use another FREESTEMS_DATA_DIR)"
                )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open the job store {self.path}: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------------------------------------ jobs

    def create(self, job: Job) -> Job:
        values = _to_row(job)
        values.pop("seq")
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction() as db:
            cursor = db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(values.values()))
            job.seq = int(cursor.lastrowid or 0)
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _from_row(rows[0]) if rows else None

    def update(self, job_id: str, **changes: Any) -> None:
        """Set columns of one job (``Path``, dict and bool values are converted)."""
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job columns: {', '.join(sorted(unknown))}")
        values = _to_row_values(changes)
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def delete(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def queued(self) -> list[Job]:
        """Queued jobs, first in line first."""
        return [
            _from_row(row) for row in self._query("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq")
        ]

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        return [_from_row(row) for row in self._query("SELECT * FROM jobs ORDER BY seq")]

    def active(self) -> list[Job]:
        return [
            _from_row(row)
            for row in self._query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq")
        ]

    def position(self, job: Job) -> int:
        """1 for the next queued job to start, 2 for the one after...; 0 when not queued."""
        if job.state != "queued":
            return 0
        rows = self._query("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= ?", (job.seq,))
        return int(rows[0][0])

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 when none)."""
        rows = self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts

    def in_flight(self, client: str | None = None) -> int:
        """Queued plus running jobs, of one client address or of everyone."""
        if client is None:
            rows = self._query("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")
        else:
            rows = self._query(
                "SELECT COUNT(*) FROM jobs WHERE client = ? AND state IN ('queued', 'running')", (client,)
            )
        return int(rows[0][0])

    def expired(self, now: float | None = None) -> list[Job]:
        """Ended jobs past their expiry."""
        now = time.time() if now is None else now
        rows = self._query("SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ?", (now,))
        return [_from_row(row) for row in rows]

    def paths(self) -> set[Path]:
        """Every input and result file a job record points at (to find orphans)."""
        rows = self._query("SELECT input_path, result_path FROM jobs")
        found = {Path(value) for row in rows for value in row if value}
        rows = self._query("SELECT path FROM results")
        return found | {Path(row[0]) for row in rows}

    def recover(self, ttl: float) -> tuple[list[Job], list[Job]]:
        """After a restart: unfinished jobs go (back) in the queue if their upload survived, else fail with
        a reason that says so (kept ``ttl`` seconds, like any ended job). Nothing is dropped silently.

        Returns (jobs to run again, in queue order; jobs marked failed).
        """
        failed: list[Job] = []
        requeue: list[Job] = []
        now = time.time()
        for job in self.active():
            if job.input_path is not None and job.input_path.is_file():
                if job.state == "running":
                    self.update(job.id, state="queued", progress=0.0, started_at=None)
                    job.state, job.progress, job.started_at = "queued", 0.0, None
                requeue.append(job)
            else:
                changes = dict(error_code=FailureCode.INTERRUPTED, error=RESTART_REASON, finished_at=now)
                self.update(job.id, state="failed", input_path=None, expires_at=now + ttl, **changes)
                failed.append(job)
        return requeue, failed

    # ------------------------------------------------------------------------------------------ results

    def put_result(self, cache_key: str, path: Path, job_id: str, expires_at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                (cache_key, str(path), job_id, time.time(), expires_at),
            )

    def get_result(self, cache_key: str) -> tuple[Path, float] | None:
        """The cached result's path and expiry, if any and not expired."""
        rows = self._query(
            "SELECT path, expires_at FROM results WHERE cache_key = ? AND expires_at >= ?",
            (cache_key, time.time()),
        )
        return (Path(rows[0][0]), float(rows[0][1])) if rows else None

    def result_job(self, cache_key: str) -> str | None:
        """The id of the job whose result a cache entry is (its partial results may still exist)."""
        rows = self._query("SELECT job_id FROM results WHERE cache_key = ?", (cache_key,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def touch_result(self, cache_key: str, expires_at: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE results SET expires_at = ? WHERE cache_key = ?", (expires_at, cache_key))

    def delete_result(self, cache_key: str) -> Path | None:
        rows = self._query("SELECT path FROM results WHERE cache_key = ?", (cache_key,))
        if not rows:
            return None
        with self._transaction() as db:
            db.execute("DELETE FROM results WHERE cache_key = ?", (cache_key,))
        return Path(rows[0][0])

    def expired_results(self, now: float | None = None) -> list[tuple[str, Path]]:
        now = time.time() if now is None else now
        rows = self._query("SELECT cache_key, path FROM results WHERE expires_at < ?", (now,))
        return [(row[0], Path(row[1])) for row in rows]

    def result_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM results")[0][0])

    # ------------------------------------------------------------------------------------------ usage

    def record_usage(self, record: UsageRecord) -> None:
        """Keep the accounting of one computed job (replacing an earlier row of the same job)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.finished_at,
                    record.model,
                    record.gpu,
                    record.audio_seconds,
                    record.gpu_seconds,
                    record.cost_usd,
                    json.dumps(record.timings, sort_keys=True),
                ),
            )

    def usage(self, job_id: str) -> UsageRecord | None:
        rows = self._query("SELECT * FROM usage WHERE job_id = ?", (job_id,))
        return UsageRecord.from_dict(dict(rows[0])) if rows else None

    def usage_records(self, since: float | None = None) -> list[UsageRecord]:
        """Every usage row (finished at or after ``since``), oldest first."""
        rows = self._query("SELECT * FROM usage WHERE finished_at >= ? ORDER BY finished_at", (since or 0.0,))
        return [UsageRecord.from_dict(dict(row)) for row in rows]


def _to_row_values(values: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, bool):
            value = int(value)
        converted[name] = value
    return converted


def _to_row(job: Job) -> dict[str, Any]:
    return _to_row_values({name: getattr(job, name) for name in _COLUMNS})


def _from_row(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _COLUMNS}
    values["options"] = json.loads(values["options"] or "{}")
    values["timings"] = json.loads(values["timings"] or "{}")
    values["cache_hit"] = bool(values["cache_hit"])
    for name in ("input_path", "result_path"):
        values[name] = Path(values[name]) if values[name] else None
    return Job(**values)
