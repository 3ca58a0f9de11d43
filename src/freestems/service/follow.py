"""Who follows each unfinished job, and which jobs this container runs: the grace, relays and adoptions.

Its own module because following is one question asked from many places, and across containers. A job is
*followed* while its session WebSocket is open, a socket follows it (``follow`` message), a ``POST
/separate`` waits for it, or its owner polled it (``GET /jobs/{id}`` or its result) within the last
``reattach_grace`` seconds. An unfinished job that nobody follows for ``reattach_grace`` seconds is
cancelled: nobody would collect it. The grace lets a reloaded page or a reconnecting client come back.

With a shared state (several web containers, :mod:`.shared_state`) the poll times are shared, each
container runs the jobs submitted to it, and the sync round (:mod:`.replicas`) brings the rest here:
another container's job that a socket here follows is relayed to it (:meth:`Follow.observe`), a job that
runs here and was cancelled or deleted elsewhere is stopped, and a job whose container has gone (its lease
lapsed) is adopted and run here (:meth:`Follow.adopt`).

The job manager (:mod:`.jobs`) owns the jobs; this module calls back into it through :class:`Jobs`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from freestems.errors import FailureCode
from freestems.executors import Executor, WorkItem

from .sessions import SessionRegistry
from .settings import Settings
from .shared_state import LocalState
from .shared_store import DictJobStore
from .store import RESTART_REASON, TERMINAL, Job, JobStore

log = logging.getLogger(__name__)


class Jobs(Protocol):
    """What following needs of the job manager (:class:`~.jobs.JobManager`)."""

    def cancel(self, job_id: str, reason: str) -> Job | None: ...

    def ended(self, job: Job) -> None: ...

    def notify(self, job: Job) -> None: ...

    def work_item(self, job: Job) -> WorkItem: ...


class Follow:
    """The followers of every unfinished job, and the jobs this container's executor has."""

    def __init__(
        self,
        settings: Settings,
        state: LocalState,
        store: JobStore | DictJobStore,
        sessions: SessionRegistry,
        executor: Executor,
        jobs: Jobs,
    ) -> None:
        self.settings = settings
        self.state = state  # also when its owner last polled a job (follow_age)
        self.store = store
        self.sessions = sessions
        self.executor = executor
        self.jobs = jobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._collectors: dict[str, int] = {}  # job id -> POST /separate requests waiting for it
        self._timers: dict[str, asyncio.TimerHandle] = {}  # job id -> its "is it still followed?" check
        self._here: set[str] = set()  # unfinished jobs this process's executor has (shared state)
        self._relayed: dict[str, tuple[Any, ...]] = {}  # other containers' jobs: what sockets here last heard

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on an unfollowed job is checked again after the grace (on ``loop``)."""
        self._loop = loop

    def close(self) -> list[str]:
        """Shutdown: no job is cancelled for want of a follower any more. Returns the jobs a ``POST
        /separate`` waits for (its client has no token and cannot come back for them)."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        return list(self._collectors)

    # ------------------------------------------------------------------------------------------ the grace

    def seen(self, job_id: str) -> None:
        """Its owner asked about the job (or created it): it counts as followed for ``reattach_grace``."""
        self.state.touch_follow(job_id)
        self.unfollowed(job_id)

    def followed(self, job_id: str) -> bool:
        """True while something follows the job: a socket, a waiting ``POST /separate``, a recent poll."""
        if self._held(job_id):
            return True
        age = self.state.follow_age(job_id)
        return age is not None and age < self.settings.reattach_grace

    def _held(self, job_id: str) -> bool:
        """Something in this process follows the job now: a socket or a waiting ``POST /separate``."""
        return self.sessions.followed(job_id) or bool(self._collectors.get(job_id))

    def unfollowed(self, job_id: str, delay: float | None = None) -> None:
        """Something stopped following the job (or it was polled): check it again after the grace."""
        if self._closed or self._loop is None:
            return
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        wait = self.settings.reattach_grace if delay is None else delay
        self._timers[job_id] = self._loop.call_later(wait, self._check_followed, job_id)

    def _check_followed(self, job_id: str) -> None:
        """The grace has passed: cancel the job if nothing follows it (sockets and waiting requests start
        a new check when they stop following)."""
        self._timers.pop(job_id, None)
        if self._closed:
            return
        job = self.store.get(job_id)
        if job is None or job.state in TERMINAL:
            self.state.forget_follow(job_id)
            return
        if self._held(job_id):
            return
        age = self.state.follow_age(job_id)
        left = self.settings.reattach_grace - age if age is not None else 0.0
        if left > 0:
            self.unfollowed(job_id, left)
            return
        grace = self.settings.reattach_grace
        log.info("job %s cancelled: nobody followed it for %g s", job_id, grace)
        self.jobs.cancel(
            job_id,
            f"nobody followed this job for {grace:g} s after its connection closed, so nobody could "
            "collect its result; it was cancelled",
        )

    def checking(self) -> set[str]:
        """Jobs whose "is it still followed?" check is pending: with a shared state the sync round reads
        their follows on other containers before the check runs (the check runs on the event loop)."""
        return set(self._timers)

    def wait_begins(self, job_id: str) -> None:
        """A ``POST /separate`` waits for the job: it is followed until the request ends."""
        self._collectors[job_id] = self._collectors.get(job_id, 0) + 1

    def wait_ends(self, job_id: str) -> bool:
        """A ``POST /separate`` stopped waiting. Returns True when none waits any more (the grace starts)."""
        left = self._collectors.get(job_id, 1) - 1
        if left > 0:
            self._collectors[job_id] = left
            return False
        self._collectors.pop(job_id, None)
        self.unfollowed(job_id)
        return True

    def connection_closed(self, connection: str) -> None:
        """A session socket closed: its key dies; the unfinished jobs it followed get the grace period to
        be followed again (else they are cancelled)."""
        for job_id in self.sessions.close_connection(connection):
            self.unfollowed(job_id)

    # ------------------------------------------------------------------------------------------ here

    def own(self, job_id: str) -> None:
        """This container runs the job (before the others can see it: none adopts it)."""
        self.state.own(job_id)
        self._here.add(job_id)

    def runs_here(self, job_id: str) -> bool:
        return job_id in self._here

    def ended(self, job_id: str) -> None:
        """The job ended: nobody needs to follow it, nor this container to run it."""
        self.state.forget_follow(job_id)
        self._relayed.pop(job_id, None)
        if job_id in self._here:
            self._here.discard(job_id)
            self.state.disown(job_id)
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------------------------------------ shared

    def followed_here(self) -> set[str]:
        """Unfinished jobs something in this process follows: sockets, waiting ``POST /separate``."""
        return self.sessions.followed_jobs() | set(self._collectors)

    def running_here(self) -> set[str]:
        """Unfinished jobs this process's executor has (shared state)."""
        return set(self._here)

    def observe(self, job_id: str, job: Job | None) -> None:
        """Shared state, one sync round: the store's word on a job that runs here or that something here
        follows. A job that runs here and ended elsewhere (cancelled, deleted) is stopped; another
        container's job is relayed to the sockets here when it changed."""
        if job_id in self._here:
            if job is None or job.state in TERMINAL:
                self.executor.cancel(job_id)
                self._here.discard(job_id)
                if job is not None:
                    self.jobs.ended(job)
            return
        if job is None:
            self.sessions.finish(job_id)
            return
        signature = (job.state, round(job.progress, 3), self.store.position(job), job.started_at)
        if self._relayed.get(job_id) == signature:
            return
        if job.state in TERMINAL:
            self._relayed.pop(job_id, None)
            if self._held(job_id):  # not ended here already
                self.jobs.ended(job)
        else:
            self._relayed[job_id] = signature
            self.jobs.notify(job)

    def adopt(self, job: Job) -> None:
        """Shared state: run a job whose container has gone (this container won its adoption). It starts
        again from its beginning; without its upload it fails with a reason that says so."""
        if job.input_path is None or not self.state.visible(job.input_path):
            self._lost(job)
            return
        if job.state == "running":
            self.store.update(job.id, state="queued", progress=0.0, started_at=None)
            job.state, job.progress, job.started_at = "queued", 0.0, None
        log.info("job %s adopted: the container that ran it has gone", job.id)
        self._here.add(job.id)
        self._relayed.pop(job.id, None)
        self.executor.submit(self.jobs.work_item(job))
        self.seen(job.id)
        self.jobs.notify(job)

    def _lost(self, job: Job) -> None:
        """An adopted job whose upload is gone: it fails, saying the server restarted."""
        now = time.time()
        self.store.update(
            job.id, state="failed", input_path=None, error_code=FailureCode.INTERRUPTED,
            error=RESTART_REASON, finished_at=now, expires_at=now + self.settings.result_ttl,
        )  # fmt: skip
        self.state.disown(job.id)
        ended = self.store.get(job.id)
        if ended is not None:
            self.jobs.ended(ended)
