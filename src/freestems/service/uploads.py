"""Receive a multipart upload as a stream: to a file on disk, hashed, and stopped at the size limit.

Starlette's form parser would take the whole body before we can say no, and its file size is unlimited.
Here the body is fed chunk by chunk to python-multipart's streaming parser: the audio part goes straight to
a temporary file in the data folder (never whole into memory) and into a SHA-256 (the result cache key),
small text fields are collected, and counting happens as bytes arrive. A declared ``Content-Length`` over
the limit is refused before any body is read; a body that grows past it (a lying or chunked client) is
refused as soon as it does, without reading the rest.

Writes go to the file from the event loop: chunks are at most 64 KiB and land in the page cache, which is
cheaper than a thread hop per chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks
from starlette.requests import ClientDisconnect, Request

from freestems.files import temp_path

from .errors import (
    ServiceError,
    invalid_parameter,
    payload_too_large,
    request_timeout,
    unavailable,
    unsupported_media,
)

FIELD_LIMIT = 1024
"""Bytes in one text field (the options are a few characters each)."""
MAX_FIELDS = 16
PART_HEADER_LIMIT = 8 * 1024
"""Bytes of headers in one form part (a Content-Disposition and a Content-Type are ~100)."""
FORM_SLACK = 64 * 1024
"""Bytes of multipart framing and text fields allowed on top of the file size limit."""
MAX_BOUNDARY = 256
"""Longest multipart boundary accepted (python-multipart's own bound; RFC 2046 allows 70)."""


@dataclass
class Upload:
    """A received upload: the file (a temporary name in the uploads folder) and the text fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = True
    """False when the form had no file part (allowed with ``require_file=False``: a rerun of a kept
    source); then ``path`` does not exist."""

    @property
    def suffix(self) -> str:
        """The client's file extension when it looks like one (helps FFmpeg with tiny files), else ''."""
        suffix = Path(self.filename).suffix.lower()
        return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def receive_upload(
    request: Request,
    directory: Path,
    *,
    max_bytes: int,
    file_field: str = "audio_file",
    timeout: float = 600.0,
    require_file: bool = True,
) -> Upload:
    """Stream the request's multipart body: ``file_field`` to a file in ``directory``, the rest as fields.

    Raises:
        ServiceError: 413 too large, 415 not multipart, 422 malformed form or missing/duplicate file,
            408 too slow, 400 interrupted, 503 the disk is full.
    """
    boundary = _boundary(request.headers.get("content-type", ""))
    body_limit = max_bytes + FORM_SLACK
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(max_bytes)

    directory.mkdir(parents=True, exist_ok=True)
    path = temp_path(directory / "upload")  # a temp name: a start-up cleanup removes it after a crash
    receiver = _Receiver(path, file_field, max_bytes)
    received = 0
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:
                    raise _too_large(max_bytes)
                parser.write(chunk)
        parser.finalize()
        return receiver.result(require_file)
    except BaseException as error:
        receiver.close()
        path.unlink(missing_ok=True)
        if isinstance(error, ServiceError):
            raise
        if isinstance(error, TimeoutError):
            raise request_timeout(f"the upload took longer than {timeout:g} s") from None
        if isinstance(error, ClientDisconnect):
            raise ServiceError(400, "upload_interrupted", "the upload was interrupted") from None
        if isinstance(error, ValueError):  # FormParserError, UnicodeError...: whatever the parser finds wrong
            raise ServiceError(422, "invalid_form", f"the multipart form is malformed: {error}") from None
        if isinstance(error, OSError):
            raise unavailable(
                "the server cannot store uploads right now (disk full?); try again later"
            ) from None
        raise


def _boundary(content_type: str) -> bytes:
    try:
        kind, params = parse_options_header(content_type)
    except (ValueError, UnicodeError):  # a header the parser cannot split: not a form we can read
        kind, params = b"", {}
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise unsupported_media(
            "not_multipart",
            "send the audio as multipart/form-data with the file in the audio_file field "
            '(curl -F "audio_file=@song.mp3")',
        )
    if len(boundary) > MAX_BOUNDARY:
        raise unsupported_media(
            "not_multipart",
            f"the multipart boundary is {len(boundary)} characters long; at most {MAX_BOUNDARY} are "
            "accepted (RFC 2046 allows 70)",
        )
    return boundary


def _too_large(max_bytes: int) -> ServiceError:
    return payload_too_large(
        "upload_too_large", f"the upload is larger than the limit of {max_bytes / 1e6:g} MB"
    )


class _Receiver:
    """python-multipart callbacks: the file part to disk and a hash, text parts to a dict, with limits."""

    def __init__(self, path: Path, file_field: str, max_bytes: int) -> None:
        self.path = path
        self.file_field = file_field
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.file: BinaryIO | None = None
        self.filename = ""
        self.size = 0
        self.digest = hashlib.sha256()
        self.file_done = False
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._header_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._header_bytes = 0
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._count_header(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > PART_HEADER_LIMIT:
            raise ServiceError(
                422, "invalid_form", f"a form part's headers are longer than {PART_HEADER_LIMIT} bytes"
            )

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ServiceError(422, "invalid_form", "a form part has no name")
        self._name = name.decode("utf-8", "replace")
        self._is_file = self._name == self.file_field
        if self._is_file:
            if self.file is not None or self.file_done:
                raise invalid_parameter(self.file_field, "send exactly one file")
            self.filename = _clean_filename(options.get(b"filename", b"").decode("utf-8", "replace"))
            self.file = open(self.path, "wb")  # noqa: SIM115 - closed in on_part_end or close()
        else:
            if self._name in self.fields:
                raise invalid_parameter(self._name, "given more than once")
            if len(self.fields) >= MAX_FIELDS:
                raise ServiceError(422, "invalid_form", f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            assert self.file is not None
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise _too_large(self.max_bytes)
            self.digest.update(chunk)
            self.file.write(chunk)
        else:
            self._value += chunk
            if len(self._value) > FIELD_LIMIT:
                raise invalid_parameter(self._name, f"longer than {FIELD_LIMIT} bytes")

    def on_part_end(self) -> None:
        if self._is_file:
            assert self.file is not None
            self.file.close()
            self.file = None
            self.file_done = True
        else:
            self.fields[self._name] = self._value.decode("utf-8", "replace").strip()

    def on_end(self) -> None:
        self.ended = True

    def result(self, require_file: bool = True) -> Upload:
        if not self.ended:
            raise ServiceError(422, "invalid_form", "the multipart body is incomplete (no closing boundary)")
        if not self.file_done and not require_file:
            return Upload(path=self.path, filename="", size=0, sha256="", fields=self.fields, has_file=False)
        if not self.file_done:
            raise invalid_parameter(self.file_field, "required: the audio file to separate")
        return Upload(
            path=self.path,
            filename=self.filename or self.file_field,
            size=self.size,
            sha256=self.digest.hexdigest(),
            fields=self.fields,
        )

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _clean_filename(name: str) -> str:
    """The last path component, printable, at most 120 characters: it only appears in messages."""
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:120]
