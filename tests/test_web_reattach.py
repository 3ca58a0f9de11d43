"""The page keeps its job through a reload and through a server crash: it follows the job again by id and
token (sessionStorage), reconnecting with backoff while the server is away, and never blames the user's
internet connection for the server's restart."""

from __future__ import annotations

import signal
import socket

import pytest
from model_helpers import make_small_checkpoint
from reliability.serve_process import ServeProcess
from service_helpers import running_server, small_settings
from test_web import job_state, start_slow_separation, wait_result
from web_helpers import events, needs_chromium, wait_js

from freestems.executors import LocalExecutor
from freestems.service.paths import Paths

pytestmark = needs_chromium


def test_a_reload_mid_separation_reattaches_and_finishes(open_page, web_server, tmp_path):
    page = open_page()
    job = start_slow_separation(page, tmp_path / "reload.mp3", seconds=30.0)
    wait_js(page, "window.freestems.events.some(e => e.kind === 'job' && e.state === 'running')", timeout=60)
    page.reload()
    wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
    wait_js(page, "window.freestems.events.some(e => e.kind === 'reattach')")
    assert page.evaluate("window.freestems.job")["id"] == job["id"]
    assert page.is_visible("#work") and page.inner_text("#work-name") == "reload.mp3"
    wait_result(page, timeout=180)
    assert job_state(web_server, job) == "done"
    # The recent list of this browser links to it.
    recent = page.evaluate("JSON.parse(localStorage.getItem('freestems.recent'))")
    assert [entry["id"] for entry in recent] == [job["id"]]


@pytest.fixture
def killable_server(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(
        data_dir,
        make_small_checkpoint(tmp_path / "small.pt"),
        port,
        grace=60.0,
        FREESTEMS_POW_ALGORITHM="PBKDF2/SHA-256",
        FREESTEMS_POW_COST="200",
        FREESTEMS_POW_COUNTER="40",
        FREESTEMS_AUTH="pow",
        FREESTEMS_HMAC_SECRET="test secret",
    )
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


def test_a_server_crash_mid_separation_reconnects_and_finishes(open_page, killable_server, tmp_path):
    server = killable_server.start()
    page = open_page(server=server, expected_errors=("WebSocket connection", "Failed to load resource"))
    job = start_slow_separation(page, tmp_path / "crash.mp3", seconds=40.0)
    wait_js(page, "window.freestems.events.some(e => e.kind === 'job' && e.progress > 0)", timeout=60)
    server.stop(signal.SIGKILL)
    wait_js(page, "document.getElementById('status').textContent.includes('reconnecting')", timeout=30)
    assert page.is_visible("#work")
    assert "internet connection" not in page.inner_text("body")
    server.start()
    # The server resumed the job from its start, and the page says so.
    wait_js(page, "document.getElementById('status').textContent.includes('started again')", timeout=120)
    wait_result(page, timeout=240)
    assert page.evaluate("window.freestems.job")["id"] == job["id"]
    assert events(page, "problem") == []
    assert "internet connection" not in page.inner_text("body")


@pytest.fixture
def short_lived_sockets(tmp_path, small_model):
    """A server whose sockets live 12 s (the page's first key then has about 12 - 3 s to be used)."""
    settings = small_settings(
        tmp_path / "data",
        pow_algorithm="PBKDF2/SHA-256",
        pow_cost=200,
        pow_counter=40,
        max_upload_mb=100.0,
        max_duration=1200.0,
        socket_lifetime=12.0,
        challenge_ttl=3.0,
        upload_timeout=3.0,
    )
    executor = LocalExecutor(lambda: small_model, Paths(settings.data_dir).work, workers=settings.workers)
    with running_server(settings, executor) as server:
        yield server


def test_a_socket_closed_at_its_lifetime_is_followed_again_without_a_word(
    open_page, short_lived_sockets, tmp_path
):
    page = open_page(server=short_lived_sockets)
    job = start_slow_separation(page, tmp_path / "lifetime.mp3", seconds=150.0)  # runs well past 12 s
    wait_js(page, "window.freestems.events.some(e => e.kind === 'reconnecting' && e.lifetime)", timeout=60)
    wait_result(page, timeout=180)
    assert job_state(short_lived_sockets, job) == "done"  # never cancelled
    shown = page.evaluate("window.freestems.events.filter(e => e.kind === 'reconnecting' && !e.lifetime)")
    assert shown == []  # no "Lost contact with the server" for a socket the server renewed
