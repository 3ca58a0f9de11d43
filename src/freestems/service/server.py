"""Run the app with uvicorn, configured the way the service needs it.

- uvicorn's proxy-header rewriting is off: it trusts ``X-Forwarded-For`` from 127.0.0.1 by default, which
  would let local clients choose their address; :mod:`freestems.service.network` decides instead
  (``FREESTEMS_TRUST_PROXY``);
- connections are guarded (:mod:`freestems.service.connections`): a deadline for request heads, caps on
  open connections in total and per address, JSON answers to malformed requests, and a quiet log when
  the process runs out of file descriptors; :func:`serve` first raises the open file limit to its hard
  limit;
- WebSocket messages are capped at 64 KiB (a challenge answer is under 1 KiB);
- graceful shutdown waits at most a few seconds for open requests (a ``POST /separate`` may wait for its
  job for minutes); running jobs are interrupted and resume after the restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from freestems.executors import Executor

from .app import create_app
from .connections import (
    ConnectionGuard,
    GuardedH11Protocol,
    QuietInvalidRequests,
    default_max_connections,
    quiet_accept_errors,
    raise_open_file_limit,
)
from .settings import Settings

log = logging.getLogger(__name__)

WS_MAX_MESSAGE = 64 * 1024
GRACEFUL_SHUTDOWN_SECONDS = 5


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of the service (tests use it too, with ``port=0``)."""
    guard = ConnectionGuard(
        max_connections=settings.max_connections or default_max_connections(),
        per_address=0 if settings.trust_proxy else settings.max_connections_per_address,
        header_timeout=settings.header_timeout,
    )
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        http=functools.partial(GuardedH11Protocol, guard=guard),
        timeout_keep_alive=settings.keep_alive_timeout,
        proxy_headers=False,
        server_header=False,
        ws_max_size=WS_MAX_MESSAGE,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
        log_level="info",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


class Server(uvicorn.Server):
    """uvicorn's server with a quiet log under floods: failed ``accept()`` calls (out of descriptors) and
    malformed requests are logged at most once every few seconds."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        quiet_accept_errors(asyncio.get_running_loop())
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(item, QuietInvalidRequests) for item in uvicorn_log.filters):
            uvicorn_log.addFilter(QuietInvalidRequests())
        await super().startup(sockets=sockets)


def serve(settings: Settings, executor: Executor | None = None, **overrides: Any) -> None:
    """Run the service until interrupted (Ctrl-C or SIGTERM)."""
    limit = raise_open_file_limit()
    config = uvicorn_config(create_app(settings, executor), settings, **overrides)
    guard: ConnectionGuard = config.http.keywords["guard"]  # type: ignore[union-attr]
    log.info("open file limit %d; at most %d connections at once", limit, guard.max_connections)
    if guard.max_connections > limit - 32:
        log.warning(
            "FREESTEMS_MAX_CONNECTIONS=%d leaves under 32 of the %d file descriptors for files: "
            "the server may run out of descriptors",
            guard.max_connections,
            limit,
        )
    Server(config).run()
