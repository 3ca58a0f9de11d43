"""The page fixes of issue 12, in a real headless Chromium against a real server (the small seeded model).

What a new user met: a seek slider that moved 0.1 s per arrow press and ignored Space, a "Try again in 40
seconds" that stayed put while the button counted down, a too-big message that suggested MP3 for an MP3,
a screen reader told four things in 15 ms, a bar that stood still while the file was checked, and progress
without elapsed time, time left or a queue estimate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_samples import write_test_file
from web_helpers import events, needs_chromium, wait_js, with_limits

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fix-songs") / "Long Walk.mp3"
    write_test_file(path, "mp3", seconds=40.0, freq=330.0)
    return path


def separate(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    finished = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"
    phase = wait_js(page, finished, 120)
    assert phase == "result", page.evaluate("window.freestems.problem")


def position(page) -> float:
    return page.evaluate("window.freestems.mixer.position()")


def test_the_seek_slider_moves_5_s_per_arrow_and_space_plays_everywhere(open_page, song):
    page = open_page()
    separate(page, song)
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(40.0, abs=0.2)

    # Screen readers heard one announcement at a time, at least 10 s apart (four steps in a few ms were
    # four interruptions); the last step was still said.
    said = events(page, "announce")
    assert said, events(page)
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(said, said[1:], strict=False)]
    assert all(gap >= 9_990 for gap in gaps), gaps
    # The file check after the upload had no number: the bar moved instead of standing full.
    checking = [e for e in events(page, "progress") if "checking the file" in e["text"]]
    assert checking and all(e["fraction"] is None for e in checking), checking

    # The result plays on from where the live player was (the server has progressive results): stop it
    # at the start first.
    if page.evaluate("window.freestems.mixer.playing()"):
        page.click("#play")
    wait_js(page, "!window.freestems.mixer.playing()")
    page.focus("#seek")
    page.keyboard.press("Home")
    assert position(page) == pytest.approx(0.0, abs=0.01)

    # Arrows on the seek slider: 5 s a press; Page Up 30 s; Home to the start; End to the end.
    page.keyboard.press("ArrowRight")
    assert position(page) == pytest.approx(5.0, abs=0.01)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowUp")
    assert position(page) == pytest.approx(15.0, abs=0.01)
    page.keyboard.press("ArrowLeft")
    assert position(page) == pytest.approx(10.0, abs=0.01)
    page.keyboard.press("PageUp")
    assert position(page) == pytest.approx(40.0, abs=0.01)  # clamped at the end
    page.keyboard.press("Home")
    assert position(page) == pytest.approx(0.0, abs=0.01)
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#seek", "aria-valuetext") == "0:05 of 0:40"

    # Space on the slider plays, and again pauses (focus stays on the slider).
    page.keyboard.press("Space")
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 5.2", timeout=15)
    assert page.evaluate("document.activeElement.id") == "seek"
    page.keyboard.press("Space")
    assert not page.evaluate("window.freestems.mixer.playing()")
    # An arrow while playing jumps from where it is.
    page.keyboard.press("Space")
    wait_js(page, "window.freestems.mixer.playing()")
    at = position(page)
    page.keyboard.press("ArrowRight")
    assert position(page) == pytest.approx(at + 5, abs=0.5)
    # On the volume sliders Space toggles too; on a button it presses the button (Mute), not the player.
    page.focus("#master")
    page.keyboard.press("Space")
    assert not page.evaluate("window.freestems.mixer.playing()")
    page.focus("#volume-drums")
    page.keyboard.press("Space")
    assert page.evaluate("window.freestems.mixer.playing()")
    page.focus("#stems li[data-stem=vocals] .toggle-mute")
    page.keyboard.press("Space")
    assert page.get_attribute("#stems li[data-stem=vocals] .toggle-mute", "aria-pressed") == "true"
    assert page.evaluate("window.freestems.mixer.playing()")
    page.click("#play")
    assert not page.evaluate("window.freestems.mixer.playing()")


def test_try_again_counts_down_in_words_and_on_the_button(open_page, song):
    def busy(route):
        if route.request.method == "POST":
            route.fulfill(
                status=429,
                headers={"Retry-After": "3"},
                json={"error": {"code": "queue_full", "message": "the queue is full", "retry_after": 3}},
            )
        else:
            route.continue_()

    page = open_page(expected_errors=("status of 429",), before=lambda p: p.route("**/jobs", busy))
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_js(page, "window.freestems.phase === 'problem'")
    assert page.inner_text("#problem-text") == "The server is busy: its queue is full."
    first = page.inner_text("#problem-action")
    assert first in ("Try again in 3 seconds.", "Try again in 2 seconds."), first
    assert page.is_disabled("#retry")
    wait_js(page, "document.getElementById('problem-action').textContent === 'Try again in 1 second.'", 5)
    assert page.inner_text("#retry") == "Try again in 1 s"
    wait_js(page, "document.getElementById('problem-action').textContent === 'You can try again now.'", 5)
    assert page.is_enabled("#retry") and page.inner_text("#retry") == "Try again"


def test_a_too_big_file_is_told_what_would_fit(open_page, tmp_path):
    """The limits come from GET /config (faked here with a tiny upload limit): the advice is numbers."""

    page = open_page(before=with_limits(max_upload_mb=0.02, max_duration=90))
    mp3 = tmp_path / "Song.mp3"
    write_test_file(mp3, "mp3", seconds=3.0, bitrate=128)
    page.set_input_files("#file", str(mp3))
    wait_js(page, "document.getElementById('file-error').textContent.includes('cut it to')")
    text = page.inner_text("#file-error")
    # 20 kB less 3% headroom over 3 s is 51 kbps: 48 kbps fits, or 1 s of the song as it is.
    assert "the limit is 20 kB" in text and "at 48 kbps or lower" in text and "at most 0:01" in text, text
    assert "MP3 is much smaller" not in text and "Convert it to MP3" not in text
    assert page.is_disabled("#separate")

    wav = tmp_path / "Song.wav"
    write_test_file(wav, "wav", seconds=2.0)
    page.set_input_files("#file", str(wav))
    wait_js(page, "document.getElementById('file-error').textContent.includes('kbps or lower')")
    text = page.inner_text("#file-error")
    # 2 s in 19.4 kB: 77 kbps, so MP3 at 64 kbps (16 kB).
    assert "Convert it to MP3 at 64 kbps or lower (about 16 kB)" in text, text


def test_progress_says_elapsed_time_left_and_the_queue_estimate(open_page):
    """The words from the job's fields (C2: stage, elapsed, eta, queue_eta, position), and without them."""
    page = open_page()
    told = page.evaluate(
        """async () => {
            const { queueWords, runningWords } = await import('/static/follow.js');
            return [
                queueWords({ position: 3, queue_eta: 42 }),
                queueWords({ position: 1, queue_eta: null }),
                queueWords({ position: 2 }),
                runningWords({ elapsed: 12.4, eta: 7.2 }, 0.42),
                runningWords({ elapsed: 75, eta: 93 }, 0.5),
                runningWords({}, 0.25),
                runningWords({ stage: 'finishing', elapsed: 30, eta: 1 }, 1),
            ];
        }"""
    )
    assert told == [
        "Waiting in line: position 3. It should start in about 40 seconds.",
        "You are next in line.",
        "Waiting in line: position 2.",
        "Separating: 42% · 0:12 so far · about 8 seconds left",
        "Separating: 50% · 1:15 so far · about 1 minute 35 seconds left",
        "Separating: 25%",
        "Finishing: writing the stem files…",
    ]
    # A job being checked: the step is the upload's, and the bar moves (an animation, no number).
    state = page.evaluate(
        """async () => {
            const { JobFollow } = await import('/static/follow.js');
            const { createMessages } = await import('/static/messages.js');
            const { createScreens } = await import('/static/screens.js');
            const messages = createMessages({ screens: createScreens(), log: () => {} });
            const follow = new JobFollow({ messages, log: () => {}, signal: new AbortController().signal });
            document.getElementById('work').hidden = false;
            follow.onJob({ state: 'queued', stage: 'checking', position: 1 });
            const bar = document.getElementById('progress');
            return {
                status: document.getElementById('status').textContent,
                valued: bar.hasAttribute('value'),
                animation: getComputedStyle(bar).animationName,
                active: document.querySelector('#phases li[data-state=active]').dataset.phase,
            };
        }"""
    )
    assert state == {
        "status": "The server is checking the file…",
        "valued": False,
        "animation": "busy",
        "active": "upload",
    }
