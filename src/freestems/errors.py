"""How failures are told, defined once for every layer: job failure codes and one-line reasons.

This module imports nothing of freestems, so the audio and model layers at the bottom, the job runner,
the executors, the service and the CLI can all use it.

- :class:`FailureCode`: why a job failed (or was refused, or was cancelled), as the stable strings the API
  sends in ``{"error": {"code": ...}}``; :data:`FAILURE_HTTP` gives each its HTTP status, in one table.
- :class:`Cancelled`: a job (or a model load it waited for) was cancelled; not a failure, so it has no code.
- :func:`one_line`: an exception as one short line a user can read (the system's own words for an
  ``OSError``), for messages such as ``cannot read model file x.pt: <reason>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FailureCode(StrEnum):
    """Why a job did not give its stems. The values are the wire format: never rename one."""

    TOO_LONG = "too_long"
    """The decoded audio is longer than ``max_duration``."""
    NOT_AUDIO = "not_audio"
    """The input cannot be decoded as audio."""
    ENCODE_FAILED = "encode_failed"
    """A stem could not be encoded."""
    INVALID_OPTIONS = "invalid_options"
    """The options cannot run on this model or this executor."""
    DISK_FULL = "disk_full"
    """No space left for the stems: the server's state, worth a retry later."""
    INTERRUPTED = "interrupted"
    """The server stopped while the job ran, and its upload did not survive the restart."""
    CANCELLED = "cancelled"
    """Its owner (or the socket it came from) cancelled it, or nobody followed it for the reattach grace."""
    RESTARTING = "restarting"
    """The server stopped while a client that cannot come back for the job (``POST /separate``, an
    unfinished upload) waited: the job is cancelled and the client told to send the file again."""
    INTERNAL = "internal"
    """A bug or a broken machine; the details are in the server log, never in the message."""


@dataclass(frozen=True)
class HttpFailure:
    """How the API answers a request for what a failed job would have given."""

    status: int
    retry_after: float | None = None
    """Seconds after which a retry may succeed (a passing state of the server), else None."""


FAILURE_HTTP: dict[FailureCode, HttpFailure] = {
    FailureCode.TOO_LONG: HttpFailure(413),
    FailureCode.NOT_AUDIO: HttpFailure(415),
    FailureCode.ENCODE_FAILED: HttpFailure(500),
    FailureCode.INVALID_OPTIONS: HttpFailure(422),
    FailureCode.DISK_FULL: HttpFailure(503, retry_after=60.0),
    FailureCode.INTERRUPTED: HttpFailure(503),
    FailureCode.CANCELLED: HttpFailure(409),
    FailureCode.RESTARTING: HttpFailure(503, retry_after=60.0),
    FailureCode.INTERNAL: HttpFailure(500),
}
"""The HTTP status of each code: one table, every code in it."""


def http_failure(code: str | None) -> HttpFailure:
    """The answer for ``code``; a 500 for a code this version does not know (an old store's row)."""
    try:
        return FAILURE_HTTP[FailureCode(code or "")]
    except ValueError:
        return HttpFailure(500)


class Cancelled(Exception):
    """The job was cancelled: its token was set (it stopped between two chunks, or while its model waited for
    memory to load), or the place it ran on cancelled it. Not a failure: it has no code; its message, if any,
    says who cancelled it."""


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """``error`` as one line of at most ``limit`` characters: an ``OSError``'s (or FFmpeg's) own reason
    (``No space left on device``), else its message with whitespace folded, else its type's name.
    A string (``URLError.reason`` may be one) is folded and shortened the same way."""
    reason = getattr(error, "strerror", None)
    text = reason if isinstance(reason, str) and reason.strip() else str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
