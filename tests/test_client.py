"""The remote client (``freestems remote``, ``freestems.client``) against a real server: real proof of work
at the test settings, real uploads and zips, and a real TCP proxy that cuts connections."""

from __future__ import annotations

import threading
import zipfile

import altcha
import httpx
import pytest
from client_proxy import CuttingProxy
from service_helpers import (
    connect_session,
    leftover_files,
    open_session,
    post_job,
    send,
    wait_for_message,
    wait_until,
)

from freestems.audio import decode
from freestems.cli import main
from freestems.client import Client, RemoteError, pow
from freestems.client.progress import Reporter
from freestems.service.challenges import ChallengeBook

FOUR = ["bass", "drums", "other", "vocals"]


class Recording(Reporter):
    """Remembers what the client reported (from the thread the client runs in)."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.states: list[str] = []
        self.positions: list[int] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def job(self, state: str, position: int, progress: float) -> None:
        self.states.append(state)
        self.positions.append(position)


def running(message: dict) -> bool:
    return message.get("type") == "job" and message.get("state") == "running"


def lengths(paths) -> set[tuple[int, int]]:
    return {tuple(decode(path).shape) for path in paths}


def supports_follow(server) -> bool:
    """Whether the server knows ``follow`` (and so keeps a dropped job for a grace period): asked about
    a job that does not exist, it says ``not_found``; a server without it says ``bad_message``."""
    with connect_session(server, origin=None) as ws:
        send(ws, {"type": "follow", "id": "0" * 16, "token": "none"})
        return wait_for_message(ws, lambda m: m.get("type") == "error")["code"] != "bad_message"


def cancel(server, job: dict) -> None:
    """Cancel a job now and wait until its worker has cleaned up."""
    httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})
    wait_until(lambda: not leftover_files(server.data_dir))


def in_thread(action):
    """Run ``action`` in a thread; returns (thread, outcome) where outcome gets "value" or "error"."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# ---------------------------------------------------------------------------------------------- PoW


@pytest.mark.parametrize(
    ("algorithm", "cost", "counter"),
    [("SHA-256", 1, 8), ("SHA-256", 40, 300), ("PBKDF2/SHA-256", 50, 200)],
)
def test_the_server_accepts_the_answer_and_every_core_finds_the_same_one(algorithm, cost, counter):
    book = ChallengeBook("secret", algorithm=algorithm, cost=cost, counter=counter)
    challenge = book.issue("connection")
    alone = pow.solve(challenge, workers=1)
    threads = pow.solve(challenge, workers=3, inline_seconds=0, processes=False)
    processes = pow.solve(challenge, workers=2, inline_seconds=0, processes=True)
    # The server's deterministic challenges have exactly one answer: every way of searching finds it.
    assert counter // 2 <= alone.counter <= counter
    assert (threads.counter, threads.derived_key) == (alone.counter, alone.derived_key)
    assert (processes.counter, processes.derived_key) == (alone.counter, alone.derived_key)
    payload = altcha.Payload(altcha.Challenge.from_dict(challenge), processes).to_base64()
    book.verify("connection", payload)  # raises if the server would refuse it


@pytest.mark.parametrize(
    ("algorithm", "library"),
    [
        ("SHA-256", altcha.derive_key_sha),
        ("SHA-512", altcha.derive_key_sha),
        ("PBKDF2/SHA-256", altcha.derive_key_pbkdf2),
        ("PBKDF2/SHA-384", altcha.derive_key_pbkdf2),
        ("SCRYPT", altcha.derive_key_scrypt),
    ],
)
def test_the_native_derivations_equal_the_librarys(algorithm, library):
    parameters = altcha.create_challenge(algorithm, 16, key_length=24).parameters
    salt = bytes.fromhex(parameters.salt)
    derive, _ = pow.deriver(parameters)
    for counter in (0, 1, 77, 2**32 - 1):
        password = bytes.fromhex(parameters.nonce) + counter.to_bytes(4, "big")
        assert derive(password) == library(parameters, salt, password)


@pytest.mark.parametrize("processes", [False, True])
def test_parallel_answers_to_an_open_challenge_verify(processes):
    # Not deterministic: any counter whose key starts with the prefix answers; the library re-derives it.
    challenge = altcha.create_challenge("SHA-256", 20, key_prefix="00", hmac_secret="secret")
    solution = pow.solve(challenge, workers=2, inline_seconds=0, processes=processes)
    assert solution.derived_key.startswith("00")
    assert altcha.verify_solution(altcha.Payload(challenge, solution), "secret").verified


def test_an_unsolvable_challenge_times_out_cleanly():
    challenge = altcha.create_challenge("SHA-256", 1, key_prefix="00" * 16, hmac_secret="secret")
    with pytest.raises(RemoteError) as caught:
        pow.solve(challenge, workers=2, inline_seconds=0, processes=True, timeout=0.5)
    assert caught.value.code == "pow_timeout"


def test_a_key_from_real_pbkdf2_work(start_server):
    server = start_server(pow_algorithm="PBKDF2/SHA-256", pow_cost=500, pow_counter=60)
    with Client(server.url, workers=2) as client, client.get_key() as session:
        assert session.key and session.alive


# ---------------------------------------------------------------------------------------------- end to end


def test_the_command_separates_into_the_output_folder(start_server, songs, tmp_path, capsys):
    server = start_server()
    out = tmp_path / "out"
    assert main(["remote", str(songs["short"]), "--url", server.url, "-o", str(out)]) == 0
    folder = out / "small" / songs["short"].stem
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.mp3" for stem in FOUR]
    assert lengths(folder.iterdir()) == {(2, decode(songs["short"]).shape[1])}
    assert sorted(p.name for p in (out / "small").iterdir()) == [songs["short"].stem]  # no zip, no .part
    assert f"4 stems in {folder}" in capsys.readouterr().err


def test_the_library_call_and_a_kept_zip(start_server, songs, tmp_path):
    server = start_server()
    with Client(server.url) as client:
        stems = client.separate(songs["wav"], two_stems="vocals", format="flac", out_dir=tmp_path)
        assert sorted(stems) == ["no_vocals", "vocals"]
        assert stems["vocals"] == tmp_path / "small" / "tone" / "vocals.flac"
        assert lengths(stems.values()) == {(2, decode(songs["wav"]).shape[1])}
        kept = client.separate(songs["wav"], two_stems="vocals", format="flac", out_dir=tmp_path, zip=True)
        assert kept == {"zip": tmp_path / "small" / "tone.zip"}  # the second time from the server's cache
        assert sorted(zipfile.ZipFile(kept["zip"]).namelist()) == ["no_vocals.flac", "vocals.flac"]


def test_errors_are_one_line_each_and_the_exit_code_says_so(start_server, songs, tmp_path, capsys):
    server = start_server()
    junk = tmp_path / "junk.mp3"
    junk.write_text("not a song at all " * 100)
    out = tmp_path / "out"
    code = main(["remote", str(junk), str(songs["wav"]), "--url", server.url, "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    failures = [line for line in err.splitlines() if line.startswith("freestems: junk.mp3: ")]
    assert len(failures) == 1 and "(415 not_audio)" in failures[0]
    assert "freestems: 1 separated, 1 failed:" in err
    assert len(list((out / "small" / "tone").iterdir())) == 4  # the good file went on

    assert main(["remote", str(songs["wav"]), "--url", server.url, "--shifts", "99", "-q"]) == 1
    err = capsys.readouterr().err
    refused = "shifts: must be an integer from 0 to 3, got '99' (422 invalid_parameter)"
    assert f"freestems: tone.wav: {refused}" in err
    assert "Traceback" not in err

    with pytest.raises(RemoteError) as caught, Client(server.url) as client:
        client.separate(songs["wav"], two_stems="guitar", out_dir=tmp_path)
    assert (caught.value.status, caught.value.code) == (422, "invalid_parameter")


# ---------------------------------------------------------------------------------------------- busy server


def test_retry_after_is_waited_out(start_server, songs, tmp_path):
    server = start_server(jobs_per_ip=1)
    # White-box: a fresh server advises Retry-After of its 60 s job estimate; 1 s keeps the test short.
    server.service.manager.views.job_seconds = 1.0
    with open_session(server) as (ws, key):
        blocker = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        reporter = Recording()
        client = Client(server.url, reporter=reporter)
        thread, outcome = in_thread(lambda: client.separate(songs["wav"], out_dir=tmp_path))
        wait_until(lambda: any("retrying in 1 s" in note for note in reporter.notes), timeout=60)
        assert "you already have 1 job(s) queued or running" in reporter.notes[0]
        cancel(server, blocker)
        thread.join(timeout=120)
    client.close()
    assert "error" not in outcome, outcome.get("error")
    assert sorted(outcome["value"]) == FOUR


def test_the_queue_position_is_reported_while_waiting(start_server, songs, tmp_path):
    server = start_server()  # one worker
    with open_session(server) as (ws, key):
        blocker = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        reporter = Recording()
        client = Client(server.url, reporter=reporter)
        thread, outcome = in_thread(lambda: client.separate(songs["wav"], out_dir=tmp_path))
        wait_until(lambda: 1 in reporter.positions, timeout=60)
        assert reporter.states[reporter.positions.index(1)] == "queued"
        cancel(server, blocker)
        thread.join(timeout=120)
    client.close()
    assert "error" not in outcome, outcome.get("error")
    assert reporter.states[-1] == "done" and "running" in reporter.states


def test_too_many_new_sessions_is_a_clean_error(start_server):
    server = start_server(sessions_per_minute=1)
    with Client(server.url) as client, client.get_key():
        pass
    with pytest.raises(RemoteError) as caught, Client(server.url, max_wait=0) as client:
        client.get_key()
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    assert caught.value.retry_after and caught.value.retry_after > 0
    assert "gave up" in caught.value.message


def test_a_busy_server_past_the_maximum_wait_is_one_clean_error(start_server, songs, capsys):
    server = start_server(jobs_per_ip=1)
    with open_session(server) as (ws, key):
        blocker = post_job(server, songs["long"], key, shifts=3).json()
        wait_for_message(ws, running)
        code = main(["remote", str(songs["wav"]), "--url", server.url, "--max-wait", "0"])
        cancel(server, blocker)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("freestems: tone.wav: ")]
    assert "gave up: waiting 60 s more would pass the maximum wait of 0 s" in line
    assert line.endswith("(429 too_many_jobs)")


# ---------------------------------------------------------------------------------------------- dropped links


def test_a_dropped_download_resumes_where_it_stopped(start_server, songs, tmp_path):
    server = start_server()
    with CuttingProxy(server.url) as proxy, Client(proxy.url, reporter=(reporter := Recording())) as client:
        proxy.cut_result_after(50_000)
        stems = client.separate(songs["short"], format="wav", out_dir=tmp_path / "out")
        assert proxy.cuts == 1
        assert proxy.seen_upstream("Range: bytes=")
        assert proxy.seen_downstream("206 Partial Content")
    assert any("download interrupted" in note for note in reporter.notes)
    assert sorted(stems) == FOUR
    assert lengths(stems.values()) == {(2, decode(songs["short"]).shape[1])}
    assert not list((tmp_path / "out").rglob("*.part")) and not list((tmp_path / "out").rglob("*.zip"))


def test_polling_rides_out_an_unreachable_server(start_server, songs, tmp_path):
    server = start_server(auth="none")  # no key and no socket: the job is followed by polling alone
    with CuttingProxy(server.url) as proxy, Client(proxy.url, timeout=30) as client:
        job = client.submit(songs["medium"], None, shifts=2)
        proxy.refusing = True  # every new connection is closed at once, and the open ones now
        proxy.cut_all()
        thread, outcome = in_thread(lambda: client.wait(job))
        wait_until(lambda: proxy.refused >= 2 or not thread.is_alive(), timeout=30)
        proxy.refusing = False
        thread.join(timeout=120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["value"].state == "done"
        archive = client.download(job, tmp_path / "stems.zip")
    assert sorted(zipfile.ZipFile(archive).namelist()) == [f"{stem}.mp3" for stem in FOUR]


def _separate_and_cut_the_socket(server, songs, tmp_path):
    """Separate through a proxy and close the session socket while the job runs; returns the outcome, the
    reporter and the proxy (closed)."""
    with CuttingProxy(server.url) as proxy:
        reporter = Recording()
        client = Client(proxy.url, reporter=reporter)
        thread, outcome = in_thread(lambda: client.separate(songs["long"], shifts=2, out_dir=tmp_path))
        wait_until(lambda: "running" in reporter.states, timeout=60)
        assert proxy.cut_sockets() == 1
        thread.join(timeout=180)
        client.close()
    return outcome, reporter, proxy


def test_a_dropped_session_socket_is_followed_again(start_server, songs, tmp_path):
    server = start_server()
    if not supports_follow(server):
        pytest.skip("the server has no follow message and grace period yet")
    outcome, reporter, proxy = _separate_and_cut_the_socket(server, songs, tmp_path)
    assert "error" not in outcome, outcome.get("error")
    assert sorted(outcome["value"]) == FOUR
    assert any("following the job again" in note for note in reporter.notes)
    assert proxy.upstream_count("GET /session") >= 2  # the first socket, then the one that follows


def test_without_follow_the_client_polls_and_reports_the_cancellation(start_server, songs, tmp_path):
    server = start_server()
    if supports_follow(server):
        pytest.skip("the server keeps the job for a grace period now")
    outcome, reporter, proxy = _separate_and_cut_the_socket(server, songs, tmp_path)
    error = outcome.get("error")
    assert isinstance(error, RemoteError), outcome
    assert (error.status, error.code) == (409, "cancelled")
    assert "its session's WebSocket closed" in error.message
    assert proxy.upstream_count("GET /session") >= 2  # it tried to follow the job on a new socket
    assert proxy.seen_upstream("GET /jobs/")  # then polled
