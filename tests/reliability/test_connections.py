"""Hostile and idle connections: the server stays up, answers a normal client, and keeps its log short.

Each attack runs against a real server on 127.0.0.1 with raw sockets (a client library would finish its
requests); attackers come from other loopback addresses (127.0.0.2...) so that a normal client on
127.0.0.1 is a different address. Counts come from :func:`bounds.scaled`; every wait has a deadline.
The last tests run ``freestems serve`` in a process with 128 file descriptors and flood it (the second
one in the full run only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from model_helpers import make_small_checkpoint
from service_helpers import LiveServer, connect_session, receive, send, wait_until

from freestems.service.connections import default_max_connections

from .bounds import FULL, scaled

SRC = Path(__file__).resolve().parents[2] / "src"


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(server: LiveServer | str, source: str) -> socket.socket:
    url = server if isinstance(server, str) else server.url
    return socket.create_connection(address(url), timeout=10, source_address=(source, 0))


def read_until_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing; None if it is still open after ``timeout`` seconds."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, leaving the connection open."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with something to read (or closed), waiting at most ``timeout`` s (poll: no fd limit)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def health_status(url: str) -> int:
    try:
        return httpx.get(url + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return 0


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


HEAD_START = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def test_idle_and_trickling_connections_are_closed_at_the_header_deadline(start_server):
    server = start_server(header_timeout=1.0, max_connections_per_address=10_000)
    count = scaled(20, 200)
    with sockets() as opened:
        idle = [connect(server, "127.0.0.2") for _ in range(count)]
        trickling = [connect(server, "127.0.0.3") for _ in range(count)]
        opened += idle + trickling
        for sock in trickling:
            sock.sendall(HEAD_START)
        assert health_status(server.url) == 200  # a normal client meanwhile
        answers: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + 20
        while len(answers) < count and time.monotonic() < deadline:
            for sock in trickling:
                if sock not in answers:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"x")  # one more byte of a header that never ends
            waiting = [sock for sock in trickling if sock not in answers]
            for sock in readable(waiting, 0.2):
                answers[sock] = read_until_closed(sock, 5) or b""
        assert len(answers) == count, f"{count - len(answers)} trickling connections still open after 20 s"
        for answer in answers.values():
            if answer:  # a reset can overtake the answer; when it arrives it is this one
                status, error = json_error(answer)
                assert status == 408 and error["code"] == "header_timeout"
        assert any(answers.values())
        for sock in idle:  # closed by now, without a word
            assert read_until_closed(sock, 10) == b""
    assert health_status(server.url) == 200


def test_a_kept_alive_connection_must_send_its_next_head_in_time(start_server):
    server = start_server(header_timeout=1.0, keep_alive_timeout=60.0)
    with sockets() as opened:
        idle, trickling = connect(server, "127.0.0.2"), connect(server, "127.0.0.2")
        opened += [idle, trickling]
        for sock in opened:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        trickling.sendall(HEAD_START)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not readable([trickling], 0.2):
            with contextlib.suppress(OSError):
                trickling.sendall(b"x")
        answer = read_until_closed(trickling, 5)
        assert answer is not None, "the trickling keep-alive connection is still open"
        assert answer == b"" or json_error(answer)[1]["code"] == "header_timeout"
        assert read_until_closed(idle, 10) == b""  # idle since its response: closed


def test_one_address_cannot_hold_more_than_its_share(start_server):
    cap = scaled(8, 64)
    server = start_server(max_connections_per_address=cap, header_timeout=60.0)
    with sockets() as held:
        held += [connect(server, "127.0.0.2") for _ in range(cap)]
        for _ in range(scaled(20, 500)):  # the flood beyond the cap: refused at once
            extra = connect(server, "127.0.0.2")
            status, error = json_error(read_until_closed(extra, 10))
            extra.close()
            assert status == 429 and error["code"] == "too_many_connections"
        assert health_status(server.url) == 200  # another address is served meanwhile
        assert read_until_closed(held[0], 0.2) is None  # the held ones are not dropped for it
    # Once they close, the address may connect again.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
        assert wait_until(lambda: client.get(server.url + "/health", timeout=5).status_code == 200, 10)


def test_the_global_cap_refuses_with_503_and_frees_up(start_server):
    cap = scaled(16, 256)
    server = start_server(max_connections=cap, header_timeout=2.0)
    with sockets() as held:
        held += [connect(server, f"127.0.1.{index % 200 + 1}") for index in range(cap)]
        refused = connect(server, "127.0.0.1")  # a normal client, while the cap is hit
        status, error = json_error(read_until_closed(refused, 10))
        refused.close()
        assert status == 503 and error["code"] == "too_many_connections"
        # The idle connections reach their header deadline and make room.
        assert wait_until(lambda: health_status(server.url) == 200, timeout=20)


def test_websockets_count_and_are_released_when_they_close(start_server):
    cap = scaled(6, 64)
    server = start_server(max_connections_per_address=cap, header_timeout=0.5)
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(connect_session(server, source="127.0.0.4")) for _ in range(cap)]
        for ws in sessions:
            assert receive(ws)["type"] == "challenge"
        time.sleep(1.0)  # past the header deadline: an upgraded connection has none
        for ws in sessions:
            send(ws, {"type": "ping"})
            assert receive(ws) == {"type": "pong"}
        handshake = (
            b"GET /session HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        for _ in range(scaled(20, 500)):  # a handshake flood from the same address
            flood = connect(server, "127.0.0.4")
            with contextlib.suppress(OSError):
                flood.sendall(handshake)
            answer = read_until_closed(flood, 10)
            flood.close()
            assert answer == b"" or json_error(answer)[0] == 429
        assert health_status(server.url) == 200
    # All closed: the address may open sessions again.
    deadline = time.monotonic() + 10
    while True:
        probe = connect(server, "127.0.0.4")
        probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(probe, 10) or b""
        probe.close()
        if answer.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    with connect_session(server, source="127.0.0.4") as ws:
        assert receive(ws)["type"] == "challenge"


# ---------------------------------------------------------------------------------------------- descriptors


def low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@contextlib.contextmanager
def serve_with_128_descriptors(tmp_path: Path, **env: str) -> Iterator[tuple[str, Path]]:
    """``freestems serve`` in a process limited to 128 open files; yields its URL and its log file."""
    model = make_small_checkpoint(tmp_path / "small.pt")
    log_path = tmp_path / "server.log"
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        **{f"FREESTEMS_{name.upper()}": value for name, value in env.items()},
    }
    cli = "import sys; from freestems.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", cli, "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--auth", "none", "--data-dir", str(tmp_path / "data"), "--model-file", str(model)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environ, preexec_fn=low_descriptor_limit
        )
    try:
        found = wait_until(
            lambda: (
                process.poll() is not None
                or re.search(r"running on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            ),
            timeout=120,
        )
        assert process.poll() is None, log_path.read_text(errors="replace")
        yield f"http://127.0.0.1:{found.group(1)}", log_path
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_out_of_descriptors_the_log_stays_short_and_the_server_recovers(tmp_path):
    # Connection caps above the descriptor limit (a misconfiguration) force the process to run out.
    settings = dict(max_connections="5000", max_connections_per_address="5000", header_timeout="2")
    with serve_with_128_descriptors(tmp_path, **settings) as (url, log_path):
        assert health_status(url) == 200
        before = log_path.stat().st_size
        started = time.monotonic()
        with sockets() as flood:
            for index in range(scaled(300, 2000)):
                flood.append(connect(url, f"127.0.2.{index % 200 + 1}"))
            time.sleep(3.0)  # the server is out of descriptors for a while
        held_for = time.monotonic() - started
        assert wait_until(lambda: health_status(url) == 200, timeout=30)
        time.sleep(1.0)
        grown = log_path.stat().st_size - before
        text = log_path.read_text(errors="replace")
    assert grown < 20_000, f"the log grew by {grown} bytes in {held_for:.0f} s"
    assert "Traceback" not in text
    assert text.count("cannot accept connections") <= held_for / 10 + 3


@pytest.mark.skipif(not FULL, reason="a second server process: in the full run only")
def test_out_of_descriptors_with_the_default_cap_connections_are_refused_not_lost(tmp_path):
    cap = default_max_connections(128)
    count = scaled(150, 1000)
    with serve_with_128_descriptors(tmp_path, header_timeout="30") as (url, log_path):
        with sockets() as flood:
            for index in range(count):
                flood.append(connect(url, f"127.0.3.{index % 200 + 1}"))
            answered: dict[socket.socket, bytes] = {}
            deadline = time.monotonic() + 20
            while len(answered) < count - cap and time.monotonic() < deadline:
                waiting = [sock for sock in flood if sock not in answered]
                for sock in readable(waiting, 0.2):
                    answered[sock] = read_until_closed(sock, 5) or b""
            assert len(answered) == count - cap  # the first ones are held, every later one refused
            assert read_until_closed(flood[0], 0.2) is None
        refusals = [answer for answer in answered.values() if answer]
        assert refusals and all(json_error(answer)[0] == 503 for answer in refusals)
        assert wait_until(lambda: health_status(url) == 200, timeout=30)
    assert "Traceback" not in log_path.read_text(errors="replace")


@pytest.fixture(autouse=True)
def _enough_descriptors_here():
    """This process opens up to a few thousand client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
