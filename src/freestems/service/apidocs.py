"""The interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served whole from here.

FastAPI's own pages load their scripts and styles from a public CDN, so they are blank on a server
without internet access (and every reader's browser tells that CDN who reads them). Here the pages point
at the same files served by this server under ``/docs-assets/``: the Swagger UI and ReDoc bundles that the
``fastapi-offline`` package ships (a dependency of ``freestems[serve]``; only its files are used). Without
that package, both pages say what to install, and the schema itself stays at ``/openapi.json``.
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from .downloads import Files

ASSETS_URL = "/docs-assets"
ASSETS_PACKAGE = "fastapi_offline"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def assets_folder() -> Path | None:
    """The folder of the pages' scripts and styles, or None when they are not installed."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    needed = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)
    return folder if all((folder / name).is_file() for name in needed) else None


CONTENT_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
"""The pages' Content-Security-Policy: nothing is loaded from elsewhere (the ReDoc bundle's footer logo
would be fetched from redoc.ly)."""


def add_api_docs(app: FastAPI, folder: Path | None) -> None:
    """``/docs`` and ``/redoc`` on ``app`` (created with ``docs_url=None, redoc_url=None``), their files
    from ``folder`` (see :func:`assets_folder`); without it, pages that say what is missing."""
    if folder is not None:
        app.mount(ASSETS_URL, Files(directory=folder), name="docs-assets")

    def swagger_ui(root: str, assets: str) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/{SWAGGER_JS}",
            swagger_css_url=f"{assets}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{assets}/{FAVICON}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    def redoc(root: str, assets: str) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/{REDOC_JS}",
            redoc_favicon_url=f"{assets}/{FAVICON}",
            with_google_fonts=False,
        )

    for path, render in (("/docs", swagger_ui), ("/redoc", redoc)):
        app.add_api_route(path, _page(app, folder, render), methods=["GET"], include_in_schema=False)


def _page(
    app: FastAPI, folder: Path | None, render: Callable[[str, str], HTMLResponse]
) -> Callable[[Request], Awaitable[HTMLResponse]]:
    """The route of one documentation page: ``render(root path, assets URL)`` under the page's policy."""

    async def page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        if folder is None:
            return _missing(app, root)
        response = render(root, f"{root}{ASSETS_URL}")
        response.headers["Content-Security-Policy"] = CONTENT_POLICY
        return response

    return page


def _missing(app: FastAPI, root: str) -> HTMLResponse:
    schema = html.escape(f"{root}{app.openapi_url}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(app.title)} - API documentation</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>API documentation</h1>
<p>The interactive documentation cannot be shown: its scripts are not installed on this server.
Install them with <code>pip install fastapi-offline</code> (part of <code>freestems[serve]</code>) and
restart the server.</p>
<p>The API's OpenAPI schema is at <a href="{schema}">{schema}</a>.</p>
</body></html>
"""
    return HTMLResponse(page)
