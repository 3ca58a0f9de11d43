"""Every answer is whole and every error is JSON: files deleted under a reader, Range, HEAD, form messages,
and the API documentation without internet.

A result or a segment can be deleted at any moment (by its owner, by the TTL sweep); a reader then gets a
JSON 404 before anything is sent, or the complete file, and the server logs no traceback. Real servers on
127.0.0.1; every loop is bounded (``scaled``).
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from service_helpers import error_of, post_job, wait_for_state
from web_helpers import needs_chromium

import freestems.service.app as service_app

from .bounds import scaled
from .disk import unreachable_files


class Records(logging.Handler):
    """Every log record of the server (uvicorn's own loggers do not reach the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [
            record.getMessage()
            for record in self.records
            if record.exc_info or "Exception in ASGI application" in record.getMessage()
        ]


@pytest.fixture
def server_log() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "freestems")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def members(zip_bytes: bytes) -> dict[str, bytes]:
    """A zip's files by name (the zip itself differs in its time stamps)."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def params(job: dict) -> dict:
    return {"token": job["token"]}


def assert_json(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return error_of(response)


@pytest.fixture
def finished(start_server, songs):
    """A server (no keys needed) with one computed job of the short WAV, its zip and its first segment."""
    server = start_server(auth="none")
    job = post_job(server, songs["wav"], None, format="wav").json()
    assert wait_for_state(server, job, "done")["state"] == "done"
    zip_bytes = httpx.get(server.url + job["result_url"], timeout=60).content
    listing = httpx.get(f"{server.url}/jobs/{job['id']}/partial", params=params(job), timeout=60).json()
    stem = listing["stems"][0]
    segment = httpx.get(f"{server.url}/jobs/{job['id']}/partial/{stem}/0", params=params(job), timeout=60)
    assert segment.status_code == 200
    return server, job, zip_bytes, stem, segment.content


# ---------------------------------------------------------------------------------------------- deletion


def test_files_deleted_under_readers_give_a_json_404_or_the_whole_file(
    finished, songs, monkeypatch, server_log
):
    """Bounded trials: each makes a done job of the computed song (a cache hit: its own links to the zip
    and segments), reads its zip (whole, or a range) or a segment, and has the job deleted meanwhile:
    expired right before the route opens the file (a hook), right after (a hook), by the sweeper at a
    random instant, or by its owner's DELETE at a random instant (which also evicts the cache entry: the
    test puts it back). Only a JSON 404 or the complete expected bytes may come
    back, and the server logs no traceback."""
    server, first, zip_bytes, stem, segment_bytes = finished
    manager, store = server.service.manager, server.service.store
    rng = random.Random(19)
    opened = service_app.open_download
    hook: dict[str, str | None] = {"when": None, "job": None}

    def expire(job_id: str) -> None:  # what the sweeper does to a job past its TTL
        store.update(job_id, expires_at=0.0)
        manager.sweep()

    def hooked(path, *args, **kwargs):
        if hook["when"] == "before":
            expire(str(hook["job"]))  # between the route's lookup of the job and the open
        response = opened(path, *args, **kwargs)
        if hook["when"] == "after":
            expire(str(hook["job"]))  # right after the open, before the first byte is sent
        return response

    monkeypatch.setattr(service_app, "open_download", hooked)
    outcomes: dict[str, int] = {}
    trials = scaled(30, 300)
    for trial in range(trials):
        job = post_job(server, songs["wav"], None, format="wav").json()
        assert job["cache"] == "hit", job  # done at once, its segments linked to the computed job's
        what = ("result", "range", "segment")[trial % 3]
        when = ("before", "after", "swept", "deleted")[trial % 4]
        url = f"{server.url}/jobs/{job['id']}/result"
        headers, expected = {}, zip_bytes
        if what == "range":
            cut = rng.randrange(1, len(zip_bytes) - 1)
            headers, expected = {"Range": f"bytes={cut}-"}, zip_bytes[cut:]
        elif what == "segment":
            url, expected = f"{server.url}/jobs/{job['id']}/partial/{stem}/0", segment_bytes
        hook.update(when=when, job=job["id"])
        deleter = None
        if when == "swept":  # the sweeper runs every 0.2 s: it deletes the job somewhere in that time
            store.update(job["id"], expires_at=time.time() + rng.uniform(0, 0.05))
        elif when == "deleted":
            delay = rng.uniform(0, 0.01)

            def delete(job=job, delay=delay):
                time.sleep(delay)
                httpx.delete(f"{server.url}/jobs/{job['id']}", params=params(job), timeout=30)

            deleter = threading.Thread(target=delete)
            deleter.start()
        response = httpx.get(url, params=params(job), headers=headers, timeout=60)
        if deleter is not None:
            deleter.join(timeout=30)
        hook.update(when=None)
        if response.status_code == 404:
            assert_json(response, 404)
        else:
            assert response.status_code == (206 if what == "range" else 200), response.text
            assert response.content == expected
        outcomes[f"{when} {response.status_code}"] = outcomes.get(f"{when} {response.status_code}", 0) + 1
        if when in ("before", "after"):
            assert response.status_code == (404 if when == "before" else 206 if what == "range" else 200)
        if when != "deleted":
            expire(job["id"])
        else:  # the owner's DELETE evicted the cache entry: give it back (the computed job's result)
            original = store.get(first["id"])
            manager.cache.put(original.cache_key, original.result_path, original.id)
    print(f"{trials} trials: {outcomes}")
    assert server_log.tracebacks() == []
    assert unreachable_files(server.data_dir, {first["id"]}) == []


def test_a_cache_entry_deleted_before_it_is_linked_is_a_miss(finished, songs, monkeypatch, server_log):
    """``POST /separate`` of a cached song, its cache entry deleted between the lookup and the link (its
    job deleted by its owner): the song is separated again instead of a 503."""
    server, first, zip_bytes, _, _ = finished
    cache = server.service.manager.cache
    lookup = cache.lookup

    def vanishing(key):
        found = lookup(key)
        if found is not None:
            server.service.manager.delete(first["id"])  # evicts the entry and removes its file
        return found

    monkeypatch.setattr(cache, "lookup", vanishing)
    files = {"audio_file": ("tone.wav", songs["wav"].read_bytes(), "audio/wav")}
    response = httpx.post(server.url + "/separate", data={"format": "wav"}, files=files, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-Cache"] == "miss" and members(response.content) == members(zip_bytes)
    assert server_log.tracebacks() == []
    assert unreachable_files(server.data_dir) == []


# ---------------------------------------------------------------------------------------------- Range


def test_range_errors_are_json(finished):
    server, job, zip_bytes, stem, segment_bytes = finished
    size = len(zip_bytes)
    result = f"{server.url}/jobs/{job['id']}/result"

    def get(url: str, value: str, **headers: str) -> httpx.Response:
        return httpx.get(url, params=params(job), headers={"Range": value, **headers}, timeout=60)

    past = get(result, f"bytes={size}-")
    assert assert_json(past, 416)["code"] == "range_not_satisfiable"
    assert past.headers["Content-Range"] == f"bytes */{size}"
    for bad in ("bytes=abc", "bytes=5-2", "bytes=-", "bytes=1-2-3", "bytes="):
        assert assert_json(get(result, bad), 400)["code"] == "invalid_range", bad
    # A range the server may ignore gives the whole file (RFC 9110): another unit, several ranges.
    for ignored in ("items=0-1", "bytes=0-9,20-29"):
        whole = get(result, ignored)
        assert whole.status_code == 200 and whole.content == zip_bytes, ignored
    tail = get(result, "bytes=-100")
    assert tail.status_code == 206 and tail.content == zip_bytes[-100:]
    assert tail.headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
    middle = get(result, "bytes=10-19")
    assert middle.status_code == 206 and middle.content == zip_bytes[10:20]
    # If-Range: the same file resumes; a changed one (another validator) is sent whole.
    etag = httpx.get(result, params=params(job), timeout=60).headers["etag"]
    assert get(result, "bytes=10-", **{"If-Range": etag}).status_code == 206
    assert get(result, "bytes=10-", **{"If-Range": '"other"'}).status_code == 200
    segment = f"{server.url}/jobs/{job['id']}/partial/{stem}/0"
    assert assert_json(get(segment, "bytes=999999999-"), 416)["code"] == "range_not_satisfiable"
    static = httpx.get(server.url + "/static/app.js", headers={"Range": "bytes=99999999-"}, timeout=60)
    assert assert_json(static, 416)["code"] == "range_not_satisfiable"
    assert assert_json(httpx.get(server.url + "/static/nothing.js", timeout=60), 404)["code"] == "not_found"


# ---------------------------------------------------------------------------------------------- HEAD


def test_head_works_wherever_get_does(finished):
    server, job, zip_bytes, stem, _ = finished
    token = {"X-Job-Token": job["token"]}
    paths = [
        ("/", {"Accept": "text/html"}),
        ("/health", {}),
        ("/config", {}),
        ("/docs", {}),
        ("/redoc", {}),
        ("/openapi.json", {}),
        ("/static/app.js", {}),
        (f"/jobs/{job['id']}", token),
        (f"/jobs/{job['id']}/result", token),
        (f"/jobs/{job['id']}/partial", token),
        (f"/jobs/{job['id']}/partial/{stem}/0", token),
    ]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path, headers in paths:
            got = http.get(path, headers=headers)
            head = http.head(path, headers=headers)
            assert got.status_code == 200, (path, got.text)
            assert head.status_code == 200 and head.content == b"", (path, head.status_code)
            assert head.headers.get("content-type") == got.headers.get("content-type"), path
            if "content-length" in got.headers:
                assert head.headers["content-length"] == got.headers["content-length"], path
        assert (
            http.head(f"/jobs/{job['id']}/result", headers={"Range": "bytes=5-"} | token).status_code == 206
        )
        missing = http.head(f"/jobs/{job['id']}", headers={"X-Job-Token": "wrong"})
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
        assert http.head("/separate").status_code == 405
    assert len(zip_bytes) > 0


# ---------------------------------------------------------------------------------------------- messages


def test_a_rerun_missing_half_of_its_pair_names_the_right_field(finished):
    server, job, _, _, _ = finished
    for given, missing in (("from_job", "from_token"), ("from_token", "from_job")):
        response = httpx.post(server.url + "/jobs", files={given: (None, job["id"])}, timeout=60)
        error = assert_json(response, 422)
        assert error["field"] == missing and error["message"] == f"{missing}: required with {given}"


# ---------------------------------------------------------------------------------------------- docs


def test_the_api_docs_load_nothing_from_elsewhere(start_server):
    server = start_server()
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        text = httpx.get(server.url + page, timeout=60).text
        assert f'src="/docs-assets/{script}"' in text, text
        assert "https://" not in text and "http://" not in text, text
        asset = httpx.get(f"{server.url}/docs-assets/{script}", timeout=60)
        assert asset.status_code == 200 and len(asset.content) > 100_000
        assert "javascript" in asset.headers["content-type"]
    css = httpx.get(server.url + "/docs-assets/swagger-ui.css", timeout=60)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_without_the_docs_assets_the_pages_say_what_to_install(tmp_path, small_model, monkeypatch):
    from service_helpers import running_server, small_settings

    from freestems.executors import LocalExecutor
    from freestems.service.paths import Paths

    monkeypatch.setattr(service_app, "assets_folder", lambda: None)
    settings = small_settings(tmp_path / "data")
    executor = LocalExecutor(lambda: small_model, Paths(settings.data_dir).work, workers=1)
    with running_server(settings, executor) as server:
        for page in ("/docs", "/redoc"):
            answer = httpx.get(server.url + page, timeout=60)
            assert answer.status_code == 200 and "pip install fastapi-offline" in answer.text
            assert "/openapi.json" in answer.text
        assert httpx.get(server.url + "/docs-assets/swagger-ui.css", timeout=60).status_code == 404


@needs_chromium
def test_the_api_docs_render_in_a_browser_without_internet(start_server, browser):
    """This machine has no route to a CDN: Swagger UI and ReDoc render from the server's own files, and
    what the bundles would fetch from elsewhere (ReDoc's footer logo) is blocked by the page's policy
    before it leaves the browser."""
    server = start_server()
    context = browser.new_context()
    try:
        page = context.new_page()
        sent: list[str] = []  # requests that left the browser: to the server only
        page.on("request", lambda request: sent.append(request.url))
        failed: list[tuple[str, str | None]] = []
        page.on("requestfailed", lambda request: failed.append((request.url, request.failure)))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/docs")
        page.wait_for_selector('[data-path="/jobs/{job_id}/result"]', timeout=30_000)  # an operation
        page.goto(server.url + "/redoc")
        page.get_by_text("Queue a separation").first.wait_for(timeout=30_000)
        blocked = {url for url, why in failed if why == "csp"}
        local = (server.url, f"blob:{server.url}/")
        assert [url for url in sent if not url.startswith(local) and url not in blocked] == []
        assert [entry for entry in failed if entry[0] not in blocked] == [] and errors == []
    finally:
        context.close()
