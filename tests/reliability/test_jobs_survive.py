"""Jobs survive what real clients and servers do: sockets that stop reading, reloads, drops, crashes.

A job is followed while its session socket is open, a socket follows it (``follow``), a ``POST /separate``
waits for it, or its owner polled it within ``reattach_grace``; an unfollowed job is cancelled after the
grace. Servers here run in a thread (``start_server``) or, to be killed, as a ``freestems serve``
subprocess on the same data folder. Every loop is bounded in count (``scaled``) and time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from model_helpers import make_small_checkpoint
from service_helpers import (
    LiveServer,
    connect_session,
    error_of,
    form,
    job_status,
    leftover_files,
    open_session,
    post_job,
    receive,
    send,
    small_settings,
    solve,
    stored_job,
    wait_for_message,
    wait_for_state,
    wait_unfollowed_job_ends,
    wait_until,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from freestems.executors import LocalExecutor
from freestems.service import create_app
from freestems.service.jobs import Paths
from freestems.service.server import uvicorn_config
from freestems.service.sessions import Mailbox

from .bounds import scaled

pytest_plugins = ["service_helpers"]


def running(message: dict) -> bool:
    return message["type"] == "job" and message["state"] == "running" and message["progress"] > 0


@contextlib.contextmanager
def server_with(settings, small_model, **uvicorn_overrides) -> Iterator[LiveServer]:
    """Like ``running_server``, with uvicorn settings changed (short WebSocket keepalive timeouts)."""
    import uvicorn

    executor = LocalExecutor(lambda: small_model, Paths(settings.data_dir).work, workers=settings.workers)
    app = create_app(settings, executor)
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning", **uvicorn_overrides)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=60)
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(f"http://127.0.0.1:{port}", settings, server, thread, app)
    try:
        yield live
    finally:
        live.stop()


# ---------------------------------------------------------------------------------------------- coalescing


def test_a_mailbox_keeps_only_the_newest_unsent_job_message():
    mailbox = Mailbox()
    mailbox.put_nowait({"type": "challenge"})
    for step in range(1000):
        mailbox.put_nowait({"type": "job", "id": "a", "progress": step / 1000})
        mailbox.put_nowait({"type": "job", "id": "b", "progress": step / 1000})
    mailbox.put_nowait({"type": "done", "id": "a"})
    assert mailbox.qsize() == 4
    items = [mailbox._items.popleft() for _ in range(4)]
    assert [(m["type"], m.get("id"), m.get("progress")) for m in items] == [
        ("challenge", None, None),
        ("job", "a", 0.999),
        ("job", "b", 0.999),
        ("done", "a", None),
    ]


# ---------------------------------------------------------------------------------------------- issue 8.1


@pytest.mark.parametrize("collect", ["separate", "poll"])
def test_a_client_that_never_reads_its_socket_still_gets_its_song(tmp_path, small_model, songs, collect):
    """The README flow: a key from a websockets client that then never reads (its queue fills, keepalive
    pings go unanswered, the server closes the socket) while POST /separate waits, or POST /jobs + polls.
    The waiting request or the polls follow the job: it finishes."""
    settings = small_settings(tmp_path / "data", reattach_grace=1.0)
    with server_with(settings, small_model, ws_ping_interval=0.2, ws_ping_timeout=0.2) as server:
        with connect(server.ws_url + "/session", origin=server.origin, max_queue=2, open_timeout=10) as ws:
            send(ws, {"type": "solution", "payload": solve(receive(ws))})
            key = receive(ws)["key"]
            headers = {"X-Session-Key": key}
            if collect == "separate":
                response = httpx.post(
                    server.url + "/separate", headers=headers, timeout=300, **form(songs["long"])
                )
                assert response.status_code == 200, response.text
                job_id = response.headers["X-Job-Id"]
            else:
                job = post_job(server, songs["long"], key).json()
                status = wait_until(
                    lambda: (s := job_status(server, job))["state"] not in ("queued", "running") and s,
                    timeout=300,
                    interval=0.3,
                )
                assert status["state"] == "done", status
                response = httpx.get(server.url + status["result"], timeout=60)
                assert response.status_code == 200
                job_id = job["id"]
            with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
                assert len(bundle.namelist()) == 4
            # The scenario happened: the server gave up on the unread socket long before the job ended.
            assert server.service.sessions.connections == 0
            with pytest.raises(ConnectionClosed):
                for _ in range(10_000):
                    ws.recv(timeout=5)
        assert stored_job(server, {"id": job_id}).state == "done"
