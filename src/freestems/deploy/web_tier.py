"""The web tier of the Modal deployment: what its function is declared with, its settings, its executor.

It exists so that :mod:`freestems.deploy.modal_app` declares the web function (``web``, an ASGI app
serving :func:`freestems.service.create_app`) in a few lines, while what decides its shape is here.

Up to ``FREESTEMS_MODAL_WEB_MAX_CONTAINERS`` CPU-only containers with ``@modal.concurrent``; their jobs go
to the GPU class, the CPU class or both (``FREESTEMS_MODAL_TIER``) through a
:class:`~freestems.executors.modal.ModalExecutor` (:func:`modal_executor`). What they must agree on is
shared (:class:`~freestems.service.shared_state.SharedState`, :meth:`.stores.Stores.shared_state`): jobs,
session keys, socket slots and follows in the Dicts ``<app>-state-*``, each container's inbox in the Queue
``<app>-inbox``, uploads and results on the Volume ``<app>-data`` mounted at ``/data`` (the data folder:
:func:`web_settings`). Every HTTP request ends within ``FREESTEMS_MODAL_REQUEST_SECONDS`` (Modal ends one at
150 s): an upload may take that long, and a ``POST /separate`` still waiting then answers ``202`` with its
job (:func:`web_settings`). Any container serves any request; a container that goes (scale-down, redeploy,
preemption, crash) leaves its unfinished jobs to a live one, and a result stays ``FREESTEMS_RESULT_TTL``
seconds on the Volume whether or not a container is up. Each socket is closed at
``FREESTEMS_SOCKET_LIFETIME`` (the page and client reconnect), below the function's timeout
(:func:`web_function_options`). The HMAC key of the challenges comes from the ``modal.Secret`` named by
``FREESTEMS_MODAL_SECRET_NAME``.

A web container never imports torch: it loads no model (it reads the description the image's build step
baked) and sends every job away; nothing here, nor what it imports, imports torch at module import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import modal

from freestems.executors.base import ModelDescription
from freestems.executors.modal import ModalExecutor, RemoteCalls
from freestems.service.settings import PREFIX, Settings

from .image import DEVICE_DIR, device_exports_wanted
from .settings import WEB_CPU, WEB_SCALEDOWN_WINDOW, ModalSettings
from .stores import Stores

WEB_TIMEOUT_MARGIN = 60
"""Seconds the web function's timeout exceeds the longest input (a socket's lifetime, or an HTTP request's
limit): the server ends every socket itself, with a close code the client knows."""
DATA_MOUNT = "/data"
"""Where the web containers mount the Volume ``<app>-data``: their data folder (uploads, results)."""


def web_function_options(
    settings: Settings, deployment: ModalSettings, image: modal.Image, data_volume: modal.Volume
) -> dict[str, Any]:
    """The ``@app.function`` arguments of the web function, from the settings: its ``image`` and the
    ``data_volume`` it mounts at :data:`DATA_MOUNT`."""
    # A WebSocket is one input until the server closes it at socket_lifetime; an HTTP request ends within
    # modal_request_seconds (web_settings). The timeout is above both, so Modal never ends an input the
    # server would.
    longest = max(settings.socket_lifetime, deployment.modal_request_seconds)
    secret = modal.Secret.from_name(deployment.modal_secret_name, required_keys=[f"{PREFIX}HMAC_SECRET"])
    return dict(
        image=image,
        secrets=[secret],
        cpu=WEB_CPU,
        memory=deployment.modal_web_memory,
        max_containers=deployment.modal_web_max_containers,
        scaledown_window=WEB_SCALEDOWN_WINDOW,
        timeout=min(int(longest) + WEB_TIMEOUT_MARGIN, 86400),
        volumes={DATA_MOUNT: data_volume},
    )


def executor_workers(deployment: ModalSettings) -> int:
    """Jobs in flight at once from the web tier: the containers of the classes its tier uses."""
    gpu, cpu = deployment.modal_max_containers, deployment.modal_cpu_max_containers
    return {"gpu": gpu, "cpu": cpu, "overflow": gpu + cpu}[deployment.modal_tier]


def web_settings(settings: Settings, deployment: ModalSettings, in_container: bool) -> Settings:
    """The web tier's settings: in a container its data folder is the Volume's mount; every HTTP request
    ends within ``FREESTEMS_MODAL_REQUEST_SECONDS`` (Modal ends one at 150 s): an upload may take that
    long at most, and ``POST /separate`` answers ``202`` with its job when the job is not done by then.
    Its ``device_dir`` is where the image's build exported the models that run in the browser
    (:data:`~freestems.deploy.image.DEVICE_DIR`), when it did."""
    limit = float(deployment.modal_request_seconds)
    changes: dict[str, Any] = {
        "workers": executor_workers(deployment),
        "upload_timeout": min(settings.upload_timeout, limit),
        "separate_wait": min(settings.separate_wait, limit) if settings.separate_wait else limit,
    }
    if in_container:
        changes["data_dir"] = Path(DATA_MOUNT)
        changes["device_dir"] = Path(DEVICE_DIR) if device_exports_wanted(settings, deployment) else None
    return settings.replace(**changes)


def modal_executor(
    deployment: ModalSettings,
    stores: Stores,
    calls: Callable[[], RemoteCalls],
    cpu_calls: Callable[[], RemoteCalls],
    describe: Callable[[], tuple[ModelDescription, ...]],
) -> ModalExecutor:
    """The web tier's executor: jobs to the GPU class, the CPU class or both (``FREESTEMS_MODAL_TIER``),
    each call with a lease this web container renews while it waits. ``calls`` and ``cpu_calls`` reach
    the two classes (``cpu_calls`` is only asked for when the tier uses the CPU class); ``describe`` says
    what they run."""
    tier = deployment.modal_tier
    return ModalExecutor(
        calls(),
        stores.progress_channel(),
        describe,
        gpu=deployment.modal_gpu,
        workers=executor_workers(deployment),
        cpu_calls=cpu_calls() if tier != "gpu" else None,
        tier=tier,
        overflow_backlog=deployment.modal_overflow_backlog,
        leases=stores.lease_store(),
        lease_seconds=deployment.modal_lease_seconds,
    )
