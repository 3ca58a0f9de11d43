"""A client for a freestems server: ``freestems remote`` and ``freestems.client.Client``.

    from freestems.client import Client

    stems = Client("http://127.0.0.1:8000").separate("song.mp3", two_stems="vocals")
    stems["vocals"]           # Path('separated/scnet/song/vocals.mp3')

What :meth:`Client.separate` does, step by step (each step is also a method of its own):

1. :meth:`Client.get_key`: open ``WS /session``, solve its proof of work on every core
   (:mod:`freestems.client.pow`), receive the session key. The key lives as long as that socket: the
   returned :class:`Session` keeps it open and reads its messages in a background thread.
2. :meth:`Client.submit`: ``POST /jobs`` with the key, streaming the file from disk (never whole in
   memory). A ``429``/``503`` with ``Retry-After`` is waited out and retried, up to ``max_wait`` seconds
   in all; a refused request does not spend the key.
3. :meth:`Client.wait`: follow the job (queue position, progress) from the session socket's ``job``
   messages, with a slow ``GET /jobs/{id}`` poll beside it. If the socket drops, a new one asks to
   ``follow`` the job (servers that allow it keep a job alive for a grace period); otherwise polling
   goes on, with backoff while the server is unreachable.
4. :meth:`Client.download`: ``GET /jobs/{id}/result`` streamed to ``<name>.zip.part``; a dropped download
   resumes with ``Range`` where it stopped; then the zip is unpacked (or kept).

Every server error becomes a :class:`RemoteError` with the status, the server's code and its message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import RemoteError

if TYPE_CHECKING:
    from .api import Client, Job
    from .session import Session

__all__ = ["Client", "Job", "RemoteError", "Session"]


def __getattr__(name: str) -> Any:
    # Lazy: the proof-of-work processes import freestems.client.pow, and should not pay for httpx and
    # websockets on the way.
    if name in ("Client", "Job", "Session"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
