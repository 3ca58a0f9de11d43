"""What every executor shares: items wait in order, ``workers`` threads run them, cancel and close.

A subclass says how to get ready (:meth:`WorkerPool._prepare`: load or describe the model) and how to run
one item (:meth:`WorkerPool._run`); the queue, the threads and the contract of :class:`~.base.Executor`
about cancelling and closing live here once.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from .base import ExecutorError, JobEvent, ModelDescription, WorkItem, report


class Stopped(Exception):
    """Raised inside a running item to abandon it: it was cancelled, or the executor is closing."""


@dataclass
class Running:
    """An item being run, with the flag that stops it and whether the stop is a shutdown (no report)."""

    item: WorkItem
    stop: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False


class WorkerPool:
    """Runs submitted items in order on ``workers`` threads."""

    thread_name = "freestems-worker"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._description: ModelDescription | None = None
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._running: dict[str, Running] = {}
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False

    # ------------------------------------------------------------------------------------ for subclasses

    def _prepare(self) -> ModelDescription:
        """Get ready to run items (blocking) and say what model they run on."""
        raise NotImplementedError

    def _run(self, running: Running) -> None:
        """Run one item to its final report (or to :class:`Stopped` on shutdown, without one)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ interface

    @property
    def model(self) -> ModelDescription:
        if self._description is None:
            raise ExecutorError("the executor has not been started")
        return self._description

    def start(self) -> None:
        if self._threads:
            return
        self._description = self._prepare()
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
                running = Running(item)
                self._running[item.job_id] = running
            try:
                self._run(running)
            finally:
                with self._condition:
                    self._running.pop(item.job_id, None)
