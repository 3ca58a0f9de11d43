"""What the page needs to separate on the visitor's device: the exported networks, their runtime, isolation.

- ``GET /models/{name}/device/{file}``: the files of ``freestems export`` for served model ``name``, read
  from ``<device_dir>/<name>/`` (:attr:`Settings.device_dir`): ``manifest.json``, and only the files the
  manifest lists (anything else there is not served). Without ``device_dir``, or without an export for a
  model, 404; ``GET /config`` lists the models that have one (``device_models``).
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

import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def _listed_files(folder: Path) -> set[str]:
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return {str(entry["file"]) for entry in manifest["onnx"]["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def add_device_routes(app: FastAPI, settings: Settings, served: Any) -> None:
    """The export files of the served models, and the vendored runtime. ``served()``: the served names."""

    @app.get("/models/{name}/device/{file}", include_in_schema=False)
    async def device_file(name: str, file: str) -> FileResponse:
        folder = export_folder(settings, name) if name in served() else None
        if folder is None:
            raise not_found(f"model {name} cannot be run in the browser on this server")
        if file != MANIFEST and file not in _listed_files(folder):
            raise not_found(f"no file {file} in the export of model {name}")
        kind = "application/json" if file == MANIFEST else "application/octet-stream"
        # The page keeps the networks in Cache Storage, checked against the manifest's sha256: the browser's
        # HTTP cache must ask again each time, or a re-export would be hidden behind an old manifest.
        return FileResponse(folder / file, media_type=kind, headers={"Cache-Control": "no-cache"})

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker() -> FileResponse:
        headers = {"Cache-Control": "no-cache"}
        return FileResponse(SERVICE_WORKER, media_type="text/javascript", headers=headers)

    app.mount("/vendor", VendorFiles(directory=VENDOR, check_dir=False), name="vendor")


class VendorFiles(StaticFiles):
    """Static files of a folder that may not exist yet: each request looks at the folder as it is then (a
    missing folder or file is a 404), so a runtime fetched after the start is served without a restart.
    Which paths are served is Starlette's rule, unchanged: files under the folder, nothing outside it."""

    async def check_config(self) -> None:
        """No check at the first request: a missing folder is a 404 like a missing file, not a 500."""
