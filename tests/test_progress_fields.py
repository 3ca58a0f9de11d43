"""Honest progress (issue 12, C2): stage, elapsed, eta, ready_seconds, duration, queue_eta, and a progress
message at least once a second while a job runs, interpolated between the engine's reports."""

from __future__ import annotations

import time

import httpx
from service_helpers import job_status, open_session, post_job, receive, wait_until

from freestems.service.progress import CAP, ProgressClock

FIELDS = {"stage", "elapsed", "eta", "ready_seconds", "duration", "queue_eta"}


# ---------------------------------------------------------------------------------------------- the clock


def test_the_figure_moves_between_reports_but_never_past_the_next_one_nor_backwards():
    clock = ProgressClock()
    clock.started("a", duration=100.0, now=0.0)
    assert clock.progress("a", now=1.0) == 0.0  # nothing measured, nothing learnt: no guess
    assert clock.eta("a", now=1.0) is None
    clock.reported("a", 0.1, now=10.0)  # 0.01 per second
    assert clock.progress("a", now=10.0) == 0.1
    between = clock.progress("a", now=15.0)
    assert 0.1 < between < 0.2
    assert clock.progress("a", now=1000.0) <= 0.1 + 0.1  # capped at the next report
    clock.reported("a", 0.15, now=1001.0)  # slower than the figure shown: it waits, it does not go back
    assert clock.progress("a", now=1001.0) >= between
    clock.reported("a", 1.0, now=1002.0)
    assert clock.stage("a") == "finishing"
    assert clock.progress("a", now=5000.0) == CAP < 1.0
    assert clock.eta("a", now=5000.0) is not None


def test_finished_jobs_teach_the_speed_of_the_next_ones_and_the_queue_estimate():
    clock = ProgressClock()
    assert clock.queue_eta([None], workers=1, job_seconds=None) is None
    clock.started("a", duration=10.0, now=0.0)
    clock.ended("a", done=True, now=20.0)
    assert clock.seconds_per_audio == 2.0
    clock.started("b", duration=30.0, now=100.0)
    assert clock.eta("b", now=110.0) == 50.0  # 2 s per second of audio, 10 s gone
    assert clock.queue_eta([], workers=1, job_seconds=None, now=110.0) == 50.0
    assert clock.queue_eta([5.0], workers=1, job_seconds=None, now=110.0) == 60.0
    assert clock.queue_eta([], workers=2, job_seconds=None, now=110.0) == 0.0


# ---------------------------------------------------------------------------------------------- service


def test_a_running_job_reports_at_least_once_a_second_with_honest_fields(start_server, songs):
    server = start_server(workers=1)
    with open_session(server) as (ws, key), open_session(server) as (ws2, key2):
        job = post_job(server, songs["long"], key, shifts=3).json()
        assert set(job) >= FIELDS
        queued = post_job(server, songs["short"], key2).json()
        assert queued["stage"] == "queued"
        deadline = time.monotonic() + 120
        message = receive(ws)
        while not (message.get("type") == "job" and message.get("progress", 0) > 0):
            assert time.monotonic() < deadline, "the job never reported progress"
            message = receive(ws)
        window, messages = 4.0, []
        started = time.monotonic()
        while time.monotonic() - started < window and len(messages) < 200:
            message = receive(ws, timeout=window)
            if message["type"] == "job" and message["state"] == "running":
                messages.append(message)
        assert len(messages) >= window, f"{len(messages)} progress messages in {window} s"
        for earlier, later in zip(messages, messages[1:], strict=False):
            assert later["progress"] >= earlier["progress"]
            assert later["elapsed"] >= earlier["elapsed"]
            assert later["ready_seconds"] >= earlier["ready_seconds"]
        for message in messages:
            assert set(message) >= FIELDS
            assert message["stage"] in ("running", "finishing")
            assert 0 < message["progress"] < 1.0
            assert abs(message["duration"] - 90.0) < 1.0
            assert message["queue_eta"] is None
            assert message["eta"] is None or message["eta"] >= 0
        assert len({m["progress"] for m in messages}) > 2  # it moves between the engine's reports
        view = job_status(server, job)
        assert set(view) >= FIELDS and view["stage"] in ("running", "finishing")
        waiting = wait_until(lambda: (v := job_status(server, queued))["queue_eta"] is not None and v, 60)
        assert waiting["stage"] == "queued" and waiting["queue_eta"] >= 0 and waiting["elapsed"] is None
        httpx.delete(f"{server.url}/jobs/{job['id']}", params={"token": job["token"]})
        done = wait_until(lambda: (v := job_status(server, queued))["state"] == "done" and v, 120)
        assert done["stage"] == "done" and done["eta"] == 0.0 and done["progress"] == 1.0
        assert done["ready_seconds"] == done["duration"] > 0
