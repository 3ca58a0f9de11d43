"""Run the app with uvicorn, configured the way the service needs it.

- uvicorn's proxy-header rewriting is off: it trusts ``X-Forwarded-For`` from 127.0.0.1 by default, which
  would let local clients choose their address; :mod:`freestems.service.network` decides instead
  (``FREESTEMS_TRUST_PROXY``);
- WebSocket messages are capped at 64 KiB (a challenge answer is under 1 KiB);
- graceful shutdown waits at most a few seconds for open requests (a ``POST /separate`` may wait for its
  job for minutes); running jobs are interrupted and resume after the restart.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from freestems.executors import Executor

from .app import create_app
from .settings import Settings

WS_MAX_MESSAGE = 64 * 1024
GRACEFUL_SHUTDOWN_SECONDS = 5


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of the service (tests use it too, with ``port=0``)."""
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        server_header=False,
        ws_max_size=WS_MAX_MESSAGE,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
        log_level="info",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(settings: Settings, executor: Executor | None = None, **overrides: Any) -> None:
    """Run the service until interrupted (Ctrl-C or SIGTERM)."""
    server = uvicorn.Server(uvicorn_config(create_app(settings, executor), settings, **overrides))
    server.run()
