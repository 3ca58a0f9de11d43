"""What a job's owner is shown about it: the ``GET /jobs/{id}`` view and the socket's ``job`` messages.

Its own module because the view is what a client reads, and it is computed from more than the stored row:
the queue position, the progress interpolated between the engine's reports (:mod:`.progress`), how much
of the track is ready (:mod:`.partials`), how long is left, and where the queue will let the job start
(from the measured duration of earlier jobs). The job manager owns the jobs; this module only reads them,
and keeps the two estimates those figures need: each track's length and a job's usual duration.
"""

from __future__ import annotations

import time
from typing import Any

from freestems.contract import SAMPLE_RATE

from .options import options_view
from .partials import Partials
from .progress import ProgressClock
from .shared_store import DictJobStore
from .store import Job, JobStore

DEFAULT_JOB_SECONDS = 60.0
"""Job duration assumed for Retry-After estimates until one has been measured."""


def result_url(job: Job) -> str:
    """Where the result zip is downloaded; relative to the server, token included."""
    return f"/jobs/{job.id}/result?token={job.token}"


class JobViews:
    """The views and messages of jobs, and the estimates behind their figures."""

    def __init__(
        self, store: JobStore | DictJobStore, partials: Partials, clock: ProgressClock, workers: int
    ) -> None:
        self.store = store
        self.partials = partials
        self.clock = clock
        self.workers = workers
        self.durations: dict[str, float] = {}
        """Job id -> track seconds, as the upload's probe (or the engine's first segment) found."""
        self.job_seconds = DEFAULT_JOB_SECONDS
        """A job's usual duration (a moving average of the measured ones): Retry-After and ``queue_eta``."""
        self.job_measured = False

    def measured(self, seconds: float) -> None:
        """A job ran for ``seconds``: the usual duration moves towards it."""
        self.job_seconds = 0.7 * self.job_seconds + 0.3 * seconds
        self.job_measured = True

    def message(self, job: Job) -> dict[str, Any]:
        """The WebSocket ``job`` message."""
        message: dict[str, Any] = {
            "type": "job",
            "id": job.id,
            "state": job.state,
            "progress": round(self.shown_progress(job), 4),
            "position": self.store.position(job),
            "started_at": job.started_at,  # a new value: the job started again (after a server restart)
            "model": job.model,
            **self.progress_fields(job),
        }
        if job.error:
            message["error"] = {"code": job.error_code, "message": job.error}
        return message

    def done_message(self, job: Job) -> dict[str, Any]:
        return {"type": "done", "id": job.id, "result": result_url(job)}

    def view(self, job: Job) -> dict[str, Any]:
        """The JSON of ``GET /jobs/{id}``."""
        view: dict[str, Any] = {
            "id": job.id,
            "state": job.state,
            "progress": round(self.shown_progress(job), 4),
            "position": self.store.position(job),
            **self.progress_fields(job),
            "model": job.model,
            "options": options_view(job.options),
            "cache": "hit" if job.cache_hit else "miss",
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "expires_at": job.expires_at,
            "result": result_url(job) if job.state == "done" else None,
            "error": {"code": job.error_code, "message": job.error} if job.error else None,
        }
        if job.timings:
            view["timings"] = job.timings
        usage = self.store.usage(job.id) if job.state == "done" and not job.cache_hit else None
        if usage is not None and usage.gpu_seconds is not None:
            view["cost"] = {"gpu": usage.gpu, "gpu_seconds": usage.gpu_seconds, "usd": usage.cost_usd}
        return view

    def shown_progress(self, job: Job) -> float:
        """A running job's measured progress, interpolated between the engine's reports (never backwards,
        never 1.0 before done); otherwise the stored figure."""
        if job.state == "running":
            shown = self.clock.progress(job.id)
            if shown is not None:
                return shown
        return job.progress

    def progress_fields(self, job: Job) -> dict[str, Any]:
        """The honest-progress fields of a job view and a ``job`` message (README, "Progress")."""
        duration = self._duration(job)
        stage: str = job.state
        elapsed = eta = queue_eta = None
        ready = self.partials.ready_samples(job) / SAMPLE_RATE
        if job.state == "running":
            stage = self.clock.stage(job.id)
            elapsed = self.clock.elapsed(job.id)
            if elapsed is None and job.started_at:
                elapsed = round(max(time.time() - job.started_at, 0.0), 1)
            eta = self.clock.eta(job.id)
        elif job.state == "queued":
            queue_eta = self._queue_eta(job)
        else:
            if job.started_at and job.finished_at:
                elapsed = round(max(job.finished_at - job.started_at, 0.0), 1)
            if job.state == "done":
                eta = 0.0
                ready = duration or ready
        return {
            "stage": stage,
            "elapsed": elapsed,
            "eta": eta,
            "ready_seconds": round(ready, 3),
            "duration": round(duration, 3) if duration else None,
            "queue_eta": queue_eta,
        }

    def _duration(self, job: Job) -> float | None:
        """The track's length in seconds, when known (the upload's probe, the engine's count, the result)."""
        total = self.partials.total_samples(job)
        if total:
            return total / SAMPLE_RATE
        if job.id in self.durations:
            return self.durations[job.id]
        seconds = (job.timings or {}).get("audio_seconds")
        return float(seconds) if seconds else None

    def _queue_eta(self, job: Job) -> float | None:
        ahead: list[float | None] = []
        for queued in self.store.queued():
            if queued.id == job.id:
                job_seconds = self.job_seconds if self.job_measured else None
                return self.clock.queue_eta(ahead, self.workers, job_seconds)
            # What a job ahead will take is its work (its price in model-seconds: the clock learns seconds
            # per model-second), or its track's length for a job stored before prices.
            ahead.append(queued.cost or self.durations.get(queued.id))
        return None
