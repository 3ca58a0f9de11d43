"""The job runner's cancel token and the worker pool's one mapping from how a run ended to a final report.

The service tests cancel jobs through sockets and HTTP; these pin the parts underneath: ``run_job`` stops
within one chunk once its token is set and leaves no file behind, the pool reports each outcome once
(done, cancelled, failed with the job's code, internal for a bug), and an item cancelled just before the
executor closes still ends as cancelled with its upload removed.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from freestems.errors import Cancelled, FailureCode
from freestems.executors import JobEvent, LocalExecutor, ModelDescription, WorkItem
from freestems.executors.pool import Running, WorkerPool
from freestems.jobrun import JobFailed, cancel_scope, run_job
from freestems.options import SeparationOptions


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------- run_job


def test_a_set_token_stops_the_job_within_one_chunk_and_leaves_nothing(small_model, songs, tmp_path):
    source = tmp_path / "song.mp3"
    shutil.copy(songs["medium"], source)
    cancel = threading.Event()
    seen: list[float] = []

    def progress(fraction: float) -> None:
        seen.append(fraction)
        cancel.set()  # after the first chunk

    with pytest.raises(Cancelled):
        run_job(source, tmp_path / "out" / "stems.zip", small_model, work_dir=tmp_path / "work",
                progress=progress, cancel=cancel)  # fmt: skip
    assert len(seen) == 1 and seen[0] < 1.0  # the next chunk never reported: the job stopped there
    assert files_under(tmp_path) == ["song.mp3"]  # no stems, no zip, no temp file


def test_a_cancel_scope_reaches_a_job_that_was_not_given_the_token(small_model, songs, tmp_path):
    """How a Modal method (whose arguments cross the network) is cancelled in-process."""
    cancel = threading.Event()
    cancel.set()
    with cancel_scope(cancel), pytest.raises(Cancelled):
        run_job(songs["wav"], tmp_path / "stems.zip", small_model, work_dir=tmp_path / "work")
    assert files_under(tmp_path) == []
    run_job(songs["wav"], tmp_path / "stems.zip", small_model, work_dir=tmp_path / "work")  # scope over
    assert files_under(tmp_path) == ["stems.zip"]


def test_job_failed_keeps_its_code_across_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(JobFailed(FailureCode.NOT_AUDIO, "x.mp3: not audio")))
    assert (
        error.code is FailureCode.NOT_AUDIO and error.code == "not_audio" and str(error) == "x.mp3: not audio"
    )


# ---------------------------------------------------------------------------------------------- the pool


class ScriptedPool(WorkerPool):
    """A pool whose runs do what ``script[job_id]`` says: the pool's own logic is under test."""

    def __init__(self, script: dict[str, Callable[[Running], dict[str, float]]]) -> None:
        super().__init__(1)
        self.script = script

    def _prepare(self) -> ModelDescription:
        return ModelDescription("scripted", ("a",), "0")

    def _run(self, running: Running) -> dict[str, float]:
        return self.script[running.item.job_id](running)


def finish(running: Running) -> dict[str, float]:
    running.item.result.write_bytes(b"zip")
    return {"total": 1.0}


def fail(running: Running) -> dict[str, float]:
    running.item.result.write_bytes(b"half")
    raise JobFailed(FailureCode.TOO_LONG, "too long")


def crash(running: Running) -> dict[str, float]:
    raise RuntimeError("a bug with a\ntraceback nobody should see")


def cancelled_remotely(running: Running) -> dict[str, float]:
    raise Cancelled("cancelled on the GPU tier")


def test_the_pool_maps_every_outcome_to_one_final_report(tmp_path):
    outcomes = {"done": finish, "failed": fail, "internal": crash, "remote": cancelled_remotely}
    pool = ScriptedPool(outcomes)
    pool.gpu = "L4"
    pool.start()
    events: dict[str, list[JobEvent]] = {}
    finished = threading.Semaphore(0)

    def listener(event: JobEvent) -> None:
        events.setdefault(event.job_id, []).append(event)
        if event.kind in ("done", "failed", "cancelled"):
            finished.release()

    for name in outcomes:
        source = tmp_path / f"{name}.mp3"
        source.write_bytes(b"upload")
        pool.submit(WorkItem(name, source, tmp_path / f"{name}.zip", listener))
    for _ in outcomes:
        assert finished.acquire(timeout=10)
    pool.close()

    assert {name: len(found) for name, found in events.items()} == dict.fromkeys(outcomes, 1)
    done, failed, internal, remote = (events[name][0] for name in outcomes)
    assert (done.kind, done.result, done.timings, done.gpu) == (
        "done",
        tmp_path / "done.zip",
        {"total": 1.0},
        "L4",
    )
    assert (failed.kind, failed.code, failed.message) == ("failed", "too_long", "too long")
    assert (internal.kind, internal.code) == ("failed", "internal") and "traceback" not in internal.message
    assert (remote.kind, remote.message) == ("cancelled", "cancelled on the GPU tier")
    assert files_under(tmp_path) == ["done.zip"]  # every upload gone, no partial result kept


# ---------------------------------------------------------------------------------------------- local


def test_a_job_cancelled_just_before_shutdown_ends_cancelled_with_its_upload_removed(
    small_model, songs, tmp_path
):
    """Closing must not turn a cancelled job into an interrupted one (kept to run again after a restart)."""
    executor = LocalExecutor(lambda: small_model, tmp_path / "work")
    executor.start()
    events: list[JobEvent] = []
    progressed = threading.Event()

    def listener(event: JobEvent) -> None:
        events.append(event)
        if event.kind == "progress":
            progressed.set()

    source = tmp_path / "upload.mp3"
    shutil.copy(songs["long"], source)
    three_passes = SeparationOptions(shifts=3)
    executor.submit(WorkItem("job", source, tmp_path / "job.zip", listener, options=three_passes))
    assert progressed.wait(60)
    executor.cancel("job")
    executor.close()
    assert events[-1].kind == "cancelled"
    assert files_under(tmp_path) == []


def test_a_cancelled_job_frees_the_worker_for_the_next(small_model, songs, tmp_path):
    executor = LocalExecutor(lambda: small_model, tmp_path / "work")
    executor.start()
    events: dict[str, list[str]] = {}
    progressed, second_done = threading.Event(), threading.Event()

    def listener(event: JobEvent) -> None:
        events.setdefault(event.job_id, []).append(event.kind)
        progressed.set() if event.job_id == "long" and event.kind == "progress" else None
        second_done.set() if event.job_id == "next" and event.kind == "done" else None

    long, short = tmp_path / "long.mp3", tmp_path / "next.wav"
    shutil.copy(songs["long"], long)
    shutil.copy(songs["wav"], short)
    three_passes = SeparationOptions(shifts=3)
    executor.submit(WorkItem("long", long, tmp_path / "long.zip", listener, options=three_passes))
    executor.submit(WorkItem("next", short, tmp_path / "next.zip", listener))
    try:
        assert progressed.wait(60)
        executor.cancel("long")
        assert second_done.wait(60)
    finally:
        executor.close()
    assert events["long"][-1] == "cancelled" and events["long"].count("cancelled") == 1
    assert files_under(tmp_path) == ["next.zip"]
