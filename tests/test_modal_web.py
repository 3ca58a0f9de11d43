"""The Modal web tier, offline: the web function's ASGI app on a real uvicorn, jobs through a ModalExecutor
whose remote calls are the GPU class's own ``.local()`` (Modal's cloud is the one thing faked)."""

from __future__ import annotations

import io
import shutil
import threading
import zipfile

import httpx
import pytest
from modal_helpers import InProcessCalls, use_in_process_gpu
from service_helpers import (
    error_of,
    form,
    job_status,
    leftover_files,
    open_session,
    post_job,
    receive,
    serving,
    wait_for_message,
    wait_unfollowed_job_ends,
    wait_until,
)

from freestems.executors import JobEvent, WorkItem
from freestems.executors.modal import InputCancellation, ModalExecutor
from freestems.service.options import SeparationOptions

FOUR = ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]


def zip_names(content: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        return sorted(bundle.namelist())


@pytest.fixture
def web_server(deployment, monkeypatch):
    """The web function's app, served; its GPU calls run ``Separator().separate.local`` here."""
    calls = use_in_process_gpu(monkeypatch, deployment)
    app = deployment.module.web.local()
    with serving(app, deployment.module.settings) as server:
        yield server, deployment, calls
    assert leftover_files(deployment.module.settings.data_dir) == []


def test_the_web_function_serves_the_session_flow_with_jobs_on_the_gpu_class(web_server, songs):
    server, deployment, calls = web_server
    health = httpx.get(server.url + "/health").json()
    assert health["model"] == "small" and health["auth"] == "pow"

    with open_session(server) as (ws, key):
        created = post_job(server, songs["short"], key)
        assert created.status_code == 202, created.text
        job = created.json()
        states, progress = [], []
        while (message := receive(ws))["type"] != "done":
            assert message["type"] == "job" and message["id"] == job["id"]
            states.append(message["state"])
            progress.append(message["progress"])
        assert "running" in states and states[-1] == "done"
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert message["result"] == job["result_url"]

    status = job_status(server, job)
    assert status["state"] == "done"
    timings = status["timings"]
    assert {"queue_wait", "container_start", "upload", "download", "gpu_seconds"} <= set(timings)
    assert {"decode", "separate", "encode", "zip", "audio_seconds"} <= set(timings)
    assert timings["gpu_seconds"] > 0 and timings["container_start"] > 0  # the first call started the class
    assert status["cost"]["gpu"] == "L4" and status["cost"]["gpu_seconds"] == timings["gpu_seconds"]
    rate = 0.000222 + 4 * 0.0000131 + 4 * 0.00000222  # the L4, its 4 cores and 4 GiB: counted whole
    assert status["cost"]["usd"] == pytest.approx(timings["gpu_seconds"] * rate)
    assert zip_names(httpx.get(server.url + job["result_url"]).content) == FOUR

    # POST /separate answers with the zip itself; the GPU container is warm now.
    with open_session(server) as (_, key):
        response = httpx.post(
            server.url + "/separate",
            headers={"X-Session-Key": key},
            timeout=120,
            **form(songs["wav"], two_stems="drums", format="flac"),
        )
    assert response.status_code == 200, response.text
    assert zip_names(response.content) == ["drums.flac", "no_drums.flac"]

    assert len(calls.spawned) == 2 and calls.cancelled == 0
    store = server.service.store
    usage = {record.job_id: record for record in store.usage_records()}
    assert set(usage) == {job["id"], response.headers["x-job-id"]}
    second = usage[response.headers["x-job-id"]]
    assert second.gpu == "L4" and second.timings["container_start"] == 0
    assert second.audio_seconds == pytest.approx(2.0, abs=0.01)
    # The GPU side kept its own records too (the Modal Dict that `freestems cost --modal` reads).
    assert [record.job_id for record in deployment.usage.records] == [job["id"], response.headers["x-job-id"]]


def test_a_refused_upload_never_reaches_the_gpu(web_server, tmp_path):
    server, _, calls = web_server
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 64)
    with open_session(server) as (_, key):
        refused = post_job(server, junk, key)
    assert refused.status_code == 415 and error_of(refused)["code"] == "not_audio"
    assert calls.spawned == []


def test_closing_the_socket_cancels_the_gpu_call(web_server, songs):
    server, _, calls = web_server
    with open_session(server) as (ws, key):
        job = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, lambda m: m["type"] == "job" and m["state"] == "running" and m["progress"] > 0)
    stopped = wait_unfollowed_job_ends(server, job, "cancelled")  # after the reattach grace, unpolled
    assert "nobody followed this job" in stopped.error
    (call,) = calls.spawned
    assert wait_until(lambda: call.finished.is_set(), timeout=30)
    assert calls.cancelled == 1 and isinstance(call.error, InputCancellation)
    assert server.service.store.usage(job["id"]) is None  # nothing finished, nothing recorded


def test_the_executor_relays_failures_and_gives_running_calls_back_at_shutdown(deployment, songs, tmp_path):
    """Without the service: the executor's own contract (failures, order, shutdown)."""
    calls = InProcessCalls(deployment.Separator().separate.local)
    describe = deployment.module.model_description
    executor = ModalExecutor(calls, deployment.channel, describe, gpu="L4", poll_interval=0.05)
    executor.start()
    assert executor.model.name == "small"
    events: dict[str, list[JobEvent]] = {}
    progressed = threading.Event()

    def listener(event: JobEvent) -> None:
        events.setdefault(event.job_id, []).append(event)
        if event.job_id == "long" and event.kind == "progress":
            progressed.set()

    def item(job_id: str, source, **options) -> WorkItem:
        copy = tmp_path / f"{job_id}{source.suffix}"
        shutil.copy(source, copy)
        return WorkItem(
            job_id=job_id,
            source=copy,
            result=tmp_path / f"{job_id}.zip",
            report=listener,
            options=SeparationOptions(**options),
            max_duration=240,
            display_name=f"{job_id} upload{source.suffix}",
        )

    junk = tmp_path / "sources" / "junk.wav"
    junk.parent.mkdir()
    junk.write_bytes(b"RIFF but nothing else" * 10)
    flac = item("flac", songs["wav"], format="flac", bit_depth=24)
    executor.submit(item("junk", junk))
    executor.submit(flac)
    executor.submit(item("long", songs["long"], shifts=3))
    executor.submit(item("waiting", songs["wav"]))
    assert progressed.wait(60)
    executor.cancel("waiting")  # still in this side's queue: dropped without a GPU call
    executor.close()

    failed = events["junk"][-1]
    assert failed.kind == "failed" and failed.code == "not_audio" and "junk upload.wav" in failed.message
    # The options cross as they are: the GPU tier encodes what the item asks for, 24-bit FLAC included.
    assert events["flac"][-1].kind == "done"
    with zipfile.ZipFile(tmp_path / "flac.zip") as bundle:
        assert sorted(bundle.namelist()) == sorted(f"{stem}.flac" for stem in executor.model.sources)
        info = bundle.read("vocals.flac")[8:42]  # STREAMINFO, after "fLaC" and the block header
    assert ((info[12] & 1) << 4 | info[13] >> 4) + 1 == 24  # bits per sample
    assert [event.kind for event in events["waiting"]] == ["cancelled"]
    # Shutdown: the running call is cancelled on the GPU, the job gets no final report, its upload stays.
    assert {event.kind for event in events["long"]} == {"started", "progress"}
    assert (tmp_path / "long.mp3").exists() and not (tmp_path / "long.zip").exists()
    assert calls.cancelled == 1 and len(calls.spawned) == 3  # junk, flac and long
    assert not (tmp_path / "junk.wav").exists() and not flac.source.exists()


def test_every_web_request_ends_within_modals_limit(deployment):
    """Modal ends a web request at 150 s (with a 303 a page cannot follow across origins): on the web tier
    an upload may take FREESTEMS_MODAL_REQUEST_SECONDS at most, and POST /separate answers 202 with its job
    by then (tests/test_service_guard.py shows that answer)."""
    from freestems.deploy.web_tier import web_settings

    module = deployment.module
    limit = module.modal_settings.modal_request_seconds
    assert limit == 120
    served = web_settings(module.settings, module.modal_settings, in_container=True)
    assert served.upload_timeout <= limit and served.separate_wait == limit < 150
    assert module.settings.separate_wait == 0  # freestems serve still waits for the zip
    assert module.WEB_FUNCTION_OPTIONS["timeout"] > served.socket_lifetime  # a socket ends first
