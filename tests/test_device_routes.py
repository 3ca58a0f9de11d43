"""What the server does for separating in the browser (``freestems.service.device``), without a browser:
the export files of the served models from ``device_dir``, ``device_models`` in ``GET /config``, the
vendored runtime under ``/vendor/`` (both as the files are when asked, not at the start), and the
cross-origin isolation headers on every response.

The export here is a stand-in (a manifest naming one file): what is checked is which files are served, not
what they hold (``test_device_separation.py`` runs a real one in Chromium).
"""

from __future__ import annotations

import json

import httpx
from device_helpers import hashed_export, replace_file
from service_helpers import error_of

from freestems.service import device


def _fake_export(folder, name="small"):
    model = folder / name
    model.mkdir(parents=True)
    (model / "network.fp32.onnx").write_bytes(b"network")
    (model / "notes.txt").write_text("not listed in the manifest")
    manifest = {"onnx": {"files": [{"file": "network.fp32.onnx", "bytes": 7, "sha256": "x"}]}}
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def test_every_response_is_cross_origin_isolated(start_server):
    server = start_server()
    pages = [("/", "text/html"), ("/static/app.js", "*/*"), ("/config", "*/*"), ("/nowhere", "*/*")]
    for path, accept in pages:
        response = httpx.get(server.url + path, headers={"Accept": accept})
        assert response.headers["cross-origin-opener-policy"] == "same-origin", path
        assert response.headers["cross-origin-embedder-policy"] == "require-corp", path


def test_without_a_device_dir_no_model_runs_in_the_browser(start_server):
    server = start_server()
    assert httpx.get(server.url + "/config").json()["device_models"] == []
    response = httpx.get(server.url + "/models/small/device/manifest.json")
    assert response.status_code == 404
    assert "cannot be run in the browser" in response.json()["error"]["message"]


def test_the_export_of_a_served_model_is_served_file_by_file(start_server, tmp_path):
    _fake_export(tmp_path / "device")
    _fake_export(tmp_path / "device", name="other")  # exported, but not served here
    server = start_server(device_dir=tmp_path / "device")
    assert httpx.get(server.url + "/config").json()["device_models"] == ["small"]
    base = server.url + "/models/small/device/"
    manifest = httpx.get(base + "manifest.json")
    assert manifest.status_code == 200 and manifest.json()["onnx"]["files"][0]["file"] == "network.fp32.onnx"
    assert manifest.headers["cache-control"] == "no-cache"
    network = httpx.get(base + "network.fp32.onnx")
    assert network.status_code == 200 and network.content == b"network"
    for path in ["notes.txt", "..%2Fsmall.pt", "%2E%2E"]:
        assert httpx.get(base + path).status_code == 404, path
    assert httpx.get(server.url + "/models/other/device/manifest.json").status_code == 404
    assert httpx.get(server.url + "/models/..%2Fdevice/device/manifest.json").status_code == 404


def test_the_vendored_runtime_is_served_when_it_was_fetched(start_server):
    server = start_server()
    response = httpx.get(server.url + "/vendor/onnxruntime-web/ort.wasm.min.mjs")
    if (device.VENDOR / "onnxruntime-web" / "ort.wasm.min.mjs").is_file():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        wasm = httpx.head(server.url + "/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
        assert wasm.headers["content-type"] == "application/wasm"
    else:
        assert response.status_code == 404


def test_the_service_worker_is_served_from_the_root(start_server):
    server = start_server()
    response = httpx.get(server.url + "/sw.js")
    assert response.status_code == 200 and "networkFirst" in response.text
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-cache"


def test_the_manifest_names_each_file_at_a_hash_named_url_cached_for_good(start_server, tmp_path):
    import hashlib

    entry = hashed_export(tmp_path / "device")
    server = start_server(device_dir=tmp_path / "device")
    base = server.url + "/models/small/device/"
    manifest = httpx.get(base + "manifest.json")
    assert manifest.status_code == 200 and manifest.headers["cache-control"] == "no-cache"
    assert manifest.headers["etag"] == f'"{hashlib.sha256(manifest.content).hexdigest()}"'
    (served,) = manifest.json()["onnx"]["files"]
    assert served == {**entry, "url": f"{entry['sha256']}/network.fp32.onnx"}
    unchanged = httpx.get(base + "manifest.json", headers={"If-None-Match": manifest.headers["etag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""

    network = httpx.get(base + served["url"])
    assert network.status_code == 200 and network.content == b"the network, version 1"
    assert network.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert network.headers["etag"] == f'"{entry["sha256"]}"'  # strong: the content's own hash
    head = httpx.head(base + served["url"])
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(entry["bytes"])
    part = httpx.get(base + served["url"], headers={"Range": "bytes=4-10"})
    assert part.status_code == 206 and part.content == b"network"
    assert part.headers["content-range"] == f"bytes 4-10/{entry['bytes']}"
    again = httpx.get(base + served["url"], headers={"If-None-Match": network.headers["etag"]})
    assert again.status_code == 304


def test_a_hash_named_url_serves_only_the_listed_file_with_that_hash(start_server, tmp_path):
    import hashlib

    entry = hashed_export(tmp_path / "device")
    (tmp_path / "device" / "small" / "notes.txt").write_text("not listed")
    (tmp_path / "secret.txt").write_text("outside the export folder")
    server = start_server(device_dir=tmp_path / "device")
    base = server.url + "/models/small/device/"
    digest = entry["sha256"]
    notes = hashlib.sha256(b"not listed").hexdigest()
    secret = hashlib.sha256(b"outside the export folder").hexdigest()
    refused = [
        f"{'0' * 64}/network.fp32.onnx",  # a wrong hash
        f"{digest.upper()}/network.fp32.onnx",  # not as the manifest writes it
        f"{digest[:-1]}/network.fp32.onnx",
        f"{notes}/notes.txt",  # its real hash, but the manifest does not list it
        f"{secret}/..%2F..%2Fsecret.txt",
        f"{secret}/%2E%2E",
        f"{digest}/manifest.json",
    ]
    for path in refused:
        response = httpx.get(base + path)
        assert response.status_code == 404, path
        assert response.headers.get("cache-control") != "public, max-age=31536000, immutable", path
    assert httpx.get(server.url + f"/models/other/device/{digest}/network.fp32.onnx").status_code == 404

    # A manifest that names a file outside its folder gets no URL for it, and nothing is served.
    manifest = tmp_path / "device" / "small" / "manifest.json"
    outside = {"file": "../../secret.txt", "bytes": 25, "sha256": secret}
    manifest.write_text(json.dumps({"onnx": {"files": [outside]}}))
    assert "url" not in httpx.get(base + "manifest.json").json()["onnx"]["files"][0]
    assert httpx.get(base + f"{secret}/..%2F..%2Fsecret.txt").status_code == 404


def test_a_new_export_gets_new_urls_and_a_file_changed_behind_its_manifest_is_not_served(
    start_server, tmp_path
):
    first = hashed_export(tmp_path / "device")
    server = start_server(device_dir=tmp_path / "device")
    base = server.url + "/models/small/device/"
    old = httpx.get(base + "manifest.json")
    old_url = old.json()["onnx"]["files"][0]["url"]
    assert httpx.get(base + old_url).status_code == 200

    second = hashed_export(tmp_path / "device", content=b"the network, version 2")
    new = httpx.get(base + "manifest.json", headers={"If-None-Match": old.headers["etag"]})
    assert new.status_code == 200 and new.headers["etag"] != old.headers["etag"]
    new_url = new.json()["onnx"]["files"][0]["url"]
    assert new_url == f"{second['sha256']}/network.fp32.onnx" != old_url
    assert httpx.get(base + new_url).content == b"the network, version 2"
    assert httpx.get(base + old_url).status_code == 404, first  # no URL may serve two contents

    # The file replaced after the manifest was written: its URL would promise the old content for a year.
    replace_file(tmp_path / "device" / "small" / "network.fp32.onnx", b"the network, version 3")
    stale = httpx.get(base + new_url)
    assert stale.status_code == 404 and stale.json()["error"]["code"] == "stale_export"
    assert "export the model again" in stale.json()["error"]["message"]


def test_a_runtime_and_an_export_that_arrive_after_the_start_are_served_at_once(
    start_server, tmp_path, monkeypatch
):
    monkeypatch.setattr(device, "VENDOR", tmp_path / "vendor")
    (tmp_path / "secret.txt").write_text("outside the runtime's folder")
    server = start_server(device_dir=tmp_path / "device")  # neither folder exists yet
    entry = server.url + "/vendor/onnxruntime-web/ort.wasm.min.mjs"
    missing = httpx.get(entry)
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    assert httpx.get(server.url + "/config").json()["device_models"] == []
    runtime = tmp_path / "vendor" / "onnxruntime-web" / "ort.wasm.min.mjs"
    runtime.parent.mkdir(parents=True)
    runtime.write_text("export const version = 'stand-in';\n")
    _fake_export(tmp_path / "device")
    found = httpx.get(entry)
    assert found.status_code == 200 and found.text.startswith("export const version")
    assert found.headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.url + "/config").json()["device_models"] == ["small"]
    escapes = ["../secret.txt", "..%2Fsecret.txt", "%2E%2E/secret.txt", "a/..%2F..%2Fsecret.txt"]
    escapes.append("%2Fetc/passwd")  # an absolute path
    for path in escapes:
        response = httpx.get(f"{server.url}/vendor/{path}")
        assert response.status_code == 404 and "outside" not in response.text, path
