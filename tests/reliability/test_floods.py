"""Upload floods: many concurrent uploads from several addresses against a small queue.

Every answer is a 202 or a JSON 429/503 (never another 5xx), the queue never holds more than its capacity,
each address never more than its share, `/health` keeps answering during the flood, and once the jobs are
deleted nothing is left in the data folder. Bounded by `scaled()` in count and by timeouts in time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from service_helpers import client_from, error_of, form, leftover_files, wait_until

from .bounds import scaled

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def test_an_upload_flood_is_refused_cleanly_and_the_queue_stays_bounded(start_server, songs):
    capacity, per_address = 4, 2
    server = start_server(
        auth="none",
        queue_capacity=capacity,
        jobs_per_ip=per_address,
        refused_uploads_per_minute=10_000,
        reattach_grace=120.0,  # a slow flood (a busy machine) must not see unpolled jobs cancelled meanwhile
    )
    store = server.service.store
    most_in_flight = 0
    watching = threading.Event()

    def watch() -> None:  # the queue's size, sampled all through the flood
        nonlocal most_in_flight
        while not watching.is_set():
            most_in_flight = max(most_in_flight, store.in_flight())
            watching.wait(0.01)

    def upload(index: int) -> httpx.Response:
        with client_from(ADDRESSES[index % len(ADDRESSES)], timeout=60) as client:
            return client.post(server.url + "/jobs", **form(songs["long"], shifts="3"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(upload, range(scaled(24, 400))))
            health = httpx.get(server.url + "/health", timeout=10)  # during the flood, from another address
    finally:
        watching.set()
        watcher.join(timeout=10)

    assert health.status_code == 200
    accepted = [answer.json() for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code != 202]
    assert all(answer.status_code in (429, 503) for answer in refused), [a.text for a in refused]
    assert {error_of(answer)["code"] for answer in refused} <= {"queue_full", "too_many_jobs"}
    assert all(answer.headers.get("Retry-After") for answer in refused)
    assert 1 <= len(accepted) <= capacity and most_in_flight <= capacity
    for address in ADDRESSES:
        assert store.in_flight(address) <= per_address

    for job in accepted:
        httpx.delete(f"{server.url}/jobs/{job['id']}", headers={"X-Job-Token": job["token"]}, timeout=30)
    wait_until(lambda: leftover_files(server.data_dir) == [], timeout=60)
