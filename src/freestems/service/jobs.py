"""The job manager: admission, the result cache, state in the store, the executor, and telling the client.

Everything here runs on the event loop (executor reports are brought back to it with
``call_soon_threadsafe``), so a check and the insert that follows it cannot interleave with another
request: the queue capacity and per-address limits are exact.

A submission goes: probe the audio (415 not audio, 413 too long) -> its price (:mod:`.pricing`: 413 over
the ceiling, 403 over its key's budget) -> admission (429 queue full, 429 too many jobs or too much work
from this address, both counted in jobs and in model-seconds) -> result cache (a hit is a finished job at
once, no model run) -> job stored as ``queued`` -> executor. Reports move it to ``running`` and then
``done``/``failed``/``cancelled``; each
change goes to the sockets following the job, progress is persisted at most once a second, and when a job
ends its session key dies.

The manager leans on three helpers: what a client is shown of a job (its view and ``job`` messages, with
the progress, position and estimates) is :mod:`.views`; who follows a job, the grace after which an
unfollowed job is cancelled, and what other containers run (relays, adoptions) is :mod:`.follow`; the data
folder's layout is :mod:`.paths`.

A computed job also leaves a usage row (GPU type, audio and GPU seconds, cost at
``settings.gpu_prices``), shown as ``cost`` by ``GET /jobs/{id}`` and summed up by ``freestems cost``.

Files (all under the data folder): ``uploads/`` inputs waiting or running (deleted once processed),
``work/`` the executor's per-job folders, ``results/<job>.zip`` results, ``cache/<key>.zip`` the cache (hard
links to results), ``sources/<job>.<ext>`` the upload of a ``POST /jobs`` job as it arrived, kept while it
runs and then with its result so that the song can be separated again with another model without a second
upload (:meth:`JobManager.submit_again`), ``partials/<job>/`` the progressive results (:mod:`.partials`).
Nothing outlives whoever can reach it: a refused upload leaves no file, a job that fails or is cancelled
keeps no song, and a ``POST /separate`` job (its client has no token) keeps none, nor its result once its
answer is under way (:meth:`JobManager.let_go`). On start, stale temporary files, files no record points
at and songs of ended jobs that did not finish are removed.

Between the engine's reports a running job's progress is interpolated from its measured speed
(:mod:`.progress`), and its sockets hear it every ``TICK_SECONDS``.

With a shared state (:mod:`.shared_state`: several web containers, one Volume) the store is shared, each
container runs the jobs submitted to it (and those it adopts from a container that has gone, see
:mod:`.replicas`), and files on the shared folder are never removed at start (another container may be
writing them); the TTL sweep removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from freestems.audio import AudioDecodeError, AudioReader, AudioTooLong
from freestems.contract import SAMPLE_RATE
from freestems.cost import UsageRecord, job_cost
from freestems.errors import FailureCode
from freestems.executors import Executor, ExecutorError, JobEvent, ModelDescription, WorkItem
from freestems.files import TEMP_GLOB, temp_path
from freestems.models.download import file_sha256
from freestems.rules import output_names

from .cache import ResultCache, cache_key, link_or_copy
from .errors import not_found, payload_too_large, too_many_requests, unavailable, unsupported_media
from .follow import Follow
from .options import SeparationOptions
from .partials import Partials
from .paths import Paths
from .pricing import EPSILON, CutGate, Pricing, Quote
from .progress import ProgressClock
from .sessions import Session, SessionRegistry
from .settings import Settings
from .shared_state import LocalState
from .shared_store import DictJobStore
from .store import TERMINAL, Job, JobStore
from .uploads import Upload
from .views import JobViews

log = logging.getLogger(__name__)

PROGRESS_PERSIST_SECONDS = 1.0
"""Progress reaches SQLite at most this often per job (the WebSocket gets every update)."""
TICK_SECONDS = 0.5
"""How often a running job's sockets get a ``job`` message with the interpolated progress (and queued
jobs' sockets every other time, for ``queue_eta``)."""


class JobManager:
    """Owns the life of every job. Create it, ``await start()``, and ``await close()`` at shutdown.

    What a client is shown is :attr:`views`; who follows the jobs, and what other containers run, is
    :attr:`follow`."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        store: JobStore | DictJobStore,
        sessions: SessionRegistry,
        paths: Paths,
        state: LocalState | None = None,
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.store = store
        self.sessions = sessions
        self.paths = paths
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: dict[str, float] = {}
        self._persisted: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self.state = state or LocalState()
        self.cache = ResultCache(
            store,  # type: ignore[arg-type]  # a DictJobStore has the methods the cache uses
            paths.cache,
            settings.result_ttl,
            settings.result_cache,
            visible=self.state.visible,
        )
        self.pricing = Pricing(settings, [model.name for model in executor.models])
        self.cuts = CutGate(settings.cuts_per_ip, settings.max_cuts)
        self.partials = Partials(paths.partials, cut=self._cut)
        self.clock = ProgressClock()
        self.views = JobViews(store, self.partials, self.clock, settings.workers)
        self.follow = Follow(settings, self.state, store, sessions, executor, self)
        self._ticker: asyncio.Task[None] | None = None
        self._tick = 0
        self._closed = False
        self._stopped = False

    # ------------------------------------------------------------------------------------------ life

    async def start(self) -> None:
        """Clean stale files, recover the store after a restart and resubmit unfinished jobs."""
        self._loop = asyncio.get_running_loop()
        self.follow.start(self._loop)
        self.paths.create()
        shutil.rmtree(self.paths.work, ignore_errors=True)
        self.paths.work.mkdir(parents=True, exist_ok=True)
        if not self.state.shared:  # on a shared folder another container may be writing these
            for stale in self.paths.uploads.glob(TEMP_GLOB):
                stale.unlink(missing_ok=True)
        requeue, failed = self.store.recover(self.settings.result_ttl)
        for job in failed:
            log.warning("job %s could not be resumed after a restart (its upload is gone)", job.id)
            self._remove_source(job)
        if not self.state.shared:
            self._remove_orphans()
        for job in requeue:
            self.partials.remove(job.id)
            self.executor.submit(self.work_item(job))
            self.follow.seen(job.id)  # nobody follows it yet: its owner has the grace period to come back
        if requeue:
            log.info("resumed %d unfinished job(s) from the store", len(requeue))
        self._ticker = asyncio.create_task(self._tick_forever())

    async def close(self) -> None:
        """Stop the executor; jobs it was running go back to ``queued`` and run after a restart - except
        those a ``POST /separate`` waits for: that client has no token and cannot come back, so they are
        cancelled and their files removed."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        for job_id in self.follow.close():
            self.abandon(job_id)
        await asyncio.to_thread(self.executor.close)
        for job in self.store.active():
            if self.state.shared and not self.follow.runs_here(job.id):
                continue  # another container's
            if job.state == "running":
                self.store.update(job.id, state="queued", progress=0.0, started_at=None)
                log.info("job %s interrupted by shutdown; it will run after a restart", job.id)
            self.state.release(job.id)  # shared: a live container adopts it now
        for event in self._waiters.values():
            event.set()
        self._stopped = True  # reports still in the loop's queue are dropped: the store has the state

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: unfinished jobs will run after the restart."""
        return self._closed

    # ------------------------------------------------------------------------------------------ admission

    def admit(self, client: str, cost: float = 0.0) -> None:
        """Raise 429 (with Retry-After) if the queue is full or ``client`` has too much in flight: counted
        in jobs (``queue_capacity``, ``jobs_per_ip``) and in model-seconds (``queue_cost``, ``cost_per_ip``,
        segment cuts included) with this request's ``cost`` added (0: before its price is known, there
        must be room at all). A request alone in the queue, or alone from its address, always fits."""
        if self._closed:
            raise unavailable("the server is shutting down; try again in a minute", retry_after=60)
        active = self.store.active()
        total = len(active)
        work = sum(self.work(job) for job in active) + self.cuts.cost()
        pricing = self.pricing
        if total >= self.settings.queue_capacity or _over(work, cost, pricing.queue):
            wait = self._wait(work, total)
            raise too_many_requests(
                "queue_full",
                f"the queue is full ({total} jobs, {work:.0f} of {pricing.queue:.0f} model-seconds of work); "
                f"try again in {math.ceil(wait)} s",
                wait,
            )
        mine = [job for job in active if job.client == client]
        if len(mine) >= self.settings.jobs_per_ip:
            raise too_many_requests(
                "too_many_jobs",
                f"you already have {len(mine)} job(s) queued or running "
                f"(the limit is {self.settings.jobs_per_ip}); wait for one to finish",
                self._wait(sum(self.work(job) for job in mine), len(mine)),
            )
        own = sum(self.work(job) for job in mine) + self.cuts.cost(client)
        if _over(own, cost, pricing.per_address):
            raise too_many_requests(
                "too_much_work",
                f"your address has {own:.0f} model-seconds of work queued or running and this request costs "
                f"{cost:.0f}, more than the {pricing.per_address:.0f} one address may have; wait for a job "
                "to finish",
                self._wait(own, len(mine)),
            )

    def work(self, job: Job) -> float:
        """The model-seconds a queued or running job counts for: its price (a job stored before prices
        counts as the dearest request)."""
        return job.cost if job.cost > 0 else self.pricing.ceiling

    def _wait(self, work: float, jobs: int) -> float:
        """Seconds until ``work`` model-seconds (``jobs`` jobs) have run: the measured seconds per
        model-second when known, else the usual job's duration."""
        per_unit = self.clock.seconds_per_audio  # the clock learns seconds per model-second (``work``)
        if per_unit:
            return max(1.0, per_unit * work / self.settings.workers)
        return max(1.0, self.views.job_seconds * max(jobs, 1) / self.settings.workers)

    def price(self, duration: float | None, options: SeparationOptions, session: Session | None) -> Quote:
        """The request's price, refused when over the ceiling (413) or over its key's budget (403)."""
        quote = self.pricing.quote(duration, options)
        budget = None
        if session is not None:
            budget = session.budget if session.budget is not None else self.pricing.default_budget
        self.pricing.check(quote, budget)
        return quote

    async def submit(
        self,
        upload: Upload,
        options: SeparationOptions,
        client: str,
        session: Session | None,
        *,
        keep_source: bool = True,
    ) -> Job:
        """Turn a received upload into a job (or a cached result). The upload's temp file is always consumed,
        and nothing of it stays unless the job was stored.

        ``keep_source``: keep the song for a rerun (``from_job``) while the job is kept; only a client that
        holds the job's token can ask for one, so ``POST /separate`` keeps none.

        Raises:
            ServiceError: 415 not audio, 413 too long or too costly, 403 over the key's budget, 429 queue
                full / too many jobs / too much work, 401 key died meanwhile.
        """
        kept: list[Path] = []  # the job's files so far: removed unless the job is stored
        job: Job | None = None
        attached = owned = stored = False
        try:
            duration = await asyncio.to_thread(self._probe, upload)
            quote = self.price(duration, options, session)
            model = self.served_model(options.model)
            key = cache_key(upload.sha256, model.fingerprint, options.as_dict())
            cached = await asyncio.to_thread(self.cache.lookup, key)  # a shared store's: off the loop
            if session is not None:
                await self.state.recheck_key(session.digest)  # a shared key may have died meanwhile
            self.admit(client, quote.cost)  # again: from here to the insert nothing awaits, so this is exact
            job = self._new_job(upload, options, model.name, key, client, session)
            job.duration, job.cost = duration, quote.cost
            if keep_source:
                kept.append(self.paths.sources / f"{job.id}{upload.suffix}")
                link_or_copy(upload.path, kept[-1])
            if duration is not None:
                self.views.durations[job.id] = duration
            if cached is not None and await self._from_cache(job, key, cached, session):
                stored = True
                return job
            job.input_path = self.paths.uploads / f"{job.id}{upload.suffix}"
            if session is not None:
                self.sessions.attach(session, job.id)  # 401 if the key died during the upload
                attached = True
            kept.append(job.input_path)
            upload.path.replace(job.input_path)
            self.state.changed()
            self.follow.own(job.id)  # before the others can see the job: none adopts it
            owned = True
            self.store.create(job)
            stored = True
            try:
                self.executor.submit(self.work_item(job))
            except ExecutorError:  # closing: the client hears 503 and never gets the token
                self.store.delete(job.id)
                stored = False
                raise
            self.follow.seen(job.id)  # its creator holds the token: the grace period starts now
            self.notify(job)
            return job
        except OSError as error:
            log.error("cannot store a job: %s", error)
            raise unavailable(
                "the server cannot store jobs right now (disk full?); try again later"
            ) from None
        finally:
            upload.discard()
            if not stored:
                for path in kept:
                    path.unlink(missing_ok=True)
                if job is not None:
                    self.views.durations.pop(job.id, None)
                    if owned:
                        self.follow.ended(job.id)
                    if attached:
                        self.sessions.finish(job.id)

    def _new_job(
        self,
        upload: Upload,
        options: SeparationOptions,
        model: str,
        key: str,
        client: str,
        session: Session | None,
    ) -> Job:
        """The record of a new job of ``model`` (queued; not stored yet)."""
        return Job(
            id=secrets.token_hex(8),
            token=secrets.token_urlsafe(24),
            state="queued",
            options=options.as_dict(),
            model=model,
            client=client,
            session=session.hash if session else None,
            filename=upload.filename,
            cache_key=key,
            created_at=time.time(),
        )

    async def _from_cache(self, job: Job, key: str, cached: Path, session: Session | None) -> bool:
        """A result cache hit: the job is done at once, with the result (and segments) of the job that
        computed it; its session hears so and its key is spent. False when the entry went meanwhile (the
        job that made it was deleted): then it is a miss."""
        result = self.paths.results / f"{job.id}.zip"
        try:
            link_or_copy(cached, result)
        except FileNotFoundError:
            return False
        now = time.time()
        job.state, job.progress, job.cache_hit, job.result_path = "done", 1.0, True, result
        job.started_at = job.finished_at = now
        job.expires_at = now + self.settings.result_ttl
        try:
            self.store.create(job)
        except BaseException:
            result.unlink(missing_ok=True)
            raise
        source = self.store.result_job(key)
        if source is not None:
            await asyncio.to_thread(self.partials.adopt, job.id, source)
        if session is not None:
            self.sessions.post(session.connection, self.views.message(job))
            self.sessions.post(session.connection, self.views.done_message(job))
            self.sessions.consume(session)
        return True

    async def submit_again(
        self, earlier: Job, options: SeparationOptions, client: str, session: Session | None
    ) -> Job:
        """A new job on the kept source of ``earlier`` (whose token the caller checked): another model or
        other options on the same song, without a second upload. Same answers as :meth:`submit`: it is
        priced like an upload of the song, against the budget of the key it comes with.

        Raises:
            ServiceError: 404 when the source is no longer kept; as :meth:`submit` otherwise.
        """
        source = self.source_of(earlier)
        if source is None:
            raise not_found(
                f"the song of job {earlier.id} is no longer kept (it goes with the job's result); "
                "upload it again"
            )
        path = temp_path(self.paths.uploads / "upload")
        try:
            link_or_copy(source, path)
            size = path.stat().st_size
            digest = await asyncio.to_thread(file_sha256, path)
        except OSError as error:
            path.unlink(missing_ok=True)
            log.error("cannot reuse the source of job %s: %s", earlier.id, error)
            raise unavailable(
                "the server cannot store jobs right now (disk full?); try again later"
            ) from None
        upload = Upload(path=path, filename=earlier.filename or "audio_file", size=size, sha256=digest)
        return await self.submit(upload, options, client, session)

    def source_of(self, job: Job) -> Path | None:
        """The job's kept upload, if it still is."""
        for path in (self.paths.sources / job.id, *self.paths.sources.glob(f"{job.id}.*")):
            if path.is_file():
                return path
        return None

    def served_model(self, name: str | None) -> ModelDescription:
        """The served model called ``name`` (None: the default, the first served)."""
        models = self.executor.models
        found = next((model for model in models if model.name == name), None) if name else models[0]
        if found is None:  # parse_options checked the name against these very models
            raise ValueError(f"model {name!r} is not served")
        return found

    def _probe(self, upload: Upload) -> float | None:
        """Decide by content that the upload is audio (415) and short enough (413). Runs in a thread.

        The reader checks the duration the file states, and counts it from the packets when the file states
        none, so a file without a stated length is refused here too, not after separating up to the limit.
        """
        try:
            return AudioReader(upload.path, self.settings.max_duration, display_name=upload.filename).duration
        except AudioTooLong as error:
            raise payload_too_large(FailureCode.TOO_LONG, str(error)) from None
        except AudioDecodeError as error:
            raise unsupported_media(FailureCode.NOT_AUDIO, str(error)) from None

    # ------------------------------------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is not None and job.id in self._progress and job.state == "running":
            job.progress = self._progress[job.id]
        return job

    def position(self, job: Job) -> int:
        return self.store.position(job)

    def health(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {
            "queued": counts["queued"],
            "running": counts["running"],
            "capacity": self.settings.queue_capacity,
            "work": round(sum(self.work(job) for job in self.store.active()) + self.cuts.cost(), 1),
            "work_capacity": round(self.pricing.queue, 1),
            "cuts": len(self.cuts),
        }

    def _cut(self, job: Job, client: str) -> contextlib.AbstractContextManager[None]:
        """A place for cutting ``job``'s segments from its zip, for ``client`` (429 when there is none)."""
        duration = job.duration or self.views.durations.get(job.id)
        return self.cuts.cut(client, self.pricing.cut_cost(duration))

    def stems(self, job: Job) -> tuple[str, ...]:
        """The stems the job gives: its model's, or one stem and its complement."""
        model = next((m for m in self.executor.models if m.name == job.model), self.executor.model)
        return tuple(output_names(model.sources, job.options.get("two_stems")))

    async def wait(self, job_id: str) -> Job | None:
        """Wait until the job has ended (or the server is closing); returns it (None if deleted).

        The caller (a ``POST /separate``) follows the job meanwhile: it is not cancelled for want of a
        socket, and it is cancelled if the server shuts down (:meth:`close`)."""
        event = self._waiters.setdefault(job_id, asyncio.Event())
        self.follow.wait_begins(job_id)
        try:
            job = self.get(job_id)
            while job is not None and job.state not in TERMINAL and not self._closed:
                await event.wait()
                event.clear()
                job = self.get(job_id)
            return job
        finally:
            if self.follow.wait_ends(job_id):
                self._waiters.pop(job_id, None)

    # ------------------------------------------------------------------------------------------ changes

    def abandon(self, job_id: str) -> None:
        """Shutdown: cancel a ``POST /separate`` job (code ``restarting``) and remove its upload now."""
        job = self.cancel(
            job_id,
            "the server restarted before this separation finished; send the file again",
            code=FailureCode.RESTARTING,
        )
        if job is not None and job.error_code == FailureCode.RESTARTING:
            if job.input_path is not None:
                job.input_path.unlink(missing_ok=True)
            self.store.update(job_id, input_path=None)
            log.info("job %s cancelled by the shutdown: its POST /separate client cannot come back", job_id)

    def cancel(self, job_id: str, reason: str, code: str = FailureCode.CANCELLED) -> Job | None:
        """Cancel a queued or running job (its worker is freed within one chunk); ended jobs are kept."""
        job = self.store.get(job_id)
        if job is None or job.state in TERMINAL:
            return job
        now = time.time()
        self._change(
            job,
            state="cancelled",
            error_code=code,
            error=reason,
            finished_at=now,
            expires_at=now + self.settings.result_ttl,
        )
        self.executor.cancel(job_id)
        self.ended(job)
        return job

    def delete(self, job_id: str) -> None:
        """Delete a job now: cancel it if unfinished; remove its upload, result, cached copy and record."""
        job = self.cancel(job_id, "deleted by its owner")
        if job is None:
            return
        if job.cache_key:
            self.cache.evict(job.cache_key)  # nothing derived from the upload stays behind
        self._remove_files(job)
        self.store.delete(job_id)

    def sweep(self) -> int:
        """Delete ended jobs past their TTL (files and records) and expired cache entries."""
        expired = self.store.expired()
        for job in expired:
            self._remove_files(job)
            self.store.delete(job.id)
        removed = len(expired) + self.cache.sweep()
        if removed:
            self.state.changed()
        return removed

    def _change(self, job: Job, **changes: Any) -> None:
        """Store ``changes`` to the job and make them on ``job`` too."""
        self.store.update(job.id, **changes)
        for name, value in changes.items():
            setattr(job, name, value)

    # ------------------------------------------------------------------------------------------ telling

    def notify(self, job: Job) -> None:
        """The job's sockets hear its state."""
        self.sessions.post_to_job(job.id, self.views.message(job))

    def _broadcast_positions(self) -> None:
        """The queue moved: every queued job's socket learns its new place."""
        for position, job in enumerate(self.store.queued(), start=1):
            message = self.views.message(job)
            message["position"] = position
            self.sessions.post_to_job(job.id, message)

    async def _tick_forever(self) -> None:
        """Sockets of running jobs hear their progress every ``TICK_SECONDS`` (queued jobs' every other)."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self._stopped:
                return
            self._tick += 1
            try:
                for job_id in self.clock.running_jobs():
                    job = self.get(job_id)
                    if job is not None and job.state == "running":
                        self.notify(job)
                if self._tick % 2 == 0:
                    for job in self.store.queued():
                        self.notify(job)
            except Exception:
                log.exception("the progress ticker failed; it goes on")

    # ------------------------------------------------------------------------------------------ events

    def work_item(self, job: Job) -> WorkItem:
        """What the executor needs to run the job."""
        assert job.input_path is not None
        return WorkItem(
            job_id=job.id,
            source=job.input_path,
            result=self.paths.results / f"{job.id}.zip",
            report=self._report,
            options=SeparationOptions.from_dict(job.options),
            max_duration=self.settings.max_duration,
            display_name=job.filename or "audio_file",
            partials=self.partials.folder(job.id),
        )

    def _report(self, event: JobEvent) -> None:
        """Called by executor threads: continue on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if event.kind == "done" and self.state.shared:
            event = self._committed(event)  # the result is on the Volume for every container before "done"
        # RuntimeError: the loop closed in between; the store keeps the job for the next start.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_event, event)

    def _committed(self, event: JobEvent) -> JobEvent:
        """A ``done`` event once its result is committed to the shared Volume; if the commit fails, the job
        fails instead (no other container could serve its result), and so it ends and is freed."""
        try:
            self.state.commit()
        except Exception:
            log.exception("job %s: committing its result to the shared volume failed", event.job_id)
            if event.result is not None:
                event.result.unlink(missing_ok=True)
            return JobEvent(
                event.job_id,
                "failed",
                code=FailureCode.INTERNAL,
                message="the result could not be saved where every server sees it; please submit it again",
            )
        return event

    def _on_event(self, event: JobEvent) -> None:
        if self._stopped:
            return
        try:
            self._handle(event)
        except Exception:
            log.exception("handling %s of job %s failed", event.kind, event.job_id)

    def _handle(self, event: JobEvent) -> None:
        job = self.store.get(event.job_id)
        if job is None or job.state in TERMINAL:  # deleted or cancelled meanwhile: only clean up
            if event.kind == "done" and event.result is not None and (job is None or not job.cache_hit):
                event.result.unlink(missing_ok=True)
            if event.kind in ("done", "failed", "cancelled"):
                self._progress.pop(event.job_id, None)
                self._broadcast_positions()
            return
        now = time.time()
        if event.kind == "started":
            self._started(job, now)
        elif event.kind == "progress":
            self._progressed(job, event.progress, now)
        elif event.kind == "segment" and event.segment is not None:
            self.partials.reported(job.id, event.segment)
            durations = self.views.durations
            if event.segment.total and job.id not in durations:
                durations[job.id] = event.segment.total / SAMPLE_RATE
                if not job.cost:
                    self.clock.set_duration(job.id, durations[job.id])
            self.notify(job)
        elif event.kind == "done":
            self._done(job, event, now)
        elif event.kind in ("failed", "cancelled"):
            self._change(
                job,
                state=event.kind,
                error_code=event.code or event.kind,
                error=event.message
                or ("cancelled" if event.kind == "cancelled" else "the separation failed"),
                finished_at=now,
                expires_at=now + self.settings.result_ttl,
                input_path=None,
            )
            self.ended(job)

    def _started(self, job: Job, now: float) -> None:
        self.store.update(job.id, state="running", started_at=now, progress=0.0)
        job.state, job.started_at = "running", now
        self.partials.started(job.id)
        # The clock measures work (model-seconds), so that a job with dearer options is expected to take
        # as many times longer; a job stored before prices is measured by its track's length.
        self.clock.started(job.id, job.cost or self.views.durations.get(job.id))
        self.notify(job)
        self._broadcast_positions()

    def _progressed(self, job: Job, progress: float, now: float) -> None:
        self.clock.reported(job.id, progress)
        self._progress[job.id] = job.progress = self.views.shown_progress(job)
        if now - self._persisted.get(job.id, 0.0) >= PROGRESS_PERSIST_SECONDS:
            self.store.update(job.id, progress=job.progress)
            self._persisted[job.id] = now
        self.notify(job)

    def _done(self, job: Job, event: JobEvent, now: float) -> None:
        self._change(
            job,
            state="done",
            progress=1.0,
            result_path=event.result,
            timings=dict(event.timings or {}),
            finished_at=now,
            expires_at=now + self.settings.result_ttl,
            input_path=None,
        )
        if job.cache_key and event.result is not None:
            self.cache.put(job.cache_key, event.result, job.id)
        self._record_usage(job, event, now)
        if job.started_at:
            self.views.measured(now - job.started_at)
        self.ended(job)

    def _record_usage(self, job: Job, event: JobEvent, now: float) -> None:
        """The job's accounting row: what ran it, for how long, and what that cost (``freestems cost``)."""
        timings = dict(event.timings or {})
        gpu_seconds = timings.get("gpu_seconds")
        self.store.record_usage(
            UsageRecord(
                job_id=job.id,
                finished_at=now,
                model=job.model,
                gpu=event.gpu,
                audio_seconds=timings.get("audio_seconds"),
                gpu_seconds=gpu_seconds,
                cost_usd=_whole_cost(timings) or job_cost(gpu_seconds, event.gpu, self.settings.gpu_prices),
                timings=timings,
            )
        )

    def ended(self, job: Job) -> None:
        """A job reached a final state: tell its socket, end its key, wake its waiter, move the queue."""
        self.clock.ended(job.id, job.state == "done")
        self.partials.ended(job.id, job.state == "done")
        if job.state != "done":
            self._remove_source(job)  # only a finished job's song is kept, for a rerun by its owner
        self._progress.pop(job.id, None)
        self._persisted.pop(job.id, None)
        self.follow.ended(job.id)
        self.notify(job)
        if job.state == "done":
            self.sessions.post_to_job(job.id, self.views.done_message(job))
        self.sessions.finish(job.id)
        waiter = self._waiters.get(job.id)
        if waiter is not None:
            waiter.set()
        self._broadcast_positions()

    # ------------------------------------------------------------------------------------------ files

    def let_go(self, job_id: str) -> None:
        """The answer of a ``POST /separate`` is under way (its zip open) or given up: nobody can ask for
        the job again (its client has no token), so a finished job's files go now. The result cache keeps
        its own name for the zip; the record stays until its TTL, without files."""
        job = self.store.get(job_id)
        if job is not None and job.state == "done":
            self._remove_files(job)
            self.store.update(job_id, result_path=None)

    def _remove_files(self, job: Job) -> None:
        self.partials.remove(job.id)
        self.views.durations.pop(job.id, None)
        for path in (job.input_path, job.result_path, self.paths.results / f"{job.id}.zip"):
            if path is not None:
                path.unlink(missing_ok=True)
        self._remove_source(job)

    def _remove_source(self, job: Job) -> None:
        """Delete the job's kept song (every name it may have)."""
        while (source := self.source_of(job)) is not None:
            source.unlink(missing_ok=True)

    def _is_done(self, job_id: str) -> bool:
        job = self.store.get(job_id) if len(job_id) == 16 else None
        return job is not None and job.state == "done"

    def _remove_orphans(self) -> None:
        """Files in uploads/, results/ and cache/ that no record points at (left by a crash)."""
        done = {path.name for path in self.paths.partials.glob("*") if self._is_done(path.name)}
        self.partials.remove_orphans(done)
        known = {path.resolve() for path in self.store.paths()}
        for folder in (self.paths.uploads, self.paths.results, self.paths.cache):
            for path in folder.iterdir():
                if path.is_file() and path.resolve() not in known:
                    log.info("removing orphaned file %s", path)
                    path.unlink(missing_ok=True)
        jobs = {job.id for job in self.store.jobs() if job.state not in ("failed", "cancelled")}
        for path in self.paths.sources.iterdir():  # songs are kept for unfinished and finished jobs only
            if path.name.split(".", 1)[0] not in jobs:
                log.info("removing orphaned file %s", path)
                path.unlink(missing_ok=True)


def _over(held: float, cost: float, limit: float) -> bool:
    """True when ``cost`` more on top of ``held`` passes ``limit`` (nothing held: only a full limit)."""
    if held <= EPSILON:
        return False
    return held + cost > limit + EPSILON if cost > 0 else held >= limit - EPSILON


def _whole_cost(timings: dict[str, Any]) -> float | None:
    """The cost a Modal container computed for its call (GPU, cores, memory, region: :mod:`freestems.cost`),
    when it sent one; else the job is priced here by its GPU seconds."""
    value = timings.get("cost_usd")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
