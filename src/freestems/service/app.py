"""The HTTP application: thin routes over the job manager, one error shape, one lifespan.

Routes parse and validate, call :class:`~freestems.service.jobs.JobManager`, and let
:class:`~freestems.service.errors.ServiceError` become ``{"error": {"code", "message"}}`` JSON. Anything
else that escapes becomes a plain 500 (the traceback goes to the server log, never to the client).

The lifespan gets the served models ready (the executor's ``start``, off the event loop: catalog models are
fetched and described, loaded on first use; a model file is loaded), opens the job store, resumes
unfinished jobs, and runs the sweeper; at shutdown it stops the executor so that running jobs go back to
the queue for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from freestems.audio.formats import MP3_BITRATES
from freestems.errors import FailureCode, http_failure
from freestems.executors import Executor, ExecutorError, LocalExecutor
from freestems.models import CATALOG, DEFAULT_MODEL
from freestems.models.served import LoadedModels, jobs_offered, public_facts
from freestems.version import __version__

from .apidocs import add_api_docs, assets_folder
from .challenges import ChallengeBook
from .device import CrossOriginIsolation, add_device_routes, device_models
from .device_only import DeviceOnlyExecutor, refusal
from .downloads import Files, HeadAsGet, open_download
from .errors import (
    ServiceError,
    conflict,
    internal,
    invalid_parameter,
    not_found,
    too_many_requests,
    unauthorized,
    unavailable,
)
from .guard import AppGuard
from .jobs import JobManager
from .limits import SlidingWindow
from .network import AllowedHosts, client_address
from .options import FILE_FIELD, FORMATS, RERUN_FIELDS, SeparationOptions, form_schema, parse_options
from .parts import Service
from .paths import Paths
from .replicas import Replica
from .sessions import SessionRegistry
from .settings import Settings
from .shared_state import LocalState, SharedState
from .store import TERMINAL, Job
from .tokens import owned_job
from .uploads import Upload, receive_upload
from .views import result_url
from .webapp import add_manifest_route
from .websocket import session_socket

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).resolve().parents[1] / "web" / "index.html"
REFUSED_UPLOAD_STATUSES = frozenset({400, 401, 408, 413, 415, 422})
"""Upload refusals that start no job, so they count against the client's address: the key stays unspent,
or (401) it died during the upload, which its client can make happen at will by closing its socket."""
REFUSED_UPLOAD_CODES = frozenset({"key_budget"})
"""Refusals of other statuses that leave the key unspent too (403: a request dearer than its key)."""

FORM_ROUTES = ("/separate", "/jobs")
"""The routes that take the separation form (its schema comes from :func:`~.options.form_schema`)."""
SESSION_KEY_PARAMETER = {"name": "X-Session-Key", "in": "header", "schema": {"type": "string"}}


def create_app(
    settings: Settings, executor: Executor | None = None, state: LocalState | None = None
) -> FastAPI:
    """The FastAPI app. Without ``executor``, an in-process one loads the model the settings name. Without
    ``state``, everything lives in this process and the data folder (:class:`~.shared_state.LocalState`);
    a :class:`~.shared_state.SharedState` lets several instances serve one deployment."""
    state = state or LocalState()
    paths = Paths(settings.data_dir, state.work_dir)
    if executor is None and settings.device_only:  # it runs nothing: no model is loaded, torch not imported
        executor = DeviceOnlyExecutor(settings)
    elif executor is None:
        executor = LocalExecutor(
            lambda: _load_models(settings),
            paths.work,
            workers=settings.workers,
            threads=settings.threads,
            device=settings.device,
        )
    app = FastAPI(
        title="freestems",
        version=__version__,
        description="Free, unlimited music stem separation. Demucs-compatible `POST /separate`.",
        lifespan=_lifespan(settings, executor, paths, _challenge_secret(settings), state),
        docs_url=None,  # add_api_docs: the same pages, with their scripts served from here
        redoc_url=None,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(AllowedHosts, allowed=settings.hosts)
    app.add_middleware(CrossOriginIsolation)  # the page separating on the device may use threads
    app.add_middleware(  # outermost: caps and body deadlines that hold where uvicorn's layer does not (Modal)
        AppGuard,
        max_open=settings.max_connections,
        per_address=settings.max_connections_per_address,
        silence=settings.header_timeout,
        body_seconds=settings.upload_timeout,
        trust_proxy=settings.trust_proxy,
    )
    _add_error_handlers(app)
    _add_routes(app)
    add_api_docs(app, assets_folder())
    add_device_routes(app, settings, lambda: [model.name for model in executor.models])
    add_manifest_route(app)
    _generate_form_schema(app, settings, executor)
    app.mount("/static", Files(directory=WEB_PAGE.parent / "static", check_dir=False), name="static")
    return app


def _challenge_secret(settings: Settings) -> str:
    """The HMAC key of the challenges: the configured one, else a random one of this process (said in the
    log, except on a device-only server, which issues no challenge)."""
    if settings.hmac_secret:
        return settings.hmac_secret
    if settings.device_only:
        return secrets.token_hex(32)
    log.warning(
        "FREESTEMS_HMAC_SECRET is not set: challenges are signed with a random secret of this process, "
        "so a challenge issued before a restart cannot be answered after it"
    )
    return secrets.token_hex(32)


def _lifespan(
    settings: Settings, executor: Executor, paths: Paths, secret: str, state: LocalState
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start: the model (off the event loop), the store, resumed jobs, the sweeper. Stop: all of it, with
    running jobs given back to the queue for the next start."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        paths.create()
        await asyncio.to_thread(executor.start)
        service = _assemble(settings, executor, paths, secret, state)
        replica = None
        if isinstance(state, SharedState):
            await asyncio.to_thread(state.heartbeat)
            replica = Replica(state, service.manager, service.sessions)
        await service.manager.start()
        app.state.service = service
        tasks = [asyncio.create_task(_sweep_forever(service))]
        if replica is not None:
            tasks.append(asyncio.create_task(replica.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.manager.close()
            if replica is not None:
                await replica.leave()
            service.store.close()

    return lifespan


def _assemble(
    settings: Settings, executor: Executor, paths: Paths, secret: str, state: LocalState
) -> Service:
    """The service's parts around a started executor (opens the job store)."""
    store = state.open_store(paths.root, paths.database)
    sessions = SessionRegistry(settings.session_ttl, book=state.keys)
    return Service(
        settings=settings,
        executor=executor,
        store=store,
        sessions=sessions,
        challenges=ChallengeBook(
            secret,
            algorithm=settings.pow_algorithm,
            cost=settings.pow_cost,
            counter=settings.pow_counter,
            ttl=settings.challenge_ttl,
        ),
        limiter=SlidingWindow(settings.sessions_per_minute, 60.0),
        refusals=SlidingWindow(settings.refused_uploads_per_minute, 60.0),
        manager=JobManager(settings, executor, store, sessions, paths, state),
        paths=paths,
        state=state,
    )


def _load_models(settings: Settings) -> LoadedModels:
    """The models the settings name: ``models`` (or ``model``) described for loading on first use, and
    ``model_file`` loaded now."""
    from freestems.models.served import serve_models

    files = [(settings.model_file, settings.model_config_file)] if settings.model_file else []
    return serve_models(settings.served_models, files, budget=settings.model_memory_bytes)


async def _sweep_forever(service: Service) -> None:
    while True:
        await asyncio.sleep(service.settings.sweep_interval)
        try:
            if service.state.shared:  # the shared store's rows and the Volume's files: off the event loop
                await asyncio.to_thread(service.manager.sweep)
            sweep(service, jobs=not service.state.shared)
        except Exception:
            log.exception("the sweeper failed; it tries again next time")


def sweep(service: Service, jobs: bool = True) -> None:
    """Expired results and jobs (unless ``jobs`` is False), expired keys (their sockets are told and
    closed), old challenges."""
    if jobs:
        service.manager.sweep()
    service.sessions.sweep()
    service.challenges.prune()
    service.limiter.prune()
    service.refusals.prune()


# ---------------------------------------------------------------------------------------------- routes


def _service(request: Request | WebSocket) -> Service:
    service: Service = request.app.state.service
    return service


def _add_routes(app: FastAPI) -> None:
    _add_page_routes(app)
    _add_form_routes(app)
    _add_job_routes(app)


def _add_page_routes(app: FastAPI) -> None:
    """What a browser or a client asks first: the page, health, the configuration, the session socket."""

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return FileResponse(WEB_PAGE, media_type="text/html")
        return JSONResponse(_health(_service(request)))

    @app.get("/health", summary="Service health: model, version, queue")
    async def health(request: Request) -> dict[str, Any]:
        return _health(_service(request))

    @app.get("/config", summary="What a client needs to know: model, catalog, limits, formats")
    async def config(request: Request) -> dict[str, Any]:
        return _config(_service(request))

    @app.websocket("/session")
    async def session(websocket: WebSocket) -> None:
        await session_socket(websocket, _service(websocket))


def _add_form_routes(app: FastAPI) -> None:
    """The two routes that take the separation form: wait for the zip, or queue a job."""

    @app.post(
        "/separate",
        summary="Separate a song; the response is a zip of the stems (Demucs-on-Modal compatible)",
        response_class=FileResponse,
        openapi_extra={"parameters": [SESSION_KEY_PARAMETER]},
    )
    async def separate(request: Request) -> Response:
        service = _service(request)
        began = time.monotonic()
        job = await _create_job(request, service, rerun=False)
        wait = service.settings.separate_wait
        left = max(0.0, wait - (time.monotonic() - began)) if wait else None
        handed_over = False
        try:
            finished = await _wait_unless_disconnected(request, service, job, left)
            if finished is None:
                return Response(status_code=499)  # nobody is listening any more
            if finished.state not in TERMINAL:  # FREESTEMS_SEPARATE_WAIT is up: the job, to follow
                await service.state.settled()
                handed_over = True
                return _accepted(service, finished)
            return _result_response(service, finished)
        finally:  # its zip is open (or the answer is an error): nobody can ask for this job again
            if not handed_over:  # a job answered 202 is followed by its token, as a POST /jobs one
                service.manager.let_go(job.id)

    @app.post(
        "/jobs",
        status_code=202,
        summary="Queue a separation; poll it or follow it on the WebSocket",
        openapi_extra={"parameters": [SESSION_KEY_PARAMETER]},
    )
    async def create_job(request: Request) -> JSONResponse:
        service = _service(request)
        job = await _create_job(request, service, rerun=True)
        await service.state.settled()  # the job is in the shared store before its id is given out
        return _accepted(service, job)


def _accepted(service: Service, job: Job) -> JSONResponse:
    """``202``: the job, its token and where to follow it (``Location``) and fetch its zip."""
    body = {
        **service.manager.views.view(job),
        "token": job.token,
        "status_url": f"/jobs/{job.id}?token={job.token}",
        "result_url": result_url(job),
    }
    headers = {"Location": body["status_url"], "X-Cache": "hit" if job.cache_hit else "miss"}
    return JSONResponse(body, status_code=202, headers=headers)


def _add_job_routes(app: FastAPI) -> None:
    """A job, by id and token: its state, its result, its deletion."""

    @app.get("/jobs/{job_id}", summary="A job's state, progress and queue position (needs its token)")
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        service = _service(request)
        job = await _fresh_owned_job(request, service, job_id)
        service.manager.follow.seen(job.id)  # a poll by the owner follows the job
        if service.state.shared:  # its queue position and cost from the shared store: off the event loop
            return await asyncio.to_thread(service.manager.views.view, job)
        return service.manager.views.view(job)

    @app.get(
        "/jobs/{job_id}/result",
        summary="A finished job's zip (needs its token); answers Range requests (206) to resume a download",
        response_class=FileResponse,
    )
    async def get_result(job_id: str, request: Request) -> Response:
        service = _service(request)
        job = await _fresh_owned_job(request, service, job_id)
        service.manager.follow.seen(job.id)
        if job.state == "done" and service.state.shared and job.result_path is not None:
            # written by another container, maybe: read through the Volume when it cannot reload now
            original = job.result_path
            found = await asyncio.to_thread(service.state.readable, original)
            if found is not None and found != original:
                try:  # the copy is open once the response exists (Download): it can go at once
                    return _result_response(service, dataclasses.replace(job, result_path=found))
                finally:
                    await asyncio.to_thread(service.state.discard, found, original)
        return _result_response(service, job)

    @app.get(
        "/jobs/{job_id}/partial",
        summary="The progressive results: which segments of every stem exist so far (needs its token)",
    )
    async def get_partial(job_id: str, request: Request) -> dict[str, Any]:
        service = _service(request)
        job = await _fresh_owned_job(request, service, job_id)
        service.manager.follow.seen(job.id)
        duration = service.manager.views.progress_fields(job)["duration"]  # the probe's, until it is counted
        client = client_address(request, service.settings.trust_proxy)
        return await service.manager.partials.listing(job, service.manager.stems(job), duration, client)

    @app.get(
        "/jobs/{job_id}/partial/{stem}/{index}",
        summary="One segment of one stem: 16-bit FLAC, exactly its samples (needs its token)",
        response_class=FileResponse,
    )
    async def get_segment(job_id: str, stem: str, index: int, request: Request) -> Response:
        service = _service(request)
        job = await _fresh_owned_job(request, service, job_id)
        service.manager.follow.seen(job.id)
        client = client_address(request, service.settings.trust_proxy)
        path = await service.manager.partials.segment(job, stem, index, service.manager.stems(job), client)
        return open_download(
            path,
            f"segment {index} of job {job.id} is gone (the job was deleted or has expired)",
            media_type="audio/flac",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.delete(
        "/jobs/{job_id}", status_code=204, summary="Cancel a job and delete its upload and results now"
    )
    async def delete_job(job_id: str, request: Request) -> Response:
        service = _service(request)
        job = await _fresh_owned_job(request, service, job_id)
        service.manager.delete(job.id)
        await service.state.settled()  # deleted for every container before the answer
        return Response(status_code=204)


def _generate_form_schema(app: FastAPI, settings: Settings, executor: Executor) -> None:
    """``app.openapi()`` with the form of :data:`FORM_ROUTES` described for the served model (its stems,
    the formats and bitrates the service encodes), from the code that parses that form."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        try:
            served = executor.models
            name, sources, known = served[0].name, served[0].sources, True
            names = [model.name for model in served]
        except ExecutorError:  # not started yet: the catalog's word for the configured models
            names = list(settings.served_models)
            name = names[0] if names else (settings.model or DEFAULT_MODEL)
            info = None if settings.model_file and not names else CATALOG.get(name)
            sources, known = (info.sources if info else ()), False
        schema = plain()
        for path in FORM_ROUTES:
            body = form_schema(sources, name, settings.max_shifts, names, rerun=path == "/jobs")
            form = {"required": True, "content": {"multipart/form-data": {"schema": body}}}
            schema["paths"][path]["post"]["requestBody"] = form
        if not known:
            app.openapi_schema = None  # describe the served model once it is known
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _health(service: Service) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": service.executor.model.name,
        "version": __version__,
        "auth": service.settings.auth,
        "queue": service.manager.health(),
    }


def _config(service: Service) -> dict[str, Any]:
    """The page's settings: it refuses too big or too long files before uploading them."""
    settings = service.settings
    served = service.executor.models
    return {
        "model": served[0].name,
        "sources": list(served[0].sources),
        "models": [
            {**public_facts(model.name, model.sources, model.title), "default": index == 0}
            for index, model in enumerate(served)
        ],
        "jobs": jobs_offered([(model.name, model.sources) for model in served]),
        "limits": {
            "max_upload_mb": settings.max_upload_mb,
            "max_duration": settings.max_duration,
            "max_shifts": settings.max_shifts,
        },
        "formats": list(FORMATS),
        "mp3_bitrates": list(MP3_BITRATES),
        "mp3_bitrate": SeparationOptions.mp3_bitrate,
        "auth": settings.auth,
        "pow": {
            "algorithm": settings.pow_algorithm,
            "counter": settings.pow_counter,
            "budget": round(service.manager.pricing.default_budget, 3),
        },
        "pricing": service.manager.pricing.describe(),
        "result_ttl": settings.result_ttl,
        "device_models": device_models(settings, [model.name for model in served]),
        "device_only": settings.device_only,
    }


async def _create_job(request: Request, service: Service, rerun: bool) -> Job:
    """Key, admission, streamed upload, options, then the manager: the common path of both POSTs.
    ``rerun`` (``POST /jobs``): the form may name an earlier job (``from_job``, ``from_token``) instead of
    carrying a file."""
    settings = service.settings
    if settings.device_only:  # before the key and the body: nothing of the request is used
        raise refusal()
    client = client_address(request, settings.trust_proxy)
    key = request.headers.get("x-session-key")
    if settings.auth_required or key:
        await service.state.prepare_key(key, client)  # a shared key book is read off the event loop
    session = service.sessions.claim(key, client) if settings.auth_required or key else None
    try:
        _check_refusals(service, client)  # before reading the body: a flood is refused cheaply
        service.manager.admit(client)
        upload = await receive_upload(
            request,
            service.paths.uploads,
            max_bytes=settings.max_upload_bytes,
            file_field=FILE_FIELD,
            timeout=settings.upload_timeout,
            require_file=not rerun,
        )
        try:
            if rerun:
                await service.state.refresh(upload.fields.get(RERUN_FIELDS[0]))
            earlier = _earlier_job(service, upload) if rerun else None
            models = {model.name: model.sources for model in service.executor.models}
            options = parse_options(upload.fields, models=models, max_shifts=settings.max_shifts)
        except BaseException:
            upload.discard()
            raise
        if earlier is not None:
            return await service.manager.submit_again(earlier, options, client, session)
        return await service.manager.submit(upload, options, client, session, keep_source=rerun)
    except ExecutorError as error:
        log.warning("job refused: %s", error)
        if session is not None:
            service.sessions.unclaim(session)
        raise unavailable("the server is restarting; try again in a minute", retry_after=60) from None
    except asyncio.CancelledError:  # a graceful stop that outlasted its grace cancels unfinished uploads
        if session is not None:
            service.sessions.unclaim(session)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # answer the client (JSON 503) instead of uvicorn's plain-text 500
        raise _restarting() from None
    except BaseException as error:
        if session is not None:
            service.sessions.unclaim(session)
        if isinstance(error, ServiceError) and (
            error.status in REFUSED_UPLOAD_STATUSES or error.code in REFUSED_UPLOAD_CODES
        ):
            service.refusals.record(client)
        raise


def _earlier_job(service: Service, upload: Upload) -> Job | None:
    """The job a ``POST /jobs`` form names to separate again (``from_job`` and ``from_token``, taken out of
    the fields), or None when it carries a file. A file and a job, or neither, is a 422; a job that does
    not exist or whose token differs is a 404."""
    job_id, token = (upload.fields.pop(name, "") for name in RERUN_FIELDS)
    if not (job_id or token):
        if not upload.has_file:
            raise invalid_parameter(
                FILE_FIELD, f"required: the audio file to separate (or {RERUN_FIELDS[0]})"
            )
        return None
    if upload.has_file:
        raise invalid_parameter(RERUN_FIELDS[0], f"give either {FILE_FIELD} or {RERUN_FIELDS[0]}, not both")
    if not (job_id and token):
        missing, given = RERUN_FIELDS[::-1] if job_id else RERUN_FIELDS
        raise invalid_parameter(missing, f"required with {given}")
    return owned_job(service.manager, job_id, token)


def _check_refusals(service: Service, client: str) -> None:
    """429 once an address has had too many uploads refused: a refusal leaves the key unspent (so a
    mistake costs no new proof of work), and this keeps that from buying unlimited uploads."""
    wait = service.refusals.retry_after(client)
    if wait > 0:
        limit = service.refusals.limit
        raise too_many_requests(
            "too_many_refused",
            f"too many refused uploads from your address ({limit} per minute); "
            f"try again in {max(1, math.ceil(wait))} s",
            wait,
        )


async def _wait_unless_disconnected(
    request: Request, service: Service, job: Job, timeout: float | None = None
) -> Job | None:
    """Wait for the job; if the client hangs up first, cancel it (nobody would get the result). After
    ``timeout`` seconds the job is returned as it is then (unfinished): its owner will follow it.

    A graceful shutdown that outlasts uvicorn's grace cancels this request's task: the job is cancelled
    too (this client has no token and cannot come back for it) and the client gets a JSON 503
    ``restarting`` instead of uvicorn's plain-text 500.
    """
    waiting = asyncio.ensure_future(service.manager.wait(job.id))
    hangup = asyncio.ensure_future(_disconnected(request))
    try:
        try:
            done, _ = await asyncio.wait(
                {waiting, hangup}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # answer the client instead of dying silently
            service.manager.abandon(job.id)
            raise _restarting() from None
        if waiting in done:
            finished = waiting.result()
            if finished is None:
                raise not_found(f"job {job.id} was deleted")
            if finished.state == "cancelled" and finished.error_code == FailureCode.RESTARTING:
                raise _restarting()
            return finished
        if not done:  # the wait's time is up: the caller answers with the job (its owner polls it)
            service.manager.follow.seen(job.id)
            return service.manager.get(job.id) or job
        service.manager.cancel(job.id, "cancelled because the client of POST /separate disconnected")
        return None
    finally:
        waiting.cancel()
        hangup.cancel()


def _restarting() -> ServiceError:
    return unavailable(
        "the server is restarting and your separation was stopped; send the file again in a minute",
        code=FailureCode.RESTARTING,
        retry_after=60,
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client has disconnected (the body has been read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _fresh_owned_job(request: Request, service: Service, job_id: str) -> Job:
    """:func:`_owned_job`, the job read first where it is shared (another container may have changed it)."""
    await service.state.refresh(job_id)
    return _owned_job(request, service, job_id)


def _owned_job(request: Request, service: Service, job_id: str) -> Job:
    """The job, if the caller has its token (query ``token`` or header ``X-Job-Token``); else 401/404."""
    token = request.query_params.get("token") or request.headers.get("x-job-token")
    if not token:
        raise unauthorized("token_missing", "give the job's token as ?token=... or in the X-Job-Token header")
    return owned_job(service.manager, job_id, token)


def _result_response(service: Service, job: Job) -> Response:
    if job.state == "done":
        return open_download(
            job.result_path,
            f"the result of job {job.id} has been deleted",
            media_type="application/zip",
            filename="stems.zip",
            headers={"X-Cache": "hit" if job.cache_hit else "miss", "X-Job-Id": job.id},
        )
    if job.state == "failed":
        code = job.error_code or "failed"
        answer = http_failure(code)
        message = job.error or "the separation failed"
        raise ServiceError(answer.status, code, message, retry_after=answer.retry_after)
    if job.state == "cancelled":
        message = f"job {job.id} was cancelled: {job.error or 'no reason given'}"
        raise ServiceError(http_failure(FailureCode.CANCELLED).status, FailureCode.CANCELLED, message)
    if service.manager.closing:
        raise unavailable(
            f"the server is restarting; job {job.id} runs again when it is back (GET /jobs/{job.id})",
            retry_after=60,
        )
    raise conflict("not_done", f"job {job.id} is {job.state}; its result is not ready yet")


# ---------------------------------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = [
            str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")
        ]
        field = ".".join(location) or "request"
        problem = ServiceError(
            422, "invalid_parameter", f"{field}: {first.get('msg', 'invalid')}", field=field
        )
        return JSONResponse(problem.body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {404: "no such endpoint", 405: "method not allowed"}.get(
            error.status_code, str(error.detail)
        )
        problem = ServiceError(error.status_code, codes.get(error.status_code, "http_error"), message)
        return JSONResponse(problem.body(), status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        problem = internal()
        return JSONResponse(problem.body(), status_code=problem.status)
