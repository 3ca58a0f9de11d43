"""What the page needs to separate on the visitor's device: the exported networks, their runtime, isolation.

- ``GET /models/{name}/device/{file}``: the files of ``freestems export`` for served model ``name``, read
  from ``<device_dir>/<name>/`` (:attr:`Settings.device_dir`): ``manifest.json``, and only the files the
  manifest lists (anything else there is not served). Without ``device_dir``, or without an export for a
  model, 404; ``GET /config`` lists the models that have one (``device_models``).
- Hash-named URLs (:func:`add_hashed_routes`), what the page uses: the manifest, at its stable URL with
  ``Cache-Control: no-cache`` and a strong ``ETag`` (so a new export is seen at the next visit, and an
  unchanged one costs a ``304``), gives each file a ``url``, ``<sha256>/<file>`` beside it; there the file is
  served with ``Cache-Control: public, max-age=31536000, immutable`` and the ``ETag`` ``"<sha256>"``, only
  while the file on disk really has that sha256 (hashed once per version of the file: a URL that promises a
  content for a year must never name another), with ``Range`` and ``HEAD``. A CDN or a browser may keep it
  for good; a re-export gets new URLs.
- ``/vendor/``: the page's third-party runtime (onnxruntime-web, fetched by ``scripts/fetch_web_deps.sh``
  into ``web/vendor/``, never committed), as the folder is when asked: files fetched while the server runs
  are served at once; while they are absent, 404, and the page then says separating on the device is
  unavailable.
- ``GET /sw.js``: the page's service worker (``web/static/device/sw.js``; at the root, so that its scope
  is the whole page), which a page offering device separation registers to work offline.
- :class:`CrossOriginIsolation`: every response says ``Cross-Origin-Opener-Policy: same-origin`` and
  ``Cross-Origin-Embedder-Policy: require-corp``, so the page is ``crossOriginIsolated`` and
  onnxruntime-web may run on several threads (SharedArrayBuffer). The page loads nothing from another
  origin, so nothing else changes for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .downloads import Download, open_download
from .errors import not_found
from .settings import Settings

VENDOR = Path(__file__).resolve().parents[1] / "web" / "vendor"
SERVICE_WORKER = Path(__file__).resolve().parents[1] / "web" / "static" / "device" / "sw.js"
MANIFEST = "manifest.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
ISOLATION_HEADERS = (
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
)


class CrossOriginIsolation:
    """ASGI middleware: the two headers of :data:`ISOLATION_HEADERS` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *ISOLATION_HEADERS]
            await send(message)

        await self.app(scope, receive, send_isolated)


def export_folder(settings: Settings, name: str) -> Path | None:
    """The export of served model ``name`` (a folder with ``manifest.json``), or None."""
    if settings.device_dir is None or not _NAME.fullmatch(name):
        return None
    folder = settings.device_dir / name
    return folder if (folder / MANIFEST).is_file() else None


def device_models(settings: Settings, names: list[str]) -> list[str]:
    """Which of the served models ``names`` can be run on the device (have an export)."""
    return [name for name in names if export_folder(settings, name) is not None]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the export in ``folder``, with its file entries as dicts; None if it does not read as
    one. A ``probe`` that does not read (:func:`read_probe`) is left out, as the page would ignore it."""
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        manifest["onnx"]["files"] = [dict(entry) for entry in manifest["onnx"]["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "probe" in manifest and read_probe(manifest) is None:
        del manifest["probe"]
    return manifest


def _count(value: Any, least: int) -> bool:
    """A whole JSON number (``2`` or ``2.0``, as JavaScript's ``Number.isInteger``) of at least ``least``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and float(value).is_integer() and value >= least


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_probe(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's faithfulness probe if the page can run it, else None: the rules of ``readProbe`` in
    ``web/static/device/probe.js`` (a mulberry32 float32 input of a seed, a scale and a shape; per stem
    ``count`` finite values and a finite energy). Without one the page separates with WASM only."""
    probe = manifest.get("probe")
    model = manifest.get("model")
    stems = model.get("stems") if isinstance(model, dict) else None
    count = len(stems) if isinstance(stems, list) else 0
    if not isinstance(probe, dict) or not count:
        return None
    given, output = probe.get("input"), probe.get("output")
    if not isinstance(given, dict) or not isinstance(output, dict):
        return None
    shape = given.get("shape")
    if given.get("generator") != "mulberry32" or given.get("dtype") != "float32":
        return None
    if not (_count(given.get("seed"), 0) and given["seed"] <= 0xFFFFFFFF and _finite(given.get("scale"))):
        return None
    if not (isinstance(shape, list) and shape and all(_count(n, 1) for n in shape)):
        return None
    if not all(_count(output.get(key), least) for key, least in (("count", 1), ("step", 1), ("offset", 0))):
        return None
    values, energy = output.get("values"), output.get("energy")
    rows_read = (
        isinstance(values, list)
        and len(values) == count
        and all(
            isinstance(row, list) and len(row) == output["count"] and all(map(_finite, row)) for row in values
        )
    )
    energy_reads = isinstance(energy, list) and len(energy) == count and all(map(_finite, energy))
    return probe if rows_read and energy_reads else None


def _listed_files(folder: Path) -> list[dict[str, Any]]:
    """The file entries of the export's manifest (none when it does not read)."""
    manifest = read_manifest(folder)
    return manifest["onnx"]["files"] if manifest is not None else []


def _export_of(settings: Settings, name: str, served: Any) -> Path:
    """The export folder of served model ``name``; a 404 when it is not served or has none."""
    folder = export_folder(settings, name) if name in served() else None
    if folder is None:
        raise not_found(f"model {name} cannot be run in the browser on this server")
    return folder


def add_device_routes(app: FastAPI, settings: Settings, served: Any) -> None:
    """The export files of the served models, and the vendored runtime. ``served()``: the served names."""
    add_hashed_routes(app, settings, served)  # first: its manifest route is the one that answers

    @app.get("/models/{name}/device/{file}", include_in_schema=False)
    async def device_file(name: str, file: str) -> FileResponse:
        """A listed file at its plain URL (the manifest has its own route, above)."""
        folder = _export_of(settings, name, served)
        if file not in {str(entry.get("file")) for entry in _listed_files(folder)}:
            raise not_found(f"no file {file} in the export of model {name}")
        # The page keeps the networks in Cache Storage, checked against the manifest's sha256: the browser's
        # HTTP cache must ask again each time, or a re-export would be hidden behind an old manifest.
        return FileResponse(
            folder / file, media_type="application/octet-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker() -> FileResponse:
        headers = {"Cache-Control": "no-cache"}
        return FileResponse(SERVICE_WORKER, media_type="text/javascript", headers=headers)

    app.mount("/vendor", VendorFiles(directory=VENDOR, check_dir=False), name="vendor")


# ------------------------------------------------------------------------------------- hash-named URLs

IMMUTABLE = "public, max-age=31536000, immutable"
"""The ``Cache-Control`` of a hash-named file: a year (RFC 9111's longest in practice), never revalidated."""
REVALIDATE = "no-cache"
"""The ``Cache-Control`` of the manifest: kept, but asked again (a ``304`` when unchanged) before each use."""
_DIGEST = re.compile(r"[0-9a-f]{64}")
_VERIFIED: dict[tuple[int, int, int, int], str] = {}
"""sha256 of the files hashed so far, by (device, inode, size, mtime): a file is hashed once per version."""
_VERIFIED_MAX = 256


def hashed_url(entry: dict[str, Any]) -> str:
    """The hash-named URL of a manifest's file entry, relative to the manifest's URL: ``<sha256>/<file>``."""
    return f"{entry['sha256']}/{entry['file']}"


def served_manifest(folder: Path) -> bytes | None:
    """The manifest of the export in ``folder`` as the page gets it: each file with its ``url``
    (:func:`hashed_url`). None if it does not read as a manifest."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    for entry in manifest["onnx"]["files"]:
        if _DIGEST.fullmatch(str(entry.get("sha256"))) and _NAME.fullmatch(str(entry.get("file"))):
            entry["url"] = hashed_url(entry)
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _matches(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` names ``etag`` (or ``*``): the client's copy is current."""
    wanted = request.headers.get("if-none-match", "")
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return etag in tags or "*" in tags


def manifest_response(folder: Path, name: str, request: Request) -> Response:
    """The served manifest (:func:`served_manifest`) with a strong ``ETag`` of its bytes; ``304`` when the
    client has it already."""
    body = served_manifest(folder)
    if body is None:
        raise not_found(f"the export of model {name} has an unreadable {MANIFEST}: export the model again")
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    headers = {"Cache-Control": REVALIDATE, "ETag": etag}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _listed_entry(folder: Path, digest: str, file: str) -> dict[str, Any] | None:
    """The manifest's entry of ``file`` if the manifest gives it the sha256 ``digest``."""
    entries = _listed_files(folder)
    return next((e for e in entries if e.get("file") == file and e.get("sha256") == digest), None)


def file_sha256(file: BinaryIO) -> str:
    """The sha256 of the open regular ``file`` (read from its start; its position is left anywhere), from
    :data:`_VERIFIED` when this version of it was hashed before."""
    info = os.fstat(file.fileno())
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    known = _VERIFIED.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    file.seek(0)
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


async def hashed_file_response(folder: Path, name: str, digest: str, file: str, request: Request) -> Response:
    """The file ``file`` of the export in ``folder`` at its hash-named URL: 404 unless the manifest lists it
    with ``digest`` and the file on disk has that sha256."""
    gone = f"no file {file} with sha256 {digest} in the export of model {name} (reload the page)"
    listed = _DIGEST.fullmatch(digest) and _NAME.fullmatch(file) and _listed_entry(folder, digest, file)
    if not listed:
        raise not_found(gone)
    etag = f'"{digest}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
    download: Download = open_download(
        folder / file, gone, media_type="application/octet-stream", headers=headers
    )
    if await asyncio.to_thread(file_sha256, download.file) != digest:
        download.file.close()
        raise not_found(
            f"the file {file} of model {name} was changed after its export: export the model again",
            "stale_export",
        )
    if _matches(request, etag):
        download.file.close()
        return Response(status_code=304, headers=headers)
    return download


def add_hashed_routes(app: FastAPI, settings: Settings, served: Any) -> None:
    """The manifest at its stable URL (short cache, ``ETag``) and each file at its hash-named URL (cached
    for good). ``served()``: the served names."""

    @app.get(f"/models/{{name}}/device/{MANIFEST}", include_in_schema=False)
    async def device_manifest(name: str, request: Request) -> Response:
        return manifest_response(_export_of(settings, name, served), name, request)

    @app.get("/models/{name}/device/{digest}/{file}", include_in_schema=False)
    async def device_hashed_file(name: str, digest: str, file: str, request: Request) -> Response:
        return await hashed_file_response(_export_of(settings, name, served), name, digest, file, request)


class VendorFiles(StaticFiles):
    """Static files of a folder that may not exist yet: each request looks at the folder as it is then (a
    missing folder or file is a 404), so a runtime fetched after the start is served without a restart.
    Which paths are served is Starlette's rule, unchanged: files under the folder, nothing outside it."""

    async def check_config(self) -> None:
        """No check at the first request: a missing folder is a 404 like a missing file, not a 500."""
