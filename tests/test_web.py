"""The web page in a real headless Chromium, against a real server with the small seeded model.

A person drops a song, the page earns a key (PBKDF2 proof of work in Web Workers), uploads it, follows the
job on the WebSocket, unzips the stems in the browser and mixes them with Web Audio. The page's debug hook
(``window.freestems``) shows its event log and the stem GainNodes' values, so that the tests check what the
audio graph does, not only what the buttons look like.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import altcha
import httpx
import pytest
from audio_samples import tiny_png, write_test_file
from service_helpers import connect_session, leftover_files, receive, wait_until
from web_helpers import ARTIFACTS, PHONE, events, needs_chromium, wait_js, write_silent_wav

pytestmark = needs_chromium

FOUR = ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("web-songs") / "My Song.mp3"
    write_test_file(path, "mp3", seconds=3.0)
    return path


def choose(page, path: Path) -> None:
    page.set_input_files("#file", str(path))


def drop(page, name: str, data: bytes) -> None:
    """Drag a file onto the drop zone, as a person does from their file manager."""
    page.evaluate(
        """([name, encoded]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([Uint8Array.from(atob(encoded), c => c.charCodeAt(0))], name));
            const zone = document.getElementById('drop');
            const options = {dataTransfer: transfer, bubbles: true, cancelable: true};
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, options));
            }
        }""",
        [name, base64.b64encode(data).decode()],
    )


def gains(page) -> dict[str, float]:
    return page.evaluate("window.freestems.mixer.gains()")


def wait_gains(page, expected: dict[str, float]) -> dict[str, float]:
    """Wait until the stem GainNodes reach ``expected`` (they glide there in a few milliseconds)."""

    def reached():
        now = gains(page)
        return now if all(abs(now[name] - value) < 1e-3 for name, value in expected.items()) else None

    return wait_until(reached, timeout=10)


def wait_result(page, timeout: float = 90.0) -> None:
    phase = wait_js(
        page, "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase", timeout
    )
    assert phase == "result", page.evaluate("window.freestems.problem")


def stem_rows(page) -> list[str]:
    return page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)")


def job_state(server, job: dict) -> str:
    """The job's state in the server's store (not a poll with its token, which would keep it followed);
    ``deleted`` once its record is gone."""
    stored = server.service.store.get(job["id"])
    return stored.state if stored is not None else "deleted"


def unnamed_controls(page) -> list[str]:
    """Visible form controls and buttons without an accessible name (a label, text or aria-label)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, a[href]')]
            .filter(el => el.offsetParent !== null || el.type === 'file')
            .filter(el => {
                const label = (el.labels && [...el.labels].map(l => l.textContent).join(' ')) || '';
                const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                    || label.trim() || (el.type !== 'range' && el.textContent.trim());
                return !named;
            })
            .map(el => el.outerHTML.slice(0, 80))"""
    )


def test_drop_a_song_watch_it_separate_mix_and_download(open_page, web_server, song, tmp_path):
    page = open_page()
    assert page.title().startswith("freestems")
    assert unnamed_controls(page) == []
    assert page.locator("#separate").is_disabled()
    # The file: name, size and length at once.
    choose(page, song)
    wait_js(page, "!document.getElementById('separate').disabled")
    assert page.inner_text("#file-name") == "My Song.mp3"
    assert page.inner_text("#file-size").endswith("kB")
    assert page.inner_text("#file-duration") == "0:03"
    # Options: four stems, the served model (the only one offered), MP3 256 kbps.
    assert page.is_checked("input[name=stems][value=all]")
    assert page.is_disabled("#two-stems")
    served = page.locator("input[name=model]:checked")
    assert served.get_attribute("value") == "small"
    assert page.locator("input[name=model]").count() == 1  # the catalog's others are not on this server
    assert "Drums, Bass, Other, Vocals · SDR not measured · speed not measured" in page.inner_text("#models")
    page.select_option("#format", "mp3:256")

    # Separate, from the keyboard.
    page.focus("#separate")
    page.keyboard.press("Enter")
    wait_js(page, "window.freestems.phase !== 'setup'")
    assert page.get_attribute("#announce", "aria-live") == "polite"
    wait_result(page)
    assert page.inner_text("#announce")  # the live region told screen readers how it went

    # Progress was shown along the way: the check, the upload, the job's states, the download.
    phases = [event["phase"] for event in events(page, "phase")]
    assert phases[:2] == ["check", "upload"] and phases[-1] == "fetch", phases
    assert {"queue", "separate"} & set(phases)
    assert any(event["text"].startswith("Uploading") for event in events(page, "progress"))
    job_states = [event["state"] for event in events(page, "job")]
    assert "running" in job_states or "queued" in job_states, job_states
    assert events(page, "solved") and events(page, "key")

    # One row per stem, each with a waveform, mute, solo, volume and download.
    assert stem_rows(page) == ["vocals", "drums", "bass", "other"]
    assert page.locator("#stems canvas").count() == 4
    assert page.evaluate("window.freestems.mixer.duration()") == pytest.approx(3.0, abs=0.1)
    assert unnamed_controls(page) == []
    assert wait_gains(page, {"vocals": 1, "drums": 1, "bass": 1, "other": 1})

    # Mute and solo change the audio graph (the stems' GainNodes).
    page.get_by_role("button", name="Mute Vocals").click()
    assert page.get_attribute("#stems li[data-stem=vocals] .toggle-mute", "aria-pressed") == "true"
    wait_gains(page, {"vocals": 0, "drums": 1, "bass": 1, "other": 1})
    page.get_by_role("button", name="Solo Drums").click()
    wait_gains(page, {"vocals": 0, "drums": 1, "bass": 0, "other": 0})
    page.get_by_role("button", name="Solo Bass").click()
    wait_gains(page, {"vocals": 0, "drums": 1, "bass": 1, "other": 0})
    page.get_by_role("button", name="Mute Vocals").click()
    page.get_by_role("button", name="Solo Drums").click()
    page.get_by_role("button", name="Solo Bass").click()
    wait_gains(page, {"vocals": 1, "drums": 1, "bass": 1, "other": 1})
    page.get_by_label("Other volume").fill("0.25")
    wait_gains(page, {"vocals": 1, "drums": 1, "bass": 1, "other": 0.25})

    # Play from the keyboard; the shared transport moves; pause. (The result may play on from the live
    # player, when it was playing at the hand-over: pause it first.)
    if page.evaluate("window.freestems.mixer.playing()"):
        page.click("#play")
    page.focus("#play")
    page.keyboard.press("Space")
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 0.3", timeout=15)
    assert page.get_attribute("#play", "aria-label") == "Pause"
    page.click("#play")
    assert not page.evaluate("window.freestems.mixer.playing()")
    paused_at = page.evaluate("window.freestems.mixer.position()")
    assert 0.3 < paused_at < 3.1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-result.png"), full_page=True)

    # Downloads: all (the server's files, named after the song as single downloads are) and one stem.
    job = page.evaluate("window.freestems.job")
    server_zip = httpx.get(f"{web_server.url}/jobs/{job['id']}/result", headers={"X-Job-Token": job["token"]})
    assert server_zip.status_code == 200
    with page.expect_download() as download:
        page.click("#download-all")
    assert download.value.suggested_filename == "My Song - stems.zip"
    saved = Path(download.value.path()).read_bytes()
    served = zipfile.ZipFile(io.BytesIO(server_zip.content))
    with zipfile.ZipFile(io.BytesIO(saved)) as bundle, served:
        assert bundle.testzip() is None  # every CRC holds
        assert sorted(bundle.namelist()) == [f"My Song - {name}" for name in FOUR]
        for name in FOUR:
            assert bundle.read(f"My Song - {name}") == served.read(name)
        vocals = served.read("vocals.mp3")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download Vocals").click()
    assert download.value.suggested_filename == "My Song - vocals.mp3"
    assert Path(download.value.path()).read_bytes() == vocals

    # The phone-width layout: nothing wider than the screen.
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / "web-result-phone.png"), full_page=True)

    # Delete my files now: the server forgets the job and its result.
    page.click("#delete")
    wait_js(page, "document.getElementById('delete-status').textContent.includes('were deleted')")
    gone = httpx.get(f"{web_server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})
    assert gone.status_code == 404
    assert page.is_disabled("#delete")


def test_karaoke_as_wav_then_the_same_again_from_the_cache(open_page, web_server, song):
    page = open_page(viewport=PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    choose(page, song)
    page.check("input[name=stems][value=two]")
    assert page.input_value("#two-stems") == "vocals"
    page.select_option("#format", "wav")
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_result(page)
    # WAV stems are deflated in the zip: the page inflated them (and checked their CRC) to decode them.
    assert stem_rows(page) == ["vocals", "no_vocals"]
    assert "Instrumental (no vocals)" in page.inner_text("#stems")
    wait_gains(page, {"vocals": 1, "no_vocals": 1})
    page.get_by_role("button", name="Solo Vocals").click()
    wait_gains(page, {"vocals": 1, "no_vocals": 0})
    first = page.evaluate("window.freestems.job")
    # Another song... the same one: the result cache answers at once (the job is done when created).
    # This time the device is too small to hold the decoded stems: the page offers the downloads only.
    page.evaluate("window.freestems.memoryBudget = 100000")
    page.click("#again")
    assert page.is_visible("#setup") and page.is_hidden("#file-info")
    choose(page, song)
    page.check("input[name=stems][value=two]")
    page.select_option("#format", "wav")
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_result(page)
    second = page.evaluate("window.freestems.job")
    assert second["id"] != first["id"]
    assert events(page, "created")[-1]["cache"] == "hit"
    assert stem_rows(page) == ["vocals", "no_vocals"]
    assert page.is_hidden("#transport") and page.locator("#stems canvas").count() == 0
    assert "too long to play in the page" in page.inner_text("#result-note")
    assert page.evaluate("window.freestems.mixer.gains()") is None
    with page.expect_download() as download:
        page.get_by_role("link", name="Download Instrumental (no vocals)").click()
    assert download.value.suggested_filename == "My Song - no_vocals.wav"
    assert Path(download.value.path()).read_bytes()[:4] == b"RIFF"


def test_rejected_files_show_their_error(open_page, web_server, song, tmp_path):
    page = open_page(expected_errors=("status of 415",))
    uploads: list[str] = []
    page.on("request", lambda request: uploads.append(request.url) if request.method == "POST" else None)

    # Too long: refused before any upload, with the limit in words.
    long_wav = write_silent_wav(tmp_path / "long.wav", seconds=1300)
    choose(page, long_wav)
    wait_js(page, "!document.getElementById('file-error').hidden")
    text = page.inner_text("#file-error")
    assert "too long" in text and "21:40" in text and "20 minutes" in text, text
    assert page.get_attribute("#file-error", "role") == "alert"
    assert page.is_disabled("#separate")

    # Too big: refused before it is even read.
    big = tmp_path / "big.mp3"
    with big.open("wb") as handle:
        handle.truncate(101_000_000)
    choose(page, big)
    wait_js(page, "document.getElementById('file-error').textContent.includes('too big')")
    text = page.inner_text("#file-error")
    assert "101 MB" in text and "the limit is 100 MB" in text, text
    assert page.is_disabled("#separate")
    assert uploads == []

    # Not audio, whatever its name (dropped on the page): the browser cannot read it and it does not begin
    # as audio does, so the page refuses it before any upload, as the server would.
    drop(page, "picture.mp3", tiny_png())
    wait_js(page, "document.getElementById('file-error').textContent.includes('not audio')")
    assert page.inner_text("#file-name") == "picture.mp3"
    assert page.is_disabled("#separate")
    assert uploads == []

    # It begins as an MP3 does (a tag) but is not one: the page leaves it to the server, which refuses it
    # (415), and the page says so.
    drop(page, "broken.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"not really an mp3 " * 200)
    wait_js(page, "!document.getElementById('separate').disabled")
    assert page.inner_text("#file-name") == "broken.mp3"
    assert page.inner_text("#file-duration").startswith("unknown")
    page.click("#separate")
    wait_js(page, "window.freestems.phase === 'problem'")
    assert page.is_visible("#problem") and page.get_attribute("#problem", "role") == "alert"
    assert "not audio" in page.inner_text("#problem-text")
    assert page.evaluate("window.freestems.problem")["status"] == 415
    assert any(url.endswith("/jobs") for url in uploads)
    page.click("#problem-dismiss")
    assert page.is_visible("#setup")
    assert page.is_hidden("#file-info")  # a file problem: choose another file
    assert page.evaluate("document.activeElement.id") == "file"
    # The refused upload did not use the key up: the next song reuses the session (no new proof of work).
    choose(page, song)
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_result(page)
    assert len(events(page, "solved")) == 1 and len(events(page, "session_reused")) == 1


def test_a_refused_session_is_explained(open_page, start_server):
    """The server refuses the WebSocket handshake (here: too many sessions from this address). Browsers
    hide the status of a failed handshake; the page finds the server up and explains what it can."""
    server = start_server(sessions_per_minute=1)
    page = open_page(server=server, expected_errors=("WebSocket", "429"))
    with connect_session(server) as ws:  # the one session of this minute, from the same address
        assert receive(ws)["type"] == "challenge"
    page.set_input_files("#file", str(write_silent_wav(server.data_dir.parent / "short.wav", seconds=2)))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_js(page, "window.freestems.phase === 'problem'")
    assert page.evaluate("window.freestems.problem")["code"] == "session_refused"
    assert "did not open a session" in page.inner_text("#problem-text")
    assert "Wait a minute" in page.inner_text("#problem-action")
    assert page.is_visible("#retry") and page.is_enabled("#retry")


def start_slow_separation(page, path: Path, seconds: float) -> dict:
    """Start a separation that runs long enough to be interrupted (three passes); return its job."""
    write_test_file(path, "mp3", seconds=seconds, freq=330.0)
    choose(page, path)
    page.click(".advanced summary")
    page.select_option("#shifts", "3")
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    wait_js(page, "window.freestems.phase === 'separate'", timeout=60)
    return page.evaluate("window.freestems.job")


def test_closing_the_tab_cancels_the_job_after_the_grace(open_page, web_server, tmp_path):
    page = open_page()
    job = start_slow_separation(page, tmp_path / "long.mp3", seconds=60.0)
    assert page.inner_text("#status").startswith("Separating")
    page.close()
    wait_until(lambda: job_state(web_server, job) == "cancelled", timeout=30)
    wait_until(lambda: leftover_files(web_server.data_dir) == [], timeout=30)


def test_the_cancel_button_stops_and_returns_to_the_form(open_page, web_server, tmp_path):
    page = open_page()
    job = start_slow_separation(page, tmp_path / "medium.mp3", seconds=40.0)
    page.click("#cancel")  # asks first (in the page), the safe answer focused
    assert page.get_attribute("#cancel-confirm", "role") == "alertdialog"
    assert page.evaluate("document.activeElement.id") == "cancel-no"
    page.keyboard.press("Escape")  # no: the question goes, the separation goes on
    assert page.is_hidden("#cancel-confirm") and page.evaluate("document.activeElement.id") == "cancel"
    assert page.get_attribute("#cancel", "aria-expanded") == "false"
    page.click("#cancel")
    page.click("#cancel-yes")
    wait_js(page, "window.freestems.phase === 'setup'")
    assert page.is_visible("#setup") and page.is_visible("#file-info")
    assert not page.is_disabled("#separate")
    wait_until(lambda: job_state(web_server, job) == "deleted", timeout=30)  # Cancel deletes it at once


def test_the_page_follows_the_servers_description(open_page, song):
    """What the page does with ``GET /config`` (the service's description of itself; faked here with a
    route, so this holds before and after the service has the endpoint)."""
    description = {
        "model": "scnet-xl",
        "sources": ["drums", "bass", "other", "vocals", "guitar"],
        "models": [
            {"name": "scnet", "title": "SCNet", "sdr": {"avg": 9.03}, "relative_cost": 1, "served": False},
            {"name": "scnet-xl", "title": "XL", "sdr": {"avg": 9.8}, "relative_cost": 6, "served": True},
        ],
        "limits": {"max_upload_mb": 0.02, "max_duration": 90, "max_shifts": 2},
        "formats": ["mp3", "wav", "flac"],
        "mp3_bitrates": [128, 320],
        "mp3_bitrate": 320,
        "pow": {"counter": 5000},
        "result_ttl": 600,
    }

    def fake_config(page):
        page.route("**/config", lambda route: route.fulfill(json=description))

    page = open_page(before=fake_config)
    assert page.evaluate("window.freestems.config.described") is True
    assert page.inner_text("#file-hint").endswith("up to 20 kB and 1 minute 30 seconds.")
    assert page.input_value("input[name=model]:checked") == "scnet-xl"
    assert page.locator("input[name=model][value=scnet]").count() == 0  # not served: not offered
    assert "SDR 9.80 dB · about 6× slower" in page.inner_text("#models")
    formats = page.eval_on_selector_all("#format option", "options => options.map(o => o.value)")
    assert formats == ["mp3:320", "mp3:128", "wav", "flac"]
    assert page.input_value("#format") == "mp3:320"
    assert page.eval_on_selector_all("#shifts option", "options => options.length") == 2
    assert "Guitar" in page.inner_text("#two-stems")
    assert "after 10 minutes" in page.inner_text("footer")
    choose(page, song)  # 49 kB: over this server's limit
    wait_js(page, "!document.getElementById('file-error').hidden")
    assert "the limit is 20 kB" in page.inner_text("#file-error")


@pytest.mark.parametrize("algorithm", ["PBKDF2/SHA-256", "PBKDF2/SHA-512", "SHA-256"])
def test_the_page_solves_challenges_the_python_library_accepts(open_page, algorithm):
    """The JavaScript solver against altcha's own create and verify (deterministic mode, signed key)."""
    page = open_page()
    secret = "web test secret"
    challenge = altcha.create_challenge(
        algorithm=algorithm,
        cost=50,
        counter=23,
        expires_at=int(time.time()) + 60,
        data={"conn": "abc"},
        hmac_secret=secret,
        hmac_key_secret="key secret",
    )
    payload = page.evaluate(
        """async (challenge) => {
            const altcha = await import('/static/altcha.js');
            const solution = await altcha.search(challenge.parameters, {});
            return altcha.encodePayload(challenge, solution);
        }""",
        challenge.to_dict(),
    )
    decoded = json.loads(base64.b64decode(payload))
    assert decoded["solution"]["counter"] == 23
    result = altcha.verify_solution(payload, secret, hmac_key_secret="key secret")
    assert result.verified, vars(result)


def test_errors_are_told_in_plain_words(open_page):
    page = open_page()
    told = page.evaluate(
        """async () => {
            const { describe, Problem } = await import('/static/text.js');
            const cases = [
                ['queue_full', 'the queue is full; try again in 12 s', {status: 429, retryAfter: 12}],
                ['rate_limited', 'too many sessions', {status: 429, retryAfter: 75}],
                ['network', '', {}],
                ['connection_lost', '', {}],
                ['session_expired', 'the key expired', {}],
                ['unavailable', 'the server is restarting; try again in a minute', {status: 503}],
                ['too_long', 'x.mp3: the audio is 25 min long; the limit is 20 min', {status: 413}],
            ];
            return cases.map(([code, message, extra]) => describe(new Problem(code, message, extra)));
        }"""
    )
    busy, limited, network, lost, expired, restarting, too_long = told
    assert busy["title"] == "The server is busy: its queue is full."
    assert busy["action"] == "Try again in 12 seconds." and busy["retryAfter"] == 12
    assert limited["action"] == "Try again in 1 minute 15 seconds."
    assert "cannot be reached" in network["title"] and "internet connection" in network["action"]
    assert "before the separation started" in lost["title"]
    assert "session expired" in expired["title"] and expired["action"] == "Press Try again."
    assert restarting["title"] == "The server is restarting; try again in a minute."
    assert "limit is 20 min" in too_long["action"]
