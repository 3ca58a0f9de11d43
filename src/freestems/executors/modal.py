"""The Modal executor: each job runs on a serverless GPU; this side relays, cancels and accounts.

:class:`ModalExecutor` sits behind the same interface as the in-process worker (:mod:`.base`). For each
item it reads the upload as it arrived (compressed: audio crosses the network as the client sent it, and
comes back as the zip of encoded stems, never as PCM), *spawns* the GPU method
``Separator.separate(audio, options, max_duration=..., filename=..., progress=...) -> zip bytes``
(:mod:`freestems.deploy.modal_app`) with the item's :class:`~freestems.options.SeparationOptions` as they
are, and waits for it in a worker thread, never on the event loop.

Progress. A spawned Modal call returns one value and cannot stream; a generator method could, but a
generator cannot be spawned, and only a spawned call has a handle to cancel. So the GPU container
reports on a side channel: each call gets a fresh key, and the container puts small events into a
``modal.Queue`` partition of that key (``started`` with its container start time, ``progress``, and
``timings`` just before it returns); the worker thread here waits on that partition (up to
``poll_interval``) and polls the call's result in turn. Partitions are FIFO, so events arrive in order, and
the container sends ``timings`` before it returns, so they are in the partition by the time the result is.

Cancelling a running item cancels the Modal call (``FunctionCall.cancel()``: Modal raises
``InputCancellation`` in the container, whose pipeline cleans up); closing the executor does the same for
every running item (the jobs stay queued in the store and are spawned again after a restart). So does
*any* way out of the wait other than the call's own result: a Modal error while polling (a lost
connection, a queue or Dict error), a bug here. Only a call whose result (or error) was collected is not
cancelled: nothing runs on unless someone is still waiting for it.

Leases. A web container that dies (preempted, crashed, redeployed) cancels nothing, so its calls would run
on, billed, for nobody. Each call therefore gets a lease (:class:`LeaseStore`, a ``modal.Dict`` on Modal):
the web tier writes ``expires_at = now + lease_seconds`` before spawning and renews it every quarter of
that while it waits; the container checks it when it takes the input and every few seconds after, and
stops the job (raising :class:`~freestems.errors.Cancelled`) once the lease is past its expiry or gone.
Nothing has to run when the web container dies for its calls to end: they end because nothing renews.

Tiers. Jobs go to the GPU class, to the CPU class (the same code on CPU-only containers), or, with
``tier="overflow"``, to the GPU class unless its backlog (inputs spawned and not yet taken by a container,
as Modal counts them when the job is dispatched) is at least ``overflow_backlog``, in which case to the CPU
class.

Both mechanisms are injectable (:class:`RemoteCalls`, :class:`ProgressChannel`), so that tests can run the
GPU class in-process (``tests/modal_helpers.py`` holds the stand-ins for Modal's calls and queue).
"""

from __future__ import annotations

import logging
import queue
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, get_args

from freestems.errors import Cancelled
from freestems.files import atomic_path
from freestems.jobrun import JobFailed
from freestems.options import SeparationOptions

from .base import JobEvent, ModelDescription, WorkItem, report
from .pool import Running, WorkerPool

log = logging.getLogger(__name__)

Tier = Literal["gpu", "cpu", "overflow"]
"""Where jobs go: the GPU class, the CPU class, or the GPU class with the CPU class taking its overflow."""

PARTITION_TTL = 3600
"""Seconds a progress partition outlives its last event on Modal (a finished job's is also cleared)."""

try:  # what Modal raises in a container whose input is cancelled
    from modal.exception import InputCancellation
except ImportError:  # pragma: no cover - without the modal package

    class InputCancellation(BaseException):  # type: ignore[no-redef]
        """What Modal raises in a cancelled call (a stand-in where the modal package is missing)."""


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


# ---------------------------------------------------------------------------------------------- calls


class RemoteCall(Protocol):
    def result(self, timeout: float) -> bytes:
        """The zip, once the call has returned; raises ``TimeoutError`` while it runs, or its error."""
        ...

    def cancel(self) -> None: ...


class RemoteCalls(Protocol):
    """How a job reaches the GPU method ``Separator.separate(audio, options, **job)``."""

    def spawn(self, audio: bytes, options: SeparationOptions, **job: Any) -> RemoteCall:
        """Start the method; ``job`` holds its keyword arguments (``max_duration``, ``filename``,
        ``progress``, ``lease``)."""
        ...

    def backlog(self) -> int:
        """Inputs spawned and not yet taken by a container (Modal's ``FunctionCurrentStats.backlog``)."""
        ...


class LeaseStore(Protocol):
    """Leases of running calls, by key: the web tier renews them, the containers read them."""

    def renew(self, key: str, expires_at: float) -> None: ...

    def expires(self, key: str) -> float | None:
        """When the lease ``key`` expires (epoch seconds), or None if there is none (released)."""
        ...

    def release(self, key: str) -> None: ...


class DictLeases:
    """Leases in a ``modal.Dict``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def renew(self, key: str, expires_at: float) -> None:
        self.store.put(key, expires_at)

    def expires(self, key: str) -> float | None:
        value = self.store.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def release(self, key: str) -> None:
        self.store.pop(key, None)


class ModalCalls:
    """Spawns a Modal method (``Separator().separate``) and wraps its ``FunctionCall``.

    The options cross as they are: Modal pickles arguments, and the container has the same ``freestems``.
    """

    def __init__(self, method: Any) -> None:
        self.method = method

    def spawn(self, audio: bytes, options: SeparationOptions, **job: Any) -> RemoteCall:
        return _ModalCall(self.method.spawn(audio, options, **job))

    def backlog(self) -> int:
        return int(self.method.get_current_stats().backlog)


class _ModalCall:
    def __init__(self, call: Any) -> None:
        self.call = call

    def result(self, timeout: float) -> bytes:
        result: bytes = self.call.get(timeout=timeout)  # builtin TimeoutError while unfinished
        return result

    def cancel(self) -> None:
        self.call.cancel()


# ---------------------------------------------------------------------------------------------- executor


class ModalExecutor(WorkerPool):
    """Runs work items on the GPU class of the Modal deployment, ``workers`` at a time, in order.

    Args:
        calls: how to reach the GPU method (:class:`ModalCalls`, or an in-process stand-in).
        channel: where the GPU container's events arrive (:class:`ModalQueueChannel`, or an in-memory
            stand-in with in-process calls).
        describe_model: returns what the GPU class runs (name, sources, fingerprint), called by
            :meth:`start`; the deployment writes it into the image at build time, so no model is loaded here.
        gpu: the GPU type the class asks for, recorded with each job for cost accounting.
        workers: calls in flight at once (the deployment's ``max_containers``); more items wait here, in
            order, so that queue positions mean something.
        poll_interval: the longest wait for an event between two polls of a call's result; also how
            quickly a cancellation reaches Modal.
        cpu_calls: how to reach the CPU class (needed by ``tier`` ``cpu`` and ``overflow``).
        tier: ``gpu``, ``cpu`` or ``overflow`` (see the module docstring).
        overflow_backlog: with ``overflow``, the GPU backlog at which a job goes to the CPU class.
        leases: where the calls' leases live (None: calls without a lease).
        lease_seconds: how long a lease lasts unless renewed (renewed every quarter of it).
    """

    def __init__(
        self,
        calls: RemoteCalls,
        channel: ProgressChannel,
        describe_model: Callable[[], ModelDescription | Sequence[ModelDescription]],
        *,
        gpu: str | None = None,
        workers: int = 1,
        poll_interval: float = 0.5,
        cpu_calls: RemoteCalls | None = None,
        tier: Tier = "gpu",
        overflow_backlog: int = 1,
        leases: LeaseStore | None = None,
        lease_seconds: float = 30.0,
    ) -> None:
        super().__init__(workers)
        if tier not in get_args(Tier):
            raise ValueError(f"tier must be gpu, cpu or overflow, not {tier!r}")
        if tier != "gpu" and cpu_calls is None:
            raise ValueError(f"tier {tier!r} needs the CPU class's calls")
        self.calls = calls
        self.cpu_calls = cpu_calls
        self.tier = tier
        self.overflow_backlog = overflow_backlog
        self.channel = channel
        self.gpu = gpu
        self.poll_interval = poll_interval
        self.leases = leases
        self.lease_seconds = lease_seconds
        self._describe_model = describe_model

    thread_name = "freestems-modal"

    def _prepare(self) -> ModelDescription | Sequence[ModelDescription]:
        return self._describe_model()

    def _route(self, running: Running) -> RemoteCalls:
        """The class this item runs on; records on ``running`` whether a GPU runs it."""
        use_cpu = self.tier == "cpu"
        if self.tier == "overflow":
            try:
                use_cpu = self.calls.backlog() >= self.overflow_backlog
            except Exception:  # the stats are an optimisation: without them, the GPU class
                log.warning("reading the GPU class's backlog failed", exc_info=True)
        if use_cpu:
            assert self.cpu_calls is not None
            running.gpu = None
            return self.cpu_calls
        running.gpu = self.gpu
        return self.calls

    def _run(self, running: Running) -> dict[str, float]:
        item = running.item
        key = f"{item.job_id}-{secrets.token_hex(4)}"  # a fresh partition (and lease) for each attempt
        timings: dict[str, float] = {}
        started = [False]
        call: RemoteCall | None = None
        collected = False  # the call's value or error came back: it runs no more
        try:
            calls = self._route(running)
            clock = time.perf_counter()
            audio = item.source.read_bytes()
            if running.stop.is_set():
                raise Cancelled
            job: dict[str, Any] = dict(
                max_duration=item.max_duration, filename=item.display_name, progress=key
            )
            renewed = 0.0
            if self.leases is not None:
                self.leases.renew(key, time.time() + self.lease_seconds)
                renewed = time.monotonic()
                job["lease"] = key
            spawned_at = job["spawned_at"] = time.time()  # the container times its wake-up from it
            call = calls.spawn(audio, item.options, **job)
            timings["upload"] = time.perf_counter() - clock
            del audio
            while True:
                if running.stop.is_set():
                    raise Cancelled
                if self.leases is not None and time.monotonic() - renewed >= self.lease_seconds / 4:
                    self.leases.renew(key, time.time() + self.lease_seconds)
                    renewed = time.monotonic()
                for event in self.channel.get(key, self.poll_interval):
                    self._on_remote(item, event, timings, spawned_at, started)
                clock = time.perf_counter()
                try:
                    data = call.result(timeout=0)
                except TimeoutError:
                    continue
                except (JobFailed, InputCancellation):
                    collected = True  # the call's own outcome: it has ended
                    raise
                collected = True
                timings["download"] = time.perf_counter() - clock
                break
            for event in self.channel.get(key, 0):  # what the container sent just before it returned
                self._on_remote(item, event, timings, spawned_at, started)
            if not started[0]:
                report(item, JobEvent(item.job_id, "started"))
            item.result.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(item.result) as partial:
                partial.write_bytes(data)
            return {name: value if name == "cost_usd" else round(value, 3) for name, value in timings.items()}
        except InputCancellation:  # cancelled on Modal's side (e.g. from the dashboard)
            raise Cancelled("cancelled on the GPU tier") from None
        finally:
            if call is not None and not collected:  # whatever ended the wait, the call stops too
                self._cancel_call(item, call)
            if self.leases is not None:
                self._release(key)
            self._forget(key)

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

    def _release(self, key: str) -> None:
        try:
            self.leases.release(key)  # type: ignore[union-attr]
        except Exception:  # it expires by itself; the container stops at its expiry either way
            log.debug("releasing lease %s failed", key, exc_info=True)

    def _forget(self, key: str) -> None:
        try:
            self.channel.clear(key)
        except Exception:  # the partition expires by itself
            log.debug("clearing progress partition %s failed", key, exc_info=True)
