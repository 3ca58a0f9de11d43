"""The job store on shared dictionaries: what :class:`~.store.JobStore` keeps in SQLite, in ``modal.Dict`` s.

Several web containers serve one deployment; each must see every job, so the records cannot live in one
container's SQLite file (and SQLite on a Modal Volume is unsafe with several writers). This class has the
same methods as :class:`~.store.JobStore` over four dictionaries with ``modal.Dict``'s methods (``get``,
``put``, ``pop``, ``items``...):

- ``jobs``: job id -> its row (a plain dict; paths relative to the data folder, which is the same Volume
  mounted in every container, so a row written by one container names the same files in another);
- ``active``: job id -> ``(created_at, client, state)`` of queued and running jobs only: admission, queue
  positions and adoption scan this small index, never every job;
- ``ended``: job id -> its expiry, for the sweeper;
- ``results`` (the result cache's rows) and ``usage`` (one accounting row per computed job).

Queue order is ``(created_at, id)``, the same in every container. There is no transaction over two keys:
an update reads the row, changes it and writes it back, and a job that has ended never goes back to an
active state (a late progress report from a container that has not yet heard of a cancellation cannot
revive it). Queue capacity and per-address limits are counted from ``active``; two containers admitting
at the same instant may each admit the last free place (the limits are exact within a container).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from freestems.cost import UsageRecord
from freestems.errors import FailureCode

from .store import ACTIVE, RESTART_REASON, STATES, TERMINAL, Job

_PATHS = ("input_path", "result_path")


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


class DictJobStore:
    """:class:`~.store.JobStore`'s interface over shared dictionaries (``space(name)`` -> a Dict)."""

    shared = True

    def __init__(self, space: Callable[[str], DictLike], root: Path) -> None:
        self.root = Path(root)
        self.jobs_dict = space("jobs")
        self.active_dict = space("active")
        self.ended_dict = space("ended")
        self.results_dict = space("results")
        self.usage_dict = space("usage")
        self._lock = threading.Lock()  # one writer per job row in this process

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

    def _job(self, row: dict[str, Any] | None) -> Job | None:
        if row is None:
            return None
        values = dict(row)
        for name in _PATHS:
            values[name] = self._absolute(values.get(name))
        values["options"] = dict(values.get("options") or {})
        values["timings"] = dict(values.get("timings") or {})
        return Job(**{name: values[name] for name in Job.__dataclass_fields__ if name in values})

    def _index(self, job: Job) -> None:
        if job.state in ACTIVE:
            self.active_dict.put(job.id, (job.created_at, job.client, job.state))
        else:
            self.active_dict.pop(job.id, None)
        if job.expires_at is not None:
            self.ended_dict.put(job.id, job.expires_at)

    # ------------------------------------------------------------------------------------------ jobs

    def create(self, job: Job) -> Job:
        job.seq = int(job.created_at * 1000)
        self.jobs_dict.put(job.id, self._row(job))
        self._index(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._job(self.jobs_dict.get(job_id))

    def update(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(Job.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown job columns: {', '.join(sorted(unknown))}")
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return
            if job.state in TERMINAL and changes.get("state", job.state) not in TERMINAL:
                return  # ended elsewhere (cancelled, deleted): a late report cannot revive it
            for name, value in changes.items():
                setattr(job, name, value)
            self.jobs_dict.put(job_id, self._row(job))
            if "state" in changes or "expires_at" in changes:
                self._index(job)

    def delete(self, job_id: str) -> None:
        self.jobs_dict.pop(job_id, None)
        self.active_dict.pop(job_id, None)
        self.ended_dict.pop(job_id, None)

    def _active_index(self) -> list[tuple[float, str, str, str]]:
        """(created_at, id, client, state) of every queued or running job, in queue order."""
        entries = [(float(v[0]), str(k), str(v[1]), str(v[2])) for k, v in list(self.active_dict.items())]
        return sorted(entries)

    def queued(self) -> list[Job]:
        found = (self.get(job_id) for _, job_id, _, state in self._active_index() if state == "queued")
        return [job for job in found if job is not None and job.state == "queued"]

    def jobs(self) -> list[Job]:
        found = (self._job(row) for row in list(self.jobs_dict.values()))
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
        now = time.time() if now is None else now
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

    def put_result(self, cache_key: str, path: Path, job_id: str, expires_at: float) -> None:
        self.results_dict.put(cache_key, (self._relative(path), job_id, time.time(), expires_at))

    def get_result(self, cache_key: str) -> tuple[Path, float] | None:
        row = self.results_dict.get(cache_key)
        if row is None or float(row[3]) < time.time():
            return None
        path = self._absolute(row[0])
        return (path, float(row[3])) if path is not None else None

    def result_job(self, cache_key: str) -> str | None:
        """The id of the job whose result a cache entry is (its partial results may still exist)."""
        row = self.results_dict.get(cache_key)
        return str(row[1]) if row is not None and row[1] else None

    def touch_result(self, cache_key: str, expires_at: float) -> None:
        row = self.results_dict.get(cache_key)
        if row is not None:
            self.results_dict.put(cache_key, (row[0], row[1], row[2], expires_at))

    def delete_result(self, cache_key: str) -> Path | None:
        row = self.results_dict.pop(cache_key, None)
        return None if row is None else self._absolute(row[0])

    def expired_results(self, now: float | None = None) -> list[tuple[str, Path]]:
        now = time.time() if now is None else now
        found = []
        for key, row in list(self.results_dict.items()):
            path = self._absolute(row[0])
            if float(row[3]) < now and path is not None:
                found.append((key, path))
        return found

    def result_count(self) -> int:
        return int(self.results_dict.len())

    # ------------------------------------------------------------------------------------------ usage

    def record_usage(self, record: UsageRecord) -> None:
        self.usage_dict.put(record.job_id, record.as_dict())

    def usage(self, job_id: str) -> UsageRecord | None:
        row = self.usage_dict.get(job_id)
        return None if row is None else UsageRecord.from_dict(row)

    def usage_records(self, since: float | None = None) -> list[UsageRecord]:
        records = [UsageRecord.from_dict(row) for row in list(self.usage_dict.values())]
        return sorted((r for r in records if r.finished_at >= (since or 0.0)), key=lambda r: r.finished_at)
