"""The running service's parts (:class:`Service`): what the HTTP routes and the session socket share.

Its own module so that both of them can name it without importing each other: the routes
(:mod:`.app`) mount the socket (:mod:`.websocket`), and the socket needs only these parts. It lies below
both and imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from freestems.executors import Executor

from .challenges import ChallengeBook
from .jobs import JobManager
from .limits import SlidingWindow
from .paths import Paths
from .sessions import SessionRegistry
from .settings import Settings
from .shared_state import LocalState
from .shared_store import DictJobStore
from .store import JobStore


@dataclass
class Service:
    """The running service's parts, shared by the routes (``app.state.service``) and the socket."""

    settings: Settings
    executor: Executor
    store: JobStore | DictJobStore
    sessions: SessionRegistry
    challenges: ChallengeBook
    limiter: SlidingWindow
    refusals: SlidingWindow
    """Refused uploads per address (see ``REFUSED_UPLOAD_STATUSES``)."""
    manager: JobManager
    paths: Paths
    state: LocalState
    """Where what several web containers share lives (:mod:`.shared_state`)."""
