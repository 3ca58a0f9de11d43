"""A server that separates only on the visitor's device (``FREESTEMS_DEVICE_ONLY``), without a browser: it
starts only with an export of every served model and the runtime, describes its models from the exports
(loading none: no download, no torch), says so in ``GET /config``, and refuses everything that would start
a separation with 403 ``device_only``.

The exports here are stand-ins (a manifest naming its stems and one file): what is checked is what the
server makes of them (``test_device_separation.py`` has the page separate with a real one).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import connect_session, error_of, running_server, small_settings
from websockets.exceptions import InvalidStatus

from freestems.service import SettingsError, create_app, device
from freestems.service.device_only import DeviceOnlyExecutor

SRC = Path(__file__).resolve().parents[1] / "src"
RUNTIME = device.VENDOR / "onnxruntime-web" / "ort.wasm.min.mjs"
needs_runtime = pytest.mark.skipif(
    not RUNTIME.is_file(), reason="onnxruntime-web is not fetched (scripts/fetch_web_deps.sh)"
)


def export(folder: Path, name: str = "small", stems=("drums", "bass", "other", "vocals")) -> Path:
    """A stand-in export of model ``name`` in ``folder/name``: its manifest (stems, one network file)."""
    model = folder / name
    model.mkdir(parents=True)
    (model / "network.fp32.onnx").write_bytes(b"network")
    manifest = {
        "model": {"name": name, "family": "scnet", "stems": list(stems)},
        "onnx": {"files": [{"file": "network.fp32.onnx", "bytes": 7, "sha256": "x"}]},
    }
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def runtime(vendor: Path) -> None:
    """A stand-in of the fetched runtime in ``vendor``."""
    entry = vendor / "onnxruntime-web" / "ort.wasm.min.mjs"
    entry.parent.mkdir(parents=True)
    entry.write_text("export const version = 'stand-in';\n")


@pytest.fixture
def vendor(tmp_path, monkeypatch) -> Path:
    """A runtime folder of the test's own (empty until the test fills it) in place of ``web/vendor``."""
    folder = tmp_path / "vendor"
    monkeypatch.setattr(device, "VENDOR", folder)
    return folder


def device_only_settings(tmp_path: Path, **overrides):
    values = dict(device_only=True, device_dir=tmp_path / "device", models=("small",))
    return small_settings(tmp_path / "data", **{**values, **overrides})


def test_the_setting_needs_a_device_dir_and_takes_no_checkpoint_file(tmp_path):
    with pytest.raises(SettingsError, match="FREESTEMS_DEVICE_ONLY needs FREESTEMS_DEVICE_DIR"):
        small_settings(tmp_path, device_only=True)
    with pytest.raises(SettingsError, match="not a checkpoint file: export it"):
        small_settings(tmp_path, device_only=True, device_dir=tmp_path, model_file=tmp_path / "small.pt")


def test_it_does_not_start_without_the_runtime_or_an_export_of_each_model(tmp_path, vendor):
    export(tmp_path / "device")
    settings = device_only_settings(tmp_path)
    with pytest.raises(SettingsError, match=r"runtime is not installed .* run scripts/fetch_web_deps.sh"):
        create_app(settings)
    runtime(vendor)
    create_app(settings)  # both there: it starts
    missing = settings.replace(models=("small", "scnet"))
    with pytest.raises(SettingsError, match=r"model scnet has no export in .*freestems export scnet -o"):
        create_app(missing)
    (tmp_path / "device" / "small" / "manifest.json").write_text("{not json")
    with pytest.raises(SettingsError, match="model small has no export"):
        create_app(settings)


def test_every_separation_is_refused_and_the_config_says_device_only(tmp_path, vendor):
    runtime(vendor)
    export(tmp_path / "device")
    export(tmp_path / "device", "scnet")
    cache = tmp_path / "weights"
    settings = device_only_settings(tmp_path, models=("scnet", "small"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FREESTEMS_CACHE", str(cache))  # scnet's weights are not there: none is fetched
        with running_server(settings, None) as server:
            config = httpx.get(server.url + "/config").json()
            health = httpx.get(server.url + "/health").json()
            song = {"audio_file": ("song.mp3", b"ID3 not really a song", "audio/mpeg")}
            refused = [
                httpx.post(server.url + "/separate", files=song),
                httpx.post(server.url + "/jobs", files=song, headers={"X-Session-Key": "anything"}),
                httpx.post(server.url + "/jobs", data={"from_job": "x", "from_token": "y"}),
            ]
            with pytest.raises(InvalidStatus) as socket_refused, connect_session(server):
                pass
            assert isinstance(server.service.executor, DeviceOnlyExecutor)
            network = httpx.get(server.url + "/models/small/device/network.fp32.onnx")
    assert not cache.exists() or not any(cache.iterdir())
    assert config["device_only"] is True and config["device_models"] == ["scnet", "small"]
    assert [model["name"] for model in config["models"]] == ["scnet", "small"]
    assert config["models"][0]["title"].startswith("SCNet")  # the catalog's title; the stems the export's
    assert config["sources"] == ["drums", "bass", "other", "vocals"]
    assert health["status"] == "ok" and health["model"] == "scnet"
    for response in refused:
        assert response.status_code == 403, response.text
        error = error_of(response)
        assert error["code"] == "device_only"
        assert "separates only on your own device" in error["message"]
    assert socket_refused.value.response.status_code == 403
    assert json.loads(socket_refused.value.response.body)["error"]["code"] == "device_only"
    assert network.status_code == 200 and network.content == b"network"


def test_a_server_that_also_uploads_says_it_is_not_device_only(start_server):
    assert httpx.get(start_server().url + "/config").json()["device_only"] is False


def test_a_job_left_queued_before_the_switch_ends_failed_saying_why(tmp_path, vendor):
    from service_helpers import job_status

    from freestems.options import SeparationOptions
    from freestems.service.store import Job, JobStore

    runtime(vendor)
    export(tmp_path / "device")
    uploads = tmp_path / "data" / "uploads"
    uploads.mkdir(parents=True)
    upload = uploads / "0000000000000001.mp3"
    upload.write_bytes(b"a song uploaded before the server was switched")
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    store.create(
        Job(
            id="0000000000000001", token="token", state="queued", options=SeparationOptions().as_dict(),
            model="small", client="127.0.0.1", created_at=time.time(), input_path=upload,
            filename="before.mp3", cache_key="key",
        )
    )  # fmt: skip
    store.close()
    with running_server(device_only_settings(tmp_path), None) as server:
        job = {"id": "0000000000000001", "token": "token"}
        deadline = time.monotonic() + 30
        while (status := job_status(server, job))["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
    assert status["state"] == "failed", status
    assert status["error"]["code"] == "invalid_options"
    assert "separates only on your own device" in status["error"]["message"]
    assert not upload.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "FREESTEMS_CACHE": str(cwd / "weights")}
    command = [sys.executable, "-m", "freestems.cli", "serve", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)


def test_serve_device_only_refuses_to_start_without_an_export(tmp_path):
    (tmp_path / "device").mkdir()
    server = _serve("--device-only", "--device-dir", "device", "-m", "small", "--port", "0", cwd=tmp_path)
    _, stderr = server.communicate(timeout=120)
    assert server.returncode == 1
    assert "freestems export small -o device/small" in stderr or "runtime is not installed" in stderr


@needs_runtime
def test_serve_device_only_from_the_command_line_loads_no_model(tmp_path):
    export(tmp_path / "device")
    port = _free_port()
    flags = ["--device-only", "--device-dir", "device", "-m", "small", "--port", str(port)]
    server = _serve(*flags, "--data-dir", "data", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/config").json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        refused = httpx.post(f"http://127.0.0.1:{port}/jobs", files={"audio_file": ("a.mp3", b"x")})
        libraries = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert config["device_only"] is True and config["device_models"] == ["small"], stderr
    assert refused.status_code == 403 and error_of(refused)["code"] == "device_only"
    assert "libtorch" not in libraries  # torch was never imported: it maps libtorch_cpu.so when it is
    assert "separated on the visitors' devices only" in stderr
    assert "HMAC" not in stderr  # it issues no challenge: no secret to warn about


def test_only_a_server_that_issues_challenges_warns_of_a_random_secret(tmp_path, vendor, caplog):
    runtime(vendor)
    export(tmp_path / "device")
    for device_only in (True, False):
        caplog.clear()
        settings = device_only_settings(tmp_path, hmac_secret="", device_only=device_only)
        create_app(settings, DeviceOnlyExecutor(settings) if device_only else None)
        warned = [record.getMessage() for record in caplog.records if "HMAC_SECRET" in record.getMessage()]
        assert bool(warned) is not device_only, warned
