"""HTTP pieces of the client: the streamed multipart upload, server errors, ``Retry-After``, the resumable
download. No policy about jobs here (that is :mod:`freestems.client.api`)."""

from __future__ import annotations

import email.utils
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from .errors import RemoteError

CHUNK = 256 * 1024
NETWORK_ERRORS = (httpx.TransportError,)
"""Failures of the connection (refused, reset, cut mid-body, timed out): retried, not reported as is."""


def error_of(response: httpx.Response) -> RemoteError:
    """The server's JSON error (``{"error": {"code", "message"}}``) as a :class:`RemoteError`; any other
    answer (a proxy's HTML page, say) becomes one too, with its status."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "unexpected answer"
    details: dict[str, Any] = {}
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        details = {name: value for name, value in error.items() if name not in ("code", "message")}
    except (ValueError, KeyError, TypeError, AttributeError, httpx.ResponseNotRead):
        pass
    return RemoteError(
        response.status_code, code, message, retry_after=retry_after(response.headers), details=details
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (it may be seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class MultipartUpload:
    """A ``multipart/form-data`` body of text fields and one file, produced in chunks as it is sent.

    The file is read from disk :data:`CHUNK` bytes at a time (never whole into memory), and its length is
    known up front, so the request has a ``Content-Length`` (the server refuses a too large upload before
    reading it). Iterate it again to send it again (a retry after ``429``).
    """

    def __init__(
        self,
        path: Path,
        fields: Mapping[str, str],
        *,
        file_field: str = "audio_file",
        sent: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.sent = sent
        self.boundary = secrets.token_hex(16)
        parts = []
        for name, value in fields.items():
            disposition = f'Content-Disposition: form-data; name="{_quote(name)}"'
            parts.append(f"--{self.boundary}\r\n{disposition}\r\n\r\n{value}\r\n")
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
            f'filename="{_quote(path.name)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        self.head = "".join(parts).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.file_size = os.path.getsize(path)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(len(self.head) + self.file_size + len(self.tail)),
        }

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        with open(self.path, "rb") as file:
            while chunk := file.read(CHUNK):
                yield chunk
                if self.sent is not None:
                    self.sent(len(chunk))
        yield self.tail


def _quote(text: str) -> str:
    """A header parameter value as browsers write it (quotes and line breaks percent-encoded)."""
    return re.sub(r'["\r\n]', lambda m: {'"': "%22", "\r": "%0D", "\n": "%0A"}[m[0]], text)


def download(
    http: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    destination: Path,
    *,
    timeout: float,
    received: Callable[[int, int | None], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> Path:
    """Stream ``url`` to ``destination`` through ``destination.part``; a dropped connection resumes with
    ``Range`` from the bytes already on disk (a server that ignores it sends the whole file again, which
    then replaces them). Gives up after ``timeout`` seconds without progress.

    ``received(bytes_so_far, total)`` is called as data arrives.

    Raises:
        RemoteError: the server's error, or ``unreachable`` / ``bad_response`` from this side.
    """
    partial = destination.with_name(destination.name + ".part")
    partial.unlink(missing_ok=True)
    total: int | None = None
    failing_since: float | None = None
    attempt = 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if total is not None and have >= total:
            break
        request_headers = dict(headers)
        if have:
            request_headers["Range"] = f"bytes={have}-"
        try:
            with http.stream("GET", url, headers=request_headers) as response:
                if response.status_code not in (200, 206):
                    response.read()
                    raise error_of(response)
                if response.status_code == 206 and have:
                    total = _range_total(response, have)
                    mode = "ab"
                else:  # the whole file, from the start
                    have, mode = 0, "wb"
                    length = response.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                with open(partial, mode) as out:
                    for chunk in response.iter_bytes():  # as it arrives: a cut loses nothing received
                        out.write(chunk)
                        have += len(chunk)
                        failing_since = None
                        if received is not None:
                            received(have, total)
            if total is None or have >= total:
                break
            raise httpx.RemoteProtocolError("the download ended early")
        except NETWORK_ERRORS as error:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > timeout:
                partial.unlink(missing_ok=True)
                raise RemoteError(
                    None,
                    "unreachable",
                    f"the download stopped and could not be resumed for {timeout:g} s: {error}",
                ) from None
            attempt += 1
            if note is not None:
                note(f"download interrupted at {have} bytes ({type(error).__name__}); resuming")
            time.sleep(backoff(attempt))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    if total is not None and have != total:
        partial.unlink(missing_ok=True)
        raise RemoteError(
            None, "bad_response", f"the download has {have} bytes, the server announced {total}"
        )
    os.replace(partial, destination)
    return destination


def _range_total(response: httpx.Response, start: int) -> int:
    """The full size from ``Content-Range: bytes start-end/total``; it must start where we asked."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("content-range", "").strip())
    if match is None or int(match[1]) != start:
        raise RemoteError(
            response.status_code, "bad_response", "the server resumed the download at the wrong place"
        )
    return int(match[3])


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): 0.5, 1, 2, 4, then every 5 s."""
    return min(5.0, 0.25 * 2.0**attempt)
