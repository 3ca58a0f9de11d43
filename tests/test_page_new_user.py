"""The page fixes of issue 21, found when the page was tried as a new user would: in a real headless
Chromium against a real server (the small seeded model, its real progressive results). Each test names what
the new user met in its docstring.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from audio_samples import write_test_file
from web_helpers import ARTIFACTS, PHONE, events, needs_chromium, wait_js, with_limits

pytestmark = needs_chromium

FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"


def song_file(folder: Path, name: str, seconds: float) -> Path:
    """A song of its own pitch: the server's result cache never answers for another test's song."""
    path = folder / name
    write_test_file(path, "mp3", seconds=seconds, freq=random.uniform(150.0, 900.0))
    return path


def start(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")


def finish(page, timeout: float = 180.0) -> None:
    phase = wait_js(page, FINISHED, timeout)
    assert phase == "result", page.evaluate("window.freestems.problem")


def partial(page) -> dict:
    """``GET /jobs/{id}/partial`` of the page's job, as the page would ask for it."""
    return page.evaluate(
        """async () => {
            const job = window.freestems.job;
            const response = await fetch(`jobs/${job.id}/partial`, {headers: {'X-Job-Token': job.token}});
            return response.json();
        }"""
    )


def test_the_live_player_shows_the_whole_song_from_the_start(open_page, tmp_path):
    """The server's probe knows the length: ``total_samples`` says it mid-job, and the live player's clock and
    seek bar span the whole song, its band what exists so far (the bar no longer stretches as blocks come)."""
    page = open_page()
    start(page, song_file(tmp_path, "Whole Length.mp3", 60.0))
    wait_js(page, "(window.freestems.mixer.live() || {}).ready > 0", timeout=120)
    listing = partial(page)
    assert not listing["complete"], listing
    assert listing["total_samples"] == pytest.approx(60 * 44100, abs=0.05 * 44100), listing
    live = page.evaluate("window.freestems.mixer.live()")
    assert live["ready"] < 55, live  # caught mid-job
    assert page.inner_text("#time-total") == "1:00"
    assert float(page.get_attribute("#seek", "max")) == pytest.approx(60.0, abs=0.05)
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(60.0, abs=0.05)
    band = page.evaluate("getComputedStyle(document.getElementById('seek')).getPropertyValue('--ready')")
    assert 0 < float(band.strip().rstrip("%")) < 95, band
    assert "of 1:00" in page.get_attribute("#seek", "aria-valuetext")
    finish(page)
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(60.0, abs=0.05)


def test_too_big_advice_names_a_length_within_the_limit(open_page, tmp_path):
    """A song over both limits was told to be cut to a length still over the length limit ("cut it to at most
    0:04" with a limit of 3 s): the advice never names a length over it. (The limits come from GET /config,
    faked here with a tiny upload limit and a 3 s length limit.)"""
    page = open_page(before=with_limits(max_upload_mb=0.02, max_duration=3))
    mp3 = tmp_path / "Long.mp3"
    write_test_file(mp3, "mp3", seconds=10.0, bitrate=32)  # 40 kB: twice the size limit, 4 s fit at 32 kbps
    page.set_input_files("#file", str(mp3))
    wait_js(page, "document.getElementById('file-error').textContent.includes('cut it to')")
    text = page.inner_text("#file-error")
    assert "longer than the limit of 3 seconds" in text and "cut it to at most 0:03," in text, text
    assert "0:04" not in text and "0:10" not in text, text

    wav = tmp_path / "Long.wav"
    write_test_file(wav, "wav", seconds=10.0)  # 1.8 MB of 16-bit stereo
    page.set_input_files("#file", str(wav))
    wait_js(page, "document.getElementById('file-error').textContent.includes('kbps or lower')")
    text = page.inner_text("#file-error")
    # 3 s in 19.4 kB is 51 kbps: cut to 0:03 and MP3 at 48 kbps (18 kB), not the whole 10 s as an MP3.
    assert "Cut it to at most 0:03, convert that to MP3 at 48 kbps or lower (about 18 kB)" in text, text
    assert page.is_disabled("#separate")


def test_a_text_file_named_mp3_is_refused_before_the_puzzle_and_the_upload(open_page, tmp_path):
    """A text file named .mp3 was refused only by the server, after the proof of work and the upload: the
    browser cannot read it and it does not begin as any audio or video file does, so the page refuses it at
    once, in the words the server would have used."""
    page = open_page()
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    page.on("websocket", lambda socket: sent.append(socket.url))
    notes = tmp_path / "Notes.mp3"
    notes.write_text("Verse 1: la la la\nChorus: oh oh oh\n" * 40)
    page.set_input_files("#file", str(notes))
    wait_js(page, "!document.getElementById('file-error').hidden")
    assert page.inner_text("#file-error") == (
        "This file is not audio the server can read. "
        "Choose an MP3, WAV, FLAC, OGG, Opus or M4A file, or a video with sound."
    )
    assert page.is_disabled("#separate") and page.inner_text("#setup-hint") == "Choose another file."
    assert page.inner_text("#file-duration") == "not audio"
    page.wait_for_timeout(300)
    assert sent == []  # no session (no puzzle) and no upload


SEPARATE_IN_SIGHT = """() => {
    // The Separate button lies within the window and nothing covers its middle.
    const button = document.getElementById('separate');
    const box = button.getBoundingClientRect();
    const inside = box.top >= 0 && box.bottom <= innerHeight && box.left >= 0 && box.right <= innerWidth;
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return {inside, hit: Boolean(hit && button.contains(hit)), top: Math.round(box.top)};
}"""


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800}, PHONE], ids=["desktop", "phone"])
def test_separate_is_in_sight_once_a_song_is_chosen(open_page, tmp_path, viewport):
    """Separate sat below the fold once a file was chosen (y = 994 px at 1280x800, 1261 px on a phone): it
    now stays at the bottom of the window until the end of the form comes into view, without a scroll."""
    page = open_page(viewport=viewport)
    page.set_input_files("#file", str(song_file(tmp_path, "In Sight.mp3", 3.0)))
    wait_js(page, "!document.getElementById('separate').disabled")
    assert page.evaluate("window.scrollY") == 0
    seen = page.evaluate(SEPARATE_IN_SIGHT)
    assert seen["inside"] and seen["hit"], seen
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-separate-in-sight-{viewport['width']}.png"))
    # Scrolled to the end of the form, it is the form's last row again, under the options.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    seen = page.evaluate(SEPARATE_IN_SIGHT)
    assert seen["inside"] and seen["hit"], seen
    format_bottom = page.evaluate("document.getElementById('format').getBoundingClientRect().bottom")
    assert seen["top"] > format_bottom


def test_a_model_served_from_a_file_says_what_it_is(open_page, web_server):
    """A model served from a checkpoint file was shown by its file name alone ("release", "955717e8"): its
    title now names its family, and its facts say its stems and that its SDR and speed were not measured."""
    described = web_server.service.executor.models[0]
    assert (described.name, described.title) == ("small", "SCNet (small)")
    page = open_page()
    assert page.inner_text("#models strong") == "SCNet (small)"
    assert (
        page.inner_text("#models small")
        == "Drums, Bass, Other, Vocals · SDR not measured · speed not measured"
    )
    assert page.get_attribute("input[name=model]", "value") == "small"  # the form still sends its name


DECODED = """
(() => {
  // Every AudioBuffer the page decodes, weakly held: which are still alive after a garbage collection.
  window.__decoded = [];
  const decode = BaseAudioContext.prototype.decodeAudioData;
  BaseAudioContext.prototype.decodeAudioData = function (...args) {
    return decode.apply(this, args).then((buffer) => {
      window.__decoded.push({ref: new WeakRef(buffer), length: buffer.length});
      return buffer;
    });
  };
})();
"""


def collect_garbage(page) -> None:
    session = page.context.new_cdp_session(page)
    for _ in range(2):
        session.send("HeapProfiler.collectGarbage")
        page.wait_for_timeout(200)
    session.detach()


def test_the_result_player_keeps_one_copy_of_the_stems(open_page, tmp_path):
    """After the hand-over the renderer held the live player's decoded segments and the result's files
    decoded again: the result player now plays the live player's own audio, joined into whole stems stem by
    stem (the result's files are not decoded), and once a garbage collection has run no decoded segment is
    left."""
    page = open_page(before=lambda page: page.add_init_script(DECODED))
    start(page, song_file(tmp_path, "One Copy.mp3", 60.0))
    wait_js(page, "window.freestems.mixer.playing()", timeout=120)
    finish(page)
    handover = events(page, "handover")
    assert len(handover) == 1 and handover[0].get("from") == "live", handover
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(60.0, abs=0.05)
    lengths = page.evaluate("window.__decoded.map((entry) => entry.length)")
    assert lengths and max(lengths) < 30 * 44100, max(lengths)  # segments only: no whole stem was decoded
    wait_js(page, "window.freestems.mixer.playing()")
    collect_garbage(page)
    assert page.evaluate("window.__decoded.filter((entry) => entry.ref.deref()).length") == 0
    assert page.evaluate("window.freestems.mixer.playing()")  # the whole stems play on
    page.click("#play")


def test_the_live_player_keeps_to_the_memory_budget(open_page, tmp_path):
    """The live player decoded every segment whatever the song's length, while the result player refuses a
    song over the device's memory budget: over the budget, the page does not listen while it separates."""
    asked: list[str] = []
    page = open_page(before=lambda page: page.on("request", lambda request: asked.append(request.url)))
    page.evaluate("window.freestems.memoryBudget = 2e6")  # 2 MB: 30 s of four stems need 42 MB
    start(page, song_file(tmp_path, "Over Budget.mp3", 30.0))
    finish(page)
    assert events(page, "live_skipped") and events(page, "live_mixer") == [], events(page, "live_skipped")
    assert not [address for address in asked if "/partial/" in address]  # no segment was downloaded
    assert "too long to play in the page" in page.inner_text("#result-note")


def pause(page) -> None:
    if page.evaluate("window.freestems.mixer.playing()"):
        page.click("#play")
    wait_js(page, "!window.freestems.mixer.playing()")


def test_a_result_from_the_cache_plays_as_a_fresh_one_does(open_page, tmp_path):
    """A fresh result plays on from the live player; the same song again, answered at once from the server's
    result cache (no live player), stayed silent: it now starts playing as well."""
    page = open_page()
    song = song_file(tmp_path, "Twice.mp3", 8.0)
    start(page, song)
    finish(page)
    pause(page)
    page.click("#again")
    start(page, song)
    finish(page)
    assert events(page, "created")[-1]["cache"] == "hit"
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 0.2", timeout=15)
    assert page.get_attribute("#play", "aria-label") == "Pause"
    page.click("#play")


def test_a_reload_resumes_where_the_player_was(open_page, tmp_path):
    """A reload showed the result again from 0:00: the page keeps where the player was with the job (in
    sessionStorage, when the page goes away) and the result comes back there."""
    page = open_page()
    start(page, song_file(tmp_path, "Resume.mp3", 30.0))
    finish(page)
    pause(page)
    page.focus("#seek")
    page.keyboard.press("Home")
    for _ in range(4):
        page.keyboard.press("ArrowRight")  # 0:20
    page.click("#play")
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 20.3", timeout=15)
    page.reload()
    wait_js(page, "window.freestems.ready")
    finish(page)
    position = page.evaluate("window.freestems.mixer.position()")
    assert 20.3 < position < 29, position
    assert page.inner_text("#time-now") == f"0:{int(position):02d}"


def test_recent_reopens_a_result_in_the_player(open_page, tmp_path):
    """ "Recent" offered only the zip of an earlier result: while the server still has it, it opens in the
    result player."""
    page = open_page()
    start(page, song_file(tmp_path, "Earlier.mp3", 6.0))
    finish(page)
    first = page.evaluate("window.freestems.job")
    pause(page)
    page.click("#again")
    page.reload()  # a later visit
    wait_js(page, "window.freestems.events.some((event) => event.kind === 'recent')")
    assert page.evaluate("window.freestems.phase") == "setup"
    page.get_by_role("button", name="Open Earlier.mp3 in the player").click()
    finish(page)
    assert page.evaluate("window.freestems.job")["id"] == first["id"]
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(6.0, abs=0.1)
    assert page.locator("#stems canvas").count() == 4
    assert "of Earlier.mp3" in page.inner_text("#result-note")
    page.click("#play")
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 0.2", timeout=15)
    page.click("#play")
