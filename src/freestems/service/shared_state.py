"""Where the service keeps what every web container must agree on: one small interface, two homes.

:class:`LocalState` is today's single server: jobs in the SQLite file of the data folder, keys and sockets
in this process's memory. :class:`SharedState` is the scaled-out web tier (the Modal deployment), built on
three primitives with Modal's method names and semantics, so that any container can serve any request
and a redeploy, a preemption or a crash loses nothing:

- ``modal.Dict`` s (``space(name)`` returns one): the job store (:class:`~.shared_store.DictJobStore`),
  session keys (``keys``: a key issued on one container's socket is claimed on another with an atomic
  ``put(..., skip_if_exists=True)``, and tombstones say why a dead key died), and ``misc``: open sockets
  per address (one key per slot, taken with ``skip_if_exists``, so the cap holds across containers),
  follow times (a socket on container B keeps a job of container A followed), which container runs each
  unfinished job and each container's heartbeat (a job whose container has gone is *adopted* by a live
  one, once: an adoption is a ``skip_if_exists`` key per generation);
- a ``modal.Queue``: one partition per container, its inbox (``the key of one of your sockets was used
  for job J``);
- a ``modal.Volume`` mounted at the data folder: uploads and results. A container commits after it
  writes (an upload, before a result is announced, after the sweeper deletes) and reloads when a file a
  record names is not there yet. The TTL sweep deletes results; nothing else does, so a result lives
  ``result_ttl`` seconds whichever container (if any) is up.

Shared-state calls block for a network round trip; those on a socket's path run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .errors import ServiceError, too_many_requests
from .shared_store import DictJobStore, DictLike
from .store import JobStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 20.0
"""A container whose heartbeat is older than this has gone: its sockets' slots are free, its jobs adopted."""
SYNC_INTERVAL = 0.5
"""Seconds between two rounds of a container's sync (heartbeat, inbox, followed jobs, adoption)."""


class QueueLike(Protocol):
    """The methods of ``modal.Queue`` the shared state uses."""

    def put(self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None,
            partition_ttl: int = 86400) -> None: ...  # fmt: skip

    def get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> list[Any]: ...


class VolumeLike(Protocol):
    """The methods of ``modal.Volume`` the shared state uses (inside a container that mounts it)."""

    def commit(self) -> None: ...

    def reload(self) -> None: ...


def too_many_sockets(limit: int) -> ServiceError:
    return too_many_requests(
        "too_many_sockets",
        f"your address already has {limit} session sockets open (the limit); close one and try again",
        30.0,
    )


class LocalState:
    """Everything in this process: the SQLite store, sockets counted here, follows timed here."""

    shared = False

    def __init__(self) -> None:
        self.container = secrets.token_hex(6)
        self._sockets: dict[str, set[str]] = {}
        self._follows: dict[str, float] = {}  # job id -> time.monotonic() of its last follow

    @property
    def work_dir(self) -> Path | None:
        """Where the executor's per-job folders go (None: ``<data>/work``)."""
        return None

    def open_store(self, root: Path, database: Path) -> JobStore | DictJobStore:
        return JobStore(database)

    @property
    def keys(self) -> KeyBook | None:
        """Where keys are shared with other containers (None: keys live in this process only)."""
        return None

    # -------------------------------------------------------------------------------------- sockets

    async def acquire_socket(self, client: str, connection: str, limit: int) -> None:
        """Count an open socket of ``client``; raises 429 ``too_many_sockets`` at ``limit``."""
        open_now = self._sockets.setdefault(client, set())
        if len(open_now) >= limit:
            raise too_many_sockets(limit)
        open_now.add(connection)

    async def release_socket(self, client: str, connection: str) -> None:
        open_now = self._sockets.get(client)
        if open_now is not None:
            open_now.discard(connection)
            if not open_now:
                del self._sockets[client]

    # -------------------------------------------------------------------------------------- follows

    def touch_follow(self, job_id: str) -> None:
        """Something followed ``job_id`` just now (its owner polled it, a socket follows it)."""
        self._follows[job_id] = time.monotonic()

    def follow_age(self, job_id: str) -> float | None:
        """Seconds since ``job_id`` was last followed that way (None: never)."""
        seen = self._follows.get(job_id)
        return None if seen is None else time.monotonic() - seen

    def forget_follow(self, job_id: str) -> None:
        self._follows.pop(job_id, None)

    # -------------------------------------------------------------------------------------- jobs

    def own(self, job_id: str) -> None:
        """This container runs ``job_id`` (recorded before the job exists for the others)."""

    def release(self, job_id: str) -> None:
        """This container stops and gives ``job_id`` back (any live container may adopt it)."""

    def disown(self, job_id: str) -> None:
        """``job_id`` ended: nobody runs it any more."""

    # -------------------------------------------------------------------------------------- files

    def changed(self) -> None:
        """Files under the data folder changed (committed by the next sync round)."""

    def commit(self) -> None:
        """Make this container's file changes visible to the others (blocking)."""

    def visible(self, path: Path | None) -> bool:
        """True if ``path`` is a file here (after fetching the others' changes, where they are shared)."""
        return path is not None and path.is_file()


class KeyBook(Protocol):
    """Session keys shared between containers (see :class:`SharedState`)."""

    def publish(self, digest: bytes, record: dict[str, Any]) -> None: ...

    def lookup(self, digest: bytes) -> dict[str, Any] | None: ...

    def claim(self, digest: bytes) -> bool: ...

    def unclaim(self, digest: bytes) -> None: ...

    def attached(self, digest: bytes, record: dict[str, Any], job_id: str) -> None: ...

    def bury(self, digest: bytes, error: ServiceError, until: float) -> None: ...

    def tombstone(self, digest: bytes) -> ServiceError | None: ...


class SharedState(LocalState):
    """The scaled-out web tier's state: ``modal.Dict`` s, a ``modal.Queue`` and a ``modal.Volume``.

    Args:
        space: returns the Dict of a name (``jobs``, ``active``, ``ended``, ``results``, ``usage``,
            ``keys``, ``misc``); on Modal ``modal.Dict.from_name(f"{app}-{name}", create_if_missing=True)``.
        inbox: the Queue of the containers' inboxes (one partition per container).
        volume: the Volume mounted at the data folder (None: a folder every instance sees as it is).
    """

    shared = True

    def __init__(
        self,
        space: Callable[[str], DictLike],
        inbox: QueueLike,
        volume: VolumeLike | None = None,
        *,
        lease: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.space = space
        self.key_dict = space("keys")
        self.misc = space("misc")
        self.inbox = inbox
        self.volume = volume
        self.lease = lease
        self._clock = clock
        self._slots: dict[str, str] = {}  # connection -> the slot key it holds
        self._dirty = False
        self._volume_lock = threading.Lock()
        self._book = _DictKeyBook(self)

    @property
    def work_dir(self) -> Path:
        """On this container's own disk: per-chunk files never go to the shared Volume."""
        return Path(tempfile.gettempdir()) / f"freestems-work-{self.container}"

    def open_store(self, root: Path, database: Path) -> DictJobStore:
        return DictJobStore(self.space, root)

    @property
    def keys(self) -> KeyBook:
        return self._book

    # -------------------------------------------------------------------------------------- liveness

    def heartbeat(self) -> None:
        self.misc.put(f"alive:{self.container}", self._clock())

    def alive(self, container: str | None) -> bool:
        if container is None:
            return False
        if container == self.container:
            return True
        beat = self.misc.get(f"alive:{container}")
        return beat is not None and self._clock() - float(beat) < self.lease

    def leave(self) -> None:
        """This container stops: its heartbeat goes at once (its jobs were released)."""
        self.misc.pop(f"alive:{self.container}", None)

    # -------------------------------------------------------------------------------------- sockets

    async def acquire_socket(self, client: str, connection: str, limit: int) -> None:
        slot = await asyncio.to_thread(self._take_slot, client, connection, limit)
        if slot is None:
            raise too_many_sockets(limit)
        self._slots[connection] = slot

    async def release_socket(self, client: str, connection: str) -> None:
        slot = self._slots.pop(connection, None)
        if slot is not None:
            await asyncio.to_thread(self.misc.pop, slot, None)

    def _take_slot(self, client: str, connection: str, limit: int) -> str | None:
        """One of ``limit`` slot keys of ``client``, taken atomically; a slot of a container that has gone
        is freed first."""
        value = (self.container, connection)
        for index in range(limit):
            if self.misc.put(f"socket:{client}:{index}", value, skip_if_exists=True):
                return f"socket:{client}:{index}"
        for index in range(limit):
            key = f"socket:{client}:{index}"
            holder = self.misc.get(key)
            if holder is not None and not self.alive(holder[0]):
                self.misc.pop(key, None)
                if self.misc.put(key, value, skip_if_exists=True):
                    return key
        return None

    def release_slots(self) -> None:
        """This container stops: the slots of its sockets are freed."""
        for slot in list(self._slots.values()):
            self.misc.pop(slot, None)
        self._slots.clear()

    # -------------------------------------------------------------------------------------- follows

    def touch_follow(self, job_id: str) -> None:
        super().touch_follow(job_id)
        self.misc.put(f"follow:{job_id}", self._clock())

    def follow_age(self, job_id: str) -> float | None:
        local = super().follow_age(job_id)
        seen = self.misc.get(f"follow:{job_id}")
        shared = None if seen is None else max(0.0, self._clock() - float(seen))
        ages = [age for age in (local, shared) if age is not None]
        return min(ages) if ages else None

    def forget_follow(self, job_id: str) -> None:
        super().forget_follow(job_id)
        self.misc.pop(f"follow:{job_id}", None)

    # -------------------------------------------------------------------------------------- jobs

    def own(self, job_id: str) -> None:
        self.misc.put(f"owner:{job_id}", (self.container, 0))

    def release(self, job_id: str) -> None:
        owner = self.misc.get(f"owner:{job_id}")
        if owner is not None and owner[0] == self.container:
            self.misc.put(f"owner:{job_id}", (None, int(owner[1])))

    def disown(self, job_id: str) -> None:
        self.misc.pop(f"owner:{job_id}", None)

    def adopt(self, job_id: str) -> bool:
        """Take ``job_id`` if its container has gone (or gave it back); True if this container won it.

        Each adoption is a new generation; taking generation ``n`` is ``put(..., skip_if_exists=True)`` of
        its key, so of two containers adopting at once exactly one wins."""
        owner = self.misc.get(f"owner:{job_id}")
        container, generation = owner if owner is not None else (None, 0)
        if container is not None and self.alive(container):
            return False
        generation = int(generation) + 1
        if not self.misc.put(f"adopt:{job_id}:{generation}", self.container, skip_if_exists=True):
            return False
        self.misc.put(f"owner:{job_id}", (self.container, generation))
        return True

    def runs(self, job_id: str) -> bool:
        owner = self.misc.get(f"owner:{job_id}")
        return owner is not None and owner[0] == self.container

    # -------------------------------------------------------------------------------------- inbox

    def tell(self, container: str, message: dict[str, Any]) -> None:
        self.inbox.put(message, partition=container, partition_ttl=3600)

    def messages(self) -> list[dict[str, Any]]:
        try:
            return list(self.inbox.get_many(100, block=False, partition=self.container))
        except queue.Empty:
            return []

    # -------------------------------------------------------------------------------------- files

    def changed(self) -> None:
        self._dirty = True

    def commit(self) -> None:
        self._dirty = False
        if self.volume is not None:
            with self._volume_lock:
                self.volume.commit()

    def commit_if_changed(self) -> None:
        if self._dirty:
            self.commit()

    def reload(self) -> None:
        if self.volume is None:
            return
        try:
            with self._volume_lock:
                self.volume.reload()
        except Exception as error:  # open files (a download in progress): the next try will do
            log.info("reloading the volume failed (%s); trying again later", error)

    def visible(self, path: Path | None) -> bool:
        if path is None:
            return False
        if path.is_file():
            return True
        self.reload()
        return path.is_file()


class _DictKeyBook:
    """Session keys in the ``keys`` Dict: ``<digest>`` the record, ``claim:<digest>`` the one use,
    ``dead:<digest>`` why it died."""

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self.keys = state.key_dict

    def publish(self, digest: bytes, record: dict[str, Any]) -> None:
        self.keys.put(digest.hex(), {**record, "container": self.state.container})

    def lookup(self, digest: bytes) -> dict[str, Any] | None:
        record = self.keys.get(digest.hex())
        if record is None or not self.state.alive(record.get("container")):
            return None  # its socket's container has gone, and the socket with it
        return dict(record)

    def claim(self, digest: bytes) -> bool:
        return bool(self.keys.put(f"claim:{digest.hex()}", self.state.container, skip_if_exists=True))

    def unclaim(self, digest: bytes) -> None:
        self.keys.pop(f"claim:{digest.hex()}", None)

    def attached(self, digest: bytes, record: dict[str, Any], job_id: str) -> None:
        """A key of another container's socket started ``job_id``: tell that container."""
        message = {
            "type": "attach",
            "digest": digest.hex(),
            "connection": record["connection"],
            "job": job_id,
        }
        self.state.tell(str(record["container"]), message)

    def bury(self, digest: bytes, error: ServiceError, until: float) -> None:
        self.keys.put(f"dead:{digest.hex()}", (error.status, error.code, error.message, until))
        self.keys.pop(digest.hex(), None)

    def tombstone(self, digest: bytes) -> ServiceError | None:
        found = self.keys.get(f"dead:{digest.hex()}")
        if found is None:
            return None
        status, code, message, until = found
        if float(until) < time.time():
            return None
        return ServiceError(int(status), str(code), str(message))
