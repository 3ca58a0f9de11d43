"""Beyond the stems: export my mix, loop a part, and the recent separations of this browser, in a real
headless Chromium against a real server (the small seeded model).

The exported mix is checked sample by sample against the server's own stem files (WAV, so the browser and
this test decode the same numbers) times the gains that were set, within 16-bit quantisation.
"""

from __future__ import annotations

import io
import wave
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from audio_samples import write_test_file
from web_helpers import ARTIFACTS, DESKTOP, PHONE, events, needs_chromium, wait_js

pytestmark = needs_chromium

FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"


def separate(page, path: Path, fmt: str | None = None) -> dict:
    page.set_input_files("#file", str(path))
    if fmt:
        page.select_option("#format", fmt)
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    assert wait_js(page, FINISHED, 120) == "result", page.evaluate("window.freestems.problem")
    return page.evaluate("window.freestems.job")


def pcm16(data: bytes) -> np.ndarray:
    """A 16-bit WAV's samples as floats (frames, channels), scaled as browsers decode them (x / 32768)."""
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getsampwidth() == 2 and wav.getframerate() == 44100
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return frames.reshape(-1, wav.getnchannels()).astype(np.float64) / 32768


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mix-songs") / "Mix Me.mp3"
    write_test_file(path, "mp3", seconds=12.0, freq=260.0)
    return path


def test_export_my_mix_is_the_stems_times_the_gains_i_set(open_page, web_server, song):
    page = open_page()
    job = separate(page, song, fmt="wav")
    page.get_by_role("button", name="Mute Vocals").click()
    page.get_by_label("Drums volume").fill("0.5")
    page.get_by_label("Other volume").fill("0.25")
    page.fill("#master", "0.3")  # how loud one listens: not part of the mix
    with page.expect_download() as download:
        page.click("#export-mix")
    assert download.value.suggested_filename == "Mix Me - my mix.wav"
    mix = pcm16(Path(download.value.path()).read_bytes())
    assert "my mix.wav" in page.inner_text("#export-status")
    assert events(page, "exported")[-1]["targets"] == {"vocals": 0, "drums": 0.5, "bass": 1, "other": 0.25}

    served = httpx.get(f"{web_server.url}/jobs/{job['id']}/result", headers={"X-Job-Token": job["token"]})
    with zipfile.ZipFile(io.BytesIO(served.content)) as bundle:
        stems = {name: pcm16(bundle.read(f"{name}.wav")) for name in ["vocals", "drums", "bass", "other"]}
    expected = 0.5 * stems["drums"] + stems["bass"] + 0.25 * stems["other"]
    assert mix.shape == expected.shape == (12 * 44100, 2)
    assert np.abs(expected).max() > 0.01  # there is something to compare
    error = np.abs(mix - np.clip(expected, -1, 32767 / 32768)).max()
    assert error <= 1.0001 / 32768, error * 32768  # rounding to 16 bits, nothing more
    # The mix is not the plain sum (the settings mattered), nor at the master volume.
    assert np.abs(mix - sum(stems.values())).max() > 100 / 32768


def test_a_part_loops_from_the_keyboard_or_a_drag_on_a_waveform(open_page, song):
    page = open_page()
    separate(page, song)
    if page.evaluate("window.freestems.mixer.playing()"):  # it plays on from the live player: stop at 0:00
        page.click("#play")
    wait_js(page, "!window.freestems.mixer.playing()")
    page.focus("#seek")
    page.keyboard.press("Home")

    # The keyboard's way: "Loop from here" at 0:05, "Loop to here" at 0:10.
    page.keyboard.press("ArrowRight")
    page.click("#loop-a")
    assert "Loop from 0:05" in page.inner_text("#loop-words")
    page.focus("#seek")
    page.keyboard.press("ArrowRight")
    page.click("#loop-b")
    assert page.evaluate("window.freestems.mixer.loop()") == {"start": 5, "end": 10}
    assert page.inner_text("#loop-words") == "Looping 0:05 to 0:10"
    # It plays the region again and again: every source loops it, and the position wraps from 0:10 to 0:05.
    page.evaluate(
        """() => {
            window.seen = [];
            const sample = () => {
                window.seen.push(window.freestems.mixer.position());
                if (window.seen.length < 5000) requestAnimationFrame(sample);
            };
            requestAnimationFrame(sample);
        }"""
    )
    page.click("#play")
    assert page.evaluate("window.freestems.mixer.sourcesLoop()")
    wait_js(page, "window.seen.some((p, i) => i > 0 && p < window.seen[i - 1] - 1)", timeout=30)
    seen = page.evaluate("window.seen")
    assert min(seen) >= 5 - 1e-6 and max(seen) <= 10 + 1e-6, (min(seen), max(seen))

    # A drag across a waveform from a quarter to a half of it: 0:03 to 0:06.
    box = page.locator("#stems li[data-stem=drums] canvas").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, y, steps=3)
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=3)
    page.mouse.up()
    loop = wait_js(page, "(l => l && l.start < 4 && l)(window.freestems.mixer.loop())")
    assert loop["start"] == pytest.approx(3.0, abs=0.1) and loop["end"] == pytest.approx(6.0, abs=0.1)
    assert page.evaluate("window.freestems.mixer.sourcesLoop()")
    assert 2.9 <= page.evaluate("window.freestems.mixer.position()") <= 6.1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-loop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / "page-loop-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(200)
    box = page.locator("#stems li[data-stem=drums] canvas").bounding_box()
    # A click (no drag) still jumps.
    page.mouse.click(box["x"] + box["width"] * (4.5 / 12), y)
    assert page.evaluate("window.freestems.mixer.position()") == pytest.approx(4.5, abs=0.15)

    # No loop: it plays on past the region's end.
    page.click("#loop-clear")
    assert page.evaluate("window.freestems.mixer.loop()") is None
    assert not page.evaluate("window.freestems.mixer.sourcesLoop()")
    assert page.inner_text("#loop-words") == ""
    wait_js(page, "window.freestems.mixer.position() > 6.3", timeout=15)
    page.click("#play")


def test_recent_separations_show_only_what_the_server_still_has(open_page, web_server, tmp_path):
    page = open_page(expected_errors=("status of 404",))  # the page asked about a job the server forgot
    first_song = tmp_path / "First.mp3"
    second_song = tmp_path / "Second.mp3"
    write_test_file(first_song, "mp3", seconds=3.0, freq=410.0)
    write_test_file(second_song, "mp3", seconds=3.0, freq=520.0)
    first = separate(page, first_song)
    page.click("#again")
    second = separate(page, second_song)
    page.click("#delete")  # the second one's files go now
    wait_js(page, "document.getElementById('delete-status').textContent.includes('were deleted')")

    page.reload()
    wait_js(page, "window.freestems.events.some(event => event.kind === 'recent')")
    listed = page.eval_on_selector_all("#recent-list li", "items => items.map(item => item.dataset.job)")
    assert listed == [first["id"]]
    assert "First.mp3" in page.inner_text("#recent-list")
    link = page.locator("#recent-list a")
    assert link.get_attribute("download") == "First - stems.zip"
    assert second["id"] not in page.evaluate("localStorage.getItem('freestems.recent')")

    # The first one's result goes too (as when it expires): the list drops it.
    gone = httpx.delete(f"{web_server.url}/jobs/{first['id']}", headers={"X-Job-Token": first["token"]})
    assert gone.status_code == 204
    page.reload()
    wait_js(page, "window.freestems.events.some(event => event.kind === 'recent')")
    assert page.is_hidden("#recent")
    assert page.evaluate("JSON.parse(localStorage.getItem('freestems.recent'))") == []
