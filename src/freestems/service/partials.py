"""Progressive results over HTTP: which segments of a job exist, and their files.

``GET /jobs/{id}/partial`` lists them and ``GET /jobs/{id}/partial/{stem}/{index}`` serves one (16-bit
FLAC, exactly ``end - start`` samples). The segments live in ``<data>/partials/<job id>/``
(:mod:`freestems.segments`):

- while a job runs, the executor writes them there and reports each one (a ``segment`` event); this module
  keeps the list of reported ones in memory, so a listed segment's files are always complete;
- when the job is done, the folder has a manifest and stays until the job's result expires or is deleted;
- a result cache hit takes the segments of the job that computed the result (hard links), if it still
  has them;
- a job whose folder has no manifest (a cache hit whose original is gone, a job run on Modal, where no
  segments are written, or a folder lost in a restart) gets its segments cut from its result zip on the
  first request (30 s each, all at once; the first request waits for that). A cut is work in flight like a
  job: it holds a place given by ``cut`` (:class:`~.pricing.CutGate`: a few per address and in all, 429
  ``too_many_cuts`` with Retry-After beyond them) and its cost counts in the admission of jobs.

A failed or cancelled job has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freestems.contract import SAMPLE_RATE
from freestems.segments import Manifest, SegmentReport, copy_finished, rebuild_segments, segment_path

from .errors import not_found, unavailable
from .store import Job

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """The segments a running job has reported."""

    stems: tuple[str, ...] | None = None
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    total: int | None = None

    @property
    def ready(self) -> int:
        return self.segments[-1][2] if self.segments else 0


class Partials:
    """Every job's progressive results (see the module's docstring)."""

    def __init__(
        self,
        root: Path,
        cut: Callable[[Job, str], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        """``cut(job, client)``: a place for cutting ``job``'s segments for ``client`` (raises a 429
        ServiceError when there is none); None: cuts are not bounded."""
        self.root = root
        self._cut = cut or (lambda job, client: contextlib.nullcontext())
        self._live: dict[str, _Live] = {}
        self._finished: dict[str, Manifest] = {}
        self._rebuilding: dict[str, asyncio.Lock] = {}

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    # ------------------------------------------------------------------------------------ executor events

    def started(self, job_id: str) -> None:
        """The job (re)started: nothing of an earlier run counts (the executor empties the folder)."""
        self._live[job_id] = _Live()
        self._finished.pop(job_id, None)

    def reported(self, job_id: str, report: SegmentReport) -> None:
        live = self._live.setdefault(job_id, _Live())
        if report.index != len(live.segments) or report.start != live.ready:
            log.warning("job %s: segment %d out of order, ignored", job_id, report.index)
            return
        live.stems = report.stems
        live.total = report.total
        live.segments.append((report.index, report.start, report.end))

    def ended(self, job_id: str, done: bool) -> None:
        """The job ended: a finished one keeps its segments (with their manifest), others lose them."""
        self._live.pop(job_id, None)
        if not done:
            self.remove(job_id)

    def adopt(self, job_id: str, source_id: str) -> None:
        """A result cache hit: the job takes the segments of the job that computed the result, if they
        are still there (hard links: no work, no space); otherwise they are cut from the result when
        asked for. Blocking (file system only)."""
        try:
            manifest = copy_finished(self.folder(source_id), self.folder(job_id))
        except OSError as error:  # a full disk: they will be cut from the result when asked for
            log.warning("job %s could not take the segments of job %s: %s", job_id, source_id, error)
            return
        if manifest is not None:
            self._finished[job_id] = manifest

    def remove(self, job_id: str) -> None:
        """Forget the job's segments and delete their files."""
        self._live.pop(job_id, None)
        self._finished.pop(job_id, None)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def remove_orphans(self, done: set[str]) -> None:
        """At start: folders of jobs that are not done (they run again from the start) or unknown."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if path.name not in done:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ what exists

    def ready_samples(self, job: Job) -> int:
        """Samples of every stem available from the start (0 when nothing is yet, or not known)."""
        live = self._live.get(job.id)
        if live is not None:
            return live.ready
        manifest = self._finished.get(job.id)
        return manifest.total if manifest is not None else 0

    def total_samples(self, job: Job) -> int | None:
        live = self._live.get(job.id)
        if live is not None:
            return live.total
        manifest = self._finished.get(job.id)
        return manifest.total if manifest is not None else None

    async def listing(
        self, job: Job, stems: tuple[str, ...], duration: float | None = None, client: str = ""
    ) -> dict[str, Any]:
        """The JSON of ``GET /jobs/{id}/partial``; ``stems``: the job's stems, as far as it knows;
        ``duration``: the track's seconds as the upload's probe found them, the total until it is counted;
        ``client``: who asks (a cut is counted against that address)."""
        manifest = await self._manifest(job, client)
        total: int | None
        if manifest is not None:
            stems, segments, total, complete = manifest.stems, manifest.segments, manifest.total, True
        else:
            live = self._live.get(job.id) or _Live()
            stems = live.stems or stems
            probed = round(duration * SAMPLE_RATE) if duration else None
            segments, total, complete = tuple(live.segments), live.total or probed, False
        return {
            "stems": list(stems),
            "sample_rate": SAMPLE_RATE,
            "segments": [{"index": i, "start": start, "end": end} for i, start, end in segments],
            "ready_samples": segments[-1][2] if segments else 0,
            "total_samples": total,
            "complete": complete,
        }

    async def segment(
        self, job: Job, stem: str, index: int, stems: tuple[str, ...], client: str = ""
    ) -> Path:
        """Where segment ``index`` of ``stem`` is; 404 ``not_ready`` if it does not exist yet (the file may
        still go before it is opened: the job expired or was deleted)."""
        manifest = await self._manifest(job, client)
        if manifest is not None:
            stems, count, complete = manifest.stems, len(manifest.segments), True
        else:
            live = self._live.get(job.id) or _Live()
            stems, count, complete = live.stems or stems, len(live.segments), False
        if stem not in stems:
            raise not_found(f"job {job.id} has no stem {stem!r}; its stems are {', '.join(stems)}")
        if not 0 <= index < count:
            if complete or index < 0:
                raise not_found(f"job {job.id} has segments 0 to {count - 1}, not {index}")
            raise not_found(
                f"segment {index} of job {job.id} is not ready yet ({count} are); "
                f"GET /jobs/{job.id}/partial lists them",
                code="not_ready",
            )
        return segment_path(self.folder(job.id), index, stem)  # the route opens it: 404 if gone meanwhile

    async def _manifest(self, job: Job, client: str) -> Manifest | None:
        """A finished job's manifest (cut from its result first if needed, in a place of ``cut``); None
        while it runs."""
        if job.state in ("failed", "cancelled"):
            raise not_found(f"job {job.id} was {job.state}; it has no partial results")
        if job.state != "done":
            return None
        manifest = self._finished.get(job.id)
        if manifest is not None:
            return manifest
        lock = self._rebuilding.setdefault(job.id, asyncio.Lock())
        try:
            async with lock:
                manifest = self._finished.get(job.id) or await asyncio.to_thread(
                    Manifest.read, self.folder(job.id)
                )
                if manifest is None:
                    with self._cut(job, client):
                        manifest = await self._rebuild(job)
                self._finished[job.id] = manifest
                return manifest
        finally:
            if not lock.locked():
                self._rebuilding.pop(job.id, None)

    async def _rebuild(self, job: Job) -> Manifest:
        result = job.result_path
        if result is None or not result.is_file():
            raise not_found(f"the result of job {job.id} has been deleted")
        try:
            return await asyncio.to_thread(rebuild_segments, result, self.folder(job.id))
        except FileNotFoundError:  # the job was deleted or expired meanwhile
            shutil.rmtree(self.folder(job.id), ignore_errors=True)
            raise not_found(f"the result of job {job.id} has been deleted") from None
        except Exception as error:
            log.error("job %s: cutting segments from its result failed: %s", job.id, error)
            shutil.rmtree(self.folder(job.id), ignore_errors=True)
            raise unavailable(f"the segments of job {job.id} cannot be made right now; try again") from None
