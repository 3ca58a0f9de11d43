"""What the data folder may hold after a probe, and raw HTTP requests sent in two halves.

After every probe the data folder must hold only the job store, the result cache's entries (its own
links, deleted at their TTL) and the files of jobs whose owners can still reach them: for each such job
its upload while it runs, its result, its segments and its kept song. Anything else is left behind.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from pathlib import Path

STORE_FILES = {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"}
JOB_FOLDERS = ("uploads", "results", "sources", "partials")
CACHE_ENTRY = re.compile(r"cache/[0-9a-f]{64}\.zip")


def unreachable_files(data_dir: Path, reachable: Iterable[str] = ()) -> list[str]:
    """Files under ``data_dir`` that belong to no job in ``reachable`` (ids), nor to the store or cache."""
    allowed = set(reachable)
    found = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(data_dir).as_posix()
        if name in STORE_FILES or CACHE_ENTRY.fullmatch(name):
            continue
        folder, _, rest = name.partition("/")
        owner = re.split(r"[./]", rest, maxsplit=1)[0]
        if folder in JOB_FOLDERS and owner in allowed:
            continue
        found.append(name)
    return found


def multipart(fields: dict[str, str], file: Path | None = None) -> tuple[str, bytes]:
    """A multipart form (boundary, body) with ``fields`` and, if given, ``file`` as ``audio_file``."""
    boundary = "freestemsdiskboundary"
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    if file is not None:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="audio_file"; filename="{file.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += file.read_bytes() + b"\r\n"
    return boundary, body + f"--{boundary}--\r\n".encode()


class HalfSent:
    """A ``POST`` whose body is sent in two halves: :meth:`finish` sends the rest and reads the answer."""

    def __init__(self, port: int, path: str, boundary: str, body: bytes, headers: dict[str, str]) -> None:
        self.body = body
        self.half = len(body) // 2
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        ).encode()
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.connection.sendall(head + body[: self.half])

    def send_rest(self) -> None:
        self.connection.sendall(self.body[self.half :])

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the answer (the server closes after it)."""
        data = b""
        while chunk := self.connection.recv(65536):
            data += chunk
        self.connection.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        self.send_rest()
        return self.answer()

    def close(self) -> None:
        self.connection.close()


def json_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    """The ``error`` object of a raw JSON error answer."""
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    return parsed["error"]
