"""The service layer's one exception type, and the JSON every error response has.

Routes and helpers raise :class:`ServiceError` (through the small constructors below) with a message a user
can act on; one handler in :mod:`freestems.service.app` turns it into::

    HTTP 429, Retry-After: 12
    {"error": {"code": "queue_full", "message": "the queue is full (32 jobs); try again in 12 s"}}

``code`` is stable and meant for programs; ``message`` is for people. No traceback ever reaches a client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from freestems.errors import FailureCode


class ServiceError(Exception):
    """An HTTP-level failure: ``status``, a stable ``code``, a human ``message``, optional headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        field: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))
        self.field = field
        self.extra = dict(extra or {})
        """More members of the JSON error (a refused price: ``cost``, ``limit``, ``fits``)."""
        self.headers = dict(headers or {})
        if self.retry_after is not None:
            self.headers["Retry-After"] = str(self.retry_after)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        error.update(self.extra)
        return {"error": error}

    def __repr__(self) -> str:
        return f"ServiceError({self.status}, {self.code!r}, {self.message!r})"


def unauthorized(code: str, message: str) -> ServiceError:
    """401: no usable session key (missing, unknown, expired or closed)."""
    return ServiceError(401, code, message)


def forbidden(code: str, message: str) -> ServiceError:
    """403: a real key that may not be used for this (used already, another address, bad origin)."""
    return ServiceError(403, code, message)


def not_found(message: str, code: str = "not_found") -> ServiceError:
    return ServiceError(404, code, message)


def conflict(code: str, message: str) -> ServiceError:
    """409: the request is valid but the resource is not in a state that allows it (job not done yet)."""
    return ServiceError(409, code, message)


def request_timeout(message: str) -> ServiceError:
    return ServiceError(408, "upload_timeout", message)


def payload_too_large(code: str, message: str) -> ServiceError:
    """413: the upload is too big, or its audio too long (a request that costs too much is 413 too, made by
    :mod:`.pricing`)."""
    return ServiceError(413, code, message)


def unsupported_media(code: str, message: str) -> ServiceError:
    """415: not audio (decided by content), or not a multipart form."""
    return ServiceError(415, code, message)


def invalid_parameter(field: str, message: str) -> ServiceError:
    """422 naming the form field: ``shifts: must be an integer between 1 and 5, got 'x'``."""
    return ServiceError(422, "invalid_parameter", f"{field}: {message}", field=field)


def too_many_requests(code: str, message: str, retry_after: float) -> ServiceError:
    """429 with Retry-After (whole seconds, at least 1)."""
    return ServiceError(429, code, message, retry_after=retry_after)


def unavailable(message: str, code: str = "unavailable", retry_after: float | None = None) -> ServiceError:
    return ServiceError(503, code, message, retry_after=retry_after)


def internal(message: str = "internal server error; it has been logged") -> ServiceError:
    return ServiceError(500, FailureCode.INTERNAL, message)
