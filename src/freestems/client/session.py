"""The ``/session`` WebSocket from the client's side: earn a key, then hear the job's news.

A :class:`Session` is one open socket. Once it has its key (or has asked to ``follow`` a job) a background
thread reads every message as it comes, keeping only the newest ``job`` message per job, so the socket
never backs up however slowly the caller looks; the caller reads the newest state with :meth:`job` and
waits for a change with :meth:`wait_change`. Closing the session closes the socket (on today's servers
that ends the key and cancels its unfinished job; see the README).

The server ends every socket after ``socket_lifetime`` seconds (close code :data:`LIFETIME_CLOSE`, reason
``socket_lifetime``); the job goes on, and :meth:`freestems.client.Client.wait` follows it again on a new
socket (``follow``), as it does after any dropped socket.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from .errors import RemoteError

LIFETIME_CLOSE = 4000
"""The close code of a socket the server ended at its lifetime (nothing lost: follow the job again)."""


class FollowUnsupported(Exception):
    """The server does not know the ``follow`` message (it predates it): poll instead."""


class Session:
    """One ``/session`` socket; :attr:`key` once the proof of work is accepted."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.key: str | None = None
        self.expires_in: float | None = None
        self.budget: float | None = None
        """Model-seconds the key buys, as the server said (None: an older server, or no key yet)."""
        self._changed = threading.Condition()
        self._version = 0
        self._jobs: dict[str, dict[str, Any]] = {}
        self._done: dict[str, dict[str, Any]] = {}
        self.error: dict[str, Any] | None = None
        self.closed = False
        self.close_code: int | None = None
        self._reader: threading.Thread | None = None

    # -------------------------------------------------------------------------------------------- opening

    @classmethod
    def connect(cls, url: str, *, timeout: float) -> Session:
        """Open ``url`` (``ws://host:port/session``). A refused handshake (``429`` too many new
        sessions, ``403``) becomes the server's :class:`RemoteError`; a network failure one with code
        ``unreachable``."""
        try:
            socket = connect(
                url, open_timeout=timeout, close_timeout=2, ping_interval=20, ping_timeout=timeout
            )
            # Entered as a context manager (websockets 17 warns otherwise); :meth:`close` is its exit.
            socket = socket.__enter__()
        except InvalidStatus as refused:
            raise _refusal(refused) from None
        except (OSError, WebSocketException, TimeoutError, EOFError) as error:  # refused, reset, cut short
            raise RemoteError(None, "unreachable", f"cannot open {url}: {error}") from None
        return cls(socket)

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next message, before the reader runs (the handshake of challenge and key)."""
        try:
            text = self.socket.recv(timeout=timeout)
        except TimeoutError:
            raise RemoteError(
                None, "timeout", f"the server said nothing on the session socket for {timeout:g} s"
            ) from None
        except ConnectionClosed as closed:
            raise RemoteError(
                None, "unreachable", f"the server closed the session socket ({closed})"
            ) from None
        message = _parse(text)
        if message.get("type") == "error":
            raise RemoteError(None, str(message.get("code")), str(message.get("message")))
        return message

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.socket.send(json.dumps(message))
        except ConnectionClosed as closed:
            raise RemoteError(None, "unreachable", f"the session socket closed ({closed})") from None

    def start_reader(self) -> None:
        """Read every further message in a background thread (daemon: it ends with the socket)."""
        self._reader = threading.Thread(target=self._read, name="freestems-session", daemon=True)
        self._reader.start()

    @classmethod
    def follow(cls, url: str, job_id: str, token: str, *, timeout: float) -> Session:
        """A new socket that follows an existing job (``{"type": "follow", "id", "token"}``).

        Raises:
            FollowUnsupported: the server does not know the message.
            RemoteError: ``not_found`` for an unknown job or wrong token, or the socket's failure.
        """
        session = cls.connect(url, timeout=timeout)
        try:
            session.send({"type": "follow", "id": job_id, "token": token})
            session.start_reader()
            with session._changed:
                session._changed.wait_for(
                    lambda: job_id in session._jobs or job_id in session._done or session.closed, timeout
                )
            if job_id in session._jobs or job_id in session._done:
                return session
            error = session.error or {}
            if error.get("code") == "bad_message":
                raise FollowUnsupported(str(error.get("message")))
            if error:
                raise RemoteError(None, str(error.get("code")), str(error.get("message")))
            raise RemoteError(None, "unreachable", "the follow socket closed before it said anything")
        except BaseException:
            session.close()
            raise

    # -------------------------------------------------------------------------------------------- reading

    def _read(self) -> None:
        while True:
            try:
                text = self.socket.recv()
            except ConnectionClosed as closed:
                with self._changed:
                    self.closed = True
                    self.close_code = closed.rcvd.code if closed.rcvd is not None else None
                    self._version += 1
                    self._changed.notify_all()
                return
            try:
                message = _parse(text)
            except RemoteError:
                continue
            with self._changed:
                kind = message.get("type")
                if kind == "job" and isinstance(message.get("id"), str):
                    self._jobs[message["id"]] = message
                elif kind == "done" and isinstance(message.get("id"), str):
                    self._done[message["id"]] = message
                elif kind == "error":
                    self.error = message
                else:
                    continue  # challenge, pong: nothing the caller waits for
                self._version += 1
                self._changed.notify_all()

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until something newer than version ``seen`` arrived (or the socket closed, or timeout);
        returns the current version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self.closed, timeout)
            return self._version

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The newest ``job`` message about ``job_id`` (a ``done`` message counts as state ``done``)."""
        with self._changed:
            if job_id in self._done:
                return {**self._jobs.get(job_id, {}), "id": job_id, "state": "done", "progress": 1.0}
            return self._jobs.get(job_id)

    @property
    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        """Close the socket (its key dies with it) and stop the reader."""
        with contextlib.suppress(Exception):
            self.socket.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(text: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise RemoteError(
            None, "bad_response", "the server sent a WebSocket message that is not a JSON object"
        )
    return message


def _refusal(refused: InvalidStatus) -> RemoteError:
    response = refused.response
    code, message = f"http_{response.status_code}", f"the server refused the session ({response.status_code})"
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        error = json.loads(response.body or b"")["error"]
        code, message = str(error["code"]), str(error["message"])
    retry: float | None = None
    value = response.headers.get("Retry-After")
    if value and value.strip().isdigit():
        retry = float(value)
    return RemoteError(response.status_code, code, message, retry_after=retry)
