"""Session keys: earned on a WebSocket, good for one separation of at most their budget, dead when anything
ends.

A key is earned for a budget of compute (model-seconds, :mod:`.pricing`; the proof of work grows with it):
a request that costs more than its key's budget is refused (403 ``key_budget``) before any job exists,
and the key stays usable for a cheaper one.

A key is issued after a valid proof-of-work answer and lives in memory only (a restart ends every socket,
and with it every key). It is bound to the client address and to its connection, and it dies:

- when its job ends (done, failed or cancelled) - one separation per key;
- when its WebSocket closes. Its queued or running job is then no longer *followed* by that socket; the job
  manager gives it ``reattach_grace`` seconds to be followed again (a ``follow`` message on another socket,
  a poll by its owner) before cancelling it, so no compute is spent for a client that has gone for good;
- when ``session_ttl`` passes before it is used (the timer stops once an upload starts).

Keys are stored by their SHA-256 only; a lookup hashes the presented key and the stored digest is compared
with :func:`hmac.compare_digest`. Dead keys leave a tombstone for a while, so that a reused or expired key
gets an error that says so instead of "unknown key".

With a shared key book (:class:`~.shared_state.SharedState`, several web containers), a key issued on one
container's socket is claimed on any other: the claim is atomic there, the container that holds the socket
is told when the key starts a job (so its socket hears about it), and a dead key's tombstone is shared.

Status codes, as the API documents them: missing/unknown/expired/closed key -> 401 (get a new key);
a real key used from another address, or used a second time -> 403 (this key will never work for this).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ServiceError, forbidden, unauthorized

if TYPE_CHECKING:
    from .shared_state import KeyBook

GET_A_KEY = "open a WebSocket to /session and solve its challenge to get one"
MAX_FOLLOWS = 16
"""Unfinished jobs one socket may follow at once (``follow`` messages)."""
COALESCED = ("job", "pong")
"""Message types of which a mailbox keeps only the newest unsent one (per job id)."""


Message = dict[str, Any]
"""A JSON message sent on a session socket."""


class Mailbox:
    """Messages waiting for one socket, in order - except that a ``job`` message replaces the unsent one of
    the same job (and a ``pong`` an unsent ``pong``). A client that reads slowly or not at all thus costs
    at most one pending message per job, and gets the newest state when it reads, never a backlog."""

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()

    def put_nowait(self, message: Message) -> None:
        if message.get("type") in COALESCED:
            for index, queued in enumerate(self._items):
                if queued.get("type") == message["type"] and queued.get("id") == message.get("id"):
                    self._items[index] = message
                    return
        self._items.append(message)
        self._ready.set()

    async def get(self) -> Message:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> Message:
        """The next message without waiting (like ``asyncio.Queue``); raises ``asyncio.QueueEmpty``."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)


@dataclass
class Session:
    """One issued key. ``state``: ready (issued) -> claimed (an upload is under way) -> busy (its job)."""

    digest: bytes
    client: str
    connection: str
    expires_at: float
    state: str = "ready"
    job_id: str | None = None
    remote: dict[str, Any] | None = None
    """The shared record of a key issued on another container's socket (None: this container's)."""
    budget: float | None = None
    """Model-seconds of compute the key was earned for (:mod:`.pricing`); None: the default budget."""

    @property
    def hash(self) -> str:
        """The key's digest as hex: what the job store keeps to know which session a job belongs to."""
        return self.digest.hex()


@dataclass(frozen=True)
class _Tombstone:
    error: ServiceError
    until: float


class SessionRegistry:
    """Live keys, their connections, and a mailbox per connection. Used from the event loop only."""

    def __init__(
        self, ttl: float, *, clock: Callable[[], float] = time.time, book: KeyBook | None = None
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self.book = book
        self._sessions: dict[bytes, Session] = {}
        self._by_connection: dict[str, bytes] = {}
        self._by_job: dict[str, bytes] = {}
        self._tombstones: dict[bytes, _Tombstone] = {}
        self._mailboxes: dict[str, Mailbox] = {}
        self._watchers: dict[str, set[str]] = {}  # job id -> connections that sent "follow" for it
        self._watching: dict[str, set[str]] = {}  # connection -> unfinished jobs it follows that way

    # ------------------------------------------------------------------------------------- connections

    def connect(self, connection: str) -> Mailbox:
        """Register a WebSocket connection; returns its mailbox (the messages for its socket)."""
        mailbox = Mailbox()
        self._mailboxes[connection] = mailbox
        return mailbox

    def post(self, connection: str, message: Message) -> None:
        """Queue ``message`` for ``connection``'s socket (dropped when it has gone)."""
        mailbox = self._mailboxes.get(connection)
        if mailbox is not None:
            mailbox.put_nowait(message)

    def post_to_job(self, job_id: str, message: Message) -> None:
        """Queue ``message`` for every socket following ``job_id``: its session's and those that sent
        ``follow`` for it."""
        connections = set(self._watchers.get(job_id, ()))
        digest = self._by_job.get(job_id)
        session = self._sessions.get(digest) if digest is not None else None
        if session is not None:
            connections.add(session.connection)
        for connection in connections:
            self.post(connection, message)

    def has_live_key(self, connection: str) -> bool:
        return connection in self._by_connection

    def uploading(self, connection: str) -> bool:
        """True while the key of ``connection`` is claimed by an upload that has not become a job yet."""
        digest = self._by_connection.get(connection)
        session = self._sessions.get(digest) if digest is not None else None
        return session is not None and session.state == "claimed"

    def watch(self, connection: str, job_id: str) -> None:
        """``connection`` follows the unfinished job ``job_id`` (a ``follow`` message).

        Raises:
            ServiceError: 403 when the socket already follows :data:`MAX_FOLLOWS` jobs.
        """
        if connection not in self._mailboxes:
            return
        watching = self._watching.setdefault(connection, set())
        if job_id not in watching and len(watching) >= MAX_FOLLOWS:
            raise forbidden("too_many_follows", f"one socket follows at most {MAX_FOLLOWS} unfinished jobs")
        watching.add(job_id)
        self._watchers.setdefault(job_id, set()).add(connection)

    def watching(self, connection: str) -> bool:
        """True while ``connection`` follows an unfinished job with a ``follow`` message."""
        return bool(self._watching.get(connection))

    def followed(self, job_id: str) -> bool:
        """True while an open socket follows ``job_id``: its session's, or one that sent ``follow``."""
        return job_id in self._by_job or bool(self._watchers.get(job_id))

    def close_connection(self, connection: str) -> list[str]:
        """The socket closed: its key dies. Returns the ids of the unfinished jobs it followed (its session's
        job and those it followed with ``follow``): they may now have nobody following them."""
        self._mailboxes.pop(connection, None)
        followed = sorted(self._watching.pop(connection, set()))
        for job_id in followed:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(connection)
                if not watchers:
                    del self._watchers[job_id]
        digest = self._by_connection.pop(connection, None)
        if digest is None:
            return followed
        session = self._sessions.pop(digest)
        self._bury(
            session,
            unauthorized(
                "key_closed", f"the WebSocket this key came from has closed, which ends the key; {GET_A_KEY}"
            ),
        )
        if session.job_id is not None:
            self._by_job.pop(session.job_id, None)
            if session.job_id not in followed:
                followed.append(session.job_id)
        return followed

    # ------------------------------------------------------------------------------------- keys

    def issue(
        self, client: str, connection: str, ttl: float | None = None, budget: float | None = None
    ) -> tuple[str, Session]:
        """A new key for ``client`` on ``connection`` (which must not hold a live one), usable for ``ttl``
        seconds (default: the registry's), for a request of at most ``budget`` model-seconds (None: the
        default budget)."""
        if connection in self._by_connection:
            raise forbidden("session_active", "this connection already holds a live session key")
        key = secrets.token_urlsafe(32)
        expires_at = self._clock() + (self.ttl if ttl is None else ttl)
        session = Session(
            digest=_digest(key), client=client, connection=connection, expires_at=expires_at, budget=budget
        )
        self._sessions[session.digest] = session
        self._by_connection[connection] = session.digest
        if self.book is not None:
            record = {"client": client, "connection": connection, "expires_at": expires_at, "budget": budget}
            self.book.publish(session.digest, record)
        return key, session

    def attach_remote(self, connection: str, digest_hex: str, job_id: str) -> None:
        """Another container started ``job_id`` with the key of ``connection`` (a socket here): the key is
        spent, and the socket follows the job."""
        digest = self._by_connection.get(connection)
        session = self._sessions.get(digest) if digest is not None else None
        if session is None or session.digest.hex() != digest_hex:
            return
        session.state, session.job_id = "busy", job_id
        self._by_job[job_id] = session.digest

    def followed_jobs(self) -> set[str]:
        """The unfinished jobs sockets here follow (their session's, or with ``follow``)."""
        return set(self._by_job) | {job for job, watchers in self._watchers.items() if watchers}

    def claim(self, key: str | None, client: str) -> Session:
        """Reserve ``key`` for one separation by ``client`` (an upload is about to be read).

        Raises:
            ServiceError: 401 missing, unknown, expired or closed key; 403 key of another address, or a key
                that was used already.
        """
        if not key:
            raise unauthorized(
                "key_missing", f"a session key is required in the X-Session-Key header; {GET_A_KEY}"
            )
        digest = _digest(key)
        session = self._sessions.get(digest)
        if session is None and self.book is not None:
            session = self._remote(digest)
        if session is None or not hmac.compare_digest(session.digest, digest):
            tombstone = self._tombstones.get(digest)
            if tombstone is not None:
                raise tombstone.error
            raise unauthorized("key_invalid", f"unknown session key; {GET_A_KEY}")
        if session.state == "ready" and session.expires_at < self._clock():
            if session.remote is not None:
                raise unauthorized("key_expired", f"the session key has expired; {GET_A_KEY}")
            self._expire(session)
            raise self._tombstones[digest].error
        if not hmac.compare_digest(session.client.encode(), client.encode()):
            raise forbidden("key_foreign", "this session key was issued to another address; get your own")
        if session.state != "ready" or (self.book is not None and not self.book.claim(digest)):
            raise forbidden(
                "key_used", "this session key is already in use by another request; get a new one"
            )
        session.state = "claimed"
        return session

    def _remote(self, digest: bytes) -> Session | None:
        """A key issued on another container's socket, as the shared book has it (tombstones checked)."""
        assert self.book is not None
        error = self.book.tombstone(digest)
        if error is not None:
            raise error
        record = self.book.lookup(digest)
        if record is None:
            return None
        return Session(
            digest=digest,
            client=str(record["client"]),
            connection=str(record["connection"]),
            expires_at=float(record["expires_at"]),
            remote=record,
            budget=float(record["budget"]) if record.get("budget") is not None else None,
        )

    def unclaim(self, session: Session) -> None:
        """The request was refused before any job existed: the key may be used again (if still alive)."""
        if self.book is not None and session.state == "claimed":
            self.book.unclaim(session.digest)
        if session.remote is not None:
            session.state = "ready"
            return
        if session.state == "claimed" and self._sessions.get(session.digest) is session:
            session.state = "ready"
            session.expires_at = max(session.expires_at, self._clock() + 1.0)

    def attach(self, session: Session, job_id: str) -> None:
        """Bind the claimed key to its job. Raises 401 if the key died during the upload."""
        if session.remote is not None:
            error = self.book.tombstone(session.digest) if self.book is not None else None
            if error is not None:
                raise error
            session.state, session.job_id = "busy", job_id
            if self.book is not None:
                self.book.attached(session.digest, session.remote, job_id)
            return
        if self._sessions.get(session.digest) is not session:
            tombstone = self._tombstones.get(session.digest)
            raise (
                tombstone.error
                if tombstone
                else unauthorized("key_invalid", f"unknown session key; {GET_A_KEY}")
            )
        session.state = "busy"
        session.job_id = job_id
        self._by_job[job_id] = session.digest

    def finish(self, job_id: str) -> Session | None:
        """The job ended: its key dies (one separation per key), its followers stop following it. Returns
        the session, if it was alive."""
        for connection in self._watchers.pop(job_id, set()):
            watching = self._watching.get(connection)
            if watching is not None:
                watching.discard(job_id)
                if not watching:
                    del self._watching[connection]
        digest = self._by_job.pop(job_id, None)
        session = self._sessions.get(digest) if digest is not None else None
        if session is None:
            return None
        self._drop(session)
        self._bury(
            session, forbidden("key_used", f"this session key was already used for a separation; {GET_A_KEY}")
        )
        return session

    def consume(self, session: Session) -> None:
        """End a claimed key that produced no running job (a cached result was served instead)."""
        if session.remote is not None and self.book is not None:
            error = forbidden("key_used", f"this session key was already used for a separation; {GET_A_KEY}")
            self.book.bury(session.digest, error, self._clock() + max(self.ttl, 600.0))
            return
        if self._sessions.get(session.digest) is session:
            self._drop(session)
            self._bury(
                session,
                forbidden("key_used", f"this session key was already used for a separation; {GET_A_KEY}"),
            )

    def sweep(self) -> list[Session]:
        """Expire unused keys past their TTL (telling their sockets) and forget old tombstones; returns the
        expired sessions."""
        now = self._clock()
        expired = [s for s in self._sessions.values() if s.state == "ready" and s.expires_at < now]
        for session in expired:
            self._expire(session)
        for digest in [d for d, t in self._tombstones.items() if t.until < now]:
            del self._tombstones[digest]
        return expired

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------------------------- internals

    def _expire(self, session: Session) -> None:
        """The key outlived its TTL unused: it dies, and its socket is told (and then closed)."""
        self._drop(session)
        self._bury(session, unauthorized("key_expired", f"the session key has expired; {GET_A_KEY}"))
        message = "the session key expired before it was used; connect again for a new one"
        self.post(session.connection, {"type": "error", "code": "session_expired", "message": message})

    def _drop(self, session: Session) -> None:
        self._sessions.pop(session.digest, None)
        if self._by_connection.get(session.connection) == session.digest:
            del self._by_connection[session.connection]
        if session.job_id is not None:
            self._by_job.pop(session.job_id, None)

    def _bury(self, session: Session, error: ServiceError) -> None:
        if session.digest not in self._tombstones:  # the first cause of death is the one reported
            until = self._clock() + max(self.ttl, 600.0)
            self._tombstones[session.digest] = _Tombstone(error, until)
            if self.book is not None:
                self.book.bury(session.digest, error, until)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
