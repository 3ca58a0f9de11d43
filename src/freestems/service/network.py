"""Who is asking: the client address (for keys and limits), the Host check and the Origin check.

The client address is the TCP peer, never a header, unless ``trust_proxy`` says a reverse proxy in front
sets ``X-Forwarded-For``; then the *last* entry of all its lines together is used (the one the proxy
appended; earlier entries, and earlier lines, are whatever the client wrote). uvicorn's own proxy-header
rewriting is switched off (see :mod:`freestems.service.server`) so that this is the only place that
decides. Limits and keys see :func:`address_key` of it: an IPv6 client gets a whole /64 from its provider,
so its /64 is one address; an IPv4 address is itself.

A page on any site can make a browser talk to a server on the user's machine through DNS rebinding (its
own name, re-pointed at 127.0.0.1): then Origin and Host agree, and only the Host header gives it away.
So requests whose Host is not an allowed name are refused (:class:`AllowedHosts`, ``FREESTEMS_ALLOWED_HOSTS``;
by default, on a loopback address, only ``localhost``, ``127.0.0.1`` and ``[::1]``).

Browsers attach ``Origin`` to every WebSocket handshake and let any site open sockets to any server, with
the user's network position: that is cross-site WebSocket hijacking. So a handshake whose Origin is not
allowed is refused before it is accepted. Clients that are not browsers (curl, scripts) send no Origin and
cannot be hijacked; they are let through and must still solve the challenge.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import ServiceError

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def client_address(connection: HTTPConnection, trust_proxy: bool = False) -> str:
    """The address limits and keys are bound to (an IPv6 address's /64, see :func:`address_key`).

    Behind a trusted proxy: the last hop of ``X-Forwarded-For``, all its lines read as one list (a proxy
    that appends a line of its own leaves the client's line first).
    """
    if trust_proxy:
        forwarded = ",".join(connection.headers.getlist("x-forwarded-for"))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return address_key(hops[-1])
    client = connection.client
    return address_key(client.host) if client is not None else "unknown"


def address_key(address: str) -> str:
    """What per-address limits count by: an IPv4 address itself, an IPv6 address its /64 network
    (``2001:db8:1:2::/64``; an IPv4-mapped one its IPv4 address). Anything else is returned unchanged."""
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this ``Host`` header may be served. ``allowed`` holds names or IP addresses
    (IPv6 with or without brackets), ``*.example.org`` (its subdomains) or ``*`` (any); ports are ignored."""
    if "*" in allowed:
        return True
    if not host or any(char in host for char in "@/?#\\ \t"):
        return False
    parsed = _split_host(host, 0)
    if parsed is None:
        return False
    name = parsed[0]
    for pattern in allowed:
        pattern = pattern.strip().strip("[]").lower()
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class AllowedHosts:
    """ASGI middleware: refuse HTTP requests and WebSocket handshakes whose Host is not allowed, with the
    API's JSON error (400 ``invalid_host``). Like Starlette's ``TrustedHostMiddleware``, which answers in
    plain text."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        error = ServiceError(
            400,
            "invalid_host",
            f"this server does not answer to the host {host!r}; use one of: {', '.join(self.allowed)} "
            "(FREESTEMS_ALLOWED_HOSTS)",
        )
        await refuse(scope, receive, send, error)


async def refuse(
    scope: Scope, receive: Receive, send: Send, error: ServiceError, close_code: int = 1008
) -> None:
    """Answer an HTTP request, or refuse a WebSocket handshake, with ``error`` as the API's JSON (a bare
    close with ``close_code`` where the server cannot send HTTP responses to a handshake)."""
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(close_code)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket handshake from ``origin`` (to ``host``, the Host header) may be accepted.

    No Origin (not a browser): allowed. With an allow-list: the origin must be in it (or it holds ``*``).
    Without one: same origin only, i.e. the Origin's host and port equal the Host header's.
    """
    if origin is None:
        return True
    if "*" in allowed:
        return True
    normalized = _normalize(origin)
    if normalized is None:
        return False
    if allowed:
        return normalized in {_normalize(item) for item in allowed}
    if not host:
        return False
    scheme, origin_host, origin_port = normalized
    target = _split_host(host, _DEFAULT_PORTS.get(scheme, 80))
    return target is not None and target == (origin_host, origin_port)


def _normalize(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, lower-case host, port with defaults filled in)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _split_host(host: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{host.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or default_port
