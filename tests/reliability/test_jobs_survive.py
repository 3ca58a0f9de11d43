"""Jobs survive what real clients and servers do: sockets that stop reading, reloads, drops, crashes.

A job is followed while its session socket is open, a socket follows it (``follow``), a ``POST /separate``
waits for it, or its owner polled it within ``reattach_grace``; an unfollowed job is cancelled after the
grace. Servers here run in a thread (``start_server``) or, to be killed, as a ``freestems serve``
subprocess on the same data folder. Every loop is bounded in count (``scaled``) and time.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
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
from freestems.service.paths import Paths
from freestems.service.server import uvicorn_config
from freestems.service.sessions import Mailbox

from .bounds import scaled
from .disk import unreachable_files
from .serve_process import GRACEFUL, ServeProcess


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
            # The scenario happened: the server gave up on the unread socket (it is closed, not just idle).
            with pytest.raises(ConnectionClosed):
                for _ in range(10_000):
                    ws.recv(timeout=5)
        assert stored_job(server, {"id": job_id}).state == "done"


# ---------------------------------------------------------------------------------------------- re-attaching


def test_a_job_whose_socket_closed_is_followed_again_within_the_grace(start_server, songs):
    server = start_server(reattach_grace=3.0)
    with open_session(server) as (ws, key):
        job = post_job(server, songs["long"], key).json()
        wait_for_message(ws, running)
    for _ in range(scaled(1, 3)):  # a reload, then maybe another: each new socket follows the job again
        with connect_session(server) as ws:
            assert receive(ws)["type"] == "challenge"
            send(ws, {"type": "follow", "id": job["id"], "token": job["token"]})
            current = wait_for_message(ws, lambda m: m["type"] == "job")
            assert current["id"] == job["id"] and current["state"] in ("queued", "running", "done")
            if current["state"] == "done":
                break
            time.sleep(0.5)
    with connect_session(server) as ws:
        send(ws, {"type": "follow", "id": job["id"], "token": job["token"]})
        done = wait_for_message(ws, lambda m: m["type"] == "done", timeout=120)
    assert done["result"] == f"/jobs/{job['id']}/result?token={job['token']}"
    assert httpx.get(server.url + done["result"]).status_code == 200


def test_a_job_nobody_follows_is_cancelled_after_the_grace(start_server, songs):
    server = start_server(reattach_grace=1.0)
    with open_session(server) as (ws, key):
        job = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
    cancelled = wait_unfollowed_job_ends(server, job, "cancelled", "done", "failed")
    assert (cancelled.state, cancelled.error_code) == ("cancelled", "cancelled")
    assert "nobody followed this job for 1 s" in cancelled.error
    wait_until(lambda: server.service.executor.busy == 0, timeout=30)
    # Its owner learns why.
    assert job_status(server, job)["error"]["message"] == cancelled.error


def test_a_follow_with_a_wrong_token_is_refused(start_server, songs):
    server = start_server(auth="none")
    job = post_job(server, songs["wav"], None).json()
    for target in ({"id": job["id"], "token": "not the token"}, {"id": "0" * 16, "token": job["token"]}):
        with connect_session(server) as ws:
            receive(ws)
            send(ws, {"type": "follow", **target})
            error = wait_for_message(ws, lambda m: m["type"] == "error")
            assert error["code"] == "not_found"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1008
    wait_for_state(server, job, "done")


# ---------------------------------------------------------------------------------------------- transfers


def partial_upload(port: int, path: Path, fraction: float = 0.5) -> socket.socket:
    """A POST /jobs whose body stops part-way (the socket stays open until the caller closes it)."""
    body = path.read_bytes()
    boundary = "freestemsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio_file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + len(body) + len(tail)
    request = (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(request + head + body[: int(len(body) * fraction)])
    return connection


def read_until_closed(connection: socket.socket) -> str:
    """Everything the server sent on ``connection`` until it closed it (the server has stopped)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data.decode("latin-1")


def part_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "uploads").iterdir() if p.name.endswith(".part")]


def test_a_client_that_drops_mid_upload_leaves_nothing(start_server, songs):
    server = start_server(auth="none")
    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(scaled(2, 10)):
        connection = partial_upload(port, songs["long"])
        wait_until(lambda: part_files(server.data_dir), timeout=20)
        connection.close()
        wait_until(lambda: not part_files(server.data_dir), timeout=20)
    assert server.service.store.jobs() == [] and leftover_files(server.data_dir) == []


def test_a_dropped_download_resumes_with_range(start_server, songs):
    server = start_server(auth="none")
    job = post_job(server, songs["medium"], None).json()
    status = wait_for_state(server, job, "done", "failed")
    whole = httpx.get(server.url + status["result"]).content
    assert len(whole) > 1000
    for cut in sorted({len(whole) // 3, len(whole) - 1, scaled(1, 7) * len(whole) // 8}):
        received = b""
        with httpx.stream("GET", server.url + status["result"]) as response:
            for chunk in response.iter_bytes(chunk_size=256):
                received += chunk
                if len(received) >= cut:
                    break  # the connection drops here
        received = received[:cut]
        rest = httpx.get(server.url + status["result"], headers={"Range": f"bytes={len(received)}-"})
        assert rest.status_code == 206
        assert rest.headers["Content-Range"] == f"bytes {cut}-{len(whole) - 1}/{len(whole)}"
        assert received + rest.content == whole


# ---------------------------------------------------------------------------------------------- crashes


@pytest.fixture
def serve_process(tmp_path) -> Iterator[ServeProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = ServeProcess(data_dir, make_small_checkpoint(tmp_path / "small.pt"), port, grace=4.0)
    yield process
    if process.process is not None and process.process.poll() is None:
        process.stop(signal.SIGKILL)


def poll_until_ended(url: str, job: dict, timeout: float = 180.0) -> dict:
    def ended():
        response = httpx.get(f"{url}/jobs/{job['id']}", params={"token": job["token"]}, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["state"] in ("done", "failed", "cancelled") else None

    return wait_until(ended, timeout=timeout, interval=0.3)


def stored(data_dir: Path, job_id: str):
    from freestems.service.store import JobStore

    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        return store.get(job_id)
    finally:
        store.close()


def test_sigkill_mid_job_and_mid_upload_then_restart(serve_process, songs):
    server = serve_process.start()
    owned = post_job(server, songs["long"], None, shifts=2).json()  # polled after the restart
    forgotten = post_job(server, songs["wav"], None, two_stems="vocals").json()  # never polled again
    wait_until(lambda: httpx.get(server.url + owned["status_url"]).json()["progress"] > 0, timeout=120)
    upload = partial_upload(server.port, songs["long"])
    wait_until(lambda: part_files(server.data_dir), timeout=20)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    upload.close()

    server.start()
    assert part_files(server.data_dir) == []
    status = poll_until_ended(server.url, owned)
    assert status["state"] == "done", status
    result = httpx.get(server.url + status["result"], timeout=60)
    with zipfile.ZipFile(io.BytesIO(result.content)) as bundle:
        assert len(bundle.namelist()) == 4
    wait_until(lambda: stored(server.data_dir, forgotten["id"]).state != "queued", timeout=60)
    assert server.stop() in GRACEFUL
    left = stored(server.data_dir, forgotten["id"])
    assert (left.state, left.error_code) == ("cancelled", "cancelled"), left
    assert leftover_files(server.data_dir) == []
    assert unreachable_files(server.data_dir, {owned["id"]}) == []  # the cancelled one kept no song


def test_sigterm_mid_separate_answers_503_and_resumes_only_collectable_jobs(serve_process, songs):
    serve_process.grace = 60.0  # nobody polls during the shutdown: this test is not about the grace
    server = serve_process.start()
    owned = post_job(server, songs["long"], None, shifts=3).json()  # outlasts uvicorn's 5 s of grace
    wait_until(lambda: httpx.get(server.url + owned["status_url"]).json()["progress"] > 0, timeout=120)
    answers: list[httpx.Response] = []
    waiting = threading.Thread(  # queued behind the POST /jobs job
        target=lambda: answers.append(httpx.post(server.url + "/separate", timeout=120, **form(songs["wav"])))
    )
    waiting.start()
    uploads = server.data_dir / "uploads"
    wait_until(lambda: len([p for p in uploads.iterdir() if not p.name.endswith(".part")]) == 2, timeout=60)
    upload = partial_upload(server.port, songs["long"])
    wait_until(lambda: part_files(server.data_dir), timeout=20)

    assert server.stop(signal.SIGTERM) in GRACEFUL
    waiting.join(timeout=60)
    unfinished = read_until_closed(upload)  # the half-sent upload is answered, not dropped
    upload.close()
    assert unfinished.startswith("HTTP/1.1 503") and '"restarting"' in unfinished, unfinished
    (answer,) = answers
    assert answer.status_code == 503, answer.text
    assert error_of(answer)["code"] == "restarting" and int(answer.headers["Retry-After"]) > 0
    interrupted = stored(server.data_dir, owned["id"])
    assert interrupted.state == "queued", interrupted  # it runs again after the restart
    assert [p.stem for p in uploads.iterdir()] == [owned["id"]]  # the POST /separate upload is gone
    assert unreachable_files(server.data_dir, {owned["id"]}) == []  # and its song

    server.start()
    status = poll_until_ended(server.url, owned, timeout=300)
    assert status["state"] == "done", status
    assert httpx.get(server.url + status["result"], timeout=60).status_code == 200
    assert server.stop() in GRACEFUL
    assert leftover_files(server.data_dir) == []
    assert unreachable_files(server.data_dir, {owned["id"]}) == []
    from freestems.service.store import JobStore

    store = JobStore(server.data_dir / "jobs.sqlite3")
    try:
        others = [job for job in store.jobs() if job.id != owned["id"]]
    finally:
        store.close()
    assert [(job.state, job.error_code) for job in others] == [("cancelled", "restarting")]
