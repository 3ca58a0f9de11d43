"""The Modal executor: each job runs on a serverless GPU; this side relays, cancels and accounts.

:class:`ModalExecutor` sits behind the same interface as the in-process worker (:mod:`.base`). For each
item it reads the upload as it arrived (compressed: audio crosses the network as the client sent it, and
comes back as the zip of encoded stems, never as PCM), *spawns* the GPU method
``Separator.separate(audio, options) -> zip bytes`` (:mod:`freestems.deploy.modal_app`), and waits for it in
a worker thread, never on the event loop.

Progress. A spawned Modal call returns one value and cannot stream; a generator method could, but a
generator cannot be spawned, and only a spawned call has a handle to cancel. So the GPU container
reports on a side channel: each call gets a fresh key, and the container puts small events into a
``modal.Queue`` partition of that key (``started`` with its container start time, ``progress``, and
``timings`` just before it returns); the worker thread here waits on that partition (up to
``poll_interval``) and polls the call's result in turn. Partitions are FIFO, so events arrive in order, and
the container sends ``timings`` before it returns, so they are in the partition by the time the result is.

Cancelling a running item cancels the Modal call (``FunctionCall.cancel()``: Modal raises
``InputCancellation`` in the container, whose pipeline cleans up); closing the executor does the same for
every running item (the jobs stay queued in the store and are spawned again after a restart).

Both mechanisms are injectable, so that tests (and a laptop without Modal credentials) can run the GPU
class in-process: :class:`InProcessCalls` and :class:`MemoryChannel` stand in for Modal's calls and queue.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from .base import JobEvent, ModelDescription, WorkItem, report
from .pool import Running, Stopped, WorkerPool

log = logging.getLogger(__name__)

PARTITION_TTL = 3600
"""Seconds a progress partition outlives its last event on Modal (a finished job's is also cleared)."""

try:  # what Modal raises in a container whose input is cancelled
    from modal.exception import InputCancellation
except ImportError:  # pragma: no cover - without the modal package

    class InputCancellation(BaseException):  # type: ignore[no-redef]
        """Raised in the thread running a cancelled in-process call."""


# ---------------------------------------------------------------------------------------------- channels


class ProgressChannel(Protocol):
    """Events from the GPU container to the web tier, by key (one key per call)."""

    def put(self, key: str, event: Mapping[str, Any]) -> None: ...

    def get(self, key: str, timeout: float) -> list[dict[str, Any]]:
        """The events waiting under ``key``, in order; waits up to ``timeout`` s for one, else ``[]``."""
        ...

    def clear(self, key: str) -> None: ...


class ModalQueueChannel:
    """Events in a ``modal.Queue``, one partition per key."""

    def __init__(self, modal_queue: Any) -> None:
        self.queue = modal_queue

    def put(self, key: str, event: Mapping[str, Any]) -> None:
        self.queue.put(dict(event), partition=key, partition_ttl=PARTITION_TTL)

    def get(self, key: str, timeout: float) -> list[dict[str, Any]]:
        try:
            if timeout <= 0:
                return list(self.queue.get_many(100, block=False, partition=key))
            return list(self.queue.get_many(100, timeout=timeout, partition=key))
        except queue.Empty:
            return []

    def clear(self, key: str) -> None:
        self.queue.clear(partition=key)


class MemoryChannel:
    """Events in this process (for in-process calls)."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.Queue] = collections.defaultdict(queue.Queue)
        self._lock = threading.Lock()

    def _queue(self, key: str) -> queue.Queue:
        with self._lock:
            return self._queues[key]

    def put(self, key: str, event: Mapping[str, Any]) -> None:
        self._queue(key).put(dict(event))

    def get(self, key: str, timeout: float) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        pending = self._queue(key)
        try:
            events.append(pending.get(timeout=timeout) if timeout > 0 else pending.get_nowait())
            while True:
                events.append(pending.get_nowait())
        except queue.Empty:
            return events

    def clear(self, key: str) -> None:
        with self._lock:
            self._queues.pop(key, None)


# ---------------------------------------------------------------------------------------------- calls


class RemoteCall(Protocol):
    def result(self, timeout: float) -> bytes:
        """The zip, once the call has returned; raises ``TimeoutError`` while it runs, or its error."""
        ...

    def cancel(self) -> None: ...


class RemoteCalls(Protocol):
    """How a job reaches the GPU method."""

    def spawn(self, audio: bytes, options: dict[str, Any]) -> RemoteCall: ...


class ModalCalls:
    """Spawns a Modal method (``Separator().separate``) and wraps its ``FunctionCall``."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def spawn(self, audio: bytes, options: dict[str, Any]) -> RemoteCall:
        return _ModalCall(self.method.spawn(audio, options))


class _ModalCall:
    def __init__(self, call: Any) -> None:
        self.call = call

    def result(self, timeout: float) -> bytes:
        return self.call.get(timeout=timeout)  # builtin TimeoutError while unfinished

    def cancel(self) -> None:
        self.call.cancel()


class InProcessCalls:
    """Runs the GPU method in this process, one thread per call: Modal's calls, faked.

    ``function`` is what would run in the container, e.g. ``Separator().separate.local``. ``cancel``
    raises :class:`InputCancellation` in the thread running the call, as Modal does in a container.
    ``spawned`` and ``cancelled`` record what happened (for tests).
    """

    def __init__(self, function: Callable[[bytes, dict[str, Any]], bytes]) -> None:
        self.function = function
        self.spawned: list[_ThreadCall] = []
        self.cancelled = 0

    def spawn(self, audio: bytes, options: dict[str, Any]) -> RemoteCall:
        call = _ThreadCall(self, audio, dict(options))
        self.spawned.append(call)
        return call


class _ThreadCall:
    def __init__(self, owner: InProcessCalls, audio: bytes, options: dict[str, Any]) -> None:
        self.owner = owner
        self.finished = threading.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(audio, options), name="freestems-inprocess-call", daemon=True
        )
        self.thread.start()

    def _run(self, audio: bytes, options: dict[str, Any]) -> None:
        try:
            self.value = self.owner.function(audio, options)
        except BaseException as error:  # InputCancellation included: it ends the call
            self.error = error
        finally:
            self.finished.set()

    def result(self, timeout: float) -> bytes:
        if not self.finished.wait(timeout):
            raise TimeoutError("the call is still running")
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value

    def cancel(self) -> None:
        if self.finished.is_set() or self.thread.ident is None:
            return
        self.owner.cancelled += 1
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.thread.ident), ctypes.py_object(InputCancellation)
        )


# ---------------------------------------------------------------------------------------------- executor


def gpu_options(item: WorkItem) -> dict[str, Any]:
    """The options of ``Separator.separate`` for a work item: the form of ``POST /separate``, plus limits.

    Raises:
        JobFailed: the item asks for an output the GPU method does not make (it makes what the service
            offers: MP3, or 16-bit WAV or FLAC).
    """
    from freestems.jobrun import JobFailed

    output = item.output
    if output.format == "mp3":
        encoding: dict[str, Any] = {"format": "mp3", "mp3_bitrate": output.bitrate}
    elif output.format in ("wav", "flac") and output.bit_depth == 16:
        encoding = {"format": output.format}
    else:
        raise JobFailed("invalid_options", f"the GPU tier encodes MP3 or 16-bit WAV or FLAC, not {output}")
    engine = dict(item.options)
    unknown = set(engine) - {"two_stems", "shifts", "overlap", "seed"}
    if unknown:
        raise JobFailed("invalid_options", f"the GPU tier does not take {', '.join(sorted(unknown))}")
    return {
        "two_stems": engine.get("two_stems"),
        "shifts": engine.get("shifts", 1),
        "overlap": engine.get("overlap", 0.25),
        "seed": engine.get("seed", 0),
        **encoding,
        "max_duration": item.max_duration,
        "filename": item.display_name,
    }


class ModalExecutor(WorkerPool):
    """Runs work items on the GPU class of the Modal deployment, ``workers`` at a time, in order.

    Args:
        calls: how to reach the GPU method (:class:`ModalCalls`, or :class:`InProcessCalls`).
        channel: where the GPU container's events arrive (:class:`ModalQueueChannel`, or
            :class:`MemoryChannel` with in-process calls).
        describe_model: returns what the GPU class runs (name, sources, fingerprint), called by
            :meth:`start`; the deployment writes it into the image at build time, so no model is loaded here.
        gpu: the GPU type the class asks for, recorded with each job for cost accounting.
        workers: calls in flight at once (the deployment's ``max_containers``); more items wait here, in
            order, so that queue positions mean something.
        poll_interval: the longest wait for an event between two polls of a call's result; also how
            quickly a cancellation reaches Modal.
    """

    def __init__(
        self,
        calls: RemoteCalls,
        channel: ProgressChannel,
        describe_model: Callable[[], ModelDescription],
        *,
        gpu: str | None = None,
        workers: int = 1,
        poll_interval: float = 0.5,
    ) -> None:
        super().__init__(workers)
        self.calls = calls
        self.channel = channel
        self.gpu = gpu
        self.poll_interval = poll_interval
        self._describe_model = describe_model

    thread_name = "freestems-modal"

    def _prepare(self) -> ModelDescription:
        return self._describe_model()

    def _run(self, running: Running) -> None:
        from freestems.jobrun import JobFailed

        item = running.item
        key = f"{item.job_id}-{secrets.token_hex(4)}"  # a fresh partition for each attempt
        timings: dict[str, float] = {}
        started = [False]
        outcome: JobEvent | None = None
        call: RemoteCall | None = None
        try:
            clock = time.perf_counter()
            options = {**gpu_options(item), "progress": key}
            audio = item.source.read_bytes()
            if running.stop.is_set():
                raise Stopped
            spawned_at = time.time()
            call = self.calls.spawn(audio, options)
            timings["upload"] = time.perf_counter() - clock
            del audio
            while True:
                if running.stop.is_set():
                    raise Stopped
                for event in self.channel.get(key, self.poll_interval):
                    self._on_remote(item, event, timings, spawned_at, started)
                clock = time.perf_counter()
                try:
                    data = call.result(timeout=0)
                except TimeoutError:
                    continue
                timings["download"] = time.perf_counter() - clock
                break
            for event in self.channel.get(key, 0):  # what the container sent just before it returned
                self._on_remote(item, event, timings, spawned_at, started)
            if not started[0]:
                report(item, JobEvent(item.job_id, "started"))
            _write_atomically(item.result, data)
            rounded = {name: round(value, 3) for name, value in timings.items()}
            outcome = JobEvent(
                item.job_id, "done", progress=1.0, result=item.result, timings=rounded, gpu=self.gpu
            )
        except Stopped:
            outcome = None if running.shutdown else JobEvent(item.job_id, "cancelled")
        except JobFailed as error:
            outcome = JobEvent(item.job_id, "failed", code=error.code, message=error.message)
        except InputCancellation:  # cancelled on Modal's side (e.g. from the dashboard)
            outcome = JobEvent(item.job_id, "cancelled", message="cancelled on the GPU tier")
        except Exception:
            log.exception("job %s failed on the GPU tier", item.job_id)
            message = "the separation failed (a server error; it is logged)"
            outcome = JobEvent(item.job_id, "failed", code="internal", message=message)
        finally:
            if call is not None and (outcome is None or outcome.kind == "cancelled"):
                self._cancel_call(item, call)
            self._forget(key)
            if not running.shutdown:
                item.source.unlink(missing_ok=True)
        if outcome is not None and outcome.kind != "done":
            item.result.unlink(missing_ok=True)
        if outcome is not None:
            report(item, outcome)

    def _on_remote(
        self,
        item: WorkItem,
        event: Mapping[str, Any],
        timings: dict[str, float],
        spawned_at: float,
        started: list[bool],
    ) -> None:
        kind = event.get("type")
        if kind == "started":
            timings["queue_wait"] = max(0.0, float(event.get("at", spawned_at)) - spawned_at)
            timings["container_start"] = float(event.get("container_start", 0.0))
            if not started[0]:
                started[0] = True
                report(item, JobEvent(item.job_id, "started"))
        elif kind == "progress":
            if not started[0]:
                started[0] = True
                report(item, JobEvent(item.job_id, "started"))
            report(item, JobEvent(item.job_id, "progress", progress=float(event.get("progress", 0.0))))
        elif kind == "timings":
            for name, value in dict(event.get("timings") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    timings[name] = float(value)

    def _cancel_call(self, item: WorkItem, call: RemoteCall) -> None:
        try:
            call.cancel()
        except Exception:
            log.warning("cancelling the GPU call of job %s failed", item.job_id, exc_info=True)

    def _forget(self, key: str) -> None:
        try:
            self.channel.clear(key)
        except Exception:  # the partition expires by itself
            log.debug("clearing progress partition %s failed", key, exc_info=True)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
