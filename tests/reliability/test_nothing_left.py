"""Nothing is left on disk: a refused, cancelled, failed or abandoned upload is gone when its request ends.

Only a finished ``POST /jobs`` job keeps its song (``sources/``), for a rerun by its owner (``from_job``),
as long as the job is kept; a ``POST /separate`` client has no token, so its job keeps nothing once the
answer is under way. After each probe the data folder holds only the files of jobs whose owners can still
reach them (:func:`.disk.unreachable_files`). Real servers on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import io
import shutil
import zipfile

import httpx
import pytest
from service_helpers import (
    error_of,
    open_session,
    post_job,
    stored_job,
    wait_for_message,
    wait_for_state,
    wait_unfollowed_job_ends,
    wait_until,
)

from freestems.service.paths import Paths

from .disk import HalfSent, json_error, multipart, unreachable_files


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def uploading(server) -> bool:
    """An upload holds a claimed key (its body is being read)."""
    sessions = server.service.sessions
    return any(sessions.uploading(connection) for connection in list(sessions._by_connection))


def rerun_form(job: dict) -> dict:
    return {"files": {"from_job": (None, job["id"]), "from_token": (None, job["token"])}}


# ---------------------------------------------------------------------------------------------- finding 1


@pytest.mark.parametrize("route", ["/jobs", "/separate", "rerun"])
def test_an_upload_whose_key_dies_midway_leaves_nothing_and_counts_as_refused(start_server, songs, route):
    """The key's socket closes while its upload streams in: the answer is 401 ``key_closed``, no job, no
    file (the song was linked into ``sources/`` before the key was checked), and the refusal counts."""
    server = start_server(refused_uploads_per_minute=1)
    reachable: set[str] = set()
    fields: dict[str, str] = {}
    song = songs["medium"]
    if route == "rerun":  # an earlier job of this owner, whose kept song is separated again
        with open_session(server) as (_ws, key):
            first = post_job(server, songs["wav"], key).json()
        first = {**first, **wait_for_state(server, first, "done")}
        reachable.add(first["id"])
        # Other options than the first run's: a cache hit would not need the key (it is checked when a
        # job is started).
        fields, song = {"from_job": first["id"], "from_token": first["token"], "format": "flac"}, None
    boundary, body = multipart(fields, song)
    with open_session(server) as (_ws, key):
        path = "/jobs" if route == "rerun" else route
        upload = HalfSent(port_of(server), path, boundary, body, {"X-Session-Key": key})
        wait_until(lambda: uploading(server), timeout=30)  # the server claimed the key: the body streams
    wait_until(lambda: len(server.service.sessions) == 0, timeout=30)  # the socket closed: the key died
    status, headers, answer = upload.finish()
    assert status == 401 and json_error(status, headers, answer)["code"] == "key_closed", answer
    assert [job.id for job in server.service.store.jobs()] == sorted(reachable)
    assert unreachable_files(server.data_dir, reachable) == []
    # The refusal counted against the address: with a limit of 1, the next upload is refused at once.
    with open_session(server) as (_ws, key):
        refused = post_job(server, songs["wav"], key)
    assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_refused"
    assert unreachable_files(server.data_dir, reachable) == []


# ---------------------------------------------------------------------------------------------- finding 2


def test_a_job_cancelled_for_want_of_a_follower_keeps_no_song(start_server, songs):
    server = start_server(auth="none", reattach_grace=1.0)
    job = post_job(server, songs["long"], None, shifts=3).json()  # never polled: cancelled after 1 s
    assert list(Paths(server.data_dir).sources.glob(f"{job['id']}.*"))  # kept while it may finish
    cancelled = wait_unfollowed_job_ends(server, job, "cancelled", "done", "failed")
    assert cancelled.state == "cancelled", cancelled
    wait_until(lambda: server.service.executor.busy == 0, timeout=60)
    assert unreachable_files(server.data_dir) == []  # its owner can read why; no file of it is left
    again = httpx.post(server.url + "/jobs", timeout=60, **rerun_form(job))
    assert again.status_code == 404 and "no longer kept" in error_of(again)["message"]
    assert unreachable_files(server.data_dir) == []

    # A cancelled job's song left by an older version goes at the next start.
    server.stop()
    stale = Paths(server.data_dir).sources / f"{job['id']}.mp3"
    shutil.copyfile(songs["wav"], stale)
    server = start_server(auth="none", reattach_grace=1.0)
    assert not stale.exists() and unreachable_files(server.data_dir) == []


def test_a_failed_job_keeps_no_song(start_server, songs):
    """A job whose upload is lost before it runs (queued behind another) fails; its song goes too."""
    server = start_server(auth="none", reattach_grace=60.0, workers=1)
    busy = post_job(server, songs["long"], None, shifts=3).json()
    wait_for_state(server, busy, "running")
    doomed = post_job(server, songs["wav"], None).json()
    (server.data_dir / "uploads" / f"{doomed['id']}.wav").unlink()
    assert httpx.delete(server.url + busy["status_url"]).status_code == 204
    assert wait_for_state(server, doomed, "done", "failed")["state"] == "failed"
    wait_until(lambda: server.service.executor.busy == 0, timeout=60)
    assert unreachable_files(server.data_dir) == []


def test_a_separate_client_that_hangs_up_leaves_nothing(start_server, songs):
    server = start_server(auth="none")
    boundary, body = multipart({"shifts": "3"}, songs["long"])
    request = HalfSent(port_of(server), "/separate", boundary, body, {})
    request.send_rest()
    running = wait_until(lambda: [j for j in server.service.store.jobs() if j.state == "running"], timeout=60)
    request.close()  # the client hangs up while it waits
    job = {"id": running[0].id}
    ended = wait_unfollowed_job_ends(server, job, "cancelled", "done", "failed")
    assert ended.state == "cancelled", ended
    wait_until(lambda: server.service.executor.busy == 0, timeout=60)
    assert unreachable_files(server.data_dir) == []


def test_a_finished_separate_job_keeps_no_song_nor_result(start_server, songs):
    """Nobody can rerun, fetch or delete a ``POST /separate`` job (no token): once its zip is open, its
    files go. The result cache keeps its own link, so the same song again is a hit."""
    server = start_server(auth="none")
    answers = []
    for _ in range(2):
        response = httpx.post(server.url + "/separate", timeout=120, files={
            "audio_file": ("tone.wav", songs["wav"].read_bytes(), "audio/wav")
        })  # fmt: skip
        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
            assert len(bundle.namelist()) == 4
        answers.append(response)
        assert unreachable_files(server.data_dir) == []
        stored = stored_job(server, {"id": response.headers["X-Job-Id"]})
        assert stored.state == "done" and stored.result_path is None
    assert [a.headers["X-Cache"] for a in answers] == ["miss", "hit"]
    assert answers[0].content == answers[1].content
    # A POST /jobs job of the same song is a hit too, and keeps its song and result for its owner.
    job = post_job(server, songs["wav"], None).json()
    assert job["cache"] == "hit"
    assert httpx.get(server.url + job["result_url"], timeout=60).content == answers[0].content
    assert unreachable_files(server.data_dir, {job["id"]}) == []
    assert list(Paths(server.data_dir).sources.glob(f"{job['id']}.*"))


def test_a_socket_closed_before_the_job_starts_leaves_nothing_once_cancelled(start_server, songs):
    """The key's socket closes with its job queued behind another: the grace cancels it; nothing stays."""
    server = start_server(reattach_grace=1.0, workers=1)
    with open_session(server) as (ws, key):
        busy = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, lambda m: m["type"] == "job" and m["state"] == "running")
    with open_session(server) as (_ws, key):
        queued = post_job(server, songs["medium"], key).json()
    for job in (busy, queued):
        assert wait_unfollowed_job_ends(server, job, "cancelled", "done", "failed").state == "cancelled"
    wait_until(lambda: server.service.executor.busy == 0, timeout=60)
    assert unreachable_files(server.data_dir) == []
