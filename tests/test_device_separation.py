"""Separating on the visitor's device, end to end: the real page of a real server in headless Chromium, its
real engine worker running the exported network with onnxruntime-web (WASM), on a real encoded song.

The small seeded model (whole-track and spectrogram normalisation on, so both are covered; a 2 s segment, so
a few seconds of song take several overlapping chunks and a tail) is exported with ``freestems export``'s
code into the server's ``device_dir``. The page decodes the MP3 itself; the Python engine then separates
the very samples the browser decoded (sent back from the page: browsers' MP3 decoders differ from PyAV's
by an encoder delay), and every stem must match it at 60 dB or better. Meanwhile every request of the page
and its workers is watched: nothing is posted, no socket is opened, the network file is fetched once over
two separations (the second reads Cache Storage) and the result card plays the stems.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from audio_samples import write_test_file
from conftest import one_torch_thread
from device_helpers import hashed_export
from model_helpers import make_small_checkpoint
from web_helpers import ARTIFACTS, events, needs_chromium, wait_js

from freestems import engine
from freestems.service import device

pytestmark = needs_chromium
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

RUNTIME = device.VENDOR / "onnxruntime-web" / "ort.wasm.min.mjs"
needs_runtime = pytest.mark.skipif(
    not RUNTIME.is_file(), reason="onnxruntime-web is not fetched (scripts/fetch_web_deps.sh)"
)
MIN_SNR_DB = 60.0
FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"

# Float32Arrays go back to Python as base64 (a few MB in one evaluate, no JSON of numbers).
ENCODE = """
  const encode = (array) => {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(text);
  };
  const encodeStems = (names, stems) =>
    Object.fromEntries(names.map((name) => [name, stems[name].map(encode)]));
"""
# The last device run of the page: its stems, the samples the browser decoded, the worker's facts.
LAST_RUN = f"""() => {{
  {ENCODE}
  const last = window.freestems.device.last();
  return {{stems: encodeStems(last.names, last.stems), input: last.input.map(encode), info: last.info}};
}}"""
# The same decoded song through the engine's worker again, with the fp32 network.
FP32_RUN = f"""async () => {{
  {ENCODE}
  const device = await import('/static/device.js');
  const last = window.freestems.device.last();
  const result = await device.separateOnDevice(
    {{model: 'small', channels: last.input, precision: 'fp32', keep: true}}
  );
  return encodeStems(result.names, result.stems);
}}"""


def _floats(channels: list[str]) -> np.ndarray:
    return np.stack([np.frombuffer(base64.b64decode(text), np.float32) for text in channels])


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = float(np.sum((reference - estimate) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def music(seconds: float, seed: int = 4) -> np.ndarray:
    """Stereo tones, a gliding bass, clicks and noise: something in every stem's range, under full scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 44100)) / 44100
    tones = 0.25 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 55 * t * (1 + 0.02 * t))
    clicks = (np.sin(2 * np.pi * 2 * t) > 0.995) * 0.3
    left = tones + clicks + 0.03 * rng.standard_normal(t.size)
    right = 0.7 * tones + 0.5 * clicks + 0.03 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small model (spec_norm and normalize on) and its export in ``<device_dir>/small``."""
    from freestems import export
    from freestems.models import load_model

    folder = tmp_path_factory.mktemp("device")
    checkpoint = make_small_checkpoint(folder / "small.pt", seed=3, normalize=True)
    with one_torch_thread():
        model = load_model(model_file=checkpoint, spec_norm=True)
        export.export_model(model, folder / "exports" / model.name)
    return model, folder / "exports"


@contextlib.contextmanager
def device_server(tmp_path: Path, model, device_dir: Path) -> Iterator:
    from service_helpers import running_server, small_settings

    from freestems.executors import LocalExecutor
    from freestems.service.jobs import Paths

    settings = small_settings(tmp_path / "data", device_dir=device_dir)
    executor = LocalExecutor(lambda: model, Paths(settings.data_dir).work, workers=settings.workers)
    with running_server(settings, executor) as server:
        yield server


class Traffic:
    """Every request of a browser context (its pages, their workers, the service worker) and every WebSocket
    it opens. A request the service worker answers from the network is seen twice: ``paths`` lists the
    page's side only."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int, bool]] = []
        self.sockets: list[str] = []

    def watch(self, page) -> None:
        page.context.on("request", self._request)
        page.on("websocket", lambda socket: self.sockets.append(socket.url))

    def _request(self, request) -> None:
        if request.url.startswith(("blob:", "data:")):
            return  # the page's own object URLs (the stems' WAV files): nothing leaves the browser
        body = request.post_data_buffer
        size = len(body) if body else 0
        self.requests.append((request.method, request.url, size, request.service_worker is not None))

    def paths(self, since: int = 0, until: int | None = None) -> list[str]:
        return [
            url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
            for _, url, _, by_service_worker in self.requests[since:until]
            if not by_service_worker
        ]


def separate_on_device(page, song: Path) -> str:
    wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
    page.evaluate("window.freestems.device.keep = true")  # the floats, for the comparison
    page.check('input[name="where"][value="device"]')
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")
    return wait_js(page, FINISHED, timeout=240)


@needs_runtime
def test_a_song_is_separated_on_the_device_as_the_engine_does_and_nothing_leaves(
    exported, open_page, tmp_path
):
    model, device_dir = exported
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=5.0, signal=music(5.0))
    traffic = Traffic()
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server, before=traffic.watch)
        assert page.evaluate("crossOriginIsolated") is True
        assert page.is_visible("text=On this device (nothing is uploaded)")
        wait_js(page, "window.freestems.device.advice().words !== undefined", timeout=30)
        page.check('input[name="where"][value="server"]')  # whatever the page chose for the person
        assert page.is_enabled("#format")
        before = len(traffic.requests)
        started = time.monotonic()
        assert separate_on_device(page, song) == "result", page.evaluate("window.freestems.problem")
        first_run_s = time.monotonic() - started
        run = page.evaluate(LAST_RUN)
        stems = page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)")
        playable = page.evaluate("window.freestems.mixer.duration()")
        handovers = events(page, "handover")  # the live player (the blocks as they were finished) took over
        first_sounds = events(page, "device_first_sound")
        first = len(traffic.requests)
        assert page.is_disabled("#format") and page.is_disabled("#shifts")  # WAV files from one pass

        # Again, karaoke this time (vocals and the rest): the network comes from Cache Storage.
        page.click("#again")
        page.check('input[name="stems"][value="two"]')
        page.select_option("#two-stems", "vocals")
        assert separate_on_device(page, song) == "result", page.evaluate("window.freestems.problem")
        karaoke = page.evaluate(LAST_RUN)
        second = karaoke["info"]
        karaoke_rows = page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)")
        networks = [path for path in traffic.paths() if path.endswith(".onnx")]
        second_end = len(traffic.requests)
        # The fp32 file too (the page's "auto" took the fp16 one where the export measured it faithful).
        fp32 = page.evaluate(FP32_RUN)

    mix = _floats(run["input"])
    assert mix.shape[0] == 2 and abs(mix.shape[1] - 5 * 44100) < 44100 // 10  # the browser's decoding
    with one_torch_thread():
        expected = engine.separate(mix, model)
    assert list(run["stems"]) == list(model.sources) and sorted(stems) == sorted(model.sources)
    snrs = {}
    for name, reference in expected.items():
        got = _floats(run["stems"][name])
        assert got.shape == reference.shape
        snrs[name] = snr_db(reference, got)
    fp32_snrs = {name: snr_db(reference, _floats(fp32[name])) for name, reference in expected.items()}
    print(f"device ({run['info']['file']}) vs engine SNR (dB): {snrs}; fp32 file: {fp32_snrs}")
    print(f"first run {first_run_s:.1f} s in all; the worker's: {run['info']}")
    assert min(snrs.values()) >= MIN_SNR_DB, snrs
    assert min(fp32_snrs.values()) >= MIN_SNR_DB, fp32_snrs
    with one_torch_thread():
        pair = engine.separate(mix, model, two_stems="vocals")
    assert list(karaoke["stems"]) == karaoke_rows == ["vocals", "no_vocals"]
    for name, reference in pair.items():
        assert snr_db(reference, _floats(karaoke["stems"][name])) >= MIN_SNR_DB, name
    assert playable == pytest.approx(mix.shape[1] / 44100, abs=0.01)
    assert len(handovers) == 1  # the whole blocks made whole stems: the provisional one was replaced
    # The short first chunk (half the small model's 2 s segment) was heard before the first whole chunk,
    # and is in no stem (they match the engine above).
    timings = run["info"]["timings"]
    assert [event["samples"] for event in first_sounds] == [44100]
    assert timings["first_sound_s"] < timings["first_block_s"]

    # Nothing left the browser: no upload, no form, no socket; only GETs of the page's own files.
    assert traffic.sockets == []
    assert [(method, url) for method, url, *_ in traffic.requests if method not in ("GET", "HEAD")] == []
    assert all(size == 0 for _, _, size, _ in traffic.requests)
    allowed = ("static/", "vendor/onnxruntime-web/", "models/small/device/", "sw.js")
    own = [path for path in traffic.paths(before) if not path.startswith(allowed)]
    assert set(own) <= {"", "config"}  # the service worker keeps a copy of the page for offline use
    # Once over both runs, from its hash-named URL (the manifest's: the server lets it be cached for good).
    hashed = r"models/small/device/[0-9a-f]{64}/network\.fp(16|32)\.onnx"
    assert len(networks) == 1 and re.fullmatch(hashed, networks[0]), networks
    assert run["info"]["url"] == f"{server.url}/{networks[0]}" and networks[0].endswith(run["info"]["file"])
    assert run["info"]["cached"] is False and second["cached"] is True
    again = traffic.paths(first, second_end)
    assert again.count("models/small/device/manifest.json") == 1  # asked again (small), the network not


@needs_runtime
def test_a_song_over_the_upload_limit_plays_while_it_separates_on_the_device_and_is_cancelled(
    exported, open_page, tmp_path
):
    model, device_dir = exported
    song = tmp_path / "long.wav"
    write_test_file(song, "wav", seconds=30.0, signal=music(30.0))  # 5.3 MB: over the 4 MB upload limit
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server)
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
        page.check('input[name="where"][value="server"]')  # an upload first: the size limit applies
        page.set_input_files("#file", str(song))
        assert "This file is too big" in wait_js(page, "document.getElementById('file-error').textContent")
        page.check('input[name="where"][value="device"]')  # nothing is uploaded: the size is no matter
        wait_js(page, "!document.getElementById('separate').disabled")
        assert page.is_hidden("#file-error")
        page.click("#separate")
        status = "document.getElementById('status').textContent"
        wait_js(page, f"/Separating on this device: /.test({status})", timeout=120)
        # The first finished block plays at once, while the rest is separated: the short first chunk's,
        # which the first whole chunk's then replaces.
        wait_js(page, "(window.freestems.mixer.live() || {}).ready > 0", timeout=120)
        assert events(page, "device_first_sound")
        wait_js(page, "window.freestems.mixer.live().ready > 1", timeout=120)
        segments = page.evaluate("window.freestems.mixer.live().segments")
        assert segments[0][0] == 0 and not any(provisional for *_, provisional in segments)
        assert page.evaluate("window.freestems.mixer.live().complete") is False
        page.click("#cancel")
        page.click("#cancel-yes")
        wait_js(page, "window.freestems.phase === 'setup'")
        assert page.is_visible("#setup") and not page.is_visible("#work")
        assert page.evaluate("window.freestems.device.last()") is None
        assert page.evaluate("window.freestems.mixer.live()") is None  # the live player went with it
        page.check('input[name="where"][value="server"]')  # back to an upload: the limit again
        wait_js(page, "document.getElementById('separate').disabled")
        assert page.is_visible("#file-error")


@needs_runtime
def test_once_it_has_separated_on_the_device_the_page_does_it_offline(exported, open_page, tmp_path):
    model, device_dir = exported
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=3.0, signal=music(3.0))
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server, expected_errors=("ERR_INTERNET_DISCONNECTED",))
        assert separate_on_device(page, song) == "result"
        wait_js(page, "Boolean(navigator.serviceWorker.controller)")
        wait_js(page, "window.freestems.events.some(event => event.kind === 'offline' && event.registered)")
        page.context.set_offline(True)
        try:
            page.reload()
            wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
            assert separate_on_device(page, song) == "result", page.evaluate("window.freestems.problem")
            assert page.evaluate("window.freestems.device.last().info.cached") is True
            assert page.evaluate("fetch('health').then(() => 'online', () => 'offline')") == "offline"
        finally:
            page.context.set_offline(False)


def test_without_the_runtime_the_page_says_device_separation_is_unavailable(
    exported, open_page, tmp_path, monkeypatch
):
    model, device_dir = exported
    monkeypatch.setattr(device, "VENDOR", tmp_path / "no-vendor")
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server, expected_errors=("404",))
        hint = wait_js(
            page,
            "window.freestems.device.unavailable() !== 'checking' && "
            "document.getElementById('where-hint').textContent",
        )
        assert hint == (
            "Separating on this device is unavailable: "
            "this server does not have the in-browser runtime installed."
        )
        assert page.is_disabled('input[name="where"][value="device"]')
        assert page.is_checked('input[name="where"][value="server"]')


def test_a_server_without_exports_shows_no_choice(open_page):
    page = open_page()
    assert page.evaluate("window.freestems.config.deviceModels") == []
    assert page.is_hidden("#where")
    # Nor a service worker: a server that offers only uploads has nothing to do offline.
    assert page.evaluate("navigator.serviceWorker.getRegistrations().then((found) => found.length)") == 0


# The network file as the worker gets it: the manifest, then files.js with its hash-named URL.
FETCH_NETWORK = """async () => {
  const files = await import('/static/device/files.js');
  const manifestUrl = new URL('models/small/device/manifest.json', location.href).href;
  const manifest = await (await fetch(manifestUrl, {cache: 'no-cache'})).json();
  const entry = manifest.onnx.files[0];
  const stable = new URL(entry.file, manifestUrl).href;
  const got = await files.fetchModelFile(new URL(entry.url, manifestUrl).href, entry, {cacheAs: stable});
  const kept = await (await caches.open(files.CACHE_NAME)).keys();
  return {cached: got.cached, text: new TextDecoder().decode(got.buffer), kept: kept.map((r) => r.url)};
}"""


def test_a_new_export_is_downloaded_once_and_replaces_the_old_one_in_cache_storage(
    open_page, start_server, tmp_path
):
    first = hashed_export(tmp_path / "device")
    server = start_server(device_dir=tmp_path / "device")
    traffic = Traffic()
    page = open_page(server=server, before=traffic.watch)
    stable = f"{server.url}/models/small/device/network.fp32.onnx"
    runs = [page.evaluate(FETCH_NETWORK), page.evaluate(FETCH_NETWORK)]
    second = hashed_export(tmp_path / "device", content=b"the network, version 2")
    runs += [page.evaluate(FETCH_NETWORK), page.evaluate(FETCH_NETWORK)]

    assert [(run["cached"], run["text"][-9:]) for run in runs] == [
        (False, "version 1"), (True, "version 1"), (False, "version 2"), (True, "version 2")
    ]  # fmt: skip
    assert runs[1]["kept"] == [f"{stable}?sha256={first['sha256']}"]
    assert runs[3]["kept"] == [f"{stable}?sha256={second['sha256']}"]  # the old one dropped
    downloads = [path for path in traffic.paths() if path.endswith(".onnx")]
    assert downloads == [
        f"models/small/device/{first['sha256']}/network.fp32.onnx",
        f"models/small/device/{second['sha256']}/network.fp32.onnx",
    ]


@needs_runtime
def test_a_device_only_server_offers_no_upload_and_the_page_separates_on_the_device(
    exported, open_page, tmp_path
):
    from service_helpers import running_server, small_settings

    _, device_dir = exported
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=3.0, signal=music(3.0))
    settings = small_settings(tmp_path / "data", device_dir=device_dir, device_only=True, models=("small",))
    traffic = Traffic()
    with running_server(settings, None) as server:  # its own executor: no model loaded
        page = open_page(server=server, before=traffic.watch)
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
        notice = page.text_content("#where-hint")
        assert notice.startswith("This server separates on your own device: nothing is uploaded.")
        assert page.is_visible("#where-hint") and page.is_hidden("text=On our server")
        assert "never leaves this browser" in page.text_content(".site-footer")
        hint = page.inner_text("#file-hint")  # no upload: no size limit to name, the length limit stays
        assert "MB" not in hint and "4 minutes" in hint, hint
        page.set_input_files("#file", str(song))
        wait_js(page, "!document.getElementById('separate').disabled")
        assert page.is_hidden("#cost-hint")  # nothing of it runs on the server: no compute to count
        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("document.getElementById('where').scrollIntoView({block: 'center'})")
        page.screenshot(path=str(ARTIFACTS / "device-only-setup.png"))
        page.click("#separate")  # nothing to choose: it runs on the device
        assert wait_js(page, FINISHED, timeout=240) == "result", page.evaluate("window.freestems.problem")
        stems = page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)")
        assert "nothing was uploaded" in page.text_content("#result-note")
    assert sorted(stems) == ["bass", "drums", "other", "vocals"]
    assert traffic.sockets == []
    assert [(method, url) for method, url, *_ in traffic.requests if method not in ("GET", "HEAD")] == []
    assert all(size == 0 for _, _, size, _ in traffic.requests)


@needs_runtime
def test_asked_for_the_int8_file_the_page_separates_with_it_on_wasm(exported, open_page, tmp_path):
    """The int8 export (its LSTMs in 8 bits) runs in onnxruntime-web's WASM backend, only when asked for
    (``window.freestems.device.precision``, which bench/bench_browser.py sets): the stems are further from
    the engine than the 60 dB of the fp32 and fp16 files, and still the same stems."""
    from service_helpers import running_server, small_settings

    from freestems import export

    model, _ = exported
    with one_torch_thread():
        export.export_model(model, tmp_path / "exports" / "small", int8=True)
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=3.0, signal=music(3.0))
    settings = small_settings(
        tmp_path / "data", device_dir=tmp_path / "exports", device_only=True, models=("small",)
    )
    traffic = Traffic()
    with running_server(settings, None) as server:
        page = open_page(server=server, before=traffic.watch)
        page.evaluate("window.freestems.device.precision = 'int8'")
        assert separate_on_device(page, song) == "result", page.evaluate("window.freestems.problem")
        run = page.evaluate(LAST_RUN)
    info = run["info"]
    assert info["file"] == "network.int8.onnx" and info["backend"] == "wasm"
    assert info["backend_why"] == "the int8 file runs on WASM only"
    assert [path.rsplit("/", 1)[1] for path in traffic.paths() if path.endswith(".onnx")] == [
        "network.int8.onnx"
    ]
    mix = _floats(run["input"])
    with one_torch_thread():
        expected = engine.separate(mix, model)
    snrs = {name: snr_db(reference, _floats(run["stems"][name])) for name, reference in expected.items()}
    print(f"int8 on the device vs engine (dB): {snrs}")
    assert min(snrs.values()) >= 30, snrs


def test_a_device_only_page_whose_browser_cannot_says_why_and_uploads_nothing(exported, open_page, tmp_path):
    from service_helpers import running_server, small_settings

    _, device_dir = exported
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=1.0)
    settings = small_settings(tmp_path / "data", device_dir=device_dir, device_only=True, models=("small",))
    traffic = Traffic()

    def without_runtime(page) -> None:  # as if the runtime went away after the server started
        traffic.watch(page)
        page.route("**/vendor/onnxruntime-web/**", lambda route: route.fulfill(status=404, body="gone"))

    with running_server(settings, None) as server:
        page = open_page(server=server, before=without_runtime, expected_errors=("404",))
        wait_js(page, "window.freestems.device.unavailable() !== 'checking'")
        assert page.text_content("#where-hint") == (
            "This server separates on your own device: nothing is uploaded. Separating on this device is "
            "unavailable: this server does not have the in-browser runtime installed."
        )
        assert page.is_hidden("text=On our server")
        page.set_input_files("#file", str(song))
        wait_js(page, "!document.getElementById('separate').disabled")
        page.click("#separate")
        wait_js(page, "window.freestems.phase === 'problem'")
        problem = page.evaluate("window.freestems.problem")
    assert problem["code"] == "device_only" and "runtime installed" in problem["title"]
    assert "Reload the page" in problem["action"]
    assert traffic.sockets == []
    assert [(method, url) for method, url, *_ in traffic.requests if method not in ("GET", "HEAD")] == []


def test_a_browser_without_webassembly_simd_is_told_before_any_download(exported, open_page, tmp_path):
    """The runtime the page ships needs WebAssembly SIMD: a browser without it hears why at once, and
    neither the runtime's code nor the network is fetched."""
    from service_helpers import running_server, small_settings

    _, device_dir = exported
    settings = small_settings(tmp_path / "data", device_dir=device_dir, device_only=True, models=("small",))
    traffic = Traffic()

    def without_simd(page) -> None:  # as in a browser whose WebAssembly has no SIMD
        traffic.watch(page)
        page.add_init_script(
            "const validate = WebAssembly.validate;"
            "WebAssembly.validate = (bytes) => !new Uint8Array(bytes).includes(253) && validate(bytes);"
        )

    with running_server(settings, None) as server:
        page = open_page(server=server, before=without_simd)
        wait_js(page, "window.freestems.device.unavailable() !== 'checking'")
        reason = page.evaluate("window.freestems.device.unavailable()")
    assert reason == "this browser cannot run the model (no WebAssembly SIMD, which the runtime needs)"
    fetched = [url for _, url, *_ in traffic.requests]
    assert not [url for url in fetched if "/vendor/" in url or ".onnx" in url], fetched


@needs_runtime
def test_the_format_and_passes_say_why_they_are_fixed_on_the_device_and_a_device_only_page_hides_them(
    exported, open_page, tmp_path
):
    """The device gives WAV files from one pass: with a choice, the format and the passes are disabled
    while the device is chosen and their hints say why (and say their own words again for our server); a
    device-only server shows neither (its notice says WAV files, one pass)."""
    from service_helpers import running_server, small_settings

    model, device_dir = exported
    ARTIFACTS.mkdir(exist_ok=True)
    hints = "['format-hint', 'shifts-hint'].map((id) => document.getElementById(id).textContent)"
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server)
        wait_js(page, "window.freestems.device.advice().words !== undefined", timeout=30)
        page.check('input[name="where"][value="server"]')  # whatever the page chose for the person
        on_server = page.evaluate(hints)
        page.check('input[name="where"][value="device"]')
        on_device = page.evaluate(hints)
        assert page.is_disabled("#format") and page.is_disabled("#shifts")
        page.click(".advanced summary")
        page.evaluate("document.getElementById('format').scrollIntoView({block: 'center'})")
        page.screenshot(path=str(ARTIFACTS / "device-format-hints.png"))
        page.check('input[name="where"][value="server"]')
        assert page.evaluate(hints) == on_server and page.is_enabled("#format")
    assert on_server[0].startswith("MP3 files are small") and on_server[1].startswith("More passes")
    assert on_device == [
        "On this device the stems are WAV files (lossless): the other formats are made on our server.",
        "On this device the stems come from one pass: more passes run on our server.",
    ]
    settings = small_settings(tmp_path / "only", device_dir=device_dir, device_only=True, models=("small",))
    with running_server(settings, None) as server:
        page = open_page(server=server)
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
        assert page.is_hidden("#format") and page.is_hidden("#shifts") and page.is_hidden(".advanced")
        assert "as WAV files, in one pass" in page.text_content("#where-hint")
        page.evaluate("document.getElementById('where').scrollIntoView({block: 'start'})")
        page.screenshot(path=str(ARTIFACTS / "device-only-options.png"))


# A speed this browser remembers for the small model (device-speed.js's localStorage), before the page loads.
REMEMBER = (
    "localStorage.setItem('freestems.device.speed', JSON.stringify({small: {realtime: %s, threads: 2}}))"
)
ADVICE = "window.freestems.device.advice()"


def test_the_page_chooses_the_device_where_it_keeps_up_and_says_why(exported, open_page, tmp_path):
    model, device_dir = exported
    with device_server(tmp_path, model, device_dir) as server:
        # Remembered slower than the music: our server, with the measured pace.
        slow = open_page(server=server, before=lambda page: page.add_init_script(REMEMBER % "0.4"))
        wait_js(slow, f"{ADVICE}.words !== undefined", timeout=30)
        assert slow.is_checked('input[name="where"][value="server"]')
        hint = slow.text_content("#where-hint")
        assert hint.startswith("Our server is chosen for you: on this device it separated 0.4 s of music per")
        assert "slower than the music plays" in hint

        # Nothing remembered: the probe's estimate, which depends on this machine's speed (the small model
        # keeps up on the development machine, 2.1 s of music per second), and the choice that follows it.
        fresh = open_page(server=server)
        advice = wait_js(fresh, f"{ADVICE}.words !== undefined && {ADVICE}", timeout=30)
        assert 0 < advice["probe"] < 5000
        hint = fresh.text_content("#where-hint")
        pace = float(re.search(r"about ([0-9.]+) s of music per second \(estimated\)", hint).group(1))
        where = "device" if advice["device"] else "server"
        assert fresh.is_checked(f'input[name="where"][value="{where}"]')
        assert advice["device"] == (pace >= 1)
        if advice["device"]:
            assert hint.startswith("On this device is chosen for you: it should separate about")
            assert "(estimated), faster than the music plays." in hint
        else:
            assert hint.startswith("Our server is chosen for you: on this device it should separate about")
        fresh.check('input[name="where"][value="device"]')
        hint = fresh.text_content("#where-hint")
        manifest = httpx.get(f"{server.url}/models/small/device/manifest.json").json()
        files = {entry["precision"][:4]: entry for entry in manifest["onnx"]["files"]}
        faithful = files.get("fp16", {}).get("snr_db_vs_fp32", 0) >= 66  # the worker's "auto"
        auto = files["fp16" if faithful else "fp32"]
        assert f"the first run downloads the model once ({_size(auto['bytes'])})." in hint
        assert fresh.is_hidden("#size-limit")  # no upload: no size limit named
        # A choice made is kept: another song does not change it back.
        fresh.check('input[name="where"][value="server"]')
        song = tmp_path / "song.wav"
        write_test_file(song, "wav", seconds=2.0, signal=music(2.0))
        fresh.set_input_files("#file", str(song))
        wait_js(fresh, "!document.getElementById('separate').disabled")
        assert fresh.is_checked('input[name="where"][value="server"]') and fresh.evaluate(ADVICE)["touched"]


def test_a_song_too_long_for_the_devices_memory_goes_to_the_server(exported, open_page, tmp_path):
    model, device_dir = exported
    # 0.5 GB of memory: 256 MB for the page, less than any song needs
    tiny = "Object.defineProperty(Navigator.prototype, 'deviceMemory', {get: () => 0.5})"
    with device_server(tmp_path, model, device_dir) as server:
        page = open_page(server=server, before=lambda page: page.add_init_script(tiny))
        wait_js(page, f"{ADVICE}.words !== undefined", timeout=30)
        song = tmp_path / "song.wav"
        write_test_file(song, "wav", seconds=2.0, signal=music(2.0))
        page.set_input_files("#file", str(song))
        wait_js(page, "!document.getElementById('separate').disabled")
        assert page.is_checked('input[name="where"][value="server"]')
        assert "a song this long needs about" in page.text_content("#where-hint")


def _size(count: int) -> str:
    """text.js's formatBytes, below a GB."""
    if count < 1000:
        return f"{count} bytes"
    if count < 1e6:
        return f"{count / 1e3:.0f} kB"
    return f"{count / 1e6:.{1 if count < 1e7 else 0}f} MB"
