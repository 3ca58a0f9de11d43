"""Bounded sockets and keys: a session socket is closed by the server, with a documented code, before a
web function's timeout would end it; the client follows its job on a new socket and the job goes on; a key
never outlives its socket; one address cannot hold every socket."""

from __future__ import annotations

import time

import httpx
import pytest
from service_helpers import connect_session, receive, send, solve, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus

from freestems.client import Client
from freestems.client.progress import Reporter
from freestems.service.settings import Settings, SettingsError
from freestems.service.websocket import LIFETIME_CLOSE, LIFETIME_REASON

SHORT_LIFE = dict(socket_lifetime=8.0, challenge_ttl=2.0, upload_timeout=2.0)


class Notes(Reporter):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []
        self.states: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def job(self, state: str, position: int, progress: float) -> None:
        self.states.append(state)


def closed_by_server(ws) -> ConnectionClosed:
    """Read until the server closes the socket; its close frame."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            receive(ws, timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed
    raise AssertionError("the server did not close the socket")


def post_long_job(server, key: str, song) -> dict:
    with song.open("rb") as audio:
        created = httpx.post(
            server.url + "/jobs",
            headers={"X-Session-Key": key},
            files={"audio_file": ("long.mp3", audio, "audio/mpeg")},
            data={"shifts": "3"},
            timeout=60,
        )
    assert created.status_code == 202, created.text
    return created.json()


def test_a_key_is_offered_only_for_its_sockets_life_less_an_upload(start_server):
    server = start_server(**SHORT_LIFE, session_ttl=600.0)
    with connect_session(server) as ws:
        send(ws, {"type": "solution", "payload": solve(receive(ws))})
        reply = receive(ws)
        assert reply["type"] == "session"
        assert reply["expires_in"] <= 8 - 2  # not the 600 s of session_ttl: the socket closes at 8 s
        closed = closed_by_server(ws)  # the unused key expires first, and its socket is told so
        assert closed.rcvd is not None and closed.rcvd.code != 1000
    response = httpx.post(
        server.url + "/jobs", headers={"X-Session-Key": reply["key"]}, files={"audio_file": ("a.mp3", b"x")}
    )
    assert response.status_code == 401, response.text


def test_a_socket_with_a_running_job_is_closed_at_its_lifetime_with_the_documented_code(start_server, songs):
    server = start_server(**SHORT_LIFE)
    opened = time.monotonic()
    with connect_session(server) as ws:
        send(ws, {"type": "solution", "payload": solve(receive(ws))})
        key = receive(ws)["key"]
        job = post_long_job(server, key, songs["long"])
        closed = closed_by_server(ws)  # its key is busy with the job: that used to have no deadline
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (LIFETIME_CLOSE, LIFETIME_REASON)
    assert time.monotonic() - opened < 8 + 5
    httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})


def test_a_socket_that_follows_a_job_is_closed_at_its_lifetime_too(start_server, songs):
    server = start_server(**SHORT_LIFE)
    with connect_session(server) as ws:
        send(ws, {"type": "solution", "payload": solve(receive(ws))})
        key = receive(ws)["key"]
        job = post_long_job(server, key, songs["long"])
        with connect_session(server) as follower:  # waiting for a job used to have no deadline
            assert receive(follower)["type"] == "challenge"
            send(follower, {"type": "follow", "id": job["id"], "token": job["token"]})
            closed = closed_by_server(follower)
    assert closed.rcvd is not None and closed.rcvd.code == LIFETIME_CLOSE
    httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})


def test_the_job_goes_on_when_its_socket_reaches_its_lifetime_and_the_client_follows_it(
    start_server, songs, tmp_path
):
    server = start_server(**SHORT_LIFE)
    notes = Notes()
    with Client(server.url, reporter=notes, timeout=60) as client:
        paths = client.separate(songs["long"], shifts=3, out_dir=tmp_path)
    assert sorted(paths) == ["bass", "drums", "other", "vocals"]
    assert any("following the job again" in note for note in notes.notes)  # the socket did close
    jobs = server.service.store.jobs()
    assert [job.state for job in jobs] == ["done"]  # never cancelled
    assert (jobs[0].finished_at or 0) - (jobs[0].created_at or 0) > 8  # it outlived the first socket


def test_one_address_holds_at_most_its_sockets(start_server):
    server = start_server(sockets_per_ip=2)
    with connect_session(server), connect_session(server):
        with pytest.raises(InvalidStatus) as refused, connect_session(server):
            pass
        response = refused.value.response
        assert response.status_code == 429
        assert b"too_many_sockets" in response.body
    with connect_session(server) as ws:  # closed sockets free their places
        assert receive(ws)["type"] == "challenge"
    wait_until(lambda: not server.service.state._sockets, timeout=10)


def test_a_lifetime_that_leaves_no_time_for_a_key_is_refused(tmp_path):
    with pytest.raises((SettingsError, ValueError), match="SOCKET_LIFETIME.*must exceed"):
        Settings(data_dir=tmp_path, socket_lifetime=100.0, challenge_ttl=60.0, upload_timeout=60.0)
