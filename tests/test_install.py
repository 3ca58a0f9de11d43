"""The page as an installable app: its web app manifest, served at ``/manifest.webmanifest``, and what
Chromium itself says of it (the DevTools protocol's ``Page.getAppManifest`` and
``Page.getInstallabilityErrors``), on a server that offers separating on the device (so the page registers
its service worker, which keeps the manifest and its icons for an installed app started offline).
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, sync_playwright
from test_device_routes import _fake_export
from web_helpers import CHROMIUM, CHROMIUM_FLAGS, PageWatch, needs_chromium, wait_js

from freestems.service import device, webapp

needs_runtime = pytest.mark.skipif(
    not (device.VENDOR / "onnxruntime-web" / "ort.wasm.min.mjs").is_file(),
    reason="onnxruntime-web is not fetched (scripts/fetch_web_deps.sh)",
)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_manifest_is_served_as_a_web_app_manifest_with_its_icons(start_server):
    server = start_server()
    response = httpx.get(server.url + "/manifest.webmanifest")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/manifest+json"
    assert response.headers["cache-control"] == "no-cache"
    manifest = response.json()
    assert manifest["display"] == "standalone" and manifest["start_url"] == manifest["scope"] == "./"
    css = (webapp.WEB_MANIFEST.parent / "static" / "app.css").read_text()
    assert f"--accent: {manifest['theme_color']};" in css and f"--bg: {manifest['background_color']};" in css
    sizes = {}
    for icon in manifest["icons"]:
        image = httpx.get(f"{server.url}/{icon['src']}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png", icon
        width, height = _png_size(image.content)
        assert icon["sizes"] == f"{width}x{height}", icon
        sizes.setdefault(icon["purpose"], []).append(width)
    assert sorted(sizes["any"]) == [192, 512] and sizes["maskable"] == [512]
    page = httpx.get(server.url + "/", headers={"Accept": "text/html"}).text
    assert '<link rel="manifest" href="manifest.webmanifest">' in page


@contextlib.contextmanager
def installable_profile(profile: Path) -> Iterator[BrowserContext]:
    """The system Chromium with a profile of its own in ``profile``: Chromium never offers to install an app
    from an incognito-like context (Playwright's usual ones), whatever the page."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS, timeout=60_000
        )
        try:
            yield context
        finally:
            context.close()


@needs_chromium
@needs_runtime
def test_chromium_finds_the_page_installable_and_the_service_worker_keeps_the_app(start_server, tmp_path):
    _fake_export(tmp_path / "device")
    server = start_server(device_dir=tmp_path / "device")
    with installable_profile(tmp_path / "profile") as context:
        page = context.new_page()
        watch = PageWatch(page)
        page.goto(server.url + "/")
        wait_js(page, "window.freestems.events.some(event => event.kind === 'offline' && event.registered)")
        session = context.new_cdp_session(page)
        found = session.send("Page.getAppManifest")
        errors = session.send("Page.getInstallabilityErrors")["installabilityErrors"]
        # The service worker keeps the manifest and every icon it lists, for the installed app offline.
        kept = wait_js(
            page,
            """caches.open('freestems-offline-v1').then((cache) => cache.keys()).then((keys) => {
                 const urls = keys.map((request) => request.url);
                 const app = urls.filter((url) => /webmanifest|icons\\//.test(url));
                 return app.length >= 4 && app; })""",
        )
        assert watch.unexpected() == []
    assert found["errors"] == [], found["errors"]
    assert found["url"] == server.url + "/manifest.webmanifest"
    assert json.loads(found["data"])["short_name"] == "freestems"
    assert errors == [], errors
    names = sorted(url.rsplit("/", 1)[1] for url in kept)
    assert names == ["icon-192.png", "icon-512.png", "manifest.webmanifest", "maskable-512.png"]
