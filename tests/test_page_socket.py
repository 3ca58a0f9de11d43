"""The page's session socket is open only while it is needed (issue 20): an open WebSocket keeps the web tier
awake on Modal, billed (about $1.32 a day for one), so a page left open must not hold one. It opens when
Separate needs a key, closes once the job has ended, and a key kept unused after a refused upload closes its
socket after a while.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from audio_samples import write_test_file
from service_helpers import wait_until
from web_helpers import events, needs_chromium, wait_js

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("socket-songs") / "song.mp3"
    write_test_file(path, "mp3", seconds=3.0)
    return path


def sockets_of(page) -> list:
    opened: list = []
    page.on("websocket", lambda socket: opened.append(socket))
    return opened


def closed(page, socket) -> bool:
    """Whether ``socket`` has closed (a call into the page first, so Playwright delivers its events)."""
    page.evaluate("0")
    return socket.is_closed()


def separate(page, path: Path) -> str:
    page.set_input_files("#file", str(path))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    ended = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"
    return wait_js(page, ended, 90)


def test_the_page_opens_its_socket_only_to_separate_and_closes_it_when_the_job_ends(open_page, song):
    page = open_page()
    opened = sockets_of(page)
    time.sleep(1.0)  # a page that only sits there holds no socket
    assert opened == []
    assert separate(page, song) == "result"
    assert len(opened) == 1  # one key, one job
    wait_until(lambda: closed(page, opened[0]), timeout=10)  # the job ended: the socket closed with it


def test_a_key_kept_after_a_refused_upload_closes_its_socket_once_idle(open_page):
    page = open_page(
        expected_errors=("status of 415",),
        before=lambda page: page.add_init_script("globalThis.freestemsSessionKeepMs = 500"),
    )
    opened = sockets_of(page)
    page.evaluate(
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], 'picture.mp3'));
            const input = document.getElementById('file');
            input.files = transfer.files;
            input.dispatchEvent(new Event('change', {bubbles: true}));
        }""",
        list(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"not really an mp3 " * 200),  # the page lets it through
    )
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_js(page, "window.freestems.phase === 'problem'")  # 415: the key is not used up, so it is kept...
    assert len(opened) == 1
    wait_until(lambda: closed(page, opened[0]), timeout=10)  # ...for a while, then its socket closes
    assert events(page, "session_idle_closed")
