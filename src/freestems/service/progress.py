"""Honest progress: what a job's owner is told between the engine's reports, and how long is left.

The engine reports the fraction done after every chunk, which on a CPU is every few seconds (25 % jumps
for a short clip). :class:`ProgressClock` turns those reports into a smooth figure a client can show once a
second or more: the last report plus the measured speed times the time since, never past the next report
(a chunk's worth), never backwards, and never 1.0 before the job is done. The speed is measured on the
job itself; until it has reported anything, the speed of earlier jobs (seconds of work per second of
audio) and the track's length give an estimate, or none.

The service gives the clock each job's *work* for its "duration": its price in model-seconds
(:mod:`.pricing`; for a job at the default options on ``scnet``, its track's seconds), so that
``seconds_per_audio`` is learnt per model-second and a job with dearer options (or a dearer model), and
the queue ahead of it, is expected to take as many times longer.

It also answers the other fields of a job view: ``stage``, ``elapsed``, ``eta`` and ``queue_eta``.
Everything is in memory (a restart forgets it; a job that runs again is measured again).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

BEFORE_FIRST_REPORT = 0.05
"""How far the figure may creep before the job's first report, when nothing else bounds it."""
CAP = 0.99
"""The figure shown never reaches 1.0 before the job is done."""
NEXT_REPORT_SHARE = 0.95
"""Share of the expected next step the figure may run ahead of the last report."""
LEARNING_WEIGHT = 0.3
"""Weight of the latest finished job in the seconds-per-audio-second estimate of the next ones."""


@dataclass
class _Run:
    """One running job, as measured."""

    started: float  # time.monotonic() when it started running
    duration: float | None  # track seconds, when known
    fraction: float = 0.0  # the last report
    at: float = 0.0  # when it came
    first: tuple[float, float] | None = None  # the first report (fraction, time)
    step: float | None = None  # the last step between two reports
    reports: int = 0
    shown: float = 0.0  # the highest figure given out


class ProgressClock:
    """Measured progress of running jobs, interpolated between reports."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self.seconds_per_audio: float | None = None
        """Running seconds per second of audio, learnt from finished jobs (None until one finished)."""

    def started(self, job_id: str, duration: float | None, now: float | None = None) -> None:
        """The job began running (again: the measurements start afresh)."""
        self._runs[job_id] = _Run(started=_now(now), duration=duration)

    def running(self, job_id: str) -> bool:
        return job_id in self._runs

    def running_jobs(self) -> list[str]:
        return list(self._runs)

    def set_duration(self, job_id: str, duration: float) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.duration = duration

    def reported(self, job_id: str, fraction: float, now: float | None = None) -> None:
        """The engine reported ``fraction`` done."""
        run = self._runs.get(job_id)
        if run is None:
            return
        now = _now(now)
        fraction = min(max(fraction, 0.0), 1.0)
        if fraction > run.fraction:
            run.step = fraction - run.fraction
        if run.first is None and fraction > 0:
            run.first = (fraction, now)
        run.fraction, run.at = max(run.fraction, fraction), now
        run.reports += 1

    def ended(self, job_id: str, done: bool, now: float | None = None) -> None:
        """The job ended; a finished one teaches the speed of the next ones."""
        run = self._runs.pop(job_id, None)
        if run is None or not done or not run.duration:
            return
        measured = (_now(now) - run.started) / run.duration
        previous = self.seconds_per_audio
        self.seconds_per_audio = (
            measured if previous is None else (1 - LEARNING_WEIGHT) * previous + LEARNING_WEIGHT * measured
        )

    def _rate(self, run: _Run) -> float | None:
        """Fraction per second: from this job's reports, else from earlier jobs and the track's length."""
        if run.first is not None and run.at > run.first[1] and run.fraction > run.first[0]:
            return (run.fraction - run.first[0]) / (run.at - run.first[1])
        if run.fraction > 0 and run.at > run.started:
            return run.fraction / (run.at - run.started)
        if self.seconds_per_audio and run.duration:
            return 1.0 / (self.seconds_per_audio * run.duration)
        return None

    def progress(self, job_id: str, now: float | None = None) -> float | None:
        """The figure to show now (None: the job is not running here)."""
        run = self._runs.get(job_id)
        if run is None:
            return None
        now = _now(now)
        rate = self._rate(run)
        if run.fraction >= 1.0:
            ceiling = CAP
        elif run.step is not None:
            ceiling = run.fraction + NEXT_REPORT_SHARE * run.step
        elif rate is not None and self.seconds_per_audio:
            ceiling = CAP * 0.5  # an estimate from earlier jobs: keep it from promising too much
        else:
            ceiling = BEFORE_FIRST_REPORT
        since = now - (run.at if run.reports else run.started)
        estimate = run.fraction + (rate or 0.0) * max(since, 0.0)
        run.shown = max(run.shown, min(estimate, ceiling, CAP), min(run.fraction, CAP))
        return run.shown

    def elapsed(self, job_id: str, now: float | None = None) -> float | None:
        run = self._runs.get(job_id)
        return None if run is None else round(_now(now) - run.started, 1)

    def eta(self, job_id: str, now: float | None = None) -> float | None:
        """Seconds left, or None when nothing measured or learnt allows a guess."""
        run = self._runs.get(job_id)
        if run is None:
            return None
        now = _now(now)
        rate = self._rate(run)
        shown = self.progress(job_id, now) or 0.0
        if rate is not None and rate > 0 and run.reports:
            return round(max((1.0 - shown) / rate, 0.0), 1)
        if self.seconds_per_audio and run.duration:
            return round(max(self.seconds_per_audio * run.duration - (now - run.started), 0.0), 1)
        return None

    def stage(self, job_id: str) -> str:
        """``running`` while the model works, ``finishing`` once it has (the stems are being packed)."""
        run = self._runs.get(job_id)
        return "finishing" if run is not None and run.fraction >= 1.0 else "running"

    def queue_eta(
        self,
        ahead: Sequence[float | None],
        workers: int,
        job_seconds: float | None,
        now: float | None = None,
    ) -> float | None:
        """Seconds until a queued job starts: the running jobs end (their ``eta``), then the queued jobs
        before it run, each for its track's length (``ahead``, None where unknown) times the learnt
        speed, or ``job_seconds``. None when something it depends on is unknown."""

        def cost(duration: float | None) -> float | None:
            if duration and self.seconds_per_audio:
                return self.seconds_per_audio * duration
            return job_seconds

        slots: list[float] = []
        for job_id in self._runs:
            left = self.eta(job_id, now)
            if left is None:
                left = cost(self._runs[job_id].duration)
            if left is None:
                return None
            slots.append(left)
        slots += [0.0] * max(workers - len(slots), 0)
        slots.sort()
        for duration in ahead:
            seconds = cost(duration)
            if seconds is None:
                return None
            slots[0] += seconds
            slots.sort()
        return round(slots[0], 1) if slots else None


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
