"""The page's ES modules: each imports only its neighbours in ``web/static`` (no build step, nothing loaded
from elsewhere), the page preloads every module it imports, and in a real Chromium it loads all of them with
no console error, no uncaught error and no failed request (a renamed or missing module fails its import, and
the page then never starts)."""

from __future__ import annotations

import posixpath
import re

from web_helpers import DESKTOP, ROOT, needs_chromium, wait_js

WEB = ROOT / "src" / "freestems" / "web"
STATIC = WEB / "static"
IMPORT = re.compile(r'^\s*(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"\s*;', re.MULTILINE)
WORKERS = {"pow-worker.js"}  # started with new Worker(...), not imported


def imports(module: str) -> list[str]:
    return IMPORT.findall((STATIC / module).read_text())


def module_graph(entry: str) -> set[str]:
    """The modules ``entry`` imports, directly or not, and itself."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # as the browser resolves it: relative to the importing module's folder (device/ imports its own)
        folder = posixpath.dirname(module)
        todo += [posixpath.normpath(posixpath.join(folder, spec)) for spec in imports(module)]
    return seen


def test_modules_import_only_their_neighbours():
    modules = sorted(path.name for path in STATIC.glob("*.js"))
    for module in modules:
        for specifier in imports(module):
            # A neighbour, or one of the device worker's modules (device/: its DSP and its file cache)
            assert re.fullmatch(r"\./(device/)?[a-z0-9-]+\.js", specifier), f"{module} imports {specifier}"
            assert (STATIC / specifier).is_file(), f"{module} imports {specifier}, which is not there"
    # Every module is used: reached from app.js, or a worker's entry (which imports what it needs).
    reached = module_graph("app.js").union(*(module_graph(worker) for worker in WORKERS))
    assert sorted(module for module in reached if "/" not in module) == modules


def test_the_page_preloads_every_module_it_imports():
    html = (WEB / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="static/([^"]+)">', html))
    assert preloaded == module_graph("app.js") - {"app.js"}


@needs_chromium
def test_the_page_loads_every_module_with_no_error(browser, web_server):
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        problems: list[str] = []
        fetched: set[str] = set()

        def console(message):
            if message.type == "error":
                problems.append(f"console: {message.text}")

        def response(answer):
            if answer.status >= 400:
                problems.append(f"{answer.status}: {answer.url}")
            elif "/static/" in answer.url:
                fetched.add(answer.url.split("?")[0].split("/static/", 1)[1])

        page.on("console", console)
        page.on("response", response)
        page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: problems.append(f"failed: {request.url} {request.failure}"))
        page.goto(web_server.url + "/")
        try:
            wait_js(page, "Boolean(window.freestems && window.freestems.ready)", timeout=15)
        except TimeoutError:
            raise AssertionError(f"the page did not start: {problems}") from None
        # start() ends by listing the recent separations: the whole start-up ran.
        wait_js(page, "window.freestems.events.some(event => event.kind === 'recent')")
        assert page.evaluate("document.documentElement.dataset.ready") == "true"
        assert problems == []
        assert module_graph("app.js") <= fetched
    finally:
        context.close()
