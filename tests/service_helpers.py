"""Helpers for service tests: a real uvicorn server in a thread, real clients, and the file checks.

    with running_server(settings, executor) as server:          # http://127.0.0.1:<free port>
        with open_session(server) as (ws, key):                 # WebSocket + solved challenge
            httpx.post(server.url + "/separate", headers={"X-Session-Key": key}, files=...)

The fixtures built from these (``small_model``, ``start_server``, ``songs``) live in ``conftest.py``.

Settings for tests are small (a trivial proof of work, short timers) so the suite stays fast; see
:func:`small_settings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altcha
import httpx
import uvicorn
from websockets.sync.client import ClientConnection, connect

from freestems.executors import Executor
from freestems.service import Settings, create_app
from freestems.service.parts import Service
from freestems.service.server import Server, uvicorn_config

ORIGIN = "http://127.0.0.1"  # completed with the port: same-origin by default


def small_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: a proof of work that takes microseconds, small limits, short timers."""
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        hmac_secret="test secret",
        pow_algorithm="SHA-256",
        pow_cost=1,
        pow_counter=8,
        challenge_ttl=30.0,
        session_ttl=60.0,
        max_upload_mb=4.0,
        max_duration=240.0,
        max_shifts=3,
        sessions_per_minute=1000,
        refused_uploads_per_minute=1000,
        jobs_per_ip=8,
        queue_capacity=16,
        # The small test model is priced as scnet, and a request may use every option at the longest song
        # (3 shifts x 240 s), as may a key that names no budget; tests of prices set their own.
        unmeasured_cost=1.0,
        max_request_cost=720.0,
        key_budget=720.0,
        result_ttl=600.0,
        sweep_interval=0.2,
        reattach_grace=2.0,
        upload_timeout=30.0,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    """A started server: its base URLs, settings and (for white-box checks) its running parts."""

    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def origin(self) -> str:
        return self.url

    @property
    def service(self) -> Service:
        return self.app.state.service

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the server did not stop"


@contextlib.contextmanager
def running_server(settings: Settings, executor: Executor) -> Iterator[LiveServer]:
    """Start a real uvicorn server for ``create_app(settings, executor)`` on 127.0.0.1 (a free port)."""
    with serving(create_app(settings, executor), settings) as live:
        yield live


@contextlib.contextmanager
def serving(app: Any, settings: Settings) -> Iterator[LiveServer]:
    """Serve an ASGI app with the service's uvicorn configuration on 127.0.0.1 (a free port)."""
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
    server = Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server failed to start (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start in 60 s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(f"http://127.0.0.1:{port}", settings, server, thread, app)
    try:
        yield live
    finally:
        if thread.is_alive():
            live.stop()


# ---------------------------------------------------------------------------------------------- fixtures


# ---------------------------------------------------------------------------------------------- sessions


@contextlib.contextmanager
def connect_session(
    server: LiveServer,
    *,
    origin: str | None = "same",
    source: str | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[ClientConnection]:
    """Open ``/session`` (Origin: the server's own unless given; ``source``: local address to bind)."""
    kwargs: dict[str, Any] = {"open_timeout": 10, "close_timeout": 2, "additional_headers": headers or {}}
    if origin is not None:
        kwargs["origin"] = server.origin if origin == "same" else origin
    if source is not None:
        kwargs["source_address"] = (source, 0)
    with connect(server.ws_url + "/session", **kwargs) as ws:
        yield ws


def receive(ws: ClientConnection, timeout: float = 30.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def solve(message: dict) -> str:
    """The base64 payload answering a ``challenge`` message."""
    assert message["type"] == "challenge", message
    challenge = altcha.Challenge.from_dict(message["challenge"])
    solution = altcha.solve_challenge(challenge, timeout=30)
    assert solution is not None, "challenge not solved in time"
    return altcha.Payload(challenge, solution).to_base64()


def send(ws: ClientConnection, message: dict) -> None:
    ws.send(json.dumps(message))


@contextlib.contextmanager
def open_session(server: LiveServer, **kwargs: Any) -> Iterator[tuple[ClientConnection, str]]:
    """A WebSocket with a solved challenge, and the session key it earned (closed on exit)."""
    with connect_session(server, **kwargs) as ws:
        send(ws, {"type": "solution", "payload": solve(receive(ws))})
        reply = receive(ws)
        assert reply["type"] == "session", reply
        assert reply["expires_in"] == round(server.settings.session_ttl)
        yield ws, reply["key"]


def wait_for_message(ws: ClientConnection, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
    """Read messages until one satisfies ``predicate``; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching WebSocket message in time")
        message = receive(ws, timeout=left)
        if predicate(message):
            return message


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- requests


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (any of 127.0.0.0/8 works on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **kwargs)


def form(path: Path, **fields: Any) -> dict[str, Any]:
    """httpx keyword arguments for the separation form with ``path`` as ``audio_file``."""
    return {
        "files": {"audio_file": (path.name, path.read_bytes(), "application/octet-stream")},
        "data": {name: str(value) for name, value in fields.items()},
    }


def post_job(server: LiveServer, path: Path, key: str | None, client: httpx.Client | None = None, **fields):
    """``POST /jobs`` with the form; returns the response."""
    headers = {"X-Session-Key": key} if key else {}
    with contextlib.ExitStack() as stack:
        http = client or stack.enter_context(httpx.Client(timeout=60))
        return http.post(server.url + "/jobs", headers=headers, **form(path, **fields))


def job_status(server: LiveServer, job: dict) -> dict:
    response = httpx.get(f"{server.url}/jobs/{job['id']}", params={"token": job["token"]}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_state(server: LiveServer, job: dict, *states: str, timeout: float = 60.0) -> dict:
    return wait_until(lambda: (s := job_status(server, job))["state"] in states and s, timeout=timeout)


def stored_job(server: LiveServer, job: dict) -> Any:
    """The job as the server's store has it. Unlike ``GET /jobs/{id}`` this is no poll by its owner, which
    would keep an unfollowed job alive (see ``reattach_grace``)."""
    return server.service.store.get(job["id"])


def wait_unfollowed_job_ends(server: LiveServer, job: dict, *states: str, timeout: float = 60.0) -> Any:
    """Wait, without polling as its owner, until the job is in one of ``states``; returns the stored job."""
    return wait_until(lambda: (s := stored_job(server, job)) is not None and s.state in states and s, timeout)


def error_of(response: httpx.Response) -> dict:
    """The ``error`` object of a JSON error response."""
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ---------------------------------------------------------------------------------------------- files


def leftover_files(data_dir: Path) -> list[str]:
    """Temporary files, uploads and work folders still in the data folder (there should be none)."""
    found = []
    for folder, dirs, files in os.walk(data_dir):  # unlike rglob, os.walk skips folders deleted meanwhile
        here = Path(folder)
        found += [str((here / name).relative_to(data_dir)) for name in dirs + files if name.endswith(".part")]
        if here.parent == data_dir and here.name in ("uploads", "work"):
            found += [str((here / name).relative_to(data_dir)) for name in dirs + files]
    return sorted(set(found))
