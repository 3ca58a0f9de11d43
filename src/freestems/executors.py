"""Where a separation runs: one small interface between the service and the compute.

The service decides *whether* and *what* runs (keys, limits, queue, cache); an executor only runs work
items and reports what happens to them. The embedded default, :class:`LocalExecutor`, keeps one model
loaded and warm in this process and runs ``workers`` jobs at a time in threads: torch releases the GIL
during inference, so threads are enough, and they share one copy of the weights. A Modal GPU executor will
sit behind the same interface.

The contract:

- every submitted item gets exactly one final report, ``done``, ``failed`` or ``cancelled`` (``started`` and
  ``progress`` reports come before it), *unless* the executor is closed while the item waits or runs: then
  it gets none and its source file is kept, so the job can run again after a restart;
- after a final report, the item's source file and all working files are gone; only ``result`` remains
  (after ``done``);
- reports are made from worker threads. A caller living in an event loop hops back itself
  (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from freestems.pipeline import OutputFormat

if TYPE_CHECKING:
    from freestems.models import LoadedModel

log = logging.getLogger(__name__)

EventKind = Literal["started", "progress", "done", "failed", "cancelled"]


class ExecutorError(RuntimeError):
    """The executor cannot take work (not started, closed, or its model failed to load)."""


@dataclass(frozen=True)
class ModelDescription:
    """What an executor runs. ``fingerprint`` changes whenever outputs could: part of result cache keys."""

    name: str
    sources: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class JobEvent:
    """A report about one work item.

    ``failed`` carries a ``code`` a service can map to a status: ``too_long`` (the decoded audio is longer
    than ``max_duration``), ``not_audio`` (undecodable), ``encode_failed``, ``invalid_options`` or
    ``internal`` (a bug or a broken machine; details are in the server log, not in ``message``).
    """

    job_id: str
    kind: EventKind
    progress: float = 0.0
    result: Path | None = None
    timings: Mapping[str, float] | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class WorkItem:
    """One separation: ``source`` (an audio file) in, a zip of the stems at ``result`` out."""

    job_id: str
    source: Path
    result: Path
    report: Callable[[JobEvent], None]
    options: Mapping[str, Any] = field(default_factory=dict)
    """Engine options for :func:`freestems.pipeline.separate_file` (two_stems, shifts, overlap, seed)."""
    output: OutputFormat = OutputFormat()
    max_duration: float | None = None
    display_name: str = "audio"
    """The file's name as its owner knows it, used in error messages instead of the stored name."""


class Executor(Protocol):
    """Runs work items somewhere. ``model`` is valid once :meth:`start` has returned."""

    @property
    def model(self) -> ModelDescription: ...

    def start(self) -> None:
        """Get ready (load the model...); blocking. Raises if the executor cannot work."""

    def submit(self, item: WorkItem) -> None:
        """Queue an item; returns at once. Items run in submission order."""

    def cancel(self, job_id: str) -> None:
        """Stop an item: dropped if waiting, stopped within one chunk if running. Unknown ids are ignored."""

    def close(self) -> None:
        """Stop taking work, interrupt running items (no final report, sources kept), release resources."""


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
            _report(dropped, JobEvent(job_id, "cancelled"))

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
        from freestems.audio import AudioDecodeError, AudioEncodeError, AudioTooLong
        from freestems.pipeline import separate_file, zip_stems
        from freestems.separate import SeparationError

        item = running.item
        work = self.work_dir / item.job_id
        outcome: JobEvent | None = None

        def check() -> None:
            if running.stop.is_set():
                raise _Stopped

        def progress(fraction: float) -> None:
            check()
            _report(item, JobEvent(item.job_id, "progress", progress=fraction))

        try:
            check()
            _report(item, JobEvent(item.job_id, "started"))
            assert self._loaded is not None
            result = separate_file(
                item.source,
                work,
                self._loaded,
                output=item.output,
                max_duration=item.max_duration,
                progress=progress,
                device=self._device,
                **dict(item.options),
            )
            check()
            item.result.parent.mkdir(parents=True, exist_ok=True)
            zip_stems(result.stems, item.result)
            timings = result.timings.as_dict()
            outcome = JobEvent(item.job_id, "done", progress=1.0, result=item.result, timings=timings)
        except _Stopped:
            outcome = None if running.shutdown else JobEvent(item.job_id, "cancelled")
        except AudioDecodeError as error:
            code = "too_long" if isinstance(error, AudioTooLong) else "not_audio"
            outcome = JobEvent(item.job_id, "failed", code=code, message=_rename(str(error), item))
        except AudioEncodeError as error:
            outcome = JobEvent(item.job_id, "failed", code="encode_failed", message=_rename(str(error), item))
        except SeparationError as error:
            outcome = JobEvent(item.job_id, "failed", code="invalid_options", message=str(error))
        except Exception:
            log.exception("job %s failed", item.job_id)
            message = "the separation failed (a server error; it is logged)"
            outcome = JobEvent(item.job_id, "failed", code="internal", message=message)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not running.shutdown:
                item.source.unlink(missing_ok=True)
        if outcome is not None and outcome.kind != "done":
            item.result.unlink(missing_ok=True)
        if outcome is not None:
            _report(item, outcome)




def _rename(message: str, item: WorkItem) -> str:
    """Error messages name the stored file; its owner knows it by another name."""
    return message.replace(item.source.name, item.display_name)


def _report(item: WorkItem, event: JobEvent) -> None:
    try:
        item.report(event)
    except Exception:  # a broken listener must not kill the worker or skip the cleanup
        log.exception("reporting %s of job %s failed", event.kind, item.job_id)


def describe(model: LoadedModel) -> ModelDescription:
    """A model's name, sources and a fingerprint of everything that decides its output (weights too)."""
    digest = hashlib.sha256()
    module = model.module
    flags = {key: value for key, value in vars(module).items() if isinstance(value, (bool, int, float, str))}
    header = [model.name, list(model.sources), model.segment, model.normalize, repr(module), flags]
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        tensor = tensor.detach().cpu().contiguous()
        try:
            data = tensor.numpy().tobytes()
        except TypeError:  # bfloat16 has no numpy type
            data = tensor.float().numpy().tobytes()
        digest.update(data)
    return ModelDescription(model.name, tuple(model.sources), digest.hexdigest()[:32])
