"""The fixtures every test module may ask for by name, in one place.

The helper modules (``service_helpers``, ``web_helpers``, ``modal_helpers``, ...) hold plain functions and
classes that tests import; the fixtures built from them live here, so pytest finds them for every module
under ``tests/`` (``tests/reliability/`` included) without a ``pytest_plugins`` line. The helpers are
registered for assertion rewriting before they are imported, so a failing ``assert`` in them reports its
values as one in a test module does.

- service: ``small_model`` (the small seeded checkpoint, loaded), ``start_server`` (real uvicorn servers on
  127.0.0.1), ``songs`` (real encoded files);
- web page: ``browser`` (the system Chromium, headless), ``web_server`` (a server for the page),
  ``open_page``;
- Modal: ``checkpoint`` (a small checkpoint file), ``deployment`` (the Modal module imported in-process);
  and, for every test, no call of the Modal fakes on an event loop's thread.

Everything heavy (torch, playwright, the Modal fakes, the service) is imported inside the fixture that uses
it, never here at the top: a module that needs no browser runs where playwright is not installed, and one
that needs no model does not pay for importing torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.register_assert_rewrite("service_helpers", "web_helpers", "modal_helpers", "reliability.serve_process")

if TYPE_CHECKING:
    from modal_helpers import Deployment
    from playwright.sync_api import Browser, Page
    from service_helpers import LiveServer

    from freestems.models import LoadedModel


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread: on a small machine that is busy with other work, more only spin against
    each other."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def no_modal_call_on_an_event_loop() -> Iterator[None]:
    """Every test that uses the Modal fakes (``modal_fakes``) fails if a Dict, Queue or Volume call was made
    on an event loop's thread, even where the service caught the error it raised."""
    import sys

    fakes = sys.modules.get("modal_fakes")
    if fakes is not None:
        fakes.LOOP_CALLS.clear()
    yield
    fakes = sys.modules.get("modal_fakes")
    if fakes is not None:
        calls, fakes.LOOP_CALLS[:] = list(fakes.LOOP_CALLS), []
        assert not calls, "blocking Modal calls on an event loop:\n" + "\n".join(calls[:3])


# ---------------------------------------------------------------------------------------------- service


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Iterator[LoadedModel]:
    """The small seeded checkpoint, loaded once per module; torch on one thread meanwhile."""
    from model_helpers import make_small_checkpoint

    from freestems.models import load_model

    with one_torch_thread():
        yield load_model(model_file=make_small_checkpoint(tmp_path_factory.mktemp("model") / "small.pt"))


@pytest.fixture
def start_server(tmp_path, small_model) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(**settings)`` starts a server on ``tmp_path/data`` (the same folder every call, so a
    second call is a restart). Afterwards: every server is stopped, and no temporary file may be left."""
    from service_helpers import leftover_files, running_server, small_settings

    from freestems.executors import LocalExecutor
    from freestems.service.paths import Paths

    data_dir = tmp_path / "data"
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> LiveServer:
            settings = small_settings(data_dir, **overrides)
            executor = LocalExecutor(
                lambda: small_model, Paths(settings.data_dir).work, workers=settings.workers
            )
            return stack.enter_context(running_server(settings, executor))

        yield start
    assert leftover_files(data_dir) == []


@pytest.fixture(scope="session")
def songs(tmp_path_factory) -> dict[str, Path]:
    """Real encoded files: ``short`` (3 s mp3), ``medium`` (20 s), ``long`` (90 s: with shifts=3 it runs
    for many seconds, long enough to be caught running), ``wav`` (2 s)."""
    from audio_samples import write_test_file

    folder = tmp_path_factory.mktemp("songs")
    files = {
        "short": folder / "song.mp3",
        "medium": folder / "medium.mp3",
        "long": folder / "long.mp3",
        "wav": folder / "tone.wav",
    }
    write_test_file(files["short"], "mp3", seconds=3.0)
    write_test_file(files["medium"], "mp3", seconds=20.0, freq=220.0)
    write_test_file(files["long"], "mp3", seconds=90.0, freq=330.0)
    write_test_file(files["wav"], "wav", seconds=2.0, freq=550.0)
    return files


# ---------------------------------------------------------------------------------------------- web page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system Chromium, headless, once per module."""
    from web_helpers import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def web_server(tmp_path_factory, small_model) -> Iterator[LiveServer]:
    """A real server for the page: the small model, a real (cheap) PBKDF2 proof of work as in production,
    and the default upload limits (so the page's built-in defaults and the server agree)."""
    from service_helpers import running_server, small_settings

    from freestems.executors import LocalExecutor
    from freestems.service.paths import Paths

    data_dir = tmp_path_factory.mktemp("web") / "data"
    settings = small_settings(
        data_dir,
        pow_algorithm="PBKDF2/SHA-256",
        pow_cost=200,
        pow_counter=40,
        max_upload_mb=100.0,
        max_duration=1200.0,
    )
    executor = LocalExecutor(lambda: small_model, Paths(settings.data_dir).work, workers=settings.workers)
    with running_server(settings, executor) as server:
        yield server


@pytest.fixture
def open_page(browser: Browser, web_server: LiveServer) -> Iterator[Any]:
    """``open_page(viewport=..., server=..., before=...)`` opens the page of ``server`` (default:
    ``web_server``) in a new browser context (fresh storage; ``before(page)`` runs first) and
    waits until it has loaded the server's settings. Afterwards: no uncaught error or console error
    happened in it, except those containing one of ``expected_errors``."""
    from web_helpers import DESKTOP, PageWatch, wait_js

    contexts = []
    watches: list[PageWatch] = []

    def open_(
        viewport: dict[str, int] | None = None,
        expected_errors: tuple[str, ...] = (),
        server: LiveServer | None = None,
        before: Callable[[Page], None] | None = None,
    ) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        watch = PageWatch(page, expected_errors)
        watches.append(watch)
        page.set_default_timeout(30_000)
        if before is not None:
            before(page)
        page.goto((server or web_server).url + "/")
        wait_js(page, "Boolean(window.freestems && window.freestems.ready)")
        return page

    yield open_
    for context in contexts:
        context.close()
    for watch in watches:
        assert watch.unexpected() == [], watch.unexpected()


# ---------------------------------------------------------------------------------------------- Modal


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small seeded checkpoint the deployment serves."""
    from model_helpers import make_small_checkpoint

    return make_small_checkpoint(tmp_path_factory.mktemp("model") / "small.pt")


@pytest.fixture
def deployment(monkeypatch, checkpoint, tmp_path) -> Iterator[Deployment]:
    """The Modal module imported with settings pointing at ``checkpoint``; torch on one thread meanwhile."""
    from modal_helpers import load_modal_app, modal_environment

    with one_torch_thread():
        yield load_modal_app(monkeypatch, modal_environment(checkpoint, tmp_path / "data"))
