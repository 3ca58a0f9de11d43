"""Helpers for the Modal tests: the deployment module loaded in-process, and what it declares.

Modal's cloud is the one thing faked: :func:`load_modal_app` imports :mod:`freestems.deploy.modal_app`
under a controlled environment (a small seeded checkpoint as the model, a trivial proof of work) and
replaces its ways out (its ``remote_calls`` and ``cpu_calls``, and the methods ``progress_channel``,
``usage_log``, ``lease_store``, ``precision_cache`` and ``shared_state`` of its ``stores``, which the
classes and the web function use) with in-process ones: the classes' own ``.local()`` run by
:class:`InProcessCalls`, a :class:`MemoryChannel`, lists and dicts, and the web tier's shared state on
``modal_fakes``' Dicts and Queue. Everything else is the real code.

:func:`declared` reads what the module's GPU class and web function are declared with, from the option
dictionaries the module keeps and passes to Modal's decorators (no Modal internals, no credentials, no
network).

The ``checkpoint`` and ``deployment`` fixtures built from these live in ``conftest.py``.
"""

from __future__ import annotations

import collections
import importlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modal_fakes import FakeQueue, FakeSpace

from freestems.cost import UsageRecord, WakeRecord
from freestems.errors import Cancelled
from freestems.executors.modal import InputCancellation
from freestems.jobrun import cancel_scope
from freestems.options import SeparationOptions
from freestems.service.shared_state import SharedState

MODULE = "freestems.deploy.modal_app"


class MemoryChannel:
    """Stands in for the ``modal.Queue`` of progress events: one FIFO per key, in this process."""

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


class InProcessCalls:
    """Stands in for Modal's spawned calls: runs the GPU method in this process, one thread per call.

    ``function`` is what would run in the container, e.g. ``Separator().separate.local``. It runs in a
    :func:`~freestems.jobrun.cancel_scope`, so ``cancel`` stops it within one chunk, and the call then
    ends with :class:`InputCancellation`, as a cancelled Modal call does. ``spawned`` and ``cancelled``
    record what happened.
    """

    def __init__(self, function: Callable[..., bytes]) -> None:
        self.function = function
        self.spawned: list[ThreadCall] = []
        self.cancelled = 0
        self.waiting = 0
        """What :meth:`backlog` answers (Modal's count of inputs waiting for a container)."""

    def backlog(self) -> int:
        return self.waiting

    def spawn(self, audio: bytes, options: SeparationOptions, **job: Any) -> ThreadCall:
        call = ThreadCall(self, audio, options, job)
        self.spawned.append(call)
        return call


class ThreadCall:
    """One in-process call: its thread, its cancel token, and its value or error once ``finished``."""

    def __init__(
        self, owner: InProcessCalls, audio: bytes, options: SeparationOptions, job: dict[str, Any]
    ) -> None:
        self.owner = owner
        self.job = job
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(audio, options, job), name="freestems-inprocess-call", daemon=True
        )
        self.thread.start()

    def _run(self, audio: bytes, options: SeparationOptions, job: dict[str, Any]) -> None:
        try:
            with cancel_scope(self.stop):
                self.value = self.owner.function(audio, options, **job)
        except Cancelled:
            self.error = InputCancellation("the call was cancelled")
        except BaseException as error:
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
        if self.finished.is_set() or self.stop.is_set():
            return
        self.owner.cancelled += 1
        self.stop.set()


@dataclass
class UsageList:
    """Stands in for the ``modal.Dict`` usage log."""

    records: list[UsageRecord] = field(default_factory=list)
    wakes: list[WakeRecord] = field(default_factory=list)

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)

    def record_wake(self, record: WakeRecord) -> None:
        self.wakes.append(record)


class MemoryLeases:
    """Stands in for the ``modal.Dict`` of leases; ``renewals`` counts the web tier's renewals."""

    def __init__(self) -> None:
        self.leases: dict[str, float] = {}
        self.renewals = 0
        self._lock = threading.Lock()

    def renew(self, key: str, expires_at: float) -> None:
        with self._lock:
            self.leases[key] = expires_at
            self.renewals += 1

    def expires(self, key: str) -> float | None:
        with self._lock:
            return self.leases.get(key)

    def release(self, key: str) -> None:
        with self._lock:
            self.leases.pop(key, None)


class MemoryCache(dict):
    """Stands in for the ``modal.Dict`` of precision choices (``get`` and ``put``)."""

    def put(self, key: str, value: Any) -> None:
        self[key] = value


@dataclass
class Deployment:
    """The module and the in-process stand-ins wired into it."""

    module: Any
    channel: MemoryChannel
    usage: UsageList
    leases: MemoryLeases
    precision: MemoryCache
    calls: InProcessCalls | None = None
    cpu_calls: InProcessCalls | None = None

    @property
    def Separator(self):  # noqa: N802 - the class's name
        return self.module.Separator


def load_modal_app(monkeypatch, environ: dict[str, str]) -> Deployment:
    """(Re)import the deployment module with ``environ`` as its ``FREESTEMS_*`` environment, offline."""
    for name in list(os.environ):
        if name.startswith("FREESTEMS_"):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if MODULE in sys.modules:
        module = importlib.reload(sys.modules[MODULE])
    else:
        module = importlib.import_module(MODULE)
    deployment = Deployment(module, MemoryChannel(), UsageList(), MemoryLeases(), MemoryCache())
    stores = module.stores  # a new one at each (re)import: what the module's classes and functions use
    monkeypatch.setattr(stores, "progress_channel", lambda: deployment.channel)
    monkeypatch.setattr(stores, "usage_log", lambda: deployment.usage)
    monkeypatch.setattr(stores, "lease_store", lambda: deployment.leases)
    monkeypatch.setattr(stores, "precision_cache", lambda: deployment.precision)
    space, inbox = FakeSpace(), FakeQueue()  # the web tier's shared state, offline (no Volume: one folder)
    monkeypatch.setattr(stores, "shared_state", lambda: SharedState(space, inbox, None))
    return deployment


def use_in_process_gpu(monkeypatch, deployment: Deployment) -> InProcessCalls:
    """Route the web tier's GPU calls to one in-process ``Separator`` (its enter hooks run once)."""
    separator = deployment.Separator()
    calls = InProcessCalls(separator.separate.local)
    deployment.calls = calls
    monkeypatch.setattr(deployment.module, "remote_calls", lambda: calls)
    cpu = InProcessCalls(deployment.module.CpuSeparator().separate.local)
    deployment.cpu_calls = cpu
    monkeypatch.setattr(deployment.module, "cpu_calls", lambda: cpu)
    return calls


def declared(module: Any) -> dict[str, Any]:
    """What the deployment ``module`` declares its GPU class (``gpu``) and web function (``web``) with: the
    options it passes to ``@app.cls``, ``@app.function`` and ``@modal.concurrent``, which it keeps as plain
    values. JSON-ready: the image is left out (compare ``module.image``), secrets are given by name."""

    def plain(options: Mapping[str, Any]) -> dict[str, Any]:
        shown = {"secrets": lambda value: [secret.name for secret in value],
                 "volumes": lambda value: {path: volume.name for path, volume in value.items()}}  # fmt: skip
        return {
            name: shown[name](value) if name in shown else value
            for name, value in options.items()
            if name != "image"
        }

    return {
        "gpu": plain(module.GPU_CLASS_OPTIONS),
        "cpu": plain(module.CPU_CLASS_OPTIONS),
        "web": {**plain(module.WEB_FUNCTION_OPTIONS), **module.WEB_CONCURRENCY},
    }


def modal_environment(model_file: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an in-process deployment: the small model, a trivial proof of work."""
    return {
        "FREESTEMS_MODEL_FILE": str(model_file),
        "FREESTEMS_DATA_DIR": str(data_dir),
        "FREESTEMS_HMAC_SECRET": "test secret",
        "FREESTEMS_POW_ALGORITHM": "SHA-256",
        "FREESTEMS_POW_COST": "1",
        "FREESTEMS_POW_COUNTER": "8",
        "FREESTEMS_SESSIONS_PER_MINUTE": "1000",
        "FREESTEMS_JOBS_PER_IP": "8",
        "FREESTEMS_MAX_DURATION": "240",
        # The small model priced as scnet; any option at the longest song fits a request and a default key.
        "FREESTEMS_UNMEASURED_COST": "1",
        "FREESTEMS_MAX_REQUEST_COST": "1200",
        "FREESTEMS_KEY_BUDGET": "1200",
        "FREESTEMS_SWEEP_INTERVAL": "0.2",
        "FREESTEMS_REATTACH_GRACE": "2",
        "FREESTEMS_MODAL_MAX_CONTAINERS": "1",
        **extra,
    }
