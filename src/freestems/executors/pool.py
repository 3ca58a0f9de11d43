"""What every executor shares: items wait in order, ``workers`` threads run them, cancel and close.

A subclass says how to get ready (:meth:`WorkerPool._prepare`: load or describe the model) and how to run
one item (:meth:`WorkerPool._run`); the queue, the threads, the contract of :class:`~.base.Executor` about
cancelling and closing, and the mapping of how a run ended to the item's final report live here once:

- it returned: ``done``, with the timings it returned;
- :class:`~freestems.errors.Cancelled`: ``cancelled`` (none at all if the executor is closing);
- :class:`~freestems.jobrun.JobFailed`: ``failed`` with its code and message;
- anything else: ``failed`` with code ``internal`` (the traceback goes to the log, not to the user).

Cancelling a running item sets its :attr:`Running.stop` event; the running code checks it (after every
chunk of the engine, or between two polls of a remote call) and raises :class:`~freestems.errors.Cancelled`.
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from freestems.errors import Cancelled, FailureCode
from freestems.jobrun import JobFailed

from .base import ExecutorError, JobEvent, ModelDescription, WorkItem, report

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "the separation failed (a server error; it is logged)"


@dataclass
class Running:
    """An item being run, with the event that stops it and whether the stop is a shutdown (no report)."""

    item: WorkItem
    stop: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False
    gpu: str | None = None
    """The GPU type that runs it (the pool's, unless the executor routes it elsewhere, e.g. to a CPU)."""


class WorkerPool:
    """Runs submitted items in order on ``workers`` threads."""

    thread_name = "freestems-worker"

    gpu: str | None = None
    """The GPU type that runs items, recorded with each finished job for cost accounting (None: a CPU, or
    not known)."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._descriptions: tuple[ModelDescription, ...] = ()
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._running: dict[str, Running] = {}
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False

    # ------------------------------------------------------------------------------------ for subclasses

    def _prepare(self) -> ModelDescription | Sequence[ModelDescription]:
        """Get ready to run items (blocking) and say what model(s) they run on (the default first)."""
        raise NotImplementedError

    def _run(self, running: Running) -> Mapping[str, float]:
        """Run one item (reporting ``started`` and ``progress``), write its result and return its timings.

        Raises :class:`~freestems.errors.Cancelled` soon after ``running.stop`` is set,
        :class:`~freestems.jobrun.JobFailed` for an expected failure; anything else is a bug.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ interface

    @property
    def model(self) -> ModelDescription:
        return self.models[0]

    @property
    def models(self) -> tuple[ModelDescription, ...]:
        if not self._descriptions:
            raise ExecutorError("the executor has not been started")
        return self._descriptions

    def start(self) -> None:
        if self._threads:
            return
        described = self._prepare()
        self._descriptions = (described,) if isinstance(described, ModelDescription) else tuple(described)
        self._closing = False
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self.thread_name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, item: WorkItem) -> None:
        with self._condition:
            if self._closing or not self._threads:
                raise ExecutorError("the executor is not running")
            self._pending.append(item)
            self._condition.notify()

    def cancel(self, job_id: str) -> None:
        dropped: WorkItem | None = None
        with self._condition:
            running = self._running.get(job_id)
            if running is not None:
                running.stop.set()
                return
            for item in self._pending:
                if item.job_id == job_id:
                    dropped = item
                    break
            if dropped is not None:
                self._pending.remove(dropped)
        if dropped is not None:
            dropped.source.unlink(missing_ok=True)
            report(dropped, JobEvent(job_id, "cancelled"))

    def close(self, timeout: float = 60.0) -> None:
        with self._condition:
            self._closing = True
            self._pending.clear()  # their jobs stay queued in the store and run after a restart
            for running in self._running.values():
                if not running.stop.is_set():  # a cancelled item still ends as cancelled, its files gone
                    running.shutdown = True
                    running.stop.set()
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads = []

    @property
    def busy(self) -> int:
        """Items running now."""
        with self._condition:
            return len(self._running)

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                item = self._pending.popleft()
                running = Running(item, gpu=self.gpu)
                self._running[item.job_id] = running
            try:
                self._execute(running)
            finally:
                with self._condition:
                    self._running.pop(item.job_id, None)

    def _execute(self, running: Running) -> None:
        """Run one item and give it its final report; on every path its source and any partial result go
        (except at shutdown: then it gets no report and its source stays, to run again after a restart)."""
        item = running.item
        outcome: JobEvent | None
        try:
            timings = self._run(running)
            outcome = JobEvent(
                item.job_id, "done", progress=1.0, result=item.result, timings=dict(timings), gpu=running.gpu
            )
        except Cancelled as error:
            message = str(error) or None
            outcome = None if running.shutdown else JobEvent(item.job_id, "cancelled", message=message)
        except JobFailed as error:
            outcome = JobEvent(item.job_id, "failed", code=error.code, message=error.message)
        except Exception:
            log.exception("job %s failed", item.job_id)
            outcome = JobEvent(item.job_id, "failed", code=FailureCode.INTERNAL, message=INTERNAL_MESSAGE)
        finally:
            if not running.shutdown:
                item.source.unlink(missing_ok=True)
        if outcome is None:
            return
        if outcome.kind != "done":
            item.result.unlink(missing_ok=True)
            if item.partials is not None:
                shutil.rmtree(item.partials, ignore_errors=True)
        report(item, outcome)
