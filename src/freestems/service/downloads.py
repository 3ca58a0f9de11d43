"""Files sent to clients: opened before the answer starts, sent from the open file, errors as JSON.

A result zip or a segment can be deleted at any moment: its job is deleted by its owner, it expires, or a
``POST /separate`` job lets go of its result. A response that named the file by its path and opened it
later (Starlette's ``FileResponse`` stats it, sends the headers, then opens it) either failed with a 500
or was cut after its headers. Here the route opens the file first (:func:`open_download`): a file that is
gone is a JSON 404 before anything is sent, and once it is open the whole body comes from the open file,
which outlives its name on POSIX. So a reader gets a 404 or the complete file, nothing between.

``Range`` is answered as RFC 9110 asks: one byte range gives a 206 with ``Content-Range``; a range unit
other than ``bytes``, several ranges, or an ``If-Range`` that does not match give the whole file (200);
a malformed ``bytes`` range is a JSON 400 ``invalid_range``, and a range past the end a JSON 416
``range_not_satisfiable`` with ``Content-Range: bytes */<size>``. ``HEAD`` sends the headers only.

:class:`HeadAsGet` lets every ``GET`` route answer ``HEAD`` (FastAPI routes take only the methods they
name): the route runs as for ``GET`` and the body is dropped; a download sees the ``HEAD`` and does not
read its file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .errors import ServiceError, not_found

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
HEAD_KEY = "freestems.head"
"""Set in the scope of a ``HEAD`` request that runs as a ``GET`` (:class:`HeadAsGet`)."""


def open_download(
    path: Path | None,
    gone: str,
    *,
    media_type: str,
    filename: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Download:
    """The response that sends the file at ``path``, opened now.

    Raises:
        ServiceError: 404 with the message ``gone`` when there is no such file (any more).
    """
    if path is None:
        raise not_found(gone)
    try:
        file = open(path, "rb")  # noqa: SIM115 - the response closes it once sent (or never sent)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise not_found(gone) from None
    try:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise not_found(gone)
        return Download(file, info, media_type=media_type, filename=filename, headers=headers)
    except BaseException:
        file.close()
        raise


class Download(Response):
    """A response that sends an open regular file (see the module's docstring); it closes the file."""

    def __init__(
        self,
        file: BinaryIO,
        info: os.stat_result,
        *,
        media_type: str,
        filename: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.file = file
        self.size = info.st_size
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.headers["content-length"] = str(self.size)
        self.headers.setdefault("accept-ranges", "bytes")
        self.headers.setdefault("last-modified", formatdate(info.st_mtime, usegmt=True))
        tag = hashlib.md5(f"{info.st_mtime}-{info.st_size}".encode(), usedforsecurity=False).hexdigest()
        self.headers.setdefault("etag", f'"{tag}"')
        if filename is not None:
            quoted = quote(filename)
            disposition = (
                f'attachment; filename="{filename}"'
                if quoted == filename
                else f"attachment; filename*=utf-8''{quoted}"
            )
            self.headers.setdefault("content-disposition", disposition)

    def __del__(self) -> None:  # a response built and then never sent still lets go of its file
        self.file.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            head = scope.get(HEAD_KEY) or scope.get("method") == "HEAD"
            try:
                span = self._span(scope)
            except ServiceError as error:
                await JSONResponse(error.body(), error.status, error.headers)(scope, receive, send)
                return
            headers = list(self.raw_headers)
            status, start, end = 200, 0, self.size
            if span is not None:
                status, (start, end) = 206, span
                headers = [(name, value) for name, value in headers if name != b"content-length"]
                headers += [
                    (b"content-length", str(end - start).encode()),
                    (b"content-range", f"bytes {start}-{end - 1}/{self.size}".encode()),
                ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if head or start == end:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await _until_disconnected(self._send_body(send, start, end), receive)
        finally:
            self.file.close()

    def _span(self, scope: Scope) -> tuple[int, int] | None:
        """The one byte range to send (start, end exclusive), or None for the whole file."""
        requested = _header(scope, b"range")
        if requested is None:
            return None
        condition = _header(scope, b"if-range")
        if condition is not None and condition not in (self.headers["etag"], self.headers["last-modified"]):
            return None  # the file changed since the client's first part: it gets the whole new one
        return byte_range(requested, self.size)

    async def _send_body(self, send: Send, start: int, end: int) -> None:
        await asyncio.to_thread(self.file.seek, start)
        left = end - start
        while left > 0:
            chunk = await asyncio.to_thread(self.file.read, min(CHUNK_SIZE, left))
            if not chunk:  # the file shrank under us (never done in place here): end the connection
                log.error("%s ended %d bytes early; the response is cut", self.file.name, left)
                return
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The span (start, end exclusive) that a ``Range`` header asks of a file of ``size`` bytes; None for
    the whole file (another unit, or several ranges: RFC 9110 lets a server send the whole file then).

    Raises:
        ServiceError: 400 ``invalid_range`` when it is not a byte range; 416 ``range_not_satisfiable``
            when it starts past the end.
    """
    unit, equals, ranges = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in ranges.split(",") if part.strip()]
    if len(parts) != 1:
        if parts:
            return None
        raise _invalid_range(header)
    first, dash, last = (text.strip() for text in parts[0].partition("-"))
    numbers = [text for text in (first, last) if text]
    if not dash or not numbers or not all(text.isascii() and text.isdigit() for text in numbers):
        raise _invalid_range(header)
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size
        if int(last) == 0:
            raise _unsatisfiable(header, size)
    else:
        start = int(first)
        end = size if not last else min(size, int(last) + 1)
        if last and int(last) < start:
            raise _invalid_range(header)
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, end


def _invalid_range(header: str) -> ServiceError:
    return ServiceError(
        400, "invalid_range", f"Range: {header[:64]!r} is not a byte range (send e.g. 'bytes=1000-')"
    )


def _unsatisfiable(header: str, size: int) -> ServiceError:
    return ServiceError(
        416,
        "range_not_satisfiable",
        f"Range: {header[:64]!r} asks for nothing of this file of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _until_disconnected(sending: Any, receive: Receive) -> None:
    """Run ``sending`` until it ends or the client hangs up, whichever comes first (then it stops)."""
    body = asyncio.ensure_future(sending)
    hangup = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({body, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        body.cancel()
        hangup.cancel()
    if body.done() and not body.cancelled():
        body.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Files(StaticFiles):
    """Static files (the page's, the API docs'), with the same ``Range`` answers and JSON errors as the
    downloads above."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if not isinstance(response, FileResponse) or response.status_code != 200:
            return response  # 304 Not Modified
        download = open_download(
            Path(full_path), "no such file", media_type=response.media_type or "application/octet-stream"
        )
        for name in ("last-modified", "etag"):
            if name in response.headers:
                download.headers[name] = response.headers[name]
        return download


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request runs its ``GET`` route, and the body of the answer is dropped
    (its headers, ``Content-Length`` included, are those of the ``GET``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_head(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.body":
                ended = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_KEY: True}, receive, send_head)
