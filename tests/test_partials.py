"""Progressive results: segments of every stem while a job runs, served like its result (issue 12, C2).

A real server and a real separation with the small seeded model: the segments are contiguous, decode to
exactly their length, and put end to end they are the final stem, sample for sample. A result cache hit
and a finished job answer too. The final stems are the same bytes with and without segments.
"""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from service_helpers import error_of, job_status, open_session, post_job, wait_for_state, wait_until

from freestems.audio import AudioReader
from freestems.jobrun import run_job
from freestems.options import SeparationOptions
from freestems.segments import Manifest, SegmentWriter, rebuild_segments

WAV = {"format": "wav"}


def partial(server, job: dict, *path: object, token: str | None = None) -> httpx.Response:
    url = "/".join([f"{server.url}/jobs/{job['id']}/partial", *map(str, path)])
    return httpx.get(url, params={"token": token or job["token"]}, timeout=60)


def decode_bytes(content: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(content)
    return AudioReader(path).read()


def final_stems(server, job: dict, tmp_path: Path) -> dict[str, np.ndarray]:
    response = httpx.get(f"{server.url}/jobs/{job['id']}/result", params={"token": job["token"]}, timeout=60)
    assert response.status_code == 200
    stems = {}
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        for name in bundle.namelist():
            stems[Path(name).stem] = decode_bytes(bundle.read(name), tmp_path, f"final-{name}")
    return stems


def check_segments(server, job: dict, tmp_path: Path) -> dict:
    """Every segment of every stem: contiguous, exactly its length, and together the final stem."""
    listing = partial(server, job).json()
    assert listing["complete"] is True
    assert listing["sample_rate"] == 44100
    segments = listing["segments"]
    assert [s["index"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start"] == 0
    pairs = zip(segments, segments[1:], strict=False)
    assert all(a["end"] == b["start"] and a["end"] > a["start"] for a, b in pairs)
    assert listing["ready_samples"] == listing["total_samples"] == segments[-1]["end"]
    final = final_stems(server, job, tmp_path)
    assert sorted(listing["stems"]) == sorted(final)
    for stem in listing["stems"]:
        parts = []
        for segment in segments:
            response = partial(server, job, stem, segment["index"])
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "audio/flac"
            audio = decode_bytes(response.content, tmp_path, f"{stem}-{segment['index']}.flac")
            assert audio.shape == (2, segment["end"] - segment["start"])
            parts.append(audio)
        joined = np.concatenate(parts, axis=1)
        assert joined.shape == final[stem].shape
        assert np.array_equal(joined, final[stem]), stem
    return listing


def test_segments_appear_while_the_job_runs_and_add_up_to_the_final_stems(start_server, songs, tmp_path):
    server = start_server()
    with open_session(server) as (ws, key):
        job = post_job(server, songs["long"], key, **WAV).json()
        early = partial(server, job, "vocals", 10_000)
        assert early.status_code == 404 and error_of(early)["code"] == "not_ready"
        seen = []

        def some_segments_while_running() -> bool:
            listing = partial(server, job).json()
            state = job_status(server, job)["state"]
            seen.append((state, listing))
            return listing["segments"] and state == "running"

        wait_until(some_segments_while_running, timeout=120)
        state, listing = seen[-1]
        assert listing["complete"] is False
        assert listing["ready_samples"] == listing["segments"][-1]["end"] > 0
        first = partial(server, job, listing["stems"][0], 0)
        assert first.status_code == 200  # listed while running: its files are complete
        assert job_status(server, job)["ready_seconds"] > 0
        wait_for_state(server, job, "done", timeout=180)
        listing = check_segments(server, job, tmp_path)
        assert len(listing["segments"]) > 1  # the engine's blocks, not one piece at the end
        assert job_status(server, job)["ready_seconds"] == listing["total_samples"] / 44100


def test_partials_need_the_token_and_name_what_is_missing(start_server, songs):
    server = start_server()
    with open_session(server) as (ws, key):
        job = post_job(server, songs["short"], key, **WAV).json()
        wait_for_state(server, job, "done")
    no_token = httpx.get(f"{server.url}/jobs/{job['id']}/partial")
    assert no_token.status_code == 401 and error_of(no_token)["code"] == "token_missing"
    for path in ((), ("vocals", 0)):
        wrong = partial(server, job, *path, token="wrong")
        assert wrong.status_code == 404 and error_of(wrong)["code"] == "not_found"
    unknown_stem = partial(server, job, "kazoo", 0)
    assert unknown_stem.status_code == 404 and error_of(unknown_stem)["code"] == "not_found"
    assert "vocals" in error_of(unknown_stem)["message"]
    past_the_end = partial(server, job, "vocals", 99)
    assert past_the_end.status_code == 404 and error_of(past_the_end)["code"] == "not_found"


def test_a_queued_job_has_no_segments_yet(start_server, songs):
    server = start_server(workers=1)
    with open_session(server) as (ws, key), open_session(server) as (ws2, key2):
        first = post_job(server, songs["long"], key, shifts=3).json()
        second = post_job(server, songs["short"], key2, **WAV).json()
        assert job_status(server, second)["state"] == "queued"
        listing = partial(server, second).json()
        assert listing["segments"] == [] and listing["ready_samples"] == 0 and listing["complete"] is False
        missing = partial(server, second, "vocals", 0)
        assert missing.status_code == 404 and error_of(missing)["code"] == "not_ready"
        httpx.delete(f"{server.url}/jobs/{first['id']}", params={"token": first["token"]})
        wait_for_state(server, second, "done", timeout=120)


def test_a_cache_hit_and_a_restarted_server_serve_segments_too(start_server, songs, tmp_path):
    server = start_server()

    def cache_hit() -> dict:
        with open_session(server) as (ws, key):
            hit = post_job(server, songs["medium"], key, **WAV)
            assert hit.headers["X-Cache"] == "hit"
            return hit.json()

    with open_session(server) as (ws, key):
        original = post_job(server, songs["medium"], key, **WAV).json()
        wait_for_state(server, original, "done", timeout=120)
    # As a job run on Modal: no segments were written; they are cut from the result when asked for.
    shutil.rmtree(server.data_dir / "partials" / original["id"])
    first_hit = cache_hit()
    cut = check_segments(server, first_hit, tmp_path)
    assert len(cut["segments"]) == 1  # 30 s pieces of a 20 s song, not the engine's 1.5 s blocks
    assert check_segments(server, original, tmp_path) == cut
    second_hit = cache_hit()  # takes the original's segments as they are now
    assert check_segments(server, second_hit, tmp_path) == cut
    server.stop()
    server = start_server()  # a finished job's segments are still there after a restart
    assert check_segments(server, original, tmp_path) == cut


def test_the_stems_are_the_same_bytes_with_and_without_segments(start_server, small_model, songs, tmp_path):
    options = SeparationOptions(format="wav")
    contents = []
    server = start_server()  # a job whose segments are read while it runs
    with open_session(server) as (ws, key):
        job = post_job(server, songs["medium"], key, **WAV).json()
        deadline = time.monotonic() + 120
        while job_status(server, job)["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not finish in 120 s"
            for segment in partial(server, job).json()["segments"]:
                assert partial(server, job, "vocals", segment["index"]).status_code == 200
    result = httpx.get(f"{server.url}/jobs/{job['id']}/result", params={"token": job["token"]}, timeout=60)
    with zipfile.ZipFile(io.BytesIO(result.content)) as bundle:
        contents.append({name: bundle.read(name) for name in bundle.namelist()})
    for run, segments in enumerate((None, tmp_path / "segments")):
        archive = run_job(
            songs["medium"],
            tmp_path / f"run{run}.zip",
            small_model,
            work_dir=tmp_path / f"work{run}",
            options=options,
            device="cpu",
            segments=segments,
        )
        with zipfile.ZipFile(archive.archive) as bundle:
            contents.append({name: bundle.read(name) for name in bundle.namelist()})
    assert contents[0] == contents[1] == contents[2]
    manifest = Manifest.read(tmp_path / "segments")
    assert manifest is not None and manifest.total == archive.samples
    rebuilt = rebuild_segments(tmp_path / "run1.zip", tmp_path / "rebuilt", segment_seconds=7)
    assert rebuilt.total == manifest.total and rebuilt.stems == manifest.stems


def test_a_segment_that_cannot_be_written_ends_the_segments_not_the_separation(tmp_path):
    reports = []
    writer = SegmentWriter(tmp_path / "segments", ("vocals", "no_vocals"), reports.append, total=300)
    block = {"vocals": np.zeros((2, 100), np.float32), "no_vocals": np.ones((2, 100), np.float32) / 2}
    writer.write(block)
    shutil.rmtree(tmp_path / "segments")  # as a full disk would
    writer.write(block)
    writer.write(block)
    writer.finish(300)
    assert [(r.index, r.start, r.end, r.total) for r in reports] == [(0, 0, 100, 300)]
    assert writer.failed and not (tmp_path / "segments").exists()
