"""Every way the service says no: keys, challenges, origins, limits, uploads, parameters, queue."""

from __future__ import annotations

import json
import select
import socket
import time

import altcha
import httpx
import pytest
from audio_samples import tiny_png
from service_helpers import (
    client_from,
    connect_session,
    error_of,
    form,
    job_status,
    leftover_files,
    open_session,
    post_job,
    receive,
    send,
    solve,
    wait_for_message,
    wait_unfollowed_job_ends,
    wait_until,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from freestems.options import SeparationOptions
from freestems.service import Settings, SettingsError


def post(server, path, key=None, *, client=None, **fields) -> httpx.Response:
    headers = {"X-Session-Key": key} if key else {}
    http = client or httpx
    return http.post(server.url + "/separate", headers=headers, timeout=120, **form(path, **fields))


def expect_error(ws, code: str) -> dict:
    """The server's last word: an error message with ``code``, then the close."""
    message = receive(ws)
    assert message == {"type": "error", "code": code, "message": message["message"]}, message
    with pytest.raises(ConnectionClosed):
        receive(ws)
    assert ws.close_code == 1008
    return message


def running(message: dict) -> bool:
    return message["type"] == "job" and message["state"] == "running" and message["progress"] > 0


# ---------------------------------------------------------------------------------------------- keys


def test_missing_and_unknown_keys_are_401(start_server, songs):
    server = start_server()
    for endpoint in ("/separate", "/jobs"):
        response = httpx.post(server.url + endpoint, **form(songs["wav"]))
        assert response.status_code == 401
        assert error_of(response)["code"] == "key_missing"
        assert "/session" in error_of(response)["message"]
    response = post(server, songs["wav"], "not-a-key")
    assert response.status_code == 401 and error_of(response)["code"] == "key_invalid"


def test_a_key_is_good_for_one_separation(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key):
        assert post(server, songs["wav"], key).status_code == 200
        again = post(server, songs["wav"], key)
        assert again.status_code == 403 and error_of(again)["code"] == "key_used"


def test_a_key_from_another_address_is_403(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key), client_from("127.0.0.2") as other:
        foreign = post(server, songs["wav"], key, client=other)
        assert foreign.status_code == 403 and error_of(foreign)["code"] == "key_foreign"
        # The rightful owner can still use it.
        assert post(server, songs["wav"], key).status_code == 200


def test_a_key_from_another_address_works_there(start_server, songs):
    server = start_server()
    with open_session(server, source="127.0.0.2") as (_, key), client_from("127.0.0.2") as there:
        assert post(server, songs["wav"], key, client=there).status_code == 200


def test_an_unused_key_expires(start_server, songs):
    server = start_server(session_ttl=1.0)
    with open_session(server) as (ws, key):
        time.sleep(1.2)
        expired = post(server, songs["wav"], key)
        assert expired.status_code == 401 and error_of(expired)["code"] == "key_expired"
        expect_error(ws, "session_expired")  # and the socket is told, then closed


def test_closing_the_socket_ends_the_key(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key):
        pass
    closed = wait_until(lambda: (r := post(server, songs["wav"], key)).status_code == 401 and r)
    assert error_of(closed)["code"] == "key_closed"


@pytest.mark.parametrize("trust_proxy", [False, True])
def test_forwarded_addresses_count_only_behind_a_trusted_proxy(start_server, songs, trust_proxy):
    server = start_server(trust_proxy=trust_proxy)
    with open_session(server, headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}) as (_, key):
        direct = post(server, songs["wav"], key)  # no header: the peer address, 127.0.0.1
        if trust_proxy:  # the key belongs to the proxy's last hop, 10.0.0.1
            assert direct.status_code == 403 and error_of(direct)["code"] == "key_foreign"
            relayed = httpx.post(
                server.url + "/separate",
                headers={"X-Session-Key": key, "X-Forwarded-For": "10.0.0.1"},
                timeout=120,
                **form(songs["wav"]),
            )
            assert relayed.status_code == 200
        else:  # a client cannot pick its own address with a header
            assert direct.status_code == 200


def test_a_refused_upload_does_not_spend_the_key(start_server, songs):
    server = start_server()
    with open_session(server) as (_, key):
        assert post(server, songs["wav"], key, shifts="lots").status_code == 422
        assert post(server, songs["wav"], key).status_code == 200


# ---------------------------------------------------------------------------------------------- challenges


def test_a_replayed_solution_is_refused(start_server):
    server = start_server()
    with connect_session(server) as ws:
        payload = solve(receive(ws))
        send(ws, {"type": "solution", "payload": payload})
        assert receive(ws)["type"] == "session"
        with connect_session(server) as other:  # on another connection
            receive(other)
            send(other, {"type": "solution", "payload": payload})
            assert "already solved" in expect_error(other, "replayed_solution")["message"]
        send(ws, {"type": "solution", "payload": payload})  # and on the same one
        expect_error(ws, "replayed_solution")


def test_a_challenge_only_counts_on_its_own_connection(start_server):
    server = start_server()
    with connect_session(server) as first, connect_session(server) as second:
        payload = solve(receive(first))
        receive(second)
        send(second, {"type": "solution", "payload": payload})
        expect_error(second, "foreign_challenge")
        send(first, {"type": "solution", "payload": payload})  # still good where it was issued
        assert receive(first)["type"] == "session"


def test_wrong_tampered_and_malformed_solutions(start_server):
    server = start_server()
    with connect_session(server) as ws:
        challenge = altcha.Challenge.from_dict(receive(ws)["challenge"])
        wrong = altcha.Solution(counter=10**6, derived_key="00" * 32)
        send(ws, {"type": "solution", "payload": altcha.Payload(challenge, wrong).to_base64()})
        expect_error(ws, "invalid_solution")
    with connect_session(server) as ws:
        challenge = altcha.Challenge.from_dict(receive(ws)["challenge"])
        challenge.parameters.cost = 0  # cheaper work: the signature no longer matches
        solution = altcha.solve_challenge(challenge)
        send(ws, {"type": "solution", "payload": altcha.Payload(challenge, solution).to_base64()})
        expect_error(ws, "invalid_signature")
    with connect_session(server) as ws:
        receive(ws)
        send(ws, {"type": "solution", "payload": "bm90IGpzb24="})
        expect_error(ws, "invalid_payload")
    with connect_session(server) as ws:
        receive(ws)
        ws.send("hello")
        expect_error(ws, "bad_message")


def test_an_unsolved_challenge_expires(start_server):
    server = start_server(challenge_ttl=0.5)
    with connect_session(server) as ws:
        payload = solve(receive(ws))
        time.sleep(0.7)
        # The server does not wait: it closes the socket when the challenge expires.
        expect_error(ws, "challenge_expired")
    assert payload


def test_a_socket_without_key_or_challenge_does_not_linger(start_server, songs):
    server = start_server(challenge_ttl=1.0)
    with open_session(server) as (ws, key):
        send(ws, {"type": "ping"})
        assert receive(ws) == {"type": "pong"}
        send(ws, {"type": "challenge"})  # a live key: no second session on this socket
        expect_error(ws, "session_active")
    with open_session(server) as (ws, key):
        assert post(server, songs["wav"], key).status_code == 200
        wait_for_message(ws, lambda m: m["type"] == "done")
        # The key is spent; the socket may ask for a new challenge, but only for so long.
        assert "connect again" in expect_error(ws, "idle")["message"]


def test_another_site_cannot_open_a_session(start_server):
    server = start_server()
    with pytest.raises(InvalidStatus) as refused, connect_session(server, origin="https://evil.example"):
        pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "bad_origin"
    # Same origin (the default) and no Origin at all (not a browser) are fine.
    with connect_session(server) as ws:
        assert receive(ws)["type"] == "challenge"
    with connect_session(server, origin=None) as ws:
        assert receive(ws)["type"] == "challenge"


def test_the_origin_allow_list(start_server):
    server = start_server(allowed_origins=("https://stems.example",))
    with connect_session(server, origin="https://stems.example") as ws:
        assert receive(ws)["type"] == "challenge"
    with pytest.raises(InvalidStatus) as refused, connect_session(server):  # same origin is not listed
        pass
    assert refused.value.response.status_code == 403


def test_new_sessions_per_address_are_rate_limited(start_server):
    server = start_server(sessions_per_minute=2)
    with connect_session(server) as first, connect_session(server):
        with pytest.raises(InvalidStatus) as refused, connect_session(server):
            pass
        response = refused.value.response
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert json.loads(response.body)["error"]["code"] == "rate_limited"
        # Another address has its own budget.
        with connect_session(server, source="127.0.0.2") as ws:
            assert receive(ws)["type"] == "challenge"
        # Asking for a new challenge on an open socket counts as a new session too.
        receive(first)
        send(first, {"type": "challenge"})
        expect_error(first, "rate_limited")


# ---------------------------------------------------------------------------------------------- uploads


def raw_request(server, head: str, body_chunks=(), limit_seconds: float = 30.0) -> tuple[str, int]:
    """Send a request by hand; stop sending as soon as the server answers. Returns (response, bytes sent)."""
    port = int(server.url.rsplit(":", 1)[1])
    sent = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # little in flight: sent ~ read
        sock.settimeout(limit_seconds)
        sock.connect(("127.0.0.1", port))
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
    return received.decode("latin-1"), sent


def test_a_declared_oversized_upload_is_refused_before_its_body(start_server):
    server = start_server(auth="none", max_upload_mb=1.0)
    head = (
        "POST /separate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    response, _ = raw_request(server, head)  # no body at all
    assert response.startswith("HTTP/1.1 413 ")
    assert '"code":"upload_too_large"' in response


def test_a_chunked_oversized_upload_is_cut_off_while_streaming(start_server):
    server = start_server(auth="none", max_upload_mb=1.0)
    head = (
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="audio_file"; filename="big.mp3"\r\n\r\n'
    block = b"\x00" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (len(block), block)] * 200
    response, sent = raw_request(server, head, chunks)
    assert response.startswith("HTTP/1.1 413 ")
    assert '"code":"upload_too_large"' in response
    assert sent < sum(map(len, chunks)) / 2  # the answer came while most of the 13 MB body was unsent


def test_a_trickling_upload_times_out(start_server):
    server = start_server(auth="none", upload_timeout=0.5)
    head = (
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 100000\r\n\r\n--b\r\n"
    )
    response, _ = raw_request(server, head)  # and then nothing
    assert response.startswith("HTTP/1.1 408 ")
    assert '"code":"upload_timeout"' in response


def test_too_long_audio_is_413(start_server, songs):
    server = start_server(auth="none", max_duration=2.0)
    response = post(server, songs["short"])
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "too_long"
    assert error["message"] == "song.mp3: audio is 3 s long; the limit is 2 s"


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        ("cover.mp3", tiny_png(), "looks like a PNG image"),
        ("notes.mp3", b"just some text, not music\n" * 20, "looks like text"),
        ("empty.wav", b"", "empty"),
    ],
)
def test_content_that_is_not_audio_is_415_whatever_its_name(start_server, name, content, phrase):
    server = start_server(auth="none")
    files = {"audio_file": (name, content, "audio/mpeg")}
    response = httpx.post(server.url + "/separate", files=files)
    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "not_audio"
    assert error["message"].startswith(name) and phrase in error["message"]


def test_a_body_that_is_not_a_form_is_415(start_server, songs):
    server = start_server(auth="none")
    response = httpx.post(server.url + "/separate", content=songs["wav"].read_bytes())
    assert response.status_code == 415 and error_of(response)["code"] == "not_multipart"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"two_stems": "guitar"}, "two_stems"),
        ({"shifts": "x"}, "shifts"),
        ({"shifts": "99"}, "shifts"),
        ({"overlap": "0.95"}, "overlap"),
        ({"overlap": "nan"}, "overlap"),
        ({"mp3": "maybe"}, "mp3"),
        ({"mp3_bitrate": "100"}, "mp3_bitrate"),
        ({"model": "htdemucs"}, "model"),
        ({"two_stem": "vocals"}, "two_stem"),
        ({"format": "ogg"}, "format"),
        ({"format": "flac", "mp3": "true"}, "format"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(start_server, songs, fields, field):
    server = start_server(auth="none")
    response = post(server, songs["wav"], **fields)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == ("model_not_served" if field == "model" else "invalid_parameter")
    assert error["field"] == field and error["message"].startswith(f"{field}: ")


def test_a_form_without_the_file_is_422(start_server):
    server = start_server(auth="none")
    response = httpx.post(server.url + "/separate", files={"song": ("a.mp3", b"x")}, data={"shifts": "1"})
    assert response.status_code == 422
    assert error_of(response)["field"] == "audio_file"


def test_lenient_values_existing_clients_send(start_server, songs):
    server = start_server(auth="none")
    response = post(server, songs["wav"], shifts=0, mp3="True", mp3_bitrate=200, two_stems="")
    assert response.status_code == 200, response.text
    job = server.service.store.get(response.headers["x-job-id"])
    expected = {"two_stems": None, "shifts": 1, "overlap": 0.25, "format": "mp3", "mp3_bitrate": 192}
    assert job.options == SeparationOptions(**expected, model="small").as_dict()  # the default, named


# ---------------------------------------------------------------------------------------------- queue


def test_jobs_in_flight_per_address_are_limited(start_server, songs):
    server = start_server(jobs_per_ip=1)
    with open_session(server) as (ws, key), open_session(server) as (_, second_key):
        job = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        refused = post_job(server, songs["wav"], second_key)
        assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_jobs"
        assert int(refused.headers["Retry-After"]) >= 1
        # Another address is not held back.
        with open_session(server, source="127.0.0.2") as (_, other_key), client_from("127.0.0.2") as there:
            accepted = post_job(server, songs["wav"], other_key, client=there)
            assert accepted.status_code == 202
    for cancelled in (job, accepted.json()):  # their sockets closed, nobody polls them
        wait_unfollowed_job_ends(server, cancelled, "cancelled")
    wait_until(lambda: leftover_files(server.data_dir) == [], timeout=30)  # the workers let go of them


def test_a_full_queue_refuses_new_jobs_and_stores_nothing(start_server, songs):
    server = start_server(queue_capacity=1)
    with open_session(server) as (ws, key), open_session(server) as (_, second_key):
        job = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        refused = post(server, songs["wav"], second_key)
        assert refused.status_code == 429
        assert error_of(refused)["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        assert server.service.store.counts()["queued"] == 0
        assert [p.name for p in (server.data_dir / "uploads").iterdir()] == [f"{job['id']}.mp3"]
    wait_unfollowed_job_ends(server, job, "cancelled")
    wait_until(lambda: leftover_files(server.data_dir) == [], timeout=30)  # the worker lets go of it


def test_closing_the_socket_cancels_the_job_after_the_grace_and_frees_the_worker(start_server, songs):
    server = start_server()
    with open_session(server) as (ws, key):
        job = post_job(server, songs["long"], key, shifts=3).json()
        progress = wait_for_message(ws, running)["progress"]
    wait_unfollowed_job_ends(server, job, "cancelled")  # after reattach_grace: nobody followed it
    status = job_status(server, job)
    assert status["error"]["code"] == "cancelled"
    assert "nobody followed this job for 2 s" in status["error"]["message"]
    assert status["result"] is None
    wait_until(lambda: server.service.executor.busy == 0, timeout=20)  # the whole job takes much longer
    assert status["progress"] < 1 and progress < 1
    assert not list((server.data_dir / "uploads").iterdir())
    assert not list((server.data_dir / "work").iterdir())
    assert not list((server.data_dir / "results").iterdir())
    # The worker takes the next job.
    with open_session(server) as (ws, key):
        post_job(server, songs["wav"], key)
        assert wait_for_message(ws, lambda m: m["type"] == "done")


def test_a_queued_job_of_a_closed_socket_never_runs(start_server, songs):
    server = start_server()
    with open_session(server) as (ws, key):
        first = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        with open_session(server) as (queued_ws, queued_key):
            second = post_job(server, songs["wav"], queued_key).json()
            message = wait_for_message(queued_ws, lambda m: m["type"] == "job")
            assert message["state"] == "queued" and message["position"] == 1
            assert job_status(server, second)["position"] == 1  # a poll: the grace restarts from here
        status = wait_unfollowed_job_ends(server, second, "cancelled")
        assert status.started_at is None
    wait_unfollowed_job_ends(server, first, "cancelled")


def test_a_client_that_hangs_up_on_separate_cancels_its_job(start_server, songs):
    server = start_server(auth="none")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/separate", timeout=httpx.Timeout(30, read=1.0), **form(songs["long"], shifts=3)
        )
    store = server.service.store
    wait_until(lambda: store.counts()["cancelled"] == 1)
    (job,) = store.jobs()
    assert job.error == "cancelled because the client of POST /separate disconnected"
    wait_until(lambda: server.service.executor.busy == 0, timeout=20)


# ---------------------------------------------------------------------------------------------- no keys


def test_auth_none_needs_no_key(start_server, songs):
    server = start_server(auth="none")
    assert httpx.get(server.url + "/health").json()["auth"] == "none"
    assert post(server, songs["wav"], two_stems="vocals").status_code == 200


def test_auth_none_is_refused_on_a_public_address(tmp_path):
    with pytest.raises(SettingsError, match="FREESTEMS_ALLOW_PUBLIC_NOAUTH"):
        Settings(host="0.0.0.0", auth="none", data_dir=tmp_path)
    Settings(host="0.0.0.0", auth="none", allow_public_noauth=True, data_dir=tmp_path)
    Settings(host="::1", auth="none", data_dir=tmp_path)
    Settings(host="localhost", auth="none", data_dir=tmp_path)
