"""One web container among several: the sync round that keeps it in step with the others.

With a :class:`~.shared_state.SharedState`, every ``SYNC_INTERVAL`` seconds each container:

1. writes its heartbeat (a container whose heartbeat is older than the lease has gone);
2. reads its inbox: keys of its sockets that another container used to start a job (the socket then
   follows that job);
3. reads from the shared store every job it runs or that its sockets (or waiting ``POST /separate``)
   follow: another container's job reaches the sockets here when it changes, a job that runs here and was
   cancelled or deleted elsewhere is stopped, and followed jobs are marked followed in the shared state
   (so the container that runs them does not cancel them for want of a follower);
4. adopts the unfinished jobs of containers that have gone, or that a stopping container gave back (an
   adoption is atomic: one container wins each), and runs them;
5. commits its file changes to the Volume.

The shared-state calls run in a worker thread; what they found is applied on the event loop. The round
also refreshes what the event loop reads instead of the shared state (:mod:`.shared_store`): the
``active`` index, the rows of the jobs it reads, and the other containers' follows of the jobs that run
here; and an adopted job's upload is fetched here first, through the Volume's API if a reload is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .shared_state import SYNC_INTERVAL, SharedState
from .store import Job

if TYPE_CHECKING:
    from .jobs import JobManager
    from .sessions import SessionRegistry

log = logging.getLogger(__name__)


class Replica:
    """The sync rounds of one container (:meth:`run` until cancelled; :meth:`leave` at shutdown)."""

    def __init__(
        self,
        state: SharedState,
        manager: JobManager,
        sessions: SessionRegistry,
        *,
        interval: float = SYNC_INTERVAL,
        follow_every: float = 1.0,
    ) -> None:
        self.state = state
        self.manager = manager
        self.sessions = sessions
        self.interval = interval
        self.follow_every = follow_every
        self._touched: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("a sync round failed; the next one tries again")
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        """One sync round (see the module)."""
        loop = asyncio.get_running_loop()
        followed = self.manager.follow.followed_here()
        running = self.manager.follow.running_here()
        now = loop.time()
        touch = {job for job in followed if now - self._touched.get(job, -1e9) >= self.follow_every}
        for job in touch:
            self._touched[job] = now
        for job in list(self._touched):
            if job not in followed:
                del self._touched[job]
        checks = running | self.manager.follow.checking()  # their follows elsewhere, for the grace checks
        messages, seen, adopted = await asyncio.to_thread(
            self._exchange, followed | running, touch, checks, running
        )
        for message in messages:
            if message.get("type") == "attach":
                self.sessions.attach_remote(
                    str(message["connection"]), str(message["digest"]), str(message["job"])
                )
        for job_id, seen_job in seen.items():
            self.manager.follow.observe(job_id, seen_job)
        for adopted_job in adopted:
            self.manager.follow.adopt(adopted_job)

    def _exchange(
        self, jobs: set[str], touch: set[str], checks: set[str], running: set[str]
    ) -> tuple[list[dict[str, Any]], dict[str, Job | None], list[Job]]:
        """The blocking part of a round (in a worker thread)."""
        state, store = self.state, self.manager.store
        state.heartbeat()
        messages = state.messages()
        for job_id in touch:
            state.touch_follow(job_id)
        seen = {job_id: store.get(job_id) for job_id in jobs}
        for job_id in checks:
            state.follow_age(job_id)  # the other containers' follows, for the event loop's grace checks
        adopted = []
        active = store.active()  # also the event loop's copy of the active index
        if not self.manager.closing:
            for job in active:
                if job.id not in running and state.adopt(job.id):
                    if job.input_path is not None:
                        state.fetch(job.input_path)  # without depending on a reload succeeding
                    adopted.append(job)
        state.commit_if_changed()
        return messages, seen, adopted

    async def leave(self) -> None:
        """Shutdown (after the manager gave its jobs back): commit, free socket slots, stop the heartbeat."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._leave)

    def _leave(self) -> None:
        self.state.courier.flush()  # the event loop's last writes (jobs given back) first
        self.state.commit()
        self.state.release_slots()
        self.state.leave()
