"""The page as an installable app: its web app manifest, ``GET /manifest.webmanifest``.

The manifest (``web/manifest.webmanifest``, linked from the page) names the app, its colours (those of
``app.css``) and its icons (``web/static/icons/``, drawn by ``scripts/make_icons.py``), and opens the page in
a window of its own (``display: standalone``). Its URLs are relative to it, and it lives beside the page, so
the app's scope is the page's folder, also behind a proxy that serves the site under a prefix. With the
service worker (``/sw.js``, registered where the page can separate on the device) the installed app starts
and separates offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

WEB_MANIFEST = Path(__file__).resolve().parents[1] / "web" / "manifest.webmanifest"
MEDIA_TYPE = "application/manifest+json"


def add_manifest_route(app: FastAPI) -> None:
    """``GET /manifest.webmanifest``: asked again each time (``no-cache``), so a changed one is seen."""

    @app.get("/manifest.webmanifest", include_in_schema=False)
    async def web_manifest() -> FileResponse:
        return FileResponse(WEB_MANIFEST, media_type=MEDIA_TYPE, headers={"Cache-Control": "no-cache"})
