"""The job store on shared dictionaries: what :class:`~.store.JobStore` keeps in SQLite, in ``modal.Dict`` s.

Several web containers serve one deployment; each must see every job, so the records cannot live in one
container's SQLite file (and SQLite on a Modal Volume is unsafe with several writers). This class has the
same methods as :class:`~.store.JobStore` over dictionaries with ``modal.Dict``'s methods (``get``,
``put``, ``pop``, ``items``...):

- ``jobs``: job id -> its row (a plain dict; paths relative to the data folder, which is the same Volume
  mounted in every container, so a row written by one container names the same files in another), with
  the row's ``version``;
- ``versions``: ``<id>@<n>`` -> version ``n`` of a row. **An update is atomic**: it reads the newest row
  (``jobs`` may lag: a reader follows ``<id>@<n+1>`` until there is none), makes its changes, and writes
  version ``n+1`` with ``put(..., skip_if_exists=True)``; of two containers writing at once exactly one
  wins and the other applies its changes again to the winner's row. So a progress report that overlaps a
  cancellation never writes the job back as running, and a job that has ended never goes back to an
  active state (a late report from a container that has not heard of a cancellation cannot revive it).
  The last :data:`KEEP_VERSIONS` versions are kept; a deletion is a version too (``deleted``);
- ``active``: job id -> ``(created_at, client, state)`` of queued and running jobs only: admission, queue
  positions and adoption scan this small index, never every job;
- ``ended``: job id -> its expiry, for the sweeper;
- ``results`` (the result cache's rows) and ``usage`` (one accounting row per computed job).

**Never on the event loop.** Each call of a ``modal.Dict`` is a network round trip, and the service's event
loop serves every socket of the container. Called from a thread that runs an event loop (the job manager
is), the store answers from this container's copy of the rows it knows (those it wrote, fetched or saw in
the last sync round) and of the ``active`` index (refreshed every sync round, :mod:`.replicas`), and hands
its writes to a :class:`Courier`: one thread that makes them, in order, with the other shared-state writes
of the container. Called from any other thread (the sync round, a request's worker thread, the sweeper)
it reads and writes the dictionaries directly, and keeps what it read. A request that names a job this
container may not know reads it first in a thread (:meth:`DictJobStore.get` there, e.g.
:meth:`~.shared_state.SharedState.refresh`), and one that must be seen by other containers before it
answers waits for the courier (:meth:`Courier.settled`).

Queue order is ``(created_at, id)``, the same in every container. Queue capacity and per-address limits
are counted from ``active`` as this container last saw it (at most a sync round old, its own jobs at
once): two containers admitting at the same instant may each admit the last free place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from freestems.cost import UsageRecord
from freestems.errors import FailureCode

from .store import ACTIVE, RESTART_REASON, STATES, TERMINAL, Job

log = logging.getLogger(__name__)

_PATHS = ("input_path", "result_path")
KEEP_VERSIONS = 8
"""Versions of a row kept in ``versions`` (a reader whose ``jobs`` row lags follows them)."""
MIRROR_ROWS = 4096
"""Rows a container keeps a copy of for its event loop (the least recently used go first)."""
CAS_ATTEMPTS = 200
"""Tries of one atomic update before it gives up (each lost try means another container wrote)."""
RETRIES = 3
"""Tries of a write the courier makes (a network error is retried after 0.2 s, then 0.4 s)."""


class DictLike(Protocol):
    """The methods of ``modal.Dict`` the shared state uses (a ``dict`` has them too, but for ``put``)."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def pop(self, key: Any, default: Any = ...) -> Any: ...

    def items(self) -> Any: ...

    def keys(self) -> Any: ...

    def values(self) -> Any: ...

    def contains(self, key: Any) -> bool: ...

    def len(self) -> int: ...


def on_event_loop() -> bool:
    """True in a thread that runs an asyncio event loop: nothing there may wait for the network."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


FAILED = object()
"""What :func:`retrying` returns when every try failed."""


def retrying(call: Callable[[], Any], what: str) -> Any:
    """``call()``, tried :data:`RETRIES` times; the last failure is logged and :data:`FAILED` returned."""
    for attempt in range(RETRIES):
        try:
            return call()
        except Exception:
            if attempt == RETRIES - 1:
                log.exception("%s failed %d times; given up", what, RETRIES)
            else:
                time.sleep(0.2 * 2**attempt)
    return FAILED


def _keep(copy: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
    """``copy[key] = value`` as its newest entry, the oldest dropped beyond :data:`MIRROR_ROWS`; None
    removes the key."""
    if value is None:
        copy.pop(key, None)
        return
    copy[key] = value
    copy.move_to_end(key)
    while len(copy) > MIRROR_ROWS:
        copy.popitem(last=False)


class Courier:
    """One thread that makes the shared-state calls the event loop hands it, in the order given, so the
    loop never waits for the network and a container's writes land in the order it made them (its claim
    on a job before the job's row, for instance)."""

    def __init__(self, name: str = "freestems-courier") -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], threading.Event | None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._name = name

    def send(self, call: Callable[[], Any]) -> None:
        """Make ``call()`` in the courier's thread, after every call sent before it (it must not raise)."""
        self._start()
        self._calls.put((call, None))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait (never on the event loop) until every call sent before is made; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._calls.put((lambda: None, done))
        return done.wait(timeout)

    async def settled(self) -> None:
        """:meth:`flush` from the event loop, without blocking it."""
        if self._thread is not None:
            await asyncio.to_thread(self.flush)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            call, done = self._calls.get()
            try:
                call()
            except Exception:  # a call is expected to handle its errors; this keeps the thread alive
                log.exception("a shared-state call failed")
            if done is not None:
                done.set()


class DictJobStore:
    """:class:`~.store.JobStore`'s interface over shared dictionaries (``space(name)`` -> a Dict); on the
    event loop, over this container's copy and its ``courier`` (see the module). Without a courier every
    call goes to the dictionaries."""

    shared = True

    def __init__(self, space: Callable[[str], DictLike], root: Path, courier: Courier | None = None) -> None:
        self.root = Path(root)
        self.jobs_dict = space("jobs")
        self.versions_dict = space("versions")
        self.active_dict = space("active")
        self.ended_dict = space("ended")
        self.results_dict = space("results")
        self.usage_dict = space("usage")
        self.courier = courier
        self._lock = threading.Lock()  # guards the copies below
        self._rows: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._index: dict[str, tuple[float, str, str]] = {}
        self._pending: collections.Counter[str] = collections.Counter()  # writes handed to the courier
        self._results: collections.OrderedDict[str, tuple[Any, ...]] = collections.OrderedDict()
        self._usage: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def close(self) -> None:
        """Nothing to close: the dictionaries outlive the container."""

    # ------------------------------------------------------------------------------------------ paths

    def _relative(self, path: Path | str | None) -> str | None:
        if path is None:
            return None
        path = Path(path)
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def _absolute(self, value: str | None) -> Path | None:
        return None if not value else self.root / value

    def _row(self, job: Job) -> dict[str, Any]:
        row = {name: getattr(job, name) for name in Job.__dataclass_fields__}
        for name in _PATHS:
            row[name] = self._relative(row[name])
        row["options"], row["timings"] = dict(job.options), dict(job.timings)
        return row

    def _values(self, changes: dict[str, Any]) -> dict[str, Any]:
        values = dict(changes)
        for name in _PATHS:
            if name in values:
                values[name] = self._relative(values[name])
        for name in ("options", "timings"):
            if name in values:
                values[name] = dict(values[name] or {})
        return values

    def _job(self, row: dict[str, Any] | None) -> Job | None:
        if row is None:
            return None
        values = dict(row)
        for name in _PATHS:
            values[name] = self._absolute(values.get(name))
        values["options"] = dict(values.get("options") or {})
        values["timings"] = dict(values.get("timings") or {})
        return Job(**{name: values[name] for name in Job.__dataclass_fields__ if name in values})

    # ------------------------------------------------------------------------------------------ the copy

    def _on_loop(self) -> bool:
        return self.courier is not None and on_event_loop()

    def _remember(self, job_id: str, row: dict[str, Any] | None, *, written: bool = False) -> None:
        """Keep ``row`` (None: no such job) as this container's copy. A row read from the dictionaries
        does not replace one that has writes of this container still with the courier."""
        with self._lock:
            if not written and self._pending[job_id]:
                return
            _keep(self._rows, job_id, row)
            if row is None:
                self._index.pop(job_id, None)
                return
            if row["state"] in ACTIVE:
                self._index[job_id] = (float(row["created_at"]), str(row["client"]), str(row["state"]))
            else:
                self._index.pop(job_id, None)

    def _defer(self, job_id: str, write: Callable[[], dict[str, Any] | None]) -> None:
        """On the event loop: ``write`` (which returns the row it left, None for none) goes to the courier,
        and this container's copy of the row stays as the loop made it until it is done."""
        assert self.courier is not None
        with self._lock:
            self._pending[job_id] += 1

        def settle() -> None:
            row: Any = FAILED
            try:
                row = retrying(write, f"writing job {job_id}")
            finally:
                with self._lock:
                    self._pending[job_id] -= 1
                    if self._pending[job_id] <= 0:
                        del self._pending[job_id]
            if row is not FAILED:
                self._remember(job_id, row)

        self.courier.send(settle)

    def _later(self, write: Callable[[], Any], what: str) -> None:
        """A write with nothing to keep: to the courier on the event loop, else now."""
        if self._on_loop():
            assert self.courier is not None
            self.courier.send(lambda: retrying(write, what))
        else:
            write()

    # ------------------------------------------------------------------------------------------ versions

    def _latest(self, job_id: str) -> dict[str, Any] | None:
        """The newest row of ``job_id`` in the dictionaries (blocking), or None."""
        row = self.jobs_dict.get(job_id)
        if row is None:
            return None
        version = int(row.get("version", 0))
        while (newer := self.versions_dict.get(f"{job_id}@{version + 1}")) is not None:
            row, version = newer, version + 1
        return None if row.get("deleted") else row

    def _write(
        self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> tuple[dict[str, Any] | None, bool]:
        """The atomic step: ``change(newest row)`` written as the next version (blocking). ``change``
        returns the new row, or None to write nothing. Returns the row left (None: no such job) and
        whether it was written."""
        for _ in range(CAS_ATTEMPTS):
            row = self._latest(job_id)
            if row is None:
                return None, False
            new = change(row)
            if new is None:
                return row, False
            version = int(row.get("version", 0)) + 1
            new["version"] = version
            if self.versions_dict.put(f"{job_id}@{version}", new, skip_if_exists=True):
                if not new.get("deleted"):
                    self.jobs_dict.put(job_id, new)  # may land after a newer one: readers follow versions
                if version > KEEP_VERSIONS:
                    self.versions_dict.pop(f"{job_id}@{version - KEEP_VERSIONS}", None)
                return new, True
        raise RuntimeError(f"job {job_id}: {CAS_ATTEMPTS} writers in a row got there first")

    def _index_row(self, job_id: str, row: dict[str, Any]) -> None:
        """``active`` and ``ended`` after ``row`` was written (blocking); a writer that ended the job
        meanwhile wins: the entry follows the newest row."""
        for _ in range(3):
            if row["state"] in ACTIVE:
                entry = (row["created_at"], row["client"], row["state"])
                self.active_dict.put(job_id, entry)
                newest = self._latest(job_id)
                if newest is not None and newest["state"] == row["state"]:
                    break
                if newest is None or newest["state"] not in ACTIVE:
                    self.active_dict.pop(job_id, None)
                    break
                row = newest
            else:
                self.active_dict.pop(job_id, None)
                break
        if row.get("expires_at") is not None:
            self.ended_dict.put(job_id, row["expires_at"])

    # ------------------------------------------------------------------------------------------ jobs

    def create(self, job: Job) -> Job:
        job.seq = int(job.created_at * 1000)
        row = {**self._row(job), "version": 0}

        def write() -> dict[str, Any]:
            self.jobs_dict.put(job.id, row)
            self._index_row(job.id, row)
            return row

        self._remember(job.id, row, written=True)
        if self._on_loop():
            self._defer(job.id, write)
        else:
            write()
        return job

    def get(self, job_id: str) -> Job | None:
        if self._on_loop():
            with self._lock:
                row = self._rows.get(job_id)
                if row is not None:
                    self._rows.move_to_end(job_id)
            return self._job(row)
        row = self._latest(job_id)
        self._remember(job_id, row)
        return self._job(row)

    def update(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(Job.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown job columns: {', '.join(sorted(unknown))}")
        values = self._values(changes)
        indexed = "state" in changes or "expires_at" in changes

        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            state = row["state"]
            if state in TERMINAL and values.get("state", state) not in TERMINAL:
                return None  # ended elsewhere (cancelled, deleted): a late report cannot revive it
            return {**row, **values}

        def write() -> dict[str, Any] | None:
            row, written = self._write(job_id, change)
            if row is not None and written and indexed:
                self._index_row(job_id, row)
            return row

        if not self._on_loop():
            self._remember(job_id, write())
            return
        with self._lock:
            known = self._rows.get(job_id)
        if known is not None:
            new = change(dict(known))
            if new is not None:
                self._remember(job_id, new, written=True)
        self._defer(job_id, write)

    def delete(self, job_id: str) -> None:
        def write() -> None:
            self._write(job_id, lambda row: {"deleted": True})  # a lagging ``jobs`` row reads as deleted
            self.jobs_dict.pop(job_id, None)
            self.active_dict.pop(job_id, None)
            self.ended_dict.pop(job_id, None)

        self._remember(job_id, None, written=True)
        if self._on_loop():
            self._defer(job_id, write)
        else:
            write()

    def _active_index(self) -> list[tuple[float, str, str, str]]:
        """(created_at, id, client, state) of every queued or running job, in queue order: on the event
        loop as this container last saw it, elsewhere read now (and kept)."""
        if not self._on_loop():
            scanned = {
                str(key): (float(value[0]), str(value[1]), str(value[2]))
                for key, value in list(self.active_dict.items())
            }
            with self._lock:
                for job_id in self._pending:  # this container's writes under way are newer
                    scanned.pop(job_id, None)
                    if job_id in self._index:
                        scanned[job_id] = self._index[job_id]
                self._index = dict(scanned)
        with self._lock:
            entries = [
                (created, job_id, client, state) for job_id, (created, client, state) in self._index.items()
            ]
        return sorted(entries)

    def refresh_index(self) -> None:
        """Read the ``active`` index again (blocking: the sync round calls it)."""
        self._active_index()

    def queued(self) -> list[Job]:
        found = (self.get(job_id) for _, job_id, _, state in self._active_index() if state == "queued")
        return [job for job in found if job is not None and job.state == "queued"]

    def jobs(self) -> list[Job]:
        if self._on_loop():
            with self._lock:
                rows = list(self._rows.values())
        else:
            rows = [row for row in list(self.jobs_dict.values()) if not row.get("deleted")]
        found = (self._job(row) for row in rows)
        return sorted((job for job in found if job is not None), key=lambda job: (job.created_at, job.id))

    def active(self) -> list[Job]:
        found = (self.get(job_id) for _, job_id, _, _ in self._active_index())
        return [job for job in found if job is not None and job.state in ACTIVE]

    def position(self, job: Job) -> int:
        if job.state != "queued":
            return 0
        mine = (job.created_at, job.id)
        return sum(
            1
            for created, job_id, _, state in self._active_index()
            if state == "queued" and (created, job_id) <= mine
        )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for _, _, _, state in self._active_index():
            counts[state] = counts.get(state, 0) + 1
        return counts

    def in_flight(self, client: str | None = None) -> int:
        return sum(1 for _, _, owner, _ in self._active_index() if client is None or owner == client)

    def expired(self, now: float | None = None) -> list[Job]:
        """Ended jobs past their expiry (on the event loop: those this container knows; the sweeper runs
        in a thread and reads ``ended``)."""
        now = time.time() if now is None else now
        if self._on_loop():
            return [job for job in self.jobs() if job.expires_at is not None and job.expires_at < now]
        due = [job_id for job_id, until in list(self.ended_dict.items()) if float(until) < now]
        found = []
        for job_id in due:
            job = self.get(job_id)
            if job is None:
                self.ended_dict.pop(job_id, None)
            else:
                found.append(job)
        return found

    def paths(self) -> set[Path]:
        """Every file a record points at (orphans are not removed on a shared folder; see the module)."""
        found: set[Path] = set()
        for job in self.jobs():
            found.update(path for path in (job.input_path, job.result_path) if path is not None)
        found.update(Path(self._absolute(row[0]) or "") for row in list(self.results_dict.values()))
        return found

    def recover(self, ttl: float) -> tuple[list[Job], list[Job]]:
        """Nothing to recover at a container's start: unfinished jobs of a container that has gone are
        adopted by a live one (:mod:`.replicas`), which also fails those whose upload is gone."""
        return [], []

    def fail_lost(self, job: Job, ttl: float) -> None:
        """An unfinished job whose upload is gone: failed with a reason that says so (kept ``ttl`` s)."""
        now = time.time()
        self.update(
            job.id,
            state="failed",
            input_path=None,
            error_code=FailureCode.INTERRUPTED,
            error=RESTART_REASON,
            finished_at=now,
            expires_at=now + ttl,
        )

    # ------------------------------------------------------------------------------------------ results

    def _result_row(self, cache_key: str) -> tuple[Any, ...] | None:
        if self._on_loop():
            with self._lock:
                return self._results.get(cache_key)
        row = self.results_dict.get(cache_key)
        self._keep_result(cache_key, None if row is None else tuple(row))
        return None if row is None else tuple(row)

    def _keep_result(self, cache_key: str, row: tuple[Any, ...] | None) -> None:
        with self._lock:
            _keep(self._results, cache_key, row)

    def put_result(self, cache_key: str, path: Path, job_id: str, expires_at: float) -> None:
        row = (self._relative(path), job_id, time.time(), expires_at)
        self._keep_result(cache_key, row)
        self._later(lambda: self.results_dict.put(cache_key, row), f"caching result {cache_key}")

    def get_result(self, cache_key: str) -> tuple[Path, float] | None:
        row = self._result_row(cache_key)
        if row is None or float(row[3]) < time.time():
            return None
        path = self._absolute(row[0])
        return (path, float(row[3])) if path is not None else None

    def result_job(self, cache_key: str) -> str | None:
        """The id of the job whose result a cache entry is (its partial results may still exist)."""
        row = self._result_row(cache_key)
        return str(row[1]) if row is not None and row[1] else None

    def touch_result(self, cache_key: str, expires_at: float) -> None:
        row = self._result_row(cache_key)
        if row is not None:
            new = (row[0], row[1], row[2], expires_at)
            self._keep_result(cache_key, new)
            self._later(lambda: self.results_dict.put(cache_key, new), f"renewing result {cache_key}")

    def delete_result(self, cache_key: str) -> Path | None:
        """Forget a cache entry; returns its file for the caller to remove, except on the event loop,
        where the courier removes the file the entry names (it may be one this container never read)."""
        self._keep_result(cache_key, None)
        if self._on_loop():
            assert self.courier is not None

            def drop() -> None:
                row = self.results_dict.pop(cache_key, None)
                path = None if row is None else self._absolute(row[0])
                if path is not None:
                    path.unlink(missing_ok=True)

            self.courier.send(lambda: retrying(drop, f"deleting result {cache_key}"))
            return None
        row = self.results_dict.pop(cache_key, None)
        return None if row is None else self._absolute(row[0])

    def expired_results(self, now: float | None = None) -> list[tuple[str, Path]]:
        now = time.time() if now is None else now
        if self._on_loop():
            with self._lock:
                rows = list(self._results.items())
        else:
            rows = list(self.results_dict.items())
        found = []
        for key, row in rows:
            path = self._absolute(row[0])
            if float(row[3]) < now and path is not None:
                found.append((key, path))
        return found

    def result_count(self) -> int:
        if self._on_loop():
            with self._lock:
                return len(self._results)
        return int(self.results_dict.len())

    # ------------------------------------------------------------------------------------------ usage

    def record_usage(self, record: UsageRecord) -> None:
        row = record.as_dict()
        with self._lock:
            _keep(self._usage, record.job_id, row)
        self._later(
            lambda: self.usage_dict.put(record.job_id, row), f"recording the usage of {record.job_id}"
        )

    def usage(self, job_id: str) -> UsageRecord | None:
        if self._on_loop():
            with self._lock:
                row = self._usage.get(job_id)
        else:
            row = self.usage_dict.get(job_id)
        return None if row is None else UsageRecord.from_dict(row)

    def usage_records(self, since: float | None = None) -> list[UsageRecord]:
        records = [UsageRecord.from_dict(row) for row in list(self.usage_dict.values())]
        return sorted((r for r in records if r.finished_at >= (since or 0.0)), key=lambda r: r.finished_at)
