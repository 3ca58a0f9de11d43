"""What happens over time: restarts, result expiry, deletion, the executor, settings, `freestems serve`."""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from model_helpers import make_small_checkpoint
from service_helpers import (
    error_of,
    form,
    job_status,
    open_session,
    post_job,
    wait_for_message,
    wait_for_state,
    wait_until,
)

from freestems.executors import JobEvent, LocalExecutor, WorkItem, describe
from freestems.models import load_model
from freestems.service import Settings, SettingsError
from freestems.service.options import SeparationOptions
from freestems.service.store import RESTART_REASON, Job, JobStore


def running(message: dict) -> bool:
    return message["type"] == "job" and message["state"] == "running" and message["progress"] > 0


# ---------------------------------------------------------------------------------------------- restarts


def test_a_restart_resumes_what_the_store_holds(start_server, songs, tmp_path):
    """A crash left jobs behind: running ones with and without their upload, a queued one, debris."""
    data = tmp_path / "data"
    uploads = data / "uploads"
    uploads.mkdir(parents=True)
    store = JobStore(data / "jobs.sqlite3")
    options = SeparationOptions(two_stems="vocals").as_dict()
    now = time.time()
    jobs = {}
    for name, state, has_upload in [
        ("crashed", "running", True),
        ("lost", "running", False),
        ("waiting", "queued", True),
    ]:
        job_id = f"{len(jobs):016x}"
        upload = uploads / f"{job_id}.mp3"
        if has_upload:
            shutil.copy(songs["short"], upload)
        jobs[name] = {"id": job_id, "token": f"token-{name}"}
        started = now if state == "running" else None
        store.create(
            Job(
                id=job_id, token=f"token-{name}", state=state, options=options, model="small",
                client="127.0.0.1", created_at=now, started_at=started, input_path=upload,
                filename=f"{name}.mp3", cache_key=f"key-{name}",
            )
        )  # fmt: skip
    store.close()
    (uploads / ".upload.deadbeef.part").write_bytes(b"half an upload")
    (data / "work" / jobs["crashed"]["id"]).mkdir(parents=True)
    (data / "work" / jobs["crashed"]["id"] / "vocals.mp3").write_bytes(b"half a stem")
    (data / "results").mkdir()
    (data / "results" / "orphan.zip").write_bytes(b"no record points here")

    server = start_server()
    for name in ("crashed", "waiting"):
        status = wait_for_state(server, jobs[name], "done", "failed")
        assert status["state"] == "done", status
        result = httpx.get(server.url + status["result"])
        with zipfile.ZipFile(io.BytesIO(result.content)) as bundle:
            assert sorted(bundle.namelist()) == ["no_vocals.mp3", "vocals.mp3"]
    lost = job_status(server, jobs["lost"])
    assert lost["state"] == "failed"
    assert lost["error"] == {"code": "interrupted", "message": RESTART_REASON}
    assert not (data / "results" / "orphan.zip").exists()


def test_a_graceful_restart_puts_the_running_job_back_in_the_queue(start_server, songs):
    server = start_server()
    with open_session(server) as (ws, key):
        job = post_job(server, songs["medium"], key).json()
        wait_for_message(ws, running)
        server.stop()  # the server closes the socket (1012): the job is not cancelled
    store = JobStore(server.data_dir / "jobs.sqlite3")
    stopped = store.get(job["id"])
    store.close()
    assert stopped.state == "queued" and stopped.input_path.is_file()

    restarted = start_server()
    status = wait_for_state(restarted, job, "done", "failed", "cancelled")
    assert status["state"] == "done"
    assert httpx.get(restarted.url + status["result"]).status_code == 200


# ---------------------------------------------------------------------------------------------- expiry


def test_results_are_deleted_after_their_ttl(start_server, songs):
    server = start_server(auth="none", result_ttl=1.0, sweep_interval=0.1)
    response = httpx.post(server.url + "/jobs", **form(songs["wav"]))
    job = response.json()
    wait_for_state(server, job, "done")
    assert len(list((server.data_dir / "results").iterdir())) == 1
    assert len(list((server.data_dir / "cache").iterdir())) == 1
    gone = wait_until(
        lambda: (r := httpx.get(server.url + job["status_url"])).status_code == 404 and r, timeout=10
    )
    assert "deleted" in error_of(gone)["message"]
    wait_until(lambda: not list((server.data_dir / "cache").iterdir()), timeout=10)
    assert not list((server.data_dir / "results").iterdir())
    assert server.service.store.jobs() == [] and server.service.store.result_count() == 0


def test_deleting_a_running_job_stops_it_and_removes_its_files(start_server, songs):
    server = start_server(auth="none")
    job = post_job(server, songs["long"], None, shifts=3).json()
    wait_until(lambda: job_status(server, job)["progress"] > 0)
    assert httpx.delete(server.url + job["status_url"]).status_code == 204
    assert httpx.get(server.url + job["status_url"]).status_code == 404
    wait_until(lambda: server.service.executor.busy == 0, timeout=20)
    for folder in ("uploads", "work", "results", "cache"):
        assert not list((server.data_dir / folder).iterdir()), folder


# ---------------------------------------------------------------------------------------------- executor


@pytest.fixture
def executor(small_model, tmp_path):
    executor = LocalExecutor(lambda: small_model, tmp_path / "work")
    executor.start()
    yield executor
    executor.close()
    assert not list((tmp_path / "work").iterdir())


def run_item(executor: LocalExecutor, source: Path, tmp_path: Path, **options) -> list[JobEvent]:
    events: list[JobEvent] = []
    finished = threading.Event()

    def report(event: JobEvent) -> None:
        events.append(event)
        if event.kind in ("done", "failed", "cancelled"):
            finished.set()

    item = WorkItem(
        job_id="job",
        source=source,
        result=tmp_path / "out.zip",
        report=report,
        display_name="my song.mp3",
        **options,
    )
    executor.submit(item)
    assert finished.wait(60)
    return events


def test_the_executor_reports_audio_too_long_while_decoding(executor, songs, tmp_path):
    """A container can understate its duration; the decoder's own limit catches it and says so."""
    source = tmp_path / "upload.mp3"
    shutil.copy(songs["short"], source)
    events = run_item(executor, source, tmp_path, max_duration=1.0)
    failed = events[-1]
    assert (failed.kind, failed.code) == ("failed", "too_long")
    assert failed.message.startswith("my song.mp3: ") and "the limit is 1 s" in failed.message
    assert not source.exists() and not (tmp_path / "out.zip").exists()


def test_the_executor_reports_undecodable_input(executor, tmp_path):
    source = tmp_path / "upload.mp3"
    source.write_bytes(b"\xff\xfb" + b"\x00" * 5000)
    failed = run_item(executor, source, tmp_path)[-1]
    assert (failed.kind, failed.code) == ("failed", "not_audio")
    assert not source.exists()


def test_the_executor_runs_an_item_and_cleans_up(executor, songs, tmp_path):
    source = tmp_path / "upload.wav"
    shutil.copy(songs["wav"], source)
    events = run_item(executor, source, tmp_path, options=SeparationOptions(two_stems="bass", format="wav"))
    assert [e.kind for e in events][0] == "started" and events[-1].kind == "done"
    assert [e.progress for e in events if e.kind == "progress"][-1] == 1.0
    assert events[-1].result == tmp_path / "out.zip" and set(events[-1].timings) >= {"separate", "total"}
    with zipfile.ZipFile(tmp_path / "out.zip") as bundle:
        assert sorted(bundle.namelist()) == ["bass.wav", "no_bass.wav"]
    assert not source.exists()


def test_the_model_fingerprint_follows_the_weights(small_model, tmp_path):
    other = load_model(model_file=make_small_checkpoint(tmp_path / "small.pt", seed=1))
    assert describe(small_model) == describe(small_model)
    assert describe(small_model).fingerprint != describe(other).fingerprint
    assert describe(small_model).sources == ("drums", "bass", "other", "vocals")


# ---------------------------------------------------------------------------------------------- settings


def test_settings_from_the_environment(tmp_path):
    environ = {
        "FREESTEMS_DATA_DIR": str(tmp_path),
        "FREESTEMS_PORT": "9000",
        "FREESTEMS_RESULT_CACHE": "off",
        "FREESTEMS_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
        "FREESTEMS_MAX_UPLOAD_MB": "2.5",
        "FREESTEMS_TRUST_PROXY": "yes",
        "FREESTEMS_CACHE": "/weights/are/not/results",
    }
    settings = Settings.from_env(environ, port=9100)
    assert settings.data_dir == tmp_path and settings.port == 9100  # explicit values win
    assert settings.result_cache is False and settings.trust_proxy is True
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.max_upload_bytes == 2_500_000
    assert Settings.from_env({}).auth == "pow"


@pytest.mark.parametrize(
    ("name", "value", "phrase"),
    [
        ("FREESTEMS_PORT", "eighty", "FREESTEMS_PORT: must be a whole number, got 'eighty'"),
        ("FREESTEMS_RESULT_CACHE", "maybe", "FREESTEMS_RESULT_CACHE: expected on/off"),
        ("FREESTEMS_AUTH", "password", "FREESTEMS_AUTH: must be one of pow, none"),
        ("FREESTEMS_WORKERS", "0", "FREESTEMS_WORKERS: must be at least 1"),
        ("FREESTEMS_SESSION_TTL", "-5", "FREESTEMS_SESSION_TTL: must be positive"),
        ("FREESTEMS_ALLOWED_ORIGINS", "example.org", "FREESTEMS_ALLOWED_ORIGINS"),
        ("FREESTEMS_POW_ALGORITHM", "MD5", "FREESTEMS_POW_ALGORITHM"),
    ],
)
def test_invalid_settings_name_the_variable(tmp_path, name, value, phrase):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"FREESTEMS_DATA_DIR": str(tmp_path), name: value})
    assert phrase in str(error.value)


# ---------------------------------------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_freestems_serve_refuses_auth_none_on_a_public_address(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "freestems.cli", "serve", "--host", "0.0.0.0", "--auth", "none"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FREESTEMS_DATA_DIR": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 1
    assert "refusing to serve without session keys" in result.stderr and "Traceback" not in result.stderr


def test_freestems_serve_runs_the_service(tmp_path, small_model):
    checkpoint = make_small_checkpoint(tmp_path / "tiny.pt")
    port = free_port()
    command = [
        shutil.which("freestems") or "freestems", "serve", "--port", str(port),
        "--model-file", str(checkpoint), "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").json()
            except httpx.HTTPError:
                assert process.poll() is None, process.communicate()[1]
                return None

        health = wait_until(healthy, timeout=120, interval=0.2)
        assert health["model"] == "tiny" and health["auth"] == "pow"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"serving tiny on http://127.0.0.1:{port}" in stderr
