"""The service end to end: a real server, a real WebSocket session, real uploads, zips of real stems."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import httpx
from service_helpers import (
    error_of,
    form,
    job_status,
    open_session,
    post_job,
    receive,
    send,
    solve,
    wait_for_message,
    wait_for_state,
)

from freestems.audio import decode

FOUR = ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]


def zip_names(content: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        return sorted(bundle.namelist())


def test_health_as_json_and_the_page_for_browsers(start_server):
    server = start_server()
    for path in ("/", "/health"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["model"] == "small"
        # work in model-seconds: capacity 16 jobs x 720 (the test settings' most one request may cost)
        assert body["queue"] == {
            "queued": 0,
            "running": 0,
            "capacity": 16,
            "work": 0,
            "work_capacity": 16 * 720,
            "cuts": 0,
        }
        assert body["version"]
    page = httpx.get(server.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "freestems" in page.text
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/separate"]["post"]["requestBody"]["content"]
    missing = httpx.get(server.url + "/nothing-here")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"


def test_the_curl_call_returns_a_karaoke_zip(start_server, songs, tmp_path):
    server = start_server()
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test"
    out = tmp_path / "stems.zip"
    with open_session(server) as (ws, key):
        command = [
            curl, "-sS", "-X", "POST", "-H", f"X-Session-Key: {key}",
            "-F", f"audio_file=@{songs['short']}", "-F", "two_stems=vocals",
            f"{server.url}/separate", "-o", str(out), "-w", "%{http_code} %{content_type}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "200 application/zip"
        # The WebSocket followed the job to its end.
        done = wait_for_message(ws, lambda m: m["type"] == "done")
        assert done["result"].startswith(f"/jobs/{done['id']}/result?token=")
    assert zip_names(out.read_bytes()) == ["no_vocals.mp3", "vocals.mp3"]
    with zipfile.ZipFile(out) as bundle:
        bundle.extractall(tmp_path / "stems")
    length = decode(songs["short"]).shape[1]
    for stem in ("vocals", "no_vocals"):
        assert decode(tmp_path / "stems" / f"{stem}.mp3").shape == (2, length)


def test_four_stems_as_wav_and_the_response_headers(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key):
        response = httpx.post(
            server.url + "/separate",
            headers={"X-Session-Key": key},
            timeout=120,
            **form(songs["wav"], mp3="false", shifts=2, overlap=0.5, mp3_bitrate=320, model="small"),
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="stems.zip"'
    assert response.headers["x-cache"] == "miss"
    assert zip_names(response.content) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def test_flac_stems_with_the_format_field(start_server, songs, tmp_path):
    server = start_server()
    with open_session(server) as (_, key):
        response = httpx.post(
            server.url + "/separate",
            headers={"X-Session-Key": key},
            timeout=120,
            **form(songs["short"], format="flac", two_stems="drums"),
        )
    assert response.status_code == 200, response.text
    assert zip_names(response.content) == ["drums.flac", "no_drums.flac"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        bundle.extractall(tmp_path / "stems")
    assert decode(tmp_path / "stems" / "drums.flac").shape == (2, decode(songs["short"]).shape[1])


def test_config_describes_limits_models_and_formats(start_server):
    server = start_server()
    config = httpx.get(server.url + "/config").json()
    assert config["model"] == "small"
    assert config["sources"] == ["drums", "bass", "other", "vocals"]
    # Only the served models: this one is a checkpoint file, so the catalog has nothing to say about it; its
    # title says its family and its name.
    assert config["models"] == [
        {
            "name": "small",
            "title": "SCNet (small)",
            "stems": ["drums", "bass", "other", "vocals"],
            "sdr": {},
            "sdr_set": None,
            "relative_cost": None,
            "license": "as published with the file",
            "jobs": ["four-stems", "acapella", "karaoke"],  # by its stems: the four, or vocals and the rest
            "default": True,
        }
    ]
    jobs = {job["name"]: job["models"] for job in config["jobs"]}
    assert (jobs["four-stems"], jobs["karaoke"], jobs["denoise"]) == (["small"], ["small"], [])
    settings = server.settings
    assert config["limits"] == {
        "max_upload_mb": settings.max_upload_mb,
        "max_duration": settings.max_duration,
        "max_shifts": settings.max_shifts,
    }
    assert config["formats"] == ["mp3", "wav", "flac"]
    assert config["pow"]["counter"] == settings.pow_counter


def test_async_job_with_live_progress_then_result_then_delete(start_server, songs):
    server = start_server()
    with open_session(server) as (ws, key):
        created = post_job(server, songs["short"], key)
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["state"] in ("queued", "running")
        assert job["token"] and job["status_url"] == f"/jobs/{job['id']}?token={job['token']}"
        assert created.headers["location"] == job["status_url"]

        states, progress = [], []
        while (message := receive(ws))["type"] != "done":
            assert message["type"] == "job" and message["id"] == job["id"]
            states.append(message["state"])
            progress.append(message["progress"])
        assert states[-1] == "done" and "running" in states
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert message["result"] == job["result_url"]

        # The key was good for one separation.
        again = post_job(server, songs["short"], key)
        assert again.status_code == 403 and error_of(again)["code"] == "key_used"

    status = job_status(server, job)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["position"] == 0
    expected = {"two_stems": None, "shifts": 1, "overlap": 0.25, "format": "mp3", "mp3_bitrate": 192}
    assert status["options"] == expected
    assert status["result"] == job["result_url"]
    result = httpx.get(server.url + job["result_url"])
    assert result.status_code == 200
    assert zip_names(result.content) == FOUR
    by_header = httpx.get(f"{server.url}/jobs/{job['id']}/result", headers={"X-Job-Token": job["token"]})
    assert by_header.content == result.content

    deleted = httpx.delete(f"{server.url}/jobs/{job['id']}", params={"token": job["token"]})
    assert deleted.status_code == 204
    gone = httpx.get(f"{server.url}/jobs/{job['id']}", params={"token": job["token"]})
    assert gone.status_code == 404
    assert not list((server.data_dir / "results").iterdir())
    assert not list((server.data_dir / "cache").iterdir())


def test_job_status_needs_the_token(start_server, songs):
    server = start_server(auth="none")
    job = post_job(server, songs["wav"], None).json()
    wait_for_state(server, job, "done")
    url = f"{server.url}/jobs/{job['id']}"
    assert error_of(httpx.get(url))["code"] == "token_missing"
    assert error_of(httpx.get(url, params={"token": "wrong"}))["code"] == "not_found"
    assert httpx.get(url + "/result", params={"token": "wrong"}).status_code == 404
    assert httpx.delete(url, params={"token": "wrong"}).status_code == 404
    assert httpx.get(f"{server.url}/jobs/0000000000000000", params={"token": "x"}).status_code == 404
    assert httpx.get(url, params={"token": job["token"]}).status_code == 200


def test_a_second_identical_request_is_served_from_the_cache(start_server, songs):
    server = start_server(auth="none")
    first = httpx.post(server.url + "/separate", timeout=120, **form(songs["short"], two_stems="drums"))
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    second = httpx.post(server.url + "/separate", timeout=120, **form(songs["short"], two_stems="drums"))
    assert second.status_code == 200 and second.headers["x-cache"] == "hit"
    assert second.content == first.content
    # No model run: the job finished at once, without stage timings.
    job = server.service.store.get(second.headers["x-job-id"])
    assert job.cache_hit and not job.timings and job.started_at == job.finished_at
    assert server.service.store.get(first.headers["x-job-id"]).timings["separate"] > 0
    # Other options are another separation.
    third = httpx.post(server.url + "/separate", timeout=120, **form(songs["short"], two_stems="bass"))
    assert third.headers["x-cache"] == "miss"
    assert zip_names(third.content) == ["bass.mp3", "no_bass.mp3"]


def test_the_cache_can_be_switched_off(start_server, songs):
    server = start_server(auth="none", result_cache=False)
    for _ in range(2):
        response = httpx.post(server.url + "/separate", timeout=120, **form(songs["wav"], two_stems="vocals"))
        assert response.status_code == 200 and response.headers["x-cache"] == "miss"
    assert not list((server.data_dir / "cache").iterdir())


def test_a_cache_hit_still_uses_up_the_key(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key):
        first = httpx.post(
            server.url + "/separate", headers={"X-Session-Key": key}, timeout=120, **form(songs["wav"])
        )
        assert first.headers["x-cache"] == "miss"
    with open_session(server) as (ws, key):
        hit = httpx.post(
            server.url + "/separate", headers={"X-Session-Key": key}, timeout=120, **form(songs["wav"])
        )
        assert hit.headers["x-cache"] == "hit"
        assert wait_for_message(ws, lambda m: m["type"] == "done")["id"] == hit.headers["x-job-id"]
        reuse = httpx.post(server.url + "/separate", headers={"X-Session-Key": key}, **form(songs["wav"]))
        assert reuse.status_code == 403 and error_of(reuse)["code"] == "key_used"
        # The socket can ask for a new challenge once its key is spent, and earn a new key.
        send(ws, {"type": "challenge"})
        send(ws, {"type": "solution", "payload": solve(receive(ws))})
        assert receive(ws)["type"] == "session"
