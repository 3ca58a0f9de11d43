"""``WS /session``: the socket on which a client earns its key and follows its job.

Server and client exchange JSON text messages::

    (handshake /session?budget=<model-seconds>: Origin checked, new-session rate limit, budget checked)
                                                             refused: HTTP 403 / 422 / 429 with a JSON error
    server -> {"type": "challenge", "challenge": {...ALTCHA v2 challenge...}, "budget": 1200,
               "max_counter": 1000}
    client -> {"type": "solution", "payload": "<base64 altcha.Payload(challenge, solution)>"}
    server -> {"type": "session", "key": "<opaque>", "expires_in": 900, "budget": 1200}
    ...        the key is sent as X-Session-Key with POST /separate or POST /jobs
    server -> {"type": "job", "id": ..., "state": "queued", "progress": 0, "position": 2}   (its changes)
    server -> {"type": "done", "id": ..., "result": "/jobs/<id>/result?token=..."}
    client -> {"type": "challenge", "budget": 300}   a new challenge once the key is spent (counts as a new
                                          session); ``budget`` optional, as in the handshake
    client -> {"type": "ping"}            server -> {"type": "pong"} (browsers cannot send ping frames)
    client -> {"type": "follow", "id": ..., "token": ...}   follow a job by id and token (no key needed):
    server -> its current "job" message (and "done" if it has finished), then its changes

A key is earned for a **budget** of compute (model-seconds, :mod:`.pricing`): the ``budget`` query
parameter of the handshake (or of a ``challenge`` message), by default the longest allowed song at the
default options on the default model. The challenge's work grows linearly with it (``max_counter``: the
largest counter the client may have to try; ``pow_counter`` at the default budget), and a request dearer
than the key's budget is refused (403 ``key_budget``). A budget that is not a positive number, or above
what one request may cost, is refused (422 ``invalid_parameter``, field ``budget``).

``job`` messages are coalesced: per job the socket holds only the newest one it has not sent yet, so a
client that reads slowly (or not at all) gets the newest state when it reads, never a backlog.

Any error is ``{"type": "error", "code": ..., "message": ...}`` and the server closes the socket (1008);
a ``follow`` with an unknown id or a wrong token is answered with code ``not_found``.

A device-only server (``FREESTEMS_DEVICE_ONLY``) has no key to give: it refuses every handshake with 403
``device_only``.

A socket lives at most ``socket_lifetime`` seconds (on Modal a socket is one input of the web function,
which has a timeout): then the server closes it with code 4000, reason ``socket_lifetime``, and no error
message. Its unused key dies with it; its job does not: the client opens a new socket and sends ``follow``
(the page and ``freestems.client`` do this by themselves). A key is offered for at most the socket's
remaining life less ``upload_timeout`` (``expires_in`` says so), so an upload it starts ends before the
socket does (a socket whose upload is still being checked gets :data:`UPLOAD_GRACE` more seconds).
An address holds at most ``sockets_per_ip`` open sockets (429 ``too_many_sockets``).
Closing the socket ends its key (an unused key can never be used after that). The job the key started,
and jobs followed with ``follow``, are no longer followed by this socket: if nothing else follows them
(another socket, a waiting ``POST /separate``, polls by the owner) they are cancelled after
``reattach_grace`` seconds. When the *server* closes the socket for a restart (close code 1012), jobs are
kept and run again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .device_only import refusal
from .errors import ServiceError, forbidden
from .network import client_address, origin_allowed
from .parts import Service
from .sessions import Mailbox, Message
from .store import TERMINAL
from .tokens import owned_job

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 16 * 1024
POLICY_VIOLATION = 1008
SERVER_RESTART = 1012
LIFETIME_CLOSE = 4000
"""Close code when a socket reaches ``socket_lifetime`` (reason :data:`LIFETIME_REASON`): reconnect."""
LIFETIME_REASON = "socket_lifetime"
MIN_KEY_SECONDS = 5.0
"""A key offered for less than this (its socket closes soon) is not offered: the socket closes instead."""
UPLOAD_GRACE = 30.0
"""Seconds a socket may outlive its lifetime while its key's upload is still being checked (the upload
itself fits, see ``expires_in``); below the margin of the web function's timeout on Modal."""


async def session_socket(websocket: WebSocket, service: Service) -> None:
    """Serve one ``/session`` connection from handshake to close."""
    settings = service.settings
    if settings.device_only:  # no key to earn: nothing separates here
        await _deny(websocket, refusal())
        return
    if not origin_allowed(
        websocket.headers.get("origin"), websocket.headers.get("host"), settings.allowed_origins
    ):
        await _deny(websocket, forbidden("bad_origin", "this origin may not open sessions on this server"))
        return
    client = client_address(websocket, settings.trust_proxy)
    try:
        budget = service.manager.pricing.budget(websocket.query_params.get("budget"))
    except ServiceError as error:
        await _deny(websocket, error)
        return
    connection = secrets.token_hex(8)
    try:
        await service.state.acquire_socket(client, connection, settings.sockets_per_ip)
    except ServiceError as error:
        await _deny(websocket, error)
        return
    try:
        service.limiter.hit(client)
    except ServiceError as error:
        await service.state.release_socket(client, connection)
        await _deny(websocket, error)
        return
    closes_at = time.time() + settings.socket_lifetime
    mailbox = service.sessions.connect(connection)
    closed_by_server_restart = False
    try:
        await websocket.accept()
        mailbox.put_nowait(await _challenge(service, connection, budget))
        closed_by_server_restart = await _serve(websocket, service, connection, client, mailbox, closes_at)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the peer went away mid-send
        pass
    finally:
        await service.state.release_socket(client, connection)
        service.challenges.forget(connection)
        if closed_by_server_restart:
            service.sessions.close_connection(connection)  # keys die; their jobs resume after the restart
        else:
            service.manager.follow.connection_closed(connection)


async def _serve(
    websocket: WebSocket, service: Service, connection: str, client: str, mailbox: Mailbox, closes_at: float
) -> bool:
    """The connection's loop: incoming messages, outgoing mail, the challenge deadline, the socket's
    lifetime. Returns True when the server closed the socket for a restart."""
    # Starlette's ASGI events are MutableMappings; the mailbox holds the JSON messages to send.
    receive: asyncio.Task[MutableMapping[str, Any]] = asyncio.ensure_future(websocket.receive())
    outgoing: asyncio.Task[Message] = asyncio.ensure_future(mailbox.get())
    idle_since: float | None = None
    try:
        while True:
            deadline, why = _deadline(service, connection, idle_since)
            idle_since = (idle_since or time.time()) if why.code == "idle" else None
            end = closes_at + (UPLOAD_GRACE if service.sessions.uploading(connection) else 0.0)
            if deadline is None or deadline >= end:
                deadline, why = end, forbidden(LIFETIME_REASON, "")
            timeout = max(0.0, deadline - time.time())
            done, _ = await asyncio.wait(
                {receive, outgoing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                if why.code == LIFETIME_REASON:
                    await _end_of_life(websocket)
                else:
                    await _fail(websocket, why)
                return False
            if outgoing in done:
                message = outgoing.result()
                await websocket.send_json(message)
                if message.get("type") == "error":
                    await _close(websocket)
                    return False
                outgoing = asyncio.ensure_future(mailbox.get())
            if receive in done:
                event = receive.result()
                if event["type"] == "websocket.disconnect":
                    return bool(event.get("code") == SERVER_RESTART)
                try:
                    reply = await _handle(service, connection, client, event, closes_at)
                except _EndOfLife:
                    await _end_of_life(websocket)
                    return False
                except ServiceError as error:
                    await _fail(websocket, error)
                    return False
                if reply is not None:
                    mailbox.put_nowait(reply)
                receive = asyncio.ensure_future(websocket.receive())
    finally:
        receive.cancel()
        outgoing.cancel()


def _deadline(
    service: Service, connection: str, idle_since: float | None
) -> tuple[float | None, ServiceError]:
    """When the connection must hear from the client, and what it is told if it does not.

    A pending challenge must be answered within its TTL. A connection with neither a challenge nor a live
    key (its job is over) may ask for a new challenge within the same time, else it is closed: idle
    sockets would otherwise pile up for free. A live key has no deadline here (the sweeper expires it), nor
    has a socket that follows an unfinished job (``follow``): it waits for the job.
    """
    if service.sessions.watching(connection):
        return None, forbidden("following", "")
    expiry = service.challenges.pending_expiry(connection)
    if expiry is not None:
        return expiry, forbidden("challenge_expired", "the challenge expired before it was solved")
    if service.sessions.has_live_key(connection):
        return None, forbidden("session_active", "")
    ttl = service.settings.challenge_ttl
    message = f"no challenge and no key for {ttl:g} s; connect again to start a new session"
    return (idle_since or time.time()) + ttl, forbidden("idle", message)


class _EndOfLife(Exception):
    """The socket has too little life left to offer a key: it closes (code 4000) instead."""


async def _handle(
    service: Service, connection: str, client: str, event: Mapping[str, Any], closes_at: float
) -> Message | None:
    """One client message; returns the reply (or None), raises ServiceError to end the connection."""
    text = event.get("text")
    if text is None or len(text) > MAX_MESSAGE_CHARS:
        raise forbidden("bad_message", "send JSON text messages (at most 16 KiB)")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise forbidden("bad_message", 'messages are JSON objects with a "type"')
    kind = message["type"]
    if kind == "solution":
        budget = service.challenges.verify(connection, message.get("payload"))
        settings = service.settings
        left = closes_at - time.time() - settings.upload_timeout  # the socket's life left for a key
        if left < min(MIN_KEY_SECONDS, settings.session_ttl):
            raise _EndOfLife
        ttl = min(settings.session_ttl, left)
        if budget is None:
            budget = service.manager.pricing.default_budget
        key, _ = service.sessions.issue(client, connection, ttl=ttl, budget=budget)
        await service.state.settled()  # published for every container before the client has it
        return {"type": "session", "key": key, "expires_in": round(ttl), "budget": round(budget, 3)}
    if kind == "challenge":
        if service.sessions.has_live_key(connection):
            raise forbidden("session_active", "this connection still holds a live key; use it first")
        budget = service.manager.pricing.budget(message.get("budget"))
        service.limiter.hit(client)
        return await _challenge(service, connection, budget)
    if kind == "ping":
        return {"type": "pong"}
    if kind == "follow":
        await service.state.refresh(message.get("id"))  # a job of another container, maybe
        _follow(service, connection, message.get("id"), message.get("token"))
        return None
    raise forbidden(
        "bad_message", f"unknown message type {kind!r}; expected solution, challenge, follow or ping"
    )


async def _challenge(service: Service, connection: str, budget: float) -> Message:
    """A ``challenge`` message: a new challenge for a key of ``budget`` model-seconds, its work linear in
    the budget."""
    counter = service.manager.pricing.counter(budget)
    challenge = await service.challenges.issue_async(connection, counter=counter, budget=budget)
    return {"type": "challenge", "challenge": challenge, "budget": round(budget, 3), "max_counter": counter}


def _follow(service: Service, connection: str, job_id: object, token: object) -> None:
    """``follow``: send the job's state now (and ``done`` if it has finished), and its changes later.

    Raises:
        ServiceError: ``not_found`` for an unknown id or a wrong token (the socket is then closed).
    """
    job = owned_job(service.manager, job_id, token)
    if job.state not in TERMINAL:
        service.sessions.watch(connection, job.id)
    views = service.manager.views
    service.sessions.post(connection, views.message(job))
    if job.state == "done":
        service.sessions.post(connection, views.done_message(job))


async def _fail(websocket: WebSocket, error: ServiceError) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"type": "error", "code": error.code, "message": error.message})
    await _close(websocket)


async def _end_of_life(websocket: WebSocket) -> None:
    """The socket reached its lifetime: close it with :data:`LIFETIME_CLOSE` (the client reconnects)."""
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(LIFETIME_CLOSE, LIFETIME_REASON)


async def _close(websocket: WebSocket) -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(POLICY_VIOLATION)


async def _deny(websocket: WebSocket, error: ServiceError) -> None:
    """Refuse the handshake with an HTTP error (JSON body), or a bare close if the server cannot."""
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(POLICY_VIOLATION)
