"""The server's connections: header timeout, connection caps, JSON protocol errors, a quiet accept loop.

uvicorn on its own keeps a connection that never sends a request head open forever, has no cap on
connections, answers h11's protocol errors in plain text, and (through asyncio) logs every failed
``accept()`` when the process is out of file descriptors - hundreds of thousands of tracebacks a minute.
So the service runs uvicorn with :class:`GuardedH11Protocol` (passed as ``http=`` to ``uvicorn.Config`` by
:mod:`freestems.service.server`) and one :class:`ConnectionGuard` shared by all its connections:

- a connection must send a complete request head within ``header_timeout`` seconds of opening, and of
  each response on a kept-alive connection (uvicorn closes a kept-alive connection that sends nothing for
  ``timeout_keep_alive`` seconds; this deadline also bounds one that trickles bytes). A connection that
  sent part of a head is told ``408`` in JSON; one that sent nothing is just closed;
- at most ``max_connections`` connections are open at once, and ``per_address`` per client address (an
  IPv6 /64 counts as one address, see :func:`freestems.service.network.address_key`). A connection over
  a cap is answered at once with a short JSON ``503`` (global) or ``429`` (its address) and closed,
  before anything is read. WebSocket connections count too, until they close (they have no header
  deadline once upgraded; the session protocol has its own);
- h11's protocol errors (bad ``Content-Length``, bad chunk size, a garbage request line) are answered
  with the JSON error shape of the API;
- :func:`quiet_accept_errors` logs asyncio's "socket.accept() out of system resource" at most once every
  few seconds, with a count of what it left out.

The address of a connection is its TCP peer: behind a reverse proxy every connection comes from the
proxy, so the server leaves the per-address cap off when ``FREESTEMS_TRUST_PROXY`` is on (the proxy
limits its clients' connections).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .network import address_key

log = logging.getLogger(__name__)

ACCEPT_ERROR = "socket.accept() out of system resource"
DESCRIPTOR_RESERVE = 64
"""File descriptors left for everything but connections (SQLite, uploads, results, decoders), at least."""
DEFAULT_MAX_CONNECTIONS = 4096
"""The derived cap never exceeds this, however high the descriptor limit: each connection costs memory."""
QUIET_SECONDS = 10.0


class Throttle:
    """Says yes at most once every ``interval`` seconds, and how many times it said no in between."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def ready(self) -> int | None:
        """None: stay quiet. Else the number of events left out since the last yes."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class ConnectionGuard:
    """Counts open connections, in total and per address, and refuses those over a cap.

    ``per_address`` 0 leaves the per-address cap off. Keys are transports, so a connection is counted
    once from accept to close, whichever protocol object (HTTP, then WebSocket) serves it meanwhile.
    """

    def __init__(self, max_connections: int, per_address: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.header_timeout = header_timeout
        self._open: dict[asyncio.BaseTransport, str] = {}
        self._per_address: Counter[str] = Counter()
        self._refusals = Throttle(QUIET_SECONDS)

    def admit(self, transport: asyncio.BaseTransport, address: str) -> bytes | None:
        """Count the connection in; or return the response that refuses it (the caller closes it)."""
        if len(self._open) >= self.max_connections:
            self._log_refusal(f"{len(self._open)} connections are open (FREESTEMS_MAX_CONNECTIONS)")
            return raw_response(
                503,
                "too_many_connections",
                "the server has too many open connections; try again in a few seconds",
                retry_after=5,
            )
        if self.per_address and self._per_address[address] >= self.per_address:
            self._log_refusal(
                f"{address} has {self.per_address} connections open (FREESTEMS_MAX_CONNECTIONS_PER_ADDRESS)"
            )
            return raw_response(
                429,
                "too_many_connections",
                f"too many open connections from your address (at most {self.per_address}); "
                "close some and try again",
                retry_after=5,
            )
        self._open[transport] = address
        self._per_address[address] += 1
        return None

    def release(self, transport: asyncio.BaseTransport) -> None:
        """The connection closed (called once per admitted transport; more calls do nothing)."""
        address = self._open.pop(transport, None)
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def open_connections(self, address: str | None = None) -> int:
        return len(self._open) if address is None else self._per_address.get(address, 0)

    def _log_refusal(self, why: str) -> None:
        suppressed = self._refusals.ready()
        if suppressed is not None:
            more = f" ({suppressed} more refused in the last {QUIET_SECONDS:g} s)" if suppressed else ""
            log.warning("refusing connections: %s%s", why, more)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guard's caps, a deadline for request heads and JSON 400s.

    Built by uvicorn through ``functools.partial(GuardedH11Protocol, guard=...)``.
    """

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        refusal = self.guard.admit(transport, address_key(self.client[0]) if self.client else "unknown")
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self.guard.release(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_protocol() is self:  # not upgraded to a WebSocket meanwhile
            self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()  # a kept-alive connection now waits for its next head

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """Hand the connection to the WebSocket protocol, which releases it from the guard when it closes."""
        self._stop_head_timer()
        super().handle_websocket_upgrade(event)
        upgraded = self.transport.get_protocol()
        transport, guard = self.transport, self.guard
        lost = upgraded.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            guard.release(transport)
            lost(exc)

        upgraded.connection_lost = connection_lost  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        """h11 found the request malformed: answer in the API's error shape and close."""
        body = _error_body(
            "bad_request",
            "the request is not valid HTTP/1.1 (its request line, headers or body framing); "
            "it was not processed",
        )
        try:
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
            output += self.conn.send(h11.Data(data=body)) or b""
            output += self.conn.send(h11.EndOfMessage()) or b""
            self.transport.write(output or b"")
        except h11.LocalProtocolError:  # a response had started already: all that is left is to close
            pass
        self.transport.close()

    # -- the request head deadline

    def _watch_head(self) -> None:
        """Arm the deadline while a request head is awaited; drop it once one has arrived."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.header_timeout, self._head_timed_out)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        received, _ = self.conn.trailing_data
        if received:  # part of a head: say why (a silent idle connection is just closed)
            seconds = f"{self.guard.header_timeout:g}"
            self.transport.write(
                raw_response(408, "header_timeout", f"the request head did not arrive within {seconds} s")
            )
        self.transport.close()


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def raw_response(status: int, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete ``Connection: close`` response with a JSON error, for paths without a request cycle."""
    body = _error_body(code, message)
    reason = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}.get(status, "")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------------------------- process


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the open file limit from %d to %d: %s", soft, target, error)
        return soft
    return target


def default_max_connections(open_file_limit: int | None = None) -> int:
    """The connection cap for a descriptor limit: the limit less a reserve (a quarter of it, at least
    :data:`DESCRIPTOR_RESERVE`), at most :data:`DEFAULT_MAX_CONNECTIONS`, at least 8."""
    if open_file_limit is None:
        open_file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_file_limit == resource.RLIM_INFINITY:
            open_file_limit = 1 << 20
    reserve = max(DESCRIPTOR_RESERVE, open_file_limit // 4)
    return max(8, min(DEFAULT_MAX_CONNECTIONS, open_file_limit - reserve))


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, interval: float = QUIET_SECONDS) -> None:
    """Log asyncio's failed ``accept()`` (out of descriptors) at most once per ``interval`` seconds.

    asyncio keeps calling ``accept()`` after EMFILE (up to the listen backlog per loop turn) and reports
    each failure with a traceback; other exceptions go to the handler that was there before.
    """
    previous = loop.get_exception_handler()
    throttle = Throttle(interval)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_ERROR:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        suppressed = throttle.ready()
        if suppressed is not None:
            more = f"; {suppressed} more in the last {interval:g} s not logged" if suppressed else ""
            log.error(
                "cannot accept connections: %s%s. Raise the open file limit (ulimit -n, LimitNOFILE=) "
                "or lower FREESTEMS_MAX_CONNECTIONS",
                context.get("exception") or "out of resources",
                more,
            )

    loop.set_exception_handler(handler)


class QuietInvalidRequests(logging.Filter):
    """Lets uvicorn's "Invalid HTTP request received." through at most once per interval: a client
    sending garbage in a loop must not fill the log (each one is answered with a JSON 400)."""

    MESSAGE = "Invalid HTTP request received."

    def __init__(self, interval: float = QUIET_SECONDS) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.MESSAGE:
            return True
        return self._throttle.ready() is not None
