"""Who is asking: the client address (for keys and limits) and the Origin check of the WebSocket.

The client address is the TCP peer, never a header, unless ``trust_proxy`` says a reverse proxy in front
sets ``X-Forwarded-For``; then its *last* entry is used (the one the proxy appended; earlier entries are
whatever the client claimed). uvicorn's own proxy-header rewriting is switched off (see
:mod:`freestems.service.server`) so that this is the only place that decides.

Browsers attach ``Origin`` to every WebSocket handshake and let any site open sockets to any server, with
the user's network position: that is cross-site WebSocket hijacking. So a handshake whose Origin is not
allowed is refused before it is accepted. Clients that are not browsers (curl, scripts) send no Origin and
cannot be hijacked; they are let through and must still solve the challenge.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def client_address(connection: HTTPConnection, trust_proxy: bool = False) -> str:
    """The address limits and keys are bound to."""
    if trust_proxy:
        forwarded = connection.headers.get("x-forwarded-for", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    client = connection.client
    return client.host if client is not None else "unknown"


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
