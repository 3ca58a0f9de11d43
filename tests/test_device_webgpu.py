"""Separating on the visitor's device with WebGPU, behind the export's faithfulness probe, in Chromium.

This machine has no GPU: Chromium gives WebGPU a software adapter, SwiftShader (``WEBGPU_FLAGS``), which is a
fallback adapter. So "auto" must leave it alone (it would be slower than WASM), and "webgpu", asked for
explicitly, must take it, run the probe, and separate with it only if the probe passes: then every stem is
held to the Python engine at 60 dB, as the WASM tests do. A manifest whose fingerprint does not match what
the network gives makes the worker refuse WebGPU, say by how many dB, and separate with WASM.

Every page here is a device-only server's (no model on the server): the small seeded model's export as
``small``, and as ``spoiled`` the same export with its fingerprint 1 % off (40 dB).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from audio_samples import write_test_file
from conftest import one_torch_thread
from model_helpers import make_small_checkpoint
from test_device_separation import FINISHED, MIN_SNR_DB, music, snr_db
from web_helpers import WEBGPU_FLAGS, chromium, events, needs_chromium, wait_js

from freestems import engine
from freestems.service import device

pytestmark = needs_chromium
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

RUNTIME = device.VENDOR / "onnxruntime-web"
needs_runtimes = pytest.mark.skipif(
    not (RUNTIME / "ort.webgpu.min.mjs").is_file() or not (RUNTIME / "ort.wasm.min.mjs").is_file(),
    reason="onnxruntime-web's builds are not fetched (scripts/fetch_web_deps.sh)",
)
PROBE_MIN_SNR_DB = 66.0  # the worker's PROBE_MIN_SNR_DB

# The page's engine on samples sent from here, on the backend asked for; the stems back as base64.
SEPARATE = """async ({model, channels, backend}) => {
  const decode = (text) => new Float32Array(Uint8Array.from(atob(text), (c) => c.charCodeAt(0)).buffer);
  const encode = (array) => {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(text);
  };
  const device = await import('/static/device.js');
  const statuses = [];
  const on = (message) => message.type === 'status' && statuses.push(message.words);
  const given = channels.map(decode);
  const result = await device.separateOnDevice({model, channels: given, backend, on, keep: true});
  const stems = Object.fromEntries(result.names.map((name) => [name, result.stems[name].map(encode)]));
  return {stems, info: result.info, statuses};
}"""
ADAPTER = """async () => {
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  return adapter ? {architecture: adapter.info.architecture, fallback: adapter.info.isFallbackAdapter} : null;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium with WebGPU on SwiftShader: this module's pages (``open_page``) open in it."""
    with chromium(WEBGPU_FLAGS) as launched:
        yield launched


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small model and a device folder: its export as ``small``, and as ``spoiled`` with every value of
    its probe's fingerprint 1 % too large."""
    from freestems import export
    from freestems.models import load_model

    folder = tmp_path_factory.mktemp("webgpu")
    checkpoint = make_small_checkpoint(folder / "small.pt", seed=3, normalize=True)
    with one_torch_thread():
        model = load_model(model_file=checkpoint, spec_norm=True)
        export.export_model(model, folder / "exports" / "small")
    shutil.copytree(folder / "exports" / "small", folder / "exports" / "spoiled")
    manifest_path = folder / "exports" / "spoiled" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    fingerprint = manifest["probe"]["output"]
    fingerprint["values"] = [[value * 1.01 for value in row] for row in fingerprint["values"]]
    fingerprint["energy"] = [value * 1.01**2 for value in fingerprint["energy"]]
    manifest_path.write_text(json.dumps(manifest))
    return model, folder / "exports"


@pytest.fixture
def webgpu_page(exported, open_page, tmp_path):
    """``(page, requested)``: the page of a device-only server of both exports, in the WebGPU browser, and
    the list of every URL its context requests (its workers' too)."""
    from service_helpers import running_server, small_settings

    _, device_dir = exported
    settings = small_settings(
        tmp_path / "data", device_dir=device_dir, device_only=True, models=("small", "spoiled")
    )
    requested: list[str] = []
    with running_server(settings, None) as server:
        page = open_page(
            server=server, before=lambda page: page.context.on("request", lambda r: requested.append(r.url))
        )
        adapter = page.evaluate(ADAPTER)
        if adapter is None:
            pytest.skip("this Chromium offers no WebGPU adapter, even on SwiftShader")
        assert adapter == {"architecture": "swiftshader", "fallback": True}
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
        yield page, requested


def separate(page, model: str, mix: np.ndarray, backend: str) -> dict[str, Any]:
    channels = [base64.b64encode(channel.tobytes()).decode() for channel in mix]
    return page.evaluate(SEPARATE, {"model": model, "channels": channels, "backend": backend})


def stem_snrs(model, mix: np.ndarray, stems: dict[str, list[str]]) -> dict[str, float]:
    """Each stem's SNR against the Python engine's on the same samples."""
    with one_torch_thread():
        expected = engine.separate(mix, model)
    assert list(stems) == list(expected)
    got = {
        name: np.stack([np.frombuffer(base64.b64decode(c), np.float32) for c in stems[name]])
        for name in stems
    }
    return {name: snr_db(reference, got[name]) for name, reference in expected.items()}


def downloaded(requested: list[str], name: str) -> bool:
    return any(url.split("?")[0].endswith(f"/vendor/onnxruntime-web/{name}") for url in requested)


# The cheapest test first: the module's export and browser (a minute or two on a busy machine) count
# against the first test's timeout, and WebGPU on SwiftShader is slow (about 30 s a chunk of the small model
# here, where WASM takes a second or two).


@needs_runtimes
def test_auto_leaves_a_software_adapter_alone_and_the_page_logs_why(exported, webgpu_page, tmp_path):
    page, requested = webgpu_page
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=1.0, signal=music(1.0))
    page.evaluate("window.freestems.device.keep = true")
    page.set_input_files("#file", str(song))
    wait_js(page, "!document.getElementById('separate').disabled")
    page.click("#separate")  # the page's own run: backend "auto"
    assert wait_js(page, FINISHED, timeout=240) == "result", page.evaluate("window.freestems.problem")
    (done,) = events(page, "device_done")
    assert done["backend"] == "wasm" and done["probe_db"] is None
    assert done["why"].startswith("the only WebGPU adapter is a software one (google swiftshader")
    assert done["why"].endswith("), slower than WASM")
    assert not downloaded(requested, "ort.webgpu.min.mjs")  # the WebGPU build is not even fetched
    assert downloaded(requested, "ort-wasm-simd-threaded.wasm")


@needs_runtimes
def test_a_fingerprint_the_network_does_not_match_keeps_webgpu_off_and_says_by_how_much(
    exported, webgpu_page
):
    model, _ = exported
    page, requested = webgpu_page
    mix = music(1.0)
    run = separate(page, "spoiled", mix, "webgpu")
    info = run["info"]
    probe = info["probe"]
    print(f"spoiled probe: {probe}; {info['backend_why']}")
    assert info["backend"] == "wasm"
    assert probe["passed"] is False and 38 <= probe["db"] <= 42  # 1 % off: 40 dB
    assert info["backend_why"] == (
        f"WebGPU ({info['adapter']}) is not used: its output for the probe is {probe['db']} dB from the "
        f"export's, under {PROBE_MIN_SNR_DB:g} dB"
    )
    assert f"{info['backend_why']}; separating with WASM…" in run["statuses"]
    assert min(stem_snrs(model, mix, run["stems"]).values()) >= MIN_SNR_DB
    # WASM on the WebGPU build already downloaded: no second runtime.
    assert not downloaded(requested, "ort-wasm-simd-threaded.wasm")


@needs_runtimes
def test_asked_for_webgpu_the_page_probes_it_and_separates_with_it_as_the_engine_does(exported, webgpu_page):
    model, _ = exported
    page, requested = webgpu_page
    mix = music(5.0)
    run = separate(page, "small", mix, "webgpu")
    info = run["info"]
    print(f"WebGPU run: {info['timings']}, probe {info['probe']}")
    assert info["backend"] == "webgpu" and info["backend_why"] == "", info
    assert "swiftshader" in info["adapter"]
    assert info["probe"]["passed"] is True and info["probe"]["db"] >= PROBE_MIN_SNR_DB
    assert len(info["probe"]["stems"]) == 4
    assert any(words.startswith("Separating with WebGPU (") for words in run["statuses"]), run["statuses"]
    snrs = stem_snrs(model, mix, run["stems"])
    print(f"WebGPU vs engine SNR (dB): {snrs}")
    assert min(snrs.values()) >= MIN_SNR_DB, snrs
    # One build downloaded: the WebGPU one (its WASM binary), not the WASM build's binary.
    assert downloaded(requested, "ort-wasm-simd-threaded.asyncify.wasm")
    assert not downloaded(requested, "ort-wasm-simd-threaded.wasm")


@needs_runtimes
def test_offline_without_the_webgpu_build_kept_the_page_separates_with_wasm_and_says_why(
    exported, open_page, tmp_path
):
    """The service worker keeps the build a visit used; offline, WebGPU asked for on a visit that only ever
    used WASM cannot load its build: the worker says so, and separates with the WASM build it kept."""
    from service_helpers import running_server, small_settings

    model, device_dir = exported
    settings = small_settings(tmp_path / "data", device_dir=device_dir, device_only=True, models=("small",))
    mix = music(1.0)
    with running_server(settings, None) as server:
        page = open_page(server=server, expected_errors=("ERR_INTERNET_DISCONNECTED",))
        wait_js(page, "Boolean(navigator.serviceWorker.controller)", timeout=30)
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=30)
        assert separate(page, "small", mix, "wasm")["info"]["backend"] == "wasm"  # online: WASM kept
        page.context.set_offline(True)
        try:
            page.reload()
            wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
            run = separate(page, "small", mix, "webgpu")
        finally:
            page.context.set_offline(False)
    info = run["info"]
    assert info["backend"] == "wasm" and info["probe"] is None
    assert info["backend_why"] == (
        f"WebGPU ({info['adapter']}) is not used: it failed: the in-browser runtime "
        "(onnxruntime-web, webgpu) cannot be downloaded while this browser is offline "
        "(it was not kept from an earlier visit)"
    )
    assert info["cached"] is True
    assert min(stem_snrs(model, mix, run["stems"]).values()) >= MIN_SNR_DB
