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
  writes (an upload, before a result is announced, after the sweeper deletes) and, when a file a record
  names is not there yet, reloads; a reload refuses while files of the Volume are open in the container
  (an upload streaming in, a result being served: nearly always, under load), so then the file is read
  through the Volume's API instead (:meth:`SharedState.fetch`, :meth:`SharedState.readable`): no result
  and no adoption depends on a reload succeeding. The TTL sweep deletes results; nothing else does, so a
  result lives ``result_ttl`` seconds whichever container (if any) is up.

Every shared-state call blocks for a network round trip, so none is made on the event loop: there the
state answers from what this container last read (the sync round refreshes it) and hands its writes to
one thread, the :class:`~.shared_store.Courier`, which makes them in order. A request that needs what
another container wrote reads it first in a thread (:meth:`SharedState.refresh`,
:meth:`SharedState.prepare_key`), and one whose answer another container may act on at once waits for
the courier first (:meth:`SharedState.settled`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import queue
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from freestems.files import temp_path

from .errors import ServiceError, too_many_requests
from .shared_store import Courier, DictJobStore, DictLike, on_event_loop, retrying
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

    def read_file(self, path: str) -> Any:
        """The committed bytes of ``path`` (relative to the Volume's root), in chunks; ``FileNotFoundError``
        when there is none. Needs no reload (``modal.Volume.read_file``)."""
        ...


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

    def readable(self, path: Path | None) -> Path | None:
        """A file with ``path``'s content to read now: ``path`` itself, else (shared) a copy of it on this
        container's own disk, which the caller removes (:meth:`discard`). Blocking: not on the loop."""
        return path if path is not None and path.is_file() else None

    def discard(self, path: Path, original: Path | None) -> None:
        """Remove ``path`` if :meth:`readable` made it as a copy of ``original``."""
        if original is not None and path != original:
            path.unlink(missing_ok=True)

    # -------------------------------------------------------------------------------------- event loop

    async def refresh(self, job_id: object) -> None:
        """Read the job ``job_id`` (a client's word: any value) where it is shared, off the event loop,
        before a request looks at it. Here the store is this process's: nothing to do."""

    async def settled(self) -> None:
        """Wait until this container's writes are where the other containers read them (nothing to do)."""

    async def prepare_key(self, key: str | None, client: str) -> None:
        """Read what claiming ``key`` for ``client`` needs, off the event loop (nothing to do here)."""

    async def recheck_key(self, digest: bytes) -> None:
        """Read again whether the key ``digest`` died, off the event loop (nothing to do here)."""


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
        self.courier = Courier()
        """Makes the writes of the event loop, in order (:mod:`.shared_store`)."""
        self.store: DictJobStore | None = None
        self.root: Path | None = None
        self._follows_seen: dict[str, float] = {}  # job id -> its shared follow time, as last read
        self._book = _DictKeyBook(self)

    @property
    def work_dir(self) -> Path:
        """On this container's own disk: per-chunk files never go to the shared Volume."""
        return Path(tempfile.gettempdir()) / f"freestems-work-{self.container}"

    def open_store(self, root: Path, database: Path) -> DictJobStore:
        self.root = Path(root)
        self.store = DictJobStore(self.space, root, courier=self.courier)
        return self.store

    def _later(self, call: Callable[[], Any], what: str) -> None:
        """A write: to the courier on the event loop (it must not wait there), else now."""
        if on_event_loop():
            self.courier.send(lambda: retrying(call, what))
        else:
            call()

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
        now = self._clock()
        self._follows_seen[job_id] = now
        self._later(lambda: self.misc.put(f"follow:{job_id}", now), f"following {job_id}")

    def follow_age(self, job_id: str) -> float | None:
        """Seconds since ``job_id`` was last followed here or on another container (on the event loop: as
        the sync round last read the other containers' follows)."""
        local = super().follow_age(job_id)
        if on_event_loop():
            seen = self._follows_seen.get(job_id)
        else:
            seen = self.misc.get(f"follow:{job_id}")
            if seen is not None:
                self._follows_seen[job_id] = float(seen)
        shared = None if seen is None else max(0.0, self._clock() - float(seen))
        ages = [age for age in (local, shared) if age is not None]
        return min(ages) if ages else None

    def forget_follow(self, job_id: str) -> None:
        super().forget_follow(job_id)
        self._follows_seen.pop(job_id, None)
        self._later(lambda: self.misc.pop(f"follow:{job_id}", None), f"forgetting the follows of {job_id}")

    # -------------------------------------------------------------------------------------- jobs

    def own(self, job_id: str) -> None:
        self._later(lambda: self.misc.put(f"owner:{job_id}", (self.container, 0)), f"owning {job_id}")

    def release(self, job_id: str) -> None:
        def give_back() -> None:
            owner = self.misc.get(f"owner:{job_id}")
            if owner is not None and owner[0] == self.container:
                self.misc.put(f"owner:{job_id}", (None, int(owner[1])))

        self._later(give_back, f"giving {job_id} back")

    def disown(self, job_id: str) -> None:
        self._later(lambda: self.misc.pop(f"owner:{job_id}", None), f"disowning {job_id}")

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
        self._later(
            lambda: self.inbox.put(message, partition=container, partition_ttl=3600), f"telling {container}"
        )

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

    def reload(self) -> bool:
        """Fetch the other containers' committed changes; False when the Volume refused (it refuses while
        files of it are open here: an upload streaming in, a result being served)."""
        if self.volume is None:
            return False
        try:
            with self._volume_lock:
                self.volume.reload()
        except Exception as error:
            log.info("reloading the volume failed (%s); reading files through its API instead", error)
            return False
        return True

    def visible(self, path: Path | None) -> bool:
        """True if ``path`` is a file here: fetched into place (:meth:`fetch`) if another container
        committed it. On the event loop it only looks (nothing there may wait for the network)."""
        if path is None:
            return False
        if path.is_file():
            return True
        if on_event_loop():
            return False
        return self.fetch(path)

    def fetch(self, path: Path) -> bool:
        """Make ``path``, a file another container committed, a file here: by a reload, or, when the
        Volume refuses one, by reading it through the Volume's API into place. False if there is none.
        Blocking: not on the event loop."""
        if path.is_file():
            return True
        if self.reload() and path.is_file():
            return True
        return path.is_file() or self._read_through(path, path)

    def readable(self, path: Path | None) -> Path | None:
        """``path`` if it is a file here (after a reload), else a copy read through the Volume's API onto
        this container's own disk (so the next commit does not upload it again), which the caller removes
        (:meth:`discard`); None if there is no such file. Blocking: not on the event loop."""
        if path is None:
            return None
        if path.is_file() or (self.reload() and path.is_file()):
            return path
        copy = self.work_dir / "fetched" / f"{secrets.token_hex(8)}{path.suffix}"
        return copy if self._read_through(path, copy) else None

    def _read_through(self, path: Path, destination: Path) -> bool:
        """Write the committed bytes of ``path`` at ``destination`` (atomically); False if there are none."""
        if self.volume is None or self.root is None or not hasattr(self.volume, "read_file"):
            return False
        try:
            relative = path.relative_to(self.root).as_posix()
        except ValueError:
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = temp_path(destination)
        try:
            with partial.open("wb") as out:
                for chunk in self.volume.read_file(relative):
                    out.write(chunk)
            partial.replace(destination)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            return False
        except Exception:
            partial.unlink(missing_ok=True)
            log.warning("reading %s through the volume's API failed", relative, exc_info=True)
            return False
        return True

    # -------------------------------------------------------------------------------------- event loop

    async def refresh(self, job_id: object) -> None:
        """Read the job ``job_id`` from the shared store in a thread (this container's own writes made
        first), so that the event loop's copy has it as it is now."""
        store = self.store
        if store is None or not isinstance(job_id, str) or not re.fullmatch(r"[0-9a-f]{16}", job_id):
            return

        def read() -> None:
            self.courier.flush()
            store.get(job_id)

        await asyncio.to_thread(read)

    async def settled(self) -> None:
        await self.courier.settled()

    async def prepare_key(self, key: str | None, client: str) -> None:
        if key:
            await asyncio.to_thread(
                self._book.prepare, hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest(), client
            )

    async def recheck_key(self, digest: bytes) -> None:
        await asyncio.to_thread(self._book.recheck, digest)


@dataclasses.dataclass
class _Prepared:
    """What :meth:`_DictKeyBook.prepare` read for one key, for the event loop's claim."""

    tombstone: ServiceError | None
    record: dict[str, Any] | None
    claimed: bool | None
    """The atomic claim, taken when the record allowed it (None: not tried)."""
    at: float = dataclasses.field(default_factory=time.monotonic)


class _DictKeyBook:
    """Session keys in the ``keys`` Dict: ``<digest>`` the record, ``claim:<digest>`` the one use,
    ``dead:<digest>`` why it died.

    The session registry asks on the event loop, so there the book answers from what :meth:`prepare` (and
    :meth:`recheck`) read in a thread just before, and its writes go to the courier; elsewhere it reads and
    writes the Dict directly. The claim itself, ``put(claim:<digest>, skip_if_exists=True)``, is taken in
    :meth:`prepare` when the key's record says that this client may use it now."""

    PREPARED_SECONDS = 120.0
    """How long what :meth:`prepare` read stays (a request uses it within milliseconds)."""

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self.keys = state.key_dict
        self._prepared: dict[bytes, _Prepared] = {}

    def publish(self, digest: bytes, record: dict[str, Any]) -> None:
        value = {**record, "container": self.state.container}
        self.state._later(lambda: self.keys.put(digest.hex(), value), "publishing a key")

    def prepare(self, digest: bytes, client: str) -> None:
        """Blocking, in a thread: read the key's tombstone and record (this container's writes made first)
        and, when it is alive, unexpired and ``client``'s, take its claim."""
        self.state.courier.flush()
        now = time.monotonic()
        for old in [key for key, found in self._prepared.items() if now - found.at > self.PREPARED_SECONDS]:
            self._prepared.pop(old, None)
        tombstone = self._read_tombstone(digest)
        record = None if tombstone is not None else self._read_record(digest)
        claimed = None
        if (
            record is not None
            and str(record.get("client")) == client
            and float(record.get("expires_at", 0.0)) >= time.time()
        ):
            claimed = self._claim(digest)
        self._prepared[digest] = _Prepared(tombstone, record, claimed)

    def recheck(self, digest: bytes) -> None:
        """Blocking, in a thread: read again whether the key died (an upload can take minutes)."""
        tombstone = self._read_tombstone(digest)
        found = self._prepared.get(digest)
        if found is None:
            self._prepared[digest] = _Prepared(tombstone, None, None)
        else:
            found.tombstone, found.at = tombstone, time.monotonic()

    def lookup(self, digest: bytes) -> dict[str, Any] | None:
        if on_event_loop():
            found = self._prepared.get(digest)
            return None if found is None or found.record is None else dict(found.record)
        return self._read_record(digest)

    def _read_record(self, digest: bytes) -> dict[str, Any] | None:
        record = self.keys.get(digest.hex())
        if record is None or not self.state.alive(record.get("container")):
            return None  # its socket's container has gone, and the socket with it
        return dict(record)

    def claim(self, digest: bytes) -> bool:
        """Take the key's one use (on the event loop: the claim :meth:`prepare` took, used once)."""
        if on_event_loop():
            found = self._prepared.get(digest)
            claimed = found is not None and bool(found.claimed)
            if found is not None:
                found.claimed = False  # one claim, one use
            return claimed
        return self._claim(digest)

    def _claim(self, digest: bytes) -> bool:
        return bool(self.keys.put(f"claim:{digest.hex()}", self.state.container, skip_if_exists=True))

    def unclaim(self, digest: bytes) -> None:
        self.state._later(lambda: self.keys.pop(f"claim:{digest.hex()}", None), "giving a key back")

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
        dead = (error.status, error.code, error.message, until)

        def write() -> None:
            self.keys.put(f"dead:{digest.hex()}", dead)
            self.keys.pop(digest.hex(), None)

        self.state._later(write, "burying a key")

    def tombstone(self, digest: bytes) -> ServiceError | None:
        if on_event_loop():
            found = self._prepared.get(digest)
            return None if found is None else found.tombstone
        return self._read_tombstone(digest)

    def _read_tombstone(self, digest: bytes) -> ServiceError | None:
        found = self.keys.get(f"dead:{digest.hex()}")
        if found is None:
            return None
        status, code, message, until = found
        if float(until) < time.time():
            return None
        return ServiceError(int(status), str(code), str(message))
