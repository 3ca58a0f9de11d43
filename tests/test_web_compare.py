"""The page with a server that serves two models: pick one with its stems, SDR and speed shown, separate, run
the other on the same song without uploading it again, and switch each stem between the two while it plays.

Real parts throughout: headless Chromium, a real server whose models are the catalog's ``scnet`` and
``mel-roformer-kim`` entries with small seeded weights of their own families (``served_helpers``), a real
proof of work, real separations, Web Audio.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from audio_samples import write_test_file
from served_helpers import KIM, SCNET, page_server
from service_helpers import LiveServer, wait_until
from web_helpers import ARTIFACTS, needs_chromium, wait_js

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> Iterator[LiveServer]:
    """A page server running SCNet (the default) and Kim's Mel-Band RoFormer, with a real proof of work."""
    folder = tmp_path_factory.mktemp("compare")
    with page_server(folder, (SCNET, KIM)) as server:
        yield server


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compare-songs") / "Two Takes.mp3"
    write_test_file(path, "mp3", seconds=8.0)
    return path


def ab_gains(page) -> dict[str, dict[str, float]]:
    return page.evaluate("window.freestems.compare.gains()")


def wait_ab(page, expected: dict[str, tuple[float, float]]) -> None:
    """Wait until each stem's two versions (A, B) have these gains (they glide there in milliseconds)."""

    def reached():
        now = ab_gains(page)
        return all(
            name in now and abs(now[name]["a"] - a) < 1e-3 and abs(now[name]["b"] - b) < 1e-3
            for name, (a, b) in expected.items()
        )

    wait_until(reached, timeout=10)


def test_pick_a_model_then_hear_another_on_the_same_song_stem_by_stem(open_page, two_models, song):
    posts: list[dict] = []

    def record(request) -> None:
        if request.method == "POST" and request.url.endswith("/jobs"):
            posts.append(
                {"type": request.headers.get("content-type", ""), "body": request.post_data_buffer or b""}
            )

    page = open_page(server=two_models)
    page.on("request", record)

    # The page opens on SCNet's job, four stems; "Choose the model yourself" shows every model.
    assert page.input_value("input[name=job]:checked") == "four-stems"
    assert page.is_hidden(f"input[name=model][value={KIM}]")  # Kim's model gives no four stems
    page.get_by_role("radio", name="Choose the model yourself").check()
    # The models the server runs, by their titles (never a file name), with stems, SDR and speed.
    offered = page.eval_on_selector_all("input[name=model]", "inputs => inputs.map(input => input.value)")
    assert offered == [SCNET, KIM]
    assert page.is_checked(f"input[name=model][value={SCNET}]")  # the server's default
    words = page.inner_text("#models")
    assert "SCNet (authors' base)" in words and "Mel-Band RoFormer vocals (Kimberley Jensen)" in words
    assert "Drums, Bass, Other, Vocals · SDR 9.03 dB · fastest" in words
    assert "Vocals, Instrumental (no vocals) · SDR vocals 10.98 dB · about 15.4× slower" in words
    # Choosing a model offers its own stems to take out: Kim's model has one.
    page.check(f"input[name=model][value={KIM}]")
    assert page.eval_on_selector_all("#two-stems option", "o => o.map(x => x.value)") == ["vocals"]
    page.check(f"input[name=model][value={SCNET}]")
    assert page.eval_on_selector_all("#two-stems option", "o => o.map(x => x.value)") == [
        "drums",
        "bass",
        "other",
        "vocals",
    ]

    # The footer names the models this server runs, not SCNet alone.
    credit = page.inner_text("#credit")
    assert "SCNet (authors' base)" in credit and "Mel-Band RoFormer vocals (Kimberley Jensen)" in credit

    # Separate with SCNet: vocals and the rest.
    page.set_input_files("#file", str(song))
    page.check("input[name=stems][value=two]")
    page.select_option("#two-stems", "vocals")
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    phase = wait_js(
        page, "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase", 120
    )
    assert phase == "result", page.evaluate("window.freestems.problem")
    assert page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)") == [
        "vocals",
        "no_vocals",
    ]
    first = page.evaluate("window.freestems.job")

    # The other model on the same song: offered by its title, run without a second upload.
    assert page.is_visible("#compare")
    assert page.inner_text("#compare-first") == "SCNet (authors' base)"
    assert page.eval_on_selector_all("#compare-model option", "o => o.map(x => x.value)") == [KIM]
    assert "Mel-Band RoFormer vocals (Kimberley Jensen)" in page.inner_text("#compare-model")
    page.click("#compare-run")
    wait_js(page, "window.freestems.compare.second() !== null", timeout=120)
    second = page.evaluate("window.freestems.compare.second()")
    assert second == {"model": KIM, "stems": ["vocals", "no_vocals"]}, page.inner_text("#compare-status")

    assert len(posts) == 2
    assert all("multipart/form-data" in post["type"] for post in posts)  # (Chromium hides a file body)
    rerun = posts[1]["body"]
    assert b'name="audio_file"' not in rerun and len(rerun) < 2000  # no audio crossed the network again
    assert f'name="from_job"\r\n\r\n{first["id"]}'.encode() in rerun
    assert f'name="model"\r\n\r\n{KIM}'.encode() in rerun
    jobs = two_models.service.store.jobs()
    assert [(job.model, job.options["two_stems"]) for job in jobs] == [(SCNET, "vocals"), (KIM, "vocals")]

    # A and B per stem, while it plays: each switch glides the two versions' gains, playback goes on.
    wait_ab(page, {"vocals": (1, 0), "no_vocals": (1, 0)})
    if not page.evaluate("window.freestems.mixer.playing()"):  # the live player may hand over still playing
        page.click("#play")
    wait_js(page, "window.freestems.mixer.playing() && window.freestems.mixer.position() > 0.2", timeout=15)
    page.click("#stems li[data-stem=vocals] .toggle-b")
    wait_ab(page, {"vocals": (0, 1), "no_vocals": (1, 0)})
    assert page.get_attribute("#stems li[data-stem=vocals] .toggle-b", "aria-pressed") == "true"
    assert page.get_attribute("#stems li[data-stem=vocals] .toggle-a", "aria-pressed") == "false"
    page.click("#stems li[data-stem=no_vocals] .toggle-b")
    wait_ab(page, {"vocals": (0, 1), "no_vocals": (0, 1)})
    at = page.evaluate("window.freestems.mixer.position()")
    wait_js(page, f"window.freestems.mixer.playing() && window.freestems.mixer.position() > {at + 0.2}")
    page.click("#stems li[data-stem=vocals] .toggle-a")
    wait_ab(page, {"vocals": (1, 0), "no_vocals": (0, 1)})
    assert page.evaluate("window.freestems.compare.choices()") == {"vocals": "a", "no_vocals": "b"}
    assert page.evaluate("window.freestems.mixer.playing()")
    # Mute still applies to whichever version is heard.
    page.get_by_role("button", name="Mute Instrumental (no vocals)").click()
    wait_ab(page, {"vocals": (1, 0), "no_vocals": (0, 0)})
    page.click("#play")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-compare.png"), full_page=True)
    ab_names = page.eval_on_selector_all(".toggle-ab", "buttons => buttons.map(b => b.title)")
    assert "Vocals by Mel-Band RoFormer vocals (Kimberley Jensen)" in ab_names

    # "Separate another song" forgets the comparison.
    page.click("#again")
    wait_js(page, "window.freestems.phase === 'setup'")
    assert page.is_hidden("#compare") and page.evaluate("window.freestems.compare.second()") is None


def separate(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    phase = wait_js(
        page, "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase", 120
    )
    assert phase == "result", page.evaluate("window.freestems.problem")


WATCH_COMPARE = """() => {
    // What screen readers hear from the compare card (its live regions), and what its status line shows.
    window.said = [];
    window.shown = [];
    const watch = (node, into) => new MutationObserver(() => into.push(node.textContent))
        .observe(node, {childList: true, characterData: true, subtree: true});
    for (const region of document.querySelectorAll('#compare [aria-live], #compare [role=status]')) {
        watch(region, window.said);
    }
    watch(document.getElementById('compare-status'), window.shown);
}"""

WAVE = "document.querySelector('#stems li[data-stem=vocals] canvas').toDataURL()"
LINK = """(() => {
    const link = document.querySelector('#stems li[data-stem=vocals] .stem-tail a[download]');
    return {href: link.href, download: link.download, label: link.getAttribute('aria-label')};
})()"""


def test_compare_says_only_its_steps_and_b_shows_its_own_wave_and_file(open_page, two_models, tmp_path):
    """The compare status was announced at every tick (about 100 times in 36 s): screen readers now hear each
    step once, the status line still shows the ticks. And a stem switched to B kept A's waveform and A's
    download: each side now shows its own."""
    page = open_page(server=two_models)
    song = tmp_path / "Both Sides.mp3"
    write_test_file(song, "mp3", seconds=20.0, freq=470.0)
    page.check("input[name=stems][value=two]")
    separate(page, song)
    page.evaluate(WATCH_COMPARE)
    page.click("#compare-run")
    wait_js(page, "window.freestems.compare.second() !== null", timeout=180)
    said, shown = page.evaluate("window.said"), page.evaluate("window.shown")
    assert len(shown) > len(said), (shown, said)  # the ticks were shown, not said
    assert said and len(said) == len(set(said)) <= 7, said  # each step once (a queued run has seven)
    assert not [words for words in said if "%" in words or "tries" in words], said
    assert said[-1].startswith("Now switch each stem between A"), said

    # B shows its own waveform and its own file; A again shows A's.
    if page.evaluate("window.freestems.mixer.playing()"):
        page.click("#play")
    page.focus("#seek")
    page.keyboard.press("Home")
    wave_a, link_a = page.evaluate(WAVE), page.evaluate(LINK)
    page.click("#stems li[data-stem=vocals] .toggle-b")
    wave_b, link_b = page.evaluate(WAVE), page.evaluate(LINK)
    assert wave_b != wave_a
    assert link_b["href"] != link_a["href"] and link_b["download"] == f"Both Sides - vocals ({KIM}).mp3"
    assert "Mel-Band RoFormer vocals (Kimberley Jensen)" in link_b["label"], link_b
    # The newest Kim job: the test above ran a compare with Kim too, on another song.
    second = [job for job in two_models.service.store.jobs() if job.model == KIM][-1]
    with zipfile.ZipFile(second.result_path) as bundle:
        expected = bundle.read("vocals.mp3")
    with page.expect_download() as download:
        page.click("#stems li[data-stem=vocals] .stem-tail a[download]")
    assert Path(download.value.path()).read_bytes() == expected
    page.click("#stems li[data-stem=vocals] .toggle-a")
    assert page.evaluate(WAVE) == wave_a and page.evaluate(LINK) == link_a
    ARTIFACTS.mkdir(exist_ok=True)
    page.click("#stems li[data-stem=vocals] .toggle-b")
    page.locator("#result").screenshot(path=str(ARTIFACTS / "web-compare-b.png"))


def test_after_delete_my_files_now_compare_says_why_it_cannot_run(open_page, two_models, tmp_path):
    """After "Delete my files now" the compare pointed to a "Try again" button that is not there: the song is
    gone from the server, so the card says so and its button cannot be pressed."""
    page = open_page(server=two_models)
    song = tmp_path / "Deleted.mp3"
    write_test_file(song, "mp3", seconds=3.0, freq=610.0)
    separate(page, song)
    assert page.is_enabled("#compare-run")
    page.click("#delete")
    wait_js(page, "document.getElementById('delete-status').textContent.includes('were deleted')")
    assert page.is_disabled("#compare-run")
    words = page.inner_text("#compare-status")
    assert "no longer on the server" in words and "Separate another song" in words, words
    assert "Try again" not in words
    assert page.is_visible("#again")  # the button the words name is there
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#result").screenshot(path=str(ARTIFACTS / "web-compare-deleted.png"))
    # Whatever goes wrong, the card's words name its own button, not the problem card's.
    told = page.evaluate(
        """async () => {
            const { compareFailure } = await import('./static/compare.js');
            const { Problem } = await import('./static/text.js');
            const codes = ['not_found', 'network', 'key_expired', 'cancelled', 'failed', 'invalid_parameter'];
            return codes.map((code) => compareFailure(new Problem(code, 'the detail')));
        }"""
    )
    assert not [words for words in told if "Try again" in words or "Change the song" in words], told
    assert "press Separate with it too" in told[1], told
