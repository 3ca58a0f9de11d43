"""Listening while the song is separated, end to end: the page of a real server (the small seeded model,
its real progressive results: ``GET /jobs/{id}/partial`` and FLAC segments) in headless Chromium, with no
fake in between (``test_page_listen.py`` drives the page against a fake of the endpoints instead).

The small model separates faster than real time; a long song keeps it running long enough for several
segments to exist before the job ends. What a listener hears is read on the audio timeline: an init script
notes every ``AudioBufferSourceNode``'s ``start(when, offset)`` and ``stop(when)`` and the node it feeds, so
"the stems start together" and "the result player takes over without a stop" are the scheduled times
Web Audio plays sample-accurately, not the page's own bookkeeping.
"""

from __future__ import annotations

import pytest
from audio_samples import write_test_file
from web_helpers import events, needs_chromium, wait_js

pytestmark = needs_chromium

SECONDS = 240.0  # the small model still runs when the first segments exist, and 10 s after the first words

SOURCES = """
(() => {
  const started = [];
  window.__sources = started;
  const proto = AudioBufferSourceNode.prototype;
  const connect = AudioNode.prototype.connect;
  AudioNode.prototype.connect = function (target, ...rest) {
    if (this instanceof AudioBufferSourceNode) this.__target = target;
    return connect.call(this, target, ...rest);
  };
  const start = proto.start;
  proto.start = function (when = 0, offset = 0, ...rest) {
    started.push({node: this, when: Math.max(when, this.context.currentTime), offset, stop: null});
    return start.call(this, when, offset, ...rest);
  };
  const stop = proto.stop;
  proto.stop = function (when = 0) {
    const entry = started.find((item) => item.node === this);
    if (entry && entry.stop === null) entry.stop = Math.max(when, this.context.currentTime);
    return stop.call(this, when);
  };
})();
"""

STARTS = """(names) => {
    // Per stem of the mixer now shown: the sources feeding its GainNode, in the order they were started.
    const out = {};
    for (const name of names) {
        const gain = window.freestems.mixer.stemNode(name);
        out[name] = window.__sources.filter((s) => s.node.__target === gain)
            .map(({when, offset, stop}) => ({when, offset, stop}));
    }
    return out;
}"""

RUNNING_STATES = ("running",)
FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"


def test_a_real_separation_plays_while_it_runs_and_hands_over_without_a_stop(open_page, web_server, tmp_path):
    song = tmp_path / "Long Real Song.mp3"
    write_test_file(song, "mp3", seconds=SECONDS, freq=330.0)
    page = open_page(before=lambda page: page.add_init_script(SOURCES))
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")

    # Sound starts while the job still runs: the live player plays before the result exists.
    wait_js(page, "window.freestems.mixer.live() !== null && window.freestems.mixer.playing()", timeout=120)
    assert page.evaluate("window.freestems.phase") != "result"
    assert events(page, "done") == []
    job = page.evaluate("({id: window.freestems.job.id, token: window.freestems.job.token})")
    view = page.evaluate(
        "async ([id, token]) => (await fetch(`jobs/${id}`, {headers: {'X-Job-Token': token}})).json()",
        [job["id"], job["token"]],
    )
    assert view["state"] == "running", view
    live = page.evaluate("window.freestems.mixer.live()")
    assert not live["complete"] and live["ready"] < SECONDS - 1, live

    live_rows = page.evaluate("[...document.querySelectorAll('#stems li')].map((li) => li.dataset.stem)")

    # Every stem starts at the same context time from the same place (Web Audio plays scheduled sources
    # sample-accurately, so their play positions stay together).
    stems = sorted(page.evaluate("window.freestems.mixer.gains()"))
    assert len(stems) == 4, stems
    starts = page.evaluate(STARTS, stems)
    firsts = {name: entries[0] for name, entries in starts.items() if entries}
    assert set(firsts) == set(stems), starts
    whens = [first["when"] for first in firsts.values()]
    assert max(whens) - min(whens) <= 0.020, firsts
    assert {round(first["offset"], 6) for first in firsts.values()} == {0.0}, firsts

    # The job ends; the result player takes over.
    phase = wait_js(page, FINISHED, 240)
    assert phase == "result", page.evaluate("window.freestems.problem")
    segments = events(page, "live_segment")
    done_at = events(page, "done")[0]["at"]
    assert len([s for s in segments if s["at"] < done_at]) >= 2, segments  # several segments before the end

    # The rows keep their order when the result player takes over (no jump under the pointer).
    result_rows = page.evaluate("[...document.querySelectorAll('#stems li')].map((li) => li.dataset.stem)")
    assert live_rows == result_rows, (live_rows, result_rows)

    # What a screen reader hears while it runs is what the status says then, not words from seconds before.
    log = events(page)
    created = [event["at"] for event in log if event["kind"] == "created"]
    created_at = created[0] if created else log[0]["at"]  # the log keeps the last 500 events
    shown = None
    for number, event in enumerate(log):
        if event["kind"] == "progress":
            shown = event["text"]
        elif event["kind"] == "announce" and created_at <= event["at"] <= done_at:
            following = log[number + 1] if number + 1 < len(log) else {}
            now = {shown, following.get("text") if following.get("kind") == "progress" else None}
            assert event["text"] in now, (event, shown)

    # Progress reached the page at least once a second while it ran.
    running = [e for e in events(page, "job") if e["state"] in RUNNING_STATES and e["at"] <= done_at]
    span = (running[-1]["at"] - running[0]["at"]) / 1000
    assert span >= 2, running  # it ran for seconds: the count below means something
    assert len(running) >= int(span), (len(running), span)

    # Without a stop: the live player was playing, its sources stop at the very context time the result
    # player's sources start, from the same place in the song.
    handover = events(page, "handover")
    assert len(handover) == 1 and handover[0]["playing"], handover
    at, position = handover[0]["contextAt"], handover[0]["position"]
    assert page.evaluate("window.freestems.mixer.playing()")
    result_starts = page.evaluate(STARTS, stems)
    for name in stems:
        first = result_starts[name][0]
        assert first["when"] == pytest.approx(at, abs=1e-6), (name, first, at)
        assert first["offset"] == pytest.approx(position, abs=1e-3), (name, first, position)
    live_sources = page.evaluate(
        """() => {
            const result = new Set(Object.keys(window.freestems.mixer.gains()).map(
                (name) => window.freestems.mixer.stemNode(name)));
            return window.__sources.filter((s) => s.node.__target && !result.has(s.node.__target))
                .map(({when, offset, stop}) => ({when, offset, stop}));
        }"""
    )
    assert live_sources, "no live sources were noted"
    playing_at_handover = [
        s for s in live_sources if s["when"] <= at and (s["stop"] is None or s["stop"] >= at)
    ]
    assert playing_at_handover, live_sources
    assert all(s["stop"] == pytest.approx(at, abs=1e-6) for s in playing_at_handover), playing_at_handover
    page.click("#play")
