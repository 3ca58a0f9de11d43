"""Helpers for the web page tests: Debian's Chromium driven by Playwright, and a server for the page.

    with chromium() as browser:                      # /usr/bin/chromium, headless, a fresh profile
        page = browser.new_page()

Playwright only drives the system Chromium (``executable_path``); it never downloads a browser. The flags
keep Chromium off the network it would otherwise try to reach at start (component updates, sync, field
trials), which stalls it on a closed network.

The fixtures built from these (``browser``, ``web_server``, ``open_page``) live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
]
WEBGPU_FLAGS = [
    *(flag for flag in CHROMIUM_FLAGS if flag != "--disable-gpu"),
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
]
"""Chromium with WebGPU on SwiftShader, its software (fallback) adapter: WebGPU with no GPU, for tests."""
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the web page tests need Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)",
)


@contextlib.contextmanager
def chromium(flags: list[str] | None = None) -> Iterator[Browser]:
    """The system Chromium, headless (``flags``: :data:`CHROMIUM_FLAGS` unless given). Playwright starts it
    with a fresh temporary profile (``--user-data-dir``), removed when it closes; each browser context is a
    fresh incognito-like session."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=flags or CHROMIUM_FLAGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """A page plus what went wrong in it: uncaught errors and console errors."""

    def __init__(self, page: Page, expected: tuple[str, ...] = ()) -> None:
        self.page = page
        self.expected = expected
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = (message.location or {}).get("url", "")
        if where.endswith("/config") and "404" in message.text:
            return  # the page asks for GET /config and falls back to defaults while the server lacks it
        self.errors.append(f"console: {message.text} ({where})")

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not any(text in error for text in self.expected)]


def write_silent_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """A mono 8-bit WAV of silence: a long duration in few bytes (1300 s is 10 MB)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(b"\x80" * int(seconds * rate))
    return path


def with_limits(**limits: float) -> Any:
    """A ``before`` for ``open_page``: the page reads these limits from GET /config (a fake of it, model
    ``small``), e.g. a tiny upload limit."""

    def before(page: Page) -> None:
        page.route("**/config", lambda route: route.fulfill(json={"model": "small", "limits": limits}))

    return before


def wait_js(page: Page, expression: str, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Evaluate ``expression`` in the page until it is truthy; returns its value.

    (Playwright's ``wait_for_function`` evaluates strings with ``eval``, which the page's Content Security
    Policy forbids; ``evaluate`` goes through the DevTools protocol and is not affected.)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout:g} s: {expression}")
        time.sleep(interval)


def events(page: Page, kind: str | None = None) -> list[dict]:
    """The page's event log (``window.freestems.events``), optionally of one kind."""
    log = page.evaluate("window.freestems.events.slice()")
    return [event for event in log if kind is None or event["kind"] == kind]
