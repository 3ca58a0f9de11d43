"""The in-process executor: the model loaded once, worker threads taking items in order.

torch releases the GIL during inference, so threads are enough, and they share one copy of the weights.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .base import ExecutorError, JobEvent, ModelDescription, WorkItem, describe, report

if TYPE_CHECKING:
    from freestems.models import LoadedModel

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised inside the engine (from its progress callback) to abandon a job at the next chunk."""


@dataclass
class _Running:
    item: WorkItem
    stop: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False


class LocalExecutor:
    """Runs separations in this process: the model loaded once, ``workers`` threads taking items in order.

    Args:
        load_model: returns the model; called once, by :meth:`start` (so a server can load it off its event
            loop, or hand over a model it already loaded).
        work_dir: where each job's stems are written before they are zipped (one folder per job, removed
            after the job on every path).
        workers: jobs at once. On a CPU one job already uses every core; more help on a big GPU.
        threads: torch intra-op threads (0: torch's default). Process-wide.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """

    def __init__(
        self,
        load_model: Callable[[], LoadedModel],
        work_dir: str | Path,
        *,
        workers: int = 1,
        threads: int = 0,
        device: str = "auto",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._load_model = load_model
        self.work_dir = Path(work_dir)
        self.workers = workers
        self.threads = threads
        self.device = device
        self._loaded: LoadedModel | None = None
        self._description: ModelDescription | None = None
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._running: dict[str, _Running] = {}
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False

    @property
    def model(self) -> ModelDescription:
        if self._description is None:
            raise ExecutorError("the executor has not been started")
        return self._description

    def start(self) -> None:
        if self._threads:
            return
        from freestems.separate import resolve_device

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._device = resolve_device(self.device)
        self._loaded = self._load_model()
        self._description = describe(self._loaded)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._closing = False
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"freestems-worker-{index}", daemon=True)
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

    # ------------------------------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                item = self._pending.popleft()
                running = _Running(item)
                self._running[item.job_id] = running
            try:
                self._run(running)
            finally:
                with self._condition:
                    self._running.pop(item.job_id, None)

    def _run(self, running: _Running) -> None:
        from freestems.jobrun import JobFailed, run_job

        item = running.item
        outcome: JobEvent | None = None

        def check() -> None:
            if running.stop.is_set():
                raise _Stopped

        def progress(fraction: float) -> None:
            check()
            report(item, JobEvent(item.job_id, "progress", progress=fraction))

        try:
            check()
            report(item, JobEvent(item.job_id, "started"))
            assert self._loaded is not None
            started = time.perf_counter()
            result = run_job(
                item.source,
                item.result,
                self._loaded,
                work_dir=self.work_dir / item.job_id,
                options=item.options,
                output=item.output,
                max_duration=item.max_duration,
                progress=progress,
                before_zip=check,
                device=self._device,
                display_name=item.display_name,
            )
            timings = dict(result.timings)
            if self._device.type == "cuda":  # the job held this GPU from start to end
                timings["gpu_seconds"] = round(time.perf_counter() - started, 3)
            outcome = JobEvent(item.job_id, "done", progress=1.0, result=item.result, timings=timings)
        except _Stopped:
            outcome = None if running.shutdown else JobEvent(item.job_id, "cancelled")
        except JobFailed as error:
            outcome = JobEvent(item.job_id, "failed", code=error.code, message=error.message)
        except Exception:
            log.exception("job %s failed", item.job_id)
            message = "the separation failed (a server error; it is logged)"
            outcome = JobEvent(item.job_id, "failed", code="internal", message=message)
        finally:
            if not running.shutdown:
                item.source.unlink(missing_ok=True)
        if outcome is not None and outcome.kind != "done":
            item.result.unlink(missing_ok=True)
        if outcome is not None:
            report(item, outcome)
