"""The app's own guard: connection caps and body deadlines as an ASGI middleware, wherever the app runs.

:mod:`freestems.service.connections` guards the connections uvicorn accepts (``freestems serve``): a
deadline for request heads, caps on open connections. On Modal the app runs behind Modal's own server and
proxy, which read the request head and accept the connections, and none of that layer runs. So the app
guards itself too (:class:`AppGuard`, installed by :func:`freestems.service.create_app`), in terms it can
see, and the limits hold on Modal as they do under uvicorn:

- at most ``max_connections`` requests and WebSockets open at once in this process (503
  ``too_many_connections``; when it is set: its default, 0, leaves the total to uvicorn's guard and, on
  Modal, to the web function's ``@modal.concurrent`` inputs), and ``max_connections_per_address`` per
  client address (429, an IPv6 /64
  counting as one address; off with ``trust_proxy``, as uvicorn's). A refused WebSocket handshake gets the
  same JSON answer as an HTTP denial. (The session sockets of an address also have their own cap,
  ``sockets_per_ip``, counted across every web container: :mod:`.websocket`.)
- a request body must keep coming: a silence of more than ``header_timeout`` seconds (before its first
  byte or between two chunks) or a body that takes longer than ``upload_timeout`` in all ends the request
  with 408 ``upload_timeout``, the code a slow upload gets (a client trickling a body cannot hold a slot;
  the whole body's deadline is a second past the upload's own, so an upload says which; the head is read,
  and bounded, by uvicorn or Modal's proxy before the app sees it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ServiceError, request_timeout
from .network import client_address, refuse

log = logging.getLogger(__name__)

RETRY_SECONDS = 5


BODY_MARGIN = 1.0
"""Seconds the whole body's deadline exceeds ``upload_timeout``: an upload's own deadline comes first."""


class AppGuard:
    """ASGI middleware: caps on open requests and WebSockets, in all and per address, and deadlines on
    request bodies (see the module). ``max_open`` 0 or ``per_address`` 0: that cap is off."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_open: int,
        per_address: int,
        silence: float,
        body_seconds: float,
        trust_proxy: bool = False,
    ) -> None:
        self.app = app
        self.max_open = max_open
        self.per_address = 0 if trust_proxy else per_address
        self.silence = silence
        self.body_seconds = body_seconds
        self.trust_proxy = trust_proxy
        self._open = 0
        self._per_address: Counter[str] = Counter()

    def open_now(self, address: str | None = None) -> int:
        """Requests and WebSockets open now (of ``address``, or in all)."""
        return self._open if address is None else self._per_address.get(address, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = client_address(HTTPConnection(scope), self.trust_proxy)
        refusal = self._admit(address)
        if refusal is not None:
            await refuse(scope, receive, send, refusal, close_code=1013)
            return
        try:
            if scope["type"] == "http":
                await self.app(scope, self._deadlines(receive), send)
            else:
                await self.app(scope, receive, send)
        finally:
            self._open -= 1
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def _admit(self, address: str) -> ServiceError | None:
        """Count the request in, or the error that refuses it."""
        if self.max_open and self._open >= self.max_open:
            log.warning("refusing a request: %d requests and sockets are open", self._open)
            return ServiceError(
                503,
                "too_many_connections",
                "the server has too many open connections; try again in a few seconds",
                retry_after=RETRY_SECONDS,
            )
        if self.per_address and self._per_address[address] >= self.per_address:
            return ServiceError(
                429,
                "too_many_connections",
                f"too many open connections from your address (at most {self.per_address}); close some "
                "and try again",
                retry_after=RETRY_SECONDS,
            )
        self._open += 1
        self._per_address[address] += 1
        return None

    def _deadlines(self, receive: Receive) -> Receive:
        """``receive`` with the body's deadlines: a silence, and the whole body (until its last chunk)."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.body_seconds + BODY_MARGIN
        done = False

        async def guarded() -> Message:
            nonlocal done
            if done:  # after the body only a disconnect can come: no deadline
                return await receive()
            wait = min(self.silence, ends - loop.time())
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    message = await receive()
            except TimeoutError:
                if loop.time() >= ends:
                    raise request_timeout(
                        f"the request body took longer than {self.body_seconds:g} s"
                    ) from None
                raise request_timeout(f"the request body stopped for more than {self.silence:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return guarded
