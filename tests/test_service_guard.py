"""The limits that must hold where uvicorn's layer does not run (Modal's web tier), tested against the app
itself with raw ASGI calls (issue 20): connection caps per address and body deadlines
(:mod:`freestems.service.guard`); and ``POST /separate`` answering within a request's time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from service_helpers import small_settings, wait_until

from freestems.executors import LocalExecutor
from freestems.service import create_app

BOUNDARY = "x-guard-test"


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """The app with its lifespan run, called as an ASGI server would call it: no uvicorn anywhere."""
    async with app.router.lifespan_context(app):
        yield app


def http_scope(method: str, path: str, client: str = "10.0.0.1", body: bool = False) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1")]
    if body:
        headers.append((b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": headers, "client": (client, 40000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


def websocket_scope(client: str) -> dict[str, Any]:
    return {
        **http_scope("GET", "/session", client),
        "type": "websocket", "scheme": "ws", "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }  # fmt: skip


async def call(app: Any, scope: dict[str, Any], receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an HTTP answer (or of a refused WebSocket handshake)."""
    start = next(m for m in sent if m["type"] in ("http.response.start", "websocket.http.response.start"))
    body = b"".join(m.get("body", b"") for m in sent if m["type"].endswith("response.body"))
    return start["status"], json.loads(body)


def trickle(first: bytes) -> Any:
    """A request body that sends ``first`` and then stalls (a client that stopped sending)."""
    chunks = [{"type": "http.request", "body": first, "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive


@pytest.fixture
def guarded_app(tmp_path, small_model):
    def make(**overrides: Any) -> Any:
        settings = small_settings(tmp_path / "data", auth="none", **overrides)
        return create_app(settings, LocalExecutor(lambda: small_model, tmp_path / "work", warm_up=False))

    return make


def test_a_stalled_request_body_is_ended_with_408_by_the_app_itself(guarded_app):
    app = guarded_app(header_timeout=0.5)
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="audio_file"; filename="a.mp3"\r\n\r\n'

    async def scenario() -> tuple[int, dict[str, Any], float]:
        async with running(app):
            loop = asyncio.get_running_loop()
            began = loop.time()
            sent = await asyncio.wait_for(
                call(app, http_scope("POST", "/jobs", body=True), trickle(head.encode())), 10
            )
            return (*answer(sent), loop.time() - began)

    status, body, seconds = asyncio.run(scenario())
    assert status == 408 and body["error"]["code"] == "upload_timeout", body
    assert "stopped for more than 0.5 s" in body["error"]["message"]
    assert seconds < 5


def test_an_address_holds_at_most_its_share_of_requests_and_sockets_in_the_app(guarded_app):
    app = guarded_app(max_connections_per_address=2, sockets_per_ip=100, header_timeout=30.0)
    head = f"--{BOUNDARY}\r\n".encode()

    async def scenario() -> tuple[tuple[int, dict], tuple[int, dict], tuple[int, dict], int]:
        async with running(app):
            held = [
                asyncio.ensure_future(call(app, http_scope("POST", "/jobs", body=True), trickle(head)))
                for _ in range(2)
            ]
            await asyncio.sleep(0.2)  # both are in the app, their bodies stalled
            refused_http = answer(await call(app, http_scope("GET", "/health"), trickle(b"")))
            connect = [{"type": "websocket.connect"}]

            async def handshake() -> dict[str, Any]:
                if connect:
                    return connect.pop(0)
                await asyncio.sleep(3600)
                return {"type": "websocket.disconnect"}

            refused_socket = answer(await call(app, websocket_scope("10.0.0.1"), handshake))
            other = answer(await call(app, http_scope("GET", "/health", client="10.0.0.2"), trickle(b"")))
            for request in held:
                request.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            after = answer(await call(app, http_scope("GET", "/health"), trickle(b"")))
            return refused_http, refused_socket, other, after[0]

    refused_http, refused_socket, other, after = asyncio.run(scenario())
    assert refused_http[0] == 429 and refused_http[1]["error"]["code"] == "too_many_connections"
    assert refused_socket[0] == 429 and refused_socket[1]["error"]["code"] == "too_many_connections"
    assert other[0] == 200  # another address is not affected
    assert after == 200  # the slots are free once the requests end


def test_post_separate_answers_202_with_its_job_once_its_wait_is_up(start_server, songs):
    server = start_server(auth="none", separate_wait=1.0)
    with songs["long"].open("rb") as audio:
        response = httpx.post(
            server.url + "/separate",
            files={"audio_file": ("long.mp3", audio, "audio/mpeg")},
            data={"shifts": "3"},
            timeout=60,
        )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == job["status_url"] and job["state"] in ("queued", "running")
    done = wait_until(
        lambda: (view := httpx.get(server.url + job["status_url"]).json())["state"] == "done" and view,
        timeout=240,
    )
    assert done["id"] == job["id"]
    result = httpx.get(server.url + job["result_url"], timeout=60)
    assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
