"""The client layer's one exception type."""

from __future__ import annotations

from typing import Any


class RemoteError(Exception):
    """A separation on a remote freestems server did not succeed.

    ``status`` is the HTTP status of the server's answer (None when the failure is on this side: the
    network, a proof of work not solved in time, a bad zip); ``code`` is the server's stable error code
    (``queue_full``, ``not_audio``, ``invalid_parameter``...) or one of ours (``unreachable``,
    ``pow_timeout``, ``bad_response``); ``message`` says what to do, in one line. ``retry_after`` is the
    server's advice in seconds, where it gave one. ``details``: the rest of the server's JSON error (a
    refused price says ``cost``, ``limit`` and what ``fits``).
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = dict(details or {})

    def __str__(self) -> str:
        where = f"{self.status} " if self.status else ""
        return f"{self.message} ({where}{self.code})"

    def __repr__(self) -> str:
        return f"RemoteError({self.status!r}, {self.code!r}, {self.message!r})"
