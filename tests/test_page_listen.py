"""Listening while the song is separated (issue 12, the page's side of contract C2), in a real headless
Chromium against a real server and a real separation.

The server's progressive results are not in this branch: the test serves C2's partial endpoints itself
(``page.route``: the JSON and FLAC segments made by our own encoder from a known signal, released segment
by segment by the test), and adds C2's ``ready_seconds`` to the real job messages on their way to the page
(``page.route_web_socket``), holding back the real ``done`` until the test lets it through. What it checks is
what a listener hears: the stems' GainNodes are tapped (a ScriptProcessor each), so "they start together"
is measured on the audio timeline, not read from the page's own bookkeeping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from audio_samples import write_test_file
from web_helpers import ARTIFACTS, DESKTOP, PHONE, events, needs_chromium, wait_js

from freestems.audio.encode import encode

pytestmark = needs_chromium

RATE = 44100
STEMS = ["vocals", "drums", "bass", "other"]
SEGMENT = 2 * RATE  # samples per segment
SEGMENTS = 3


class FakePartial:
    """C2's ``GET /jobs/{id}/partial`` and ``/partial/{stem}/{index}`` for any job: a known signal per stem
    (a sine of its own pitch from sample 0), ``available`` segments of it so far."""

    def __init__(self, folder: Path) -> None:
        self.available = 0
        self.requests: list[str] = []
        self.signals: dict[str, np.ndarray] = {}
        self.flac: dict[tuple[str, int], bytes] = {}
        t = np.arange(SEGMENT * SEGMENTS) / RATE
        for number, stem in enumerate(STEMS):
            wave = (0.3 * np.sin(2 * np.pi * (220 + 110 * number) * t)).astype(np.float32)
            self.signals[stem] = np.stack([wave, wave])
            for index in range(SEGMENTS):
                piece = self.signals[stem][:, index * SEGMENT : (index + 1) * SEGMENT]
                self.flac[(stem, index)] = encode(piece, folder / f"{stem}{index}.flac", "flac").read_bytes()

    @property
    def ready_seconds(self) -> float:
        return self.available * SEGMENT / RATE

    def description(self) -> dict:
        segments = [
            {"index": i, "start": i * SEGMENT, "end": (i + 1) * SEGMENT} for i in range(self.available)
        ]
        return {
            "stems": STEMS,
            "sample_rate": RATE,
            "segments": segments,
            "ready_samples": self.available * SEGMENT,
            "total_samples": SEGMENTS * SEGMENT,
            "complete": self.available == SEGMENTS,
        }

    def handle(self, route) -> None:
        path = route.request.url.split("?")[0]
        self.requests.append(path)
        if path.endswith("/partial"):
            route.fulfill(json=self.description())
            return
        stem, index = path.rsplit("/", 2)[1:]
        if stem not in STEMS:
            route.fulfill(status=404, json={"error": {"code": "not_found", "message": "no such stem"}})
        elif int(index) >= self.available:
            route.fulfill(status=404, json={"error": {"code": "not_ready", "message": "not separated yet"}})
        else:
            route.fulfill(body=self.flac[(stem, int(index))], headers={"Content-Type": "audio/flac"})


class SocketsWithProgress:
    """The page's WebSockets to the real server, with C2's ``ready_seconds`` added to running job messages
    and the job's end (``done``, or a job message in state done) held back until ``release()``."""

    def __init__(self, fake: FakePartial) -> None:
        self.fake = fake
        self.held: list[tuple[object, str]] = []
        self.holding = True

    def route(self, ws) -> None:
        server = ws.connect_to_server()
        ws.on_message(lambda message: server.send(message))
        ws.on_close(lambda code, reason: server.close(code=code, reason=reason))
        server.on_close(lambda code, reason: self._server_closed(ws, code, reason))
        server.on_message(lambda message: self._to_page(ws, message))

    def _to_page(self, ws, message) -> None:
        data = json.loads(message)
        if data.get("type") == "job" and data.get("state") == "running":
            data["ready_seconds"] = self.fake.ready_seconds
        ended = data.get("type") == "done" or data.get("state") == "done"
        if self.holding and ended:
            self.held.append((ws, json.dumps(data)))
        else:
            ws.send(json.dumps(data))

    def _server_closed(self, ws, code, reason) -> None:
        if self.holding:
            self.held.append((ws, None))  # closed after the end: closed for the page once it is let through
        else:
            ws.close(code=code, reason=reason)

    def release(self) -> None:
        self.holding = False
        for ws, message in self.held:
            if message is None:
                ws.close()
            else:
                ws.send(message)
        self.held.clear()


FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"

TAPS = """() => {
    // A ScriptProcessor on each stem's GainNode: the context time of the first sample it plays.
    const view = window.freestems.mixer;
    const context = view.context();
    window.firstSound = {};
    window.taps = [];
    for (const name of %s) {
        const tap = context.createScriptProcessor(1024, 2, 1);
        tap.onaudioprocess = (event) => {
            if (window.firstSound[name] !== undefined) return;
            const data = event.inputBuffer.getChannelData(0);
            for (let i = 0; i < data.length; i += 1) {
                if (Math.abs(data[i]) > 0.01) {
                    window.firstSound[name] = event.playbackTime + i / context.sampleRate;
                    return;
                }
            }
        };
        view.stemNode(name).connect(tap);
        tap.connect(context.destination);
        window.taps.push(tap);
    }
    return context.currentTime;
}""".replace("%s", json.dumps(STEMS))


def test_the_stems_play_while_they_are_separated_and_hand_over_to_the_result(open_page, tmp_path):
    fake = FakePartial(tmp_path)
    sockets = SocketsWithProgress(fake)

    def before(page):
        page.route(re.compile(r".*/jobs/[^/]+/partial(/[^/]+/\d+)?$"), fake.handle)
        page.route_web_socket(re.compile(r".*"), sockets.route)

    page = open_page(before=before, expected_errors=("status of 404",))
    song = tmp_path / "Live Song.mp3"
    write_test_file(song, "mp3", seconds=12.0, freq=370.0)
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")

    # A running job with ready_seconds: the page asks for the partial result and sets up the live player,
    # shown under the work card, before any sound exists.
    wait_js(page, "window.freestems.mixer.live() !== null", timeout=120)
    assert page.is_visible("#work") and page.is_visible("#result")
    assert page.inner_text("#result-heading") == "Listen while it separates"
    assert page.is_hidden("#download-all")
    assert "first seconds" in page.inner_text("#live-status")
    assert not page.evaluate("window.freestems.mixer.playing()")
    tapped_at = page.evaluate(TAPS)

    # Segment 0 of every stem exists: all four start together, by themselves (no second click).
    fake.available = 1
    wait_js(page, "Object.keys(window.firstSound).length === 4", timeout=30)
    first = page.evaluate("window.firstSound")
    arrived = [e for e in events(page, "live_segment") if e["index"] == 0][0]["contextTime"]
    assert max(first.values()) - min(first.values()) <= 0.020, first
    assert min(first.values()) >= max(arrived, tapped_at), (first, arrived)  # no sound before the segments
    # Every stem's segment decodes to exactly its samples.
    lengths = page.evaluate(
        """async () => {
            const job = window.freestems.job;
            const context = window.freestems.mixer.context();
            const out = [];
            for (const stem of ['vocals', 'bass']) {
                const response = await fetch(`jobs/${job.id}/partial/${stem}/0`,
                                             {headers: {'X-Job-Token': job.token}});
                out.push((await context.decodeAudioData(await response.arrayBuffer())).length);
            }
            return out;
        }"""
    )
    assert lengths == [SEGMENT, SEGMENT]

    # Mute works while live (the same GainNodes).
    page.get_by_role("button", name="Mute Vocals").click()
    wait_js(page, "window.freestems.mixer.gains().vocals < 1e-3")

    # Playback catches up with the separation (2 s exist): it waits, and says so.
    wait_js(page, "window.freestems.mixer.live().waiting", timeout=20)
    assert "Waiting for the separation" in page.inner_text("#live-status")
    assert page.get_attribute("#play", "aria-label") == "Pause"
    assert page.evaluate("window.freestems.mixer.position()") == pytest.approx(2.0, abs=0.05)
    ready = page.evaluate("getComputedStyle(document.getElementById('seek')).getPropertyValue('--ready')")
    assert float(ready.strip().rstrip("%")) == pytest.approx(100 / SEGMENTS, abs=0.01)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-live.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / "page-live-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)

    # The rest exists: it goes on by itself, and the seek bar shows all of it.
    fake.available = SEGMENTS
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 2.3", timeout=20)
    wait_js(page, "window.freestems.mixer.live().complete", timeout=20)
    ready = page.evaluate("getComputedStyle(document.getElementById('seek')).getPropertyValue('--ready')")
    assert ready.strip() == "100%"
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(6.0, abs=0.01)

    # The job is done: the result player takes over on the same timeline, from the same place, playing,
    # with the mix as it was.
    sockets.release()
    phase = wait_js(page, FINISHED, 90)
    assert phase == "result", page.evaluate("window.freestems.problem")
    handover = events(page, "handover")
    assert len(handover) == 1 and handover[0]["playing"], handover
    assert page.evaluate("window.freestems.mixer.live()") is None
    assert page.evaluate("window.freestems.mixer.playing()")
    assert page.evaluate("window.freestems.mixer.position()") >= handover[0]["position"] - 0.01
    assert page.get_attribute("#stems li[data-stem=vocals] .toggle-mute", "aria-pressed") == "true"
    wait_js(page, "(({vocals, drums}) => vocals < 1e-3 && drums > 0.99)(window.freestems.mixer.gains())")
    assert page.is_hidden("#work") and page.is_visible("#download-all")
    page.click("#play")


def test_a_server_without_progressive_results_is_not_asked(open_page, tmp_path):
    """No ``ready_seconds`` in the job messages (a server before progressive results: the real server's
    messages with it taken out on their way to the page): the page never asks for partial results, and the
    result player is the usual one."""
    asked: list[str] = []

    def without_progress(ws) -> None:
        server = ws.connect_to_server()
        ws.on_message(lambda message: server.send(message))
        ws.on_close(lambda code, reason: server.close(code=code, reason=reason))
        server.on_close(lambda code, reason: ws.close(code=code, reason=reason))

        def to_page(message) -> None:
            data = json.loads(message)
            data.pop("ready_seconds", None)
            ws.send(json.dumps(data))

        server.on_message(to_page)

    def before(page):
        page.on("request", lambda request: asked.append(request.url) if "/partial" in request.url else None)
        page.route_web_socket(re.compile(r".*"), without_progress)

    page = open_page(before=before)
    song = tmp_path / "Plain.mp3"
    write_test_file(song, "mp3", seconds=3.0, freq=290.0)
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    phase = wait_js(page, FINISHED, 90)
    assert phase == "result"
    assert asked == [] and events(page, "live_start") == [] and events(page, "handover") == []
    assert page.is_hidden("#live-status")


def test_cancel_while_listening_stops_the_sound_and_the_downloads(open_page, tmp_path):
    fake = FakePartial(tmp_path)
    sockets = SocketsWithProgress(fake)

    def before(page):
        page.route(re.compile(r".*/jobs/[^/]+/partial(/[^/]+/\d+)?$"), fake.handle)
        page.route_web_socket(re.compile(r".*"), sockets.route)

    page = open_page(before=before)
    song = tmp_path / "Cancelled Song.mp3"
    write_test_file(song, "mp3", seconds=12.0, freq=390.0)
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    fake.available = 1
    wait_js(page, "window.freestems.mixer.playing()", timeout=120)
    page.evaluate("window.liveContext = window.freestems.mixer.context()")

    page.click("#cancel")
    page.click("#cancel-yes")
    wait_js(page, "window.freestems.phase === 'setup'")
    assert page.is_hidden("#result") and page.is_visible("#setup")
    assert page.evaluate("window.freestems.mixer.live()") is None
    wait_js(page, "window.liveContext.state === 'closed'")  # no sound goes on behind the form
    asked = len(fake.requests)
    fake.available = SEGMENTS
    page.wait_for_timeout(1500)  # three polling periods: nobody asks any more
    assert len(fake.requests) == asked
    sockets.release()
