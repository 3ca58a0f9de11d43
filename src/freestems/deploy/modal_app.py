"""freestems on Modal: a GPU class that separates, and the web service in front of it.

    modal deploy -m freestems.deploy.modal_app      # settings come from FREESTEMS_* where this runs

Nothing here is a second copy of the engine or the service: the GPU method runs
:func:`freestems.jobrun.run_job` (the function the in-process worker runs), and the web function serves
:func:`freestems.service.create_app` with a :class:`~freestems.executors.modal.ModalExecutor`.

**Settings.** This module reads ``Settings.from_env()`` (the service's) and ``ModalSettings.from_env()``
(the deployment's, :mod:`freestems.deploy.settings`) when it is imported: by ``modal deploy`` on the
deployer's machine (the ``FREESTEMS_*`` variables there decide the GPU type, scale-down window and every
limit), and again in each container, where the image's environment carries the same values (see
:func:`image_environment`; machine-local ones such as paths and the HMAC secret are left out).

**Image.** Debian slim, torch as the CUDA 12.6 build (``FREESTEMS_MODAL_TORCH_INDEX``: Modal's driver,
575.57.08, runs CUDA 12.x wheels, not PyPI's CUDA 13 one), freestems' dependencies (read from its installed
metadata, so ``pyproject.toml`` stays the one list, each pinned to the version installed here), then a
build step that runs the catalog's download code (:func:`freestems.models.ensure_weights`) into
``/weights`` and writes the model's description there (its arguments carry the catalog's facts,
:func:`catalog_facts`, so a catalog change rebuilds it), and last the ``freestems`` source itself
(mounted, so a code change does not rebuild the layers above). Nothing is downloaded at request time: the
containers load with ``download=False``.

**GPU and CPU classes.** :class:`Separator` (on a GPU) and :class:`CpuSeparator` (CPU-only containers)
are the same code (:class:`_SeparatorCode`) with a memory snapshot. ``@modal.enter(snap=True)`` loads
the model on the CPU, runs one small job end to end (decode, model, MP3 encoders, zip), so imports and
lazy initialisation are in the snapshot, and gives the memory that freed back (:func:`trim_memory`);
``@modal.enter(snap=False)`` moves the model to the GPU and picks the precision (fp16, else bf16, if a
probe shows the output stays faithful; the answer is kept in the Dict ``<app>-precision``, so the probe
runs once per model, GPU type and torch). A GPU-class container whose torch sees no GPU refuses to start
(:class:`NoAccelerator`, naming the driver and the wheel's CUDA). With ``FREESTEMS_MODAL_GPU_SNAPSHOT=1``
(Modal's experimental GPU snapshots) all of that happens before the snapshot and a restored container is
ready at once. Each call checks its lease (Dict ``<app>-leases``) and stops once the web tier stopped
renewing it; each container records its wake-up when it scales down.

**Where the seconds go.** A job's GPU container decodes the whole upload first (one pass, on its CPU
cores), then runs the model while one MP3 encoder per stem works on other cores, then zips: compressed
audio in, the zip of encoded stems out. Each call records its timings, ``busy_seconds`` (the method's
wall time) and ``cost_usd`` (counted whole: :mod:`freestems.cost`) in the Dict ``<app>-usage`` (read by
``freestems cost --modal``) and sends them, with ``started`` and ``progress`` events, to the caller
through the Queue ``<app>-progress`` (see :mod:`freestems.executors.modal`).

**Web tier.** Up to ``FREESTEMS_MODAL_WEB_MAX_CONTAINERS`` containers with ``@modal.concurrent``; their
jobs go to the GPU class through a ``ModalExecutor``. What they must agree on is shared
(:class:`~freestems.service.shared_state.SharedState`): jobs, session keys, socket slots and follows in the
Dicts ``<app>-state-*``, each container's inbox in the Queue ``<app>-inbox``, uploads and results on the
Volume ``<app>-data`` mounted at ``/data`` (the data folder). Any container serves any request; a
container that goes (scale-down, redeploy, preemption, crash) leaves its unfinished jobs to a live one, and
a result stays ``FREESTEMS_RESULT_TTL`` seconds on the Volume whether or not a container is up. Each socket
is closed at ``FREESTEMS_SOCKET_LIFETIME`` (the page and client reconnect), below the function's timeout.
The HMAC key of the challenges comes from the ``modal.Secret`` named by ``FREESTEMS_MODAL_SECRET_NAME``.

For tests, :func:`remote_calls`, :func:`cpu_calls`, :func:`progress_channel`, :func:`usage_log`,
:func:`lease_store` and :func:`precision_cache` are the only ways out to Modal's cloud, and
:func:`in_container` says where the code runs; replacing them runs everything in-process
(``Separator().separate.local``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import modal

from freestems.cost import Shape, UsageRecord, WakeRecord, usage_dict_name
from freestems.errors import Cancelled, FailureCode
from freestems.executors.base import ModelDescription
from freestems.executors.modal import (
    DictLeases,
    LeaseStore,
    ModalCalls,
    ModalExecutor,
    ModalQueueChannel,
    ProgressChannel,
    RemoteCalls,
)
from freestems.jobrun import JobFailed, JobOutput
from freestems.options import SeparationOptions
from freestems.service.settings import PREFIX, Settings
from freestems.service.shared_state import SharedState

from .settings import ModalSettings

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

    from freestems.contract import LoadedModel

log = logging.getLogger("freestems.modal")

_IMPORTED_AT = time.time()
"""When this module was imported: the start of a container that was not restored from a snapshot."""

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
"""The image's Python is the deployer's: errors and values cross between the two pickled."""
WEIGHTS_DIR = "/weights"
DESCRIPTION_FILE = "model.json"
"""The model's description (name, sources, fingerprint), written into ``/weights`` at build time."""
WEB_SCALEDOWN_WINDOW = 300
"""Seconds the (CPU-only, cheap) web container stays up without a request or an open WebSocket."""
WEB_CPU = 1.0
WEB_TIMEOUT_MARGIN = 60
"""Seconds the web function's timeout exceeds the longest input (a socket's lifetime, or an upload and its
job for ``POST /separate``): the server ends every socket itself, with a close code the client knows."""
DATA_MOUNT = "/data"
"""Where the web containers mount the Volume ``<app>-data``: their data folder (uploads, results)."""
WARM_UP_SECONDS = 1.0
"""Length of the job run before the snapshot."""

LOCAL_ONLY = frozenset(
    {"HOST", "PORT", "DATA_DIR", "HMAC_SECRET", "CACHE", "MODEL_FILE", "MODEL_CONFIG", "DEVICE", "WORKERS",
     "THREADS"}
)  # fmt: skip
"""Settings that describe the deployer's machine, not the containers: never put in the image."""


# ------------------------------------------------------------------------------------------- settings


def serving_settings(environ: Mapping[str, str]) -> Settings:
    """The settings of the deployment: ``environ``'s, seen as the public server it is.

    The host is ``0.0.0.0``, so ``FREESTEMS_AUTH=none`` needs ``FREESTEMS_ALLOW_PUBLIC_NOAUTH`` here too.
    ``FREESTEMS_TRUST_PROXY`` stays off by default: Modal hands an ASGI app the client's address as the
    connection's peer (``scope["client"]``), while an ``X-Forwarded-For`` header may be the client's own.
    """
    return Settings.from_env(environ, host="0.0.0.0")


def image_environment(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """The ``FREESTEMS_*`` variables of the containers: the deployer's settings minus machine-local ones,
    with the weights cache and any model file at their places in the image."""
    names = Settings.variables() | ModalSettings.variables()
    env = {
        name: value
        for name, value in environ.items()
        if name in names and name[len(PREFIX) :] not in LOCAL_ONLY and value.strip()
    }
    env[f"{PREFIX}HOST"] = "0.0.0.0"
    env[f"{PREFIX}CACHE"] = WEIGHTS_DIR
    if settings.model_file is not None:
        env[f"{PREFIX}MODEL_FILE"] = f"{WEIGHTS_DIR}/{settings.model_file.name}"
    if settings.model_config_file is not None:
        env[f"{PREFIX}MODEL_CONFIG"] = f"{WEIGHTS_DIR}/config/{settings.model_config_file.name}"
    return dict(sorted(env.items()))


settings = serving_settings(os.environ)
modal_settings = ModalSettings.from_env(os.environ)


# ------------------------------------------------------------------------------------------- image


def requirements() -> list[str]:
    """freestems' dependencies and its ``serve`` extra, from the installed package's metadata, no torch,
    each pinned to the version installed where ``modal deploy`` runs (``name==version``: the image runs
    what the deployer tested, and a new release upstream does not change it unseen)."""
    try:
        declared = importlib.metadata.requires("freestems") or []
    except importlib.metadata.PackageNotFoundError:
        if modal.is_local() and os.environ.get("MODAL_IS_REMOTE") != "1":
            raise RuntimeError("install freestems to deploy it: pip install -e '.[modal]'") from None
        return []  # inside a container (the source is mounted, not installed): the image is built already
    found = []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        marker = marker.replace(" ", "").replace("'", '"')
        if marker and marker != 'extra=="serve"':
            continue
        name = re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0].lower()
        if name in ("torch", "freestems"):
            continue
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(spec.strip())  # not installed here: the declared range, as declared
    return sorted(found)


def catalog_facts(model: str | None, others: Sequence[str] = ()) -> str:
    """What the weights step bakes, as the catalog says it today: every entry of ``model`` (the default
    model if None; each member of an ensemble or of ``a+b``) and of the ``others`` served, with its URLs,
    sizes, sha256 and config.

    It is an argument of the build step, so it is part of what Modal hashes to cache that layer: a catalog
    change (a URL, a checksum, a config, the default model) rebuilds it; nothing else does.
    """
    from freestems.models import DEFAULT_MODEL, get_model_info

    entries: dict[str, Any] = {}
    pending = [name.strip() for name in (model or DEFAULT_MODEL).split("+")]
    pending += [name.strip() for other in others for name in other.split("+")]
    while pending:
        name = pending.pop(0)
        if name in entries:
            continue
        info = get_model_info(name)
        entries[name] = dataclasses.asdict(info)
        if info.architecture == "ensemble":
            pending.extend(member for member, _ in info.config["members"])
    facts = {"model": model or DEFAULT_MODEL, "others": list(others), "entries": entries}
    return json.dumps(facts, sort_keys=True, default=str)


def default_model_name() -> str | None:
    """The catalog name of the default model (the first of ``FREESTEMS_MODELS``), or None for a file."""
    if settings.model_file is not None:
        return None
    return settings.served_models[0] if settings.served_models else settings.model


def other_model_names() -> tuple[str, ...]:
    """The other served models (``FREESTEMS_MODELS`` after the first): one GPU class loads them on demand
    (see the README, "Several models on Modal")."""
    return tuple(settings.models[1:]) if settings.model_file is None else ()


def bake_weights(
    model: str | None,
    model_file: str | None,
    model_config: str | None,
    weights_dir: str,
    others: tuple[str, ...] = (),
    catalog: str | None = None,
) -> None:
    """Image build step: the catalog model's weights into ``weights_dir`` (with the catalog's own
    download code, size and checksum checks included), and the model's description beside them; with
    ``FREESTEMS_MODELS``, the other served models' files and descriptions too (``others``).
    ``catalog`` is :func:`catalog_facts` as the deployer saw it; the build checks that the image's
    catalog says the same, so an image never bakes other weights than the ones its hash names."""
    from freestems.executors import describe
    from freestems.models import DEFAULT_MODEL, ensure_weights, get_model_info, load_model
    from freestems.models.served import serve_catalog

    if model_file is None:
        if catalog is not None and catalog != catalog_facts(model, others):
            raise RuntimeError(
                "the image's model catalog differs from the deployer's; reinstall and redeploy"
            )
        for name in (model or DEFAULT_MODEL).split("+"):
            ensure_weights(get_model_info(name.strip()), cache_dir=weights_dir, progress=False)
    loaded = load_model(
        model,
        model_file=model_file,
        model_config=model_config,
        cache_dir=weights_dir,
        download=False,
        progress=False,
    )
    description = dataclasses.asdict(describe(loaded))
    description["others"] = [
        dataclasses.asdict(ModelDescription(served.name, served.sources, served.fingerprint, served.title))
        for served in (serve_catalog(name, cache_dir=weights_dir, download=True) for name in others)
    ]
    Path(weights_dir, DESCRIPTION_FILE).write_text(json.dumps(description))


def build_image(settings: Settings, deployment: ModalSettings, environ: Mapping[str, str]) -> modal.Image:
    """The image of both functions (see the module docstring for the layers and why in this order)."""
    torch_index: dict[str, Any] = (
        {"index_url": deployment.modal_torch_index} if deployment.modal_torch_index else {}
    )
    image = (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install(deployment.modal_torch, **torch_index)
        .pip_install(*requirements())
    )
    model_file = model_config = None
    if settings.model_file is not None:
        model_file = f"{WEIGHTS_DIR}/{settings.model_file.name}"
        image = image.add_local_file(settings.model_file, model_file, copy=True)
    if settings.model_config_file is not None:
        model_config = f"{WEIGHTS_DIR}/config/{settings.model_config_file.name}"
        image = image.add_local_file(settings.model_config_file, model_config, copy=True)
    image = image.run_function(bake_weights, kwargs=bake_arguments(settings, model_file, model_config))
    return image.env(image_environment(environ, settings)).add_local_python_source("freestems", ignore=[])


def bake_arguments(settings: Settings, model_file: str | None, model_config: str | None) -> dict[str, Any]:
    """The arguments of the weights step (Modal hashes them with the function's source to cache the
    layer): the catalog's facts are among them, unless the model is a file (whose bytes are hashed)."""
    model, others = default_model_name(), other_model_names()
    return {
        "model": model,
        "model_file": model_file,
        "model_config": model_config,
        "weights_dir": WEIGHTS_DIR,
        "others": others,
        "catalog": None if model_file is not None else catalog_facts(model, others),
    }


app = modal.App(modal_settings.modal_app_name, include_source=False)
image = build_image(settings, modal_settings, os.environ)
progress_queue = modal.Queue.from_name(f"{modal_settings.modal_app_name}-progress", create_if_missing=True)
usage_dict = modal.Dict.from_name(usage_dict_name(modal_settings.modal_app_name), create_if_missing=True)
lease_dict = modal.Dict.from_name(f"{modal_settings.modal_app_name}-leases", create_if_missing=True)
precision_dict = modal.Dict.from_name(f"{modal_settings.modal_app_name}-precision", create_if_missing=True)
data_volume = modal.Volume.from_name(f"{modal_settings.modal_app_name}-data", create_if_missing=True)
inbox_queue = modal.Queue.from_name(f"{modal_settings.modal_app_name}-inbox", create_if_missing=True)


# ------------------------------------------------------------------------------------------- the ways out


class DictUsageLog:
    """Usage records in a ``modal.Dict`` (kept by Modal across deploys; ``freestems cost --modal``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def record(self, record: UsageRecord) -> None:
        self.store.put(f"{record.finished_at:.3f}-{record.job_id}", record.as_dict())

    def record_wake(self, record: WakeRecord) -> None:
        self.store.put(f"wake-{record.ended_at:.3f}-{record.task}", record.as_dict())


def progress_channel() -> ProgressChannel:
    """Where GPU containers send their events and the web tier reads them."""
    return ModalQueueChannel(progress_queue)


def usage_log() -> Any:
    """Where GPU containers record what each call used (an object with ``record(UsageRecord)``)."""
    return DictUsageLog(usage_dict)


def state_dict(name: str) -> Any:
    """The web tier's shared Dict ``name`` (``<app>-state-<name>``)."""
    return modal.Dict.from_name(f"{modal_settings.modal_app_name}-state-{name}", create_if_missing=True)


def shared_state() -> SharedState:
    """What the web containers share: Dicts, their inboxes' Queue, the data Volume."""
    return SharedState(state_dict, inbox_queue, data_volume)


def remote_calls() -> RemoteCalls:
    """How the web tier reaches the GPU class."""
    return ModalCalls(Separator().separate)


def cpu_calls() -> RemoteCalls:
    """How the web tier reaches the CPU class."""
    return ModalCalls(CpuSeparator().separate)


def lease_store() -> LeaseStore:
    """Where the web tier renews its calls' leases and the containers read them."""
    return DictLeases(lease_dict)


def precision_cache() -> Any:
    """Where the precision chosen for a model on a GPU type is kept (an object with ``get`` and ``put``),
    so that the probe runs once per model, GPU type and torch, not at every cold start."""
    return precision_dict


def in_container() -> bool:
    """Whether this runs in a Modal container (not in-process, e.g. ``.local()`` in a test)."""
    return not modal.is_local()


# ------------------------------------------------------------------------------------------- GPU class


def _class_options(deployment: ModalSettings, **shape: Any) -> dict[str, Any]:
    """What both separator classes declare alike (image, timeout, snapshot, region), plus their ``shape``."""
    options: dict[str, Any] = dict(
        image=image, timeout=deployment.modal_timeout, enable_memory_snapshot=True, **shape
    )
    if deployment.modal_region:
        options["region"] = list(deployment.modal_region)
    return options


def gpu_class_options(deployment: ModalSettings) -> dict[str, Any]:
    """The ``@app.cls`` arguments of :class:`Separator`, from the settings."""
    options = _class_options(
        deployment,
        gpu=deployment.modal_gpu,
        cpu=deployment.modal_cpu,
        memory=deployment.modal_memory,
        scaledown_window=deployment.modal_scaledown_window,
        max_containers=deployment.modal_max_containers,
    )
    if deployment.modal_gpu_snapshot:
        options["experimental_options"] = {"enable_gpu_snapshot": True}
    return options


def cpu_class_options(deployment: ModalSettings) -> dict[str, Any]:
    """The ``@app.cls`` arguments of :class:`CpuSeparator`: the same class on CPU-only containers."""
    return _class_options(
        deployment,
        cpu=deployment.modal_cpu_class_cpu,
        memory=deployment.modal_cpu_class_memory,
        scaledown_window=deployment.modal_cpu_scaledown_window,
        max_containers=deployment.modal_cpu_max_containers,
    )


def class_shape(tier: str, deployment: ModalSettings) -> Shape:
    """What a container of the ``gpu`` or ``cpu`` class reserves (and is billed for)."""
    regions = tuple(deployment.modal_region)
    if tier == "cpu":
        return Shape(None, deployment.modal_cpu_class_cpu, deployment.modal_cpu_class_memory, regions)
    return Shape(deployment.modal_gpu, deployment.modal_cpu, deployment.modal_memory, regions)


class NoAccelerator(RuntimeError):
    """A container that declares a GPU has none torch can use: it refuses to start rather than serve
    every song on its CPU at GPU prices."""


def driver_version() -> str | None:
    """The NVIDIA driver of this machine (``nvidia-smi``, else ``/proc/driver/nvidia/version``), if any."""
    import subprocess

    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+(?:\.[0-9]+)+)", text)
    return match.group(1) if match else None


def gpu_refusal(gpu: str, driver: str | None, torch_version: str, wheel_cuda: str | None) -> str:
    """Why a container that declares ``gpu`` cannot use it, for the log and the failed start."""
    if wheel_cuda is None:
        wheel = f"torch {torch_version} is a CPU-only build"
    else:
        wheel = f"torch {torch_version} is built for CUDA {wheel_cuda}"
    seen = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia)"
    return (
        f"this container declares GPU {gpu} but torch sees no CUDA device: {seen}; {wheel}. Refusing to "
        "start rather than separate on the CPU at GPU prices. Build the image with a torch whose CUDA "
        "the driver runs (a CUDA 13 wheel needs driver 580+; FREESTEMS_MODAL_TORCH_INDEX="
        "https://download.pytorch.org/whl/cu126 for drivers of the 525-575 series) and redeploy."
    )


def trim_memory() -> bool:
    """Give freed memory back before the snapshot: Python's garbage, torch's cached CUDA blocks, and the
    C allocator's free pages (``malloc_trim``, glibc), so they are not saved and restored with every
    container. Returns whether ``malloc_trim`` ran."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    return bool(libc.malloc_trim(0) or True)


def precision_key(fingerprint: str, device_name: str, requested: str) -> str:
    """The cache key of a precision choice: the model's weights, the GPU, torch, and what was asked."""
    import torch

    return f"{fingerprint}|{device_name}|torch {torch.__version__}|{requested}"


def cached_precision(
    model: LoadedModel,
    device: torch.device,
    requested: str,
    cache: Any,
    *,
    fingerprint: str | None = None,
    candidates: tuple[str, ...] | None = None,
) -> tuple[str, dict[str, float], bool]:
    """:func:`freestems.jobrun.choose_precision`, remembered in ``cache`` (``get``/``put``) by model, GPU
    and torch: the probe runs once, not at every cold start. ``fingerprint``: the model's (from
    :func:`freestems.executors.describe`, computed before the snapshot; default: computed here). Returns the
    precision, its fidelity, and whether it came from the cache. A cache that fails is only a slower start."""
    import torch

    from freestems.executors import describe
    from freestems.jobrun import choose_precision

    if requested != "auto":
        return requested, {}, False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = precision_key(fingerprint or describe(model).fingerprint, name, requested)
    try:
        found = cache.get(key)
    except Exception:
        log.warning("reading the precision cache failed", exc_info=True)
        found = None
    if isinstance(found, Mapping) and isinstance(found.get("precision"), str):
        return str(found["precision"]), dict(found.get("fidelity") or {}), True
    precision, fidelity = choose_precision(model, device, requested, candidates=candidates)
    try:
        cache.put(key, {"precision": precision, "fidelity": fidelity})
    except Exception:
        log.warning("writing the precision cache failed", exc_info=True)
    return precision, fidelity, False


def load_configured_model(name: str | None = None) -> LoadedModel:
    """The model the settings name (or ``name``, another served one): from ``/weights`` in a container
    (never downloaded there)."""
    from freestems.models import load_model

    if name is not None:
        return load_model(name, download=modal.is_local(), progress=False)
    return load_model(
        default_model_name(),
        model_file=settings.model_file,
        model_config=settings.model_config_file,
        download=modal.is_local(),
        progress=False,
    )


def read_description(weights_dir: str | Path) -> ModelDescription | None:
    """The description :func:`bake_weights` wrote into ``weights_dir``, if there is one."""
    path = Path(weights_dir, DESCRIPTION_FILE)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return ModelDescription(data["name"], tuple(data["sources"]), data["fingerprint"], data.get("title", ""))


def read_descriptions(weights_dir: str | Path) -> tuple[ModelDescription, ...]:
    """Every served model's description :func:`bake_weights` wrote (the default first); empty if none."""
    path = Path(weights_dir, DESCRIPTION_FILE)
    if not path.is_file():
        return ()
    data = json.loads(path.read_text())
    others = [
        ModelDescription(o["name"], tuple(o["sources"]), o["fingerprint"], o.get("title", ""))
        for o in data.get("others", ())
    ]
    title = data.get("title", "")
    return (ModelDescription(data["name"], tuple(data["sources"]), data["fingerprint"], title), *others)


def model_description() -> tuple[ModelDescription, ...]:
    """What the GPU class runs, for the web tier (every served model, the default first): written at build
    time (no model is loaded in the web container), else (running in-process) computed from the models."""
    baked = read_descriptions(WEIGHTS_DIR) if in_container() else ()
    if baked:
        return baked
    from freestems.executors import describe
    from freestems.models.served import serve_catalog

    others = [serve_catalog(name) for name in other_model_names()]
    return (
        describe(load_configured_model()),
        *(ModelDescription(o.name, o.sources, o.fingerprint, o.title) for o in others),
    )


@dataclasses.dataclass(frozen=True)
class Request:
    """One ``Separator.separate`` call, validated: the options and what the call says about the job."""

    options: SeparationOptions
    max_duration: float
    filename: str
    progress: str | None


EXTRA_KEYS = ("seed", "max_duration", "filename", "progress")
"""Keys of a form-field dict for ``Separator.separate`` beyond the fields of ``POST /separate``."""


def parse_request(
    options: SeparationOptions | Mapping[str, Any],
    sources: tuple[str, ...],
    model: str,
    *,
    max_duration: float | None = None,
    filename: str | None = None,
    progress: str | None = None,
) -> Request:
    """A call's options: a :class:`SeparationOptions` as it is (the web tier parsed its form), or the
    fields of ``POST /separate`` as a dict (a direct caller), parsed here once by the service's form parser,
    with the same messages; that dict may also carry ``seed``, ``max_duration``, ``filename`` and
    ``progress``, which the keyword arguments override.

    Raises:
        JobFailed: ``invalid_options``.
    """
    extras: dict[str, Any] = {}
    if not isinstance(options, SeparationOptions):
        options, extras = form_options(options, sources, model)
    given = {"max_duration": max_duration, "filename": filename, "progress": progress}
    extras.update({name: value for name, value in given.items() if value is not None})
    try:
        limit = float(extras.get("max_duration") or settings.max_duration)
    except (TypeError, ValueError) as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"max_duration must be a number ({error})") from None
    key = extras.get("progress")
    return Request(
        options=options,
        max_duration=limit,
        filename=str(extras.get("filename") or "audio"),
        progress=str(key) if key else None,
    )


def form_options(
    fields: Mapping[str, Any], sources: tuple[str, ...], model: str
) -> tuple[SeparationOptions, dict[str, Any]]:
    """The options in a form-field dict (values as Python values or as the form's strings), and its extras.

    Raises:
        JobFailed: ``invalid_options``.
    """
    from freestems.service.errors import ServiceError
    from freestems.service.options import OPTION_FIELDS, parse_options

    unknown = set(fields) - set(OPTION_FIELDS) - set(EXTRA_KEYS)
    if unknown:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"unknown option(s) {', '.join(sorted(unknown))}")
    form = {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in fields.items()
        if name in OPTION_FIELDS and value is not None
    }
    try:
        parsed = parse_options(form, sources=sources, model=model, max_shifts=settings.max_shifts)
        seed = int(fields.get("seed") or 0)
        extras = {key: fields[key] for key in EXTRA_KEYS if key in fields}
        return dataclasses.replace(parsed, seed=seed), extras
    except ServiceError as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, error.message) from None
    except (TypeError, ValueError) as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"seed must be an integer ({error})") from None


class _Outbox:
    """Sends a call's events (and its usage record) from a thread, so the model never waits for the
    network; progress events that pile up are coalesced to the latest. :meth:`close` flushes."""

    def __init__(self, channel: ProgressChannel | None, key: str | None) -> None:
        self.channel, self.key = channel, key
        self._items: deque[tuple[str, Any]] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="freestems-outbox", daemon=True)
        self._thread.start()

    def event(self, event: dict[str, Any]) -> None:
        if self.channel is None or self.key is None:
            return
        with self._condition:
            if event.get("type") == "progress" and self._items and self._items[-1][0] == "progress":
                self._items.pop()
            self._items.append((str(event.get("type")), event))
            self._condition.notify()

    def usage(self, record: UsageRecord) -> None:
        with self._condition:
            self._items.append(("usage", record))
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._items and not self._closed:
                    self._condition.wait()
                if not self._items:
                    return
                kind, payload = self._items.popleft()
            try:
                if kind == "usage":
                    usage_log().record(payload)
                else:
                    assert self.channel is not None and self.key is not None
                    self.channel.put(self.key, payload)
            except Exception:
                log.warning("sending %s failed", kind, exc_info=True)

    def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        with self._condition:
            if not flush:
                self._items.clear()
            self._closed = True
            self._condition.notify()
        if flush:
            self._thread.join(timeout)


class _LeaseWatch:
    """A call's lease, seen from the container: checked when the input is taken, then every few seconds
    from a thread; :meth:`check` raises :class:`~freestems.errors.Cancelled` once it has lapsed (the web
    container that waits for the job is gone, or let it go)."""

    def __init__(self, store: LeaseStore | None, key: str | None, interval: float) -> None:
        self.store, self.key, self.interval = store, key, interval
        self.lapsed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if store is None or key is None:
            return
        self._look()
        self._thread = threading.Thread(target=self._run, name="freestems-lease", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        assert self.store is not None and self.key is not None
        try:
            expires = self.store.expires(self.key)
        except Exception:  # the store is unreachable: not a reason to stop a job
            log.warning("reading lease %s failed", self.key, exc_info=True)
            return
        if expires is None or time.time() > expires:
            log.warning("the lease of %s lapsed: its web container is gone; stopping the job", self.key)
            self.lapsed = True

    def _run(self) -> None:
        while not self.lapsed and not self._stop.wait(self.interval):
            self._look()

    def check(self) -> None:
        if self.lapsed:
            raise Cancelled("the web tier that asked for this job is gone (its lease lapsed)")

    def close(self) -> None:
        self._stop.set()


class _SeparatorCode:
    """The separator, on a GPU (:class:`Separator`) or on CPU-only containers (:class:`CpuSeparator`):
    ``separate(audio, options) -> zip``, as ``POST /separate`` answers."""

    tier: ClassVar[str] = "gpu"

    @modal.enter(snap=True)
    def load(self) -> None:
        """Before the snapshot: the model on the CPU (on the GPU with GPU snapshots), one job run, and
        the memory that run freed given back."""
        import torch

        from freestems.executors import describe

        _configure_logging()
        begin = time.time()
        self.snapshot_task = os.environ.get("MODAL_TASK_ID")
        self.shape = class_shape(self.tier, modal_settings)
        self.model = load_configured_model()
        # The other served models (FREESTEMS_MODELS): in the snapshot's memory, on the GPU at first use.
        self.others = {name: load_configured_model(name) for name in other_model_names()}
        self.on_device: dict[str, str] = {}
        self.fingerprint = describe(self.model).fingerprint  # on the CPU, before the snapshot: free later
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.fidelity: dict[str, float] = {}
        self.precision_cached = False
        if self.tier == "gpu" and modal_settings.modal_gpu_snapshot and torch.cuda.is_available():
            self._use(torch.device("cuda"))  # only then is a GPU here now
        _warm_up(self.model, self.device, self.precision)
        self.trimmed = trim_memory()
        self.loaded_at = time.time()
        self.inputs = 0
        self.busy = 0.0
        seconds = time.time() - begin
        log.info("model %s loaded and warm on %s in %.1f s", self.model.name, self.device, seconds)

    @modal.enter(snap=False)
    def ready(self) -> None:
        """After the restore: the model on this container's GPU, in its precision. A GPU-class container
        without a usable GPU refuses to start (:class:`NoAccelerator`)."""
        import torch

        from freestems.engine import resolve_device

        begin = time.time()
        self.restored = _was_restored(self.snapshot_task, self.loaded_at)
        device = resolve_device("auto") if self.tier == "gpu" else torch.device("cpu")
        if self.tier == "gpu" and device.type != "cuda":
            reason = gpu_refusal(
                modal_settings.modal_gpu, driver_version(), torch.__version__, torch.version.cuda
            )
            if in_container():
                log.error("%s", reason)
                raise NoAccelerator(reason)
            log.warning("in-process, not in a container: running on %s (%s)", device, reason)
        if in_container() and self.tier == "cpu":
            torch.set_num_threads(max(1, round(2 * self.shape.cpu)))  # a Modal core is 2 hardware threads
        if device.type != self.device.type:
            self._use(device)
        self.ready_at = time.time()
        self.container_start = self.ready_at - (begin if self.restored else _IMPORTED_AT)
        log.info(
            "ready on %s (%s, precision %s%s, fidelity %s) in %.2f s",
            self.device,
            "restored from a snapshot" if self.restored else "cold start",
            self.precision,
            " cached" if self.precision_cached else "",
            {name: round(value, 1) for name, value in self.fidelity.items()},
            self.container_start,
        )

    @modal.exit()
    def stop(self) -> None:
        """The container is going: record its wake-up (start, busy, idle seconds) for the cost."""
        self.record_wake()

    def record_wake(self) -> None:
        """Record this container's life so far as one wake-up (``freestems cost --modal``)."""
        ready_at = getattr(self, "ready_at", None)
        if ready_at is None:
            return
        now = time.time()
        record = WakeRecord(
            task=os.environ.get("MODAL_TASK_ID") or uuid.uuid4().hex[:12],
            tier=self.shape.tier,
            ended_at=now,
            start_seconds=round(self.container_start, 3),
            busy_seconds=round(self.busy, 3),
            idle_seconds=round(max(0.0, now - ready_at - self.busy), 3),
            inputs=self.inputs,
            cost_usd=self.shape.cost(self.container_start + now - ready_at, settings.gpu_prices),
        )
        try:
            usage_log().record_wake(record)
        except Exception:
            log.warning("recording the wake-up failed", exc_info=True)

    def _use(self, device: torch.device) -> None:
        self.model.module.to(device)
        self.device = device
        self.precision, self.fidelity, self.precision_cached = cached_precision(
            self.model,
            device,
            modal_settings.modal_precision,
            precision_cache(),
            fingerprint=self.fingerprint,
        )
        if not self.fidelity or self.precision_cached:  # no probe ran to warm the GPU: warm it now
            _warm_up_device(self.model, device, self.precision)

    @modal.method()
    def separate(
        self,
        audio: bytes,
        options: SeparationOptions | Mapping[str, Any],
        *,
        max_duration: float | None = None,
        filename: str | None = None,
        progress: str | None = None,
        lease: str | None = None,
    ) -> bytes:
        """The zip of the stems of ``audio`` (any format ``POST /separate`` takes, as bytes).

        ``options``: a :class:`~freestems.options.SeparationOptions` (what the web tier sends), or the
        fields of ``POST /separate`` as a dict (``two_stems``, ``shifts``, ``overlap``, ``mp3``,
        ``mp3_bitrate``, ``format``, ``model``, plus ``seed``, ``max_duration``, ``filename`` and
        ``progress``). ``max_duration`` (seconds), ``filename`` (used in messages) and ``progress`` (an event
        key) may also come as keyword arguments; ``lease`` names the caller's lease (the job stops once it
        lapses; none: the job runs to its end).
        Raises :class:`freestems.jobrun.JobFailed` for a bad input or bad options,
        :class:`freestems.errors.Cancelled` when the lease lapsed.
        """
        received, clock = time.time(), time.perf_counter()
        self.inputs += 1
        container_start = self.container_start if self.inputs == 1 else 0.0
        request = parse_request(
            options,
            self.model.sources,
            self.model.name,
            max_duration=max_duration,
            filename=filename,
            progress=progress,
        )
        interval = max(0.5, min(5.0, modal_settings.modal_lease_seconds / 4))
        watch = _LeaseWatch(lease_store() if lease else None, lease, interval)
        outbox = _Outbox(progress_channel() if request.progress else None, request.progress)
        finished = False
        try:
            watch.check()
            outbox.event(
                {"type": "started", "at": received, "container_start": round(container_start, 3),
                 "restored": self.restored, "first_input": self.inputs == 1}
            )  # fmt: skip
            data, result = self._run(audio, request, outbox, watch)
            busy = round(time.perf_counter() - clock, 3)
            timings = {
                **result.timings,
                "container_start": round(container_start, 3),
                "busy_seconds": busy,
                "cost_usd": self.shape.cost(busy, settings.gpu_prices) or 0.0,
            }
            if self.tier == "gpu":
                timings["gpu_seconds"] = busy
            outbox.event({"type": "timings", "timings": timings})
            outbox.usage(self._usage(request, result.audio_seconds, timings))
            finished = True
            return data
        finally:
            self.busy += time.perf_counter() - clock
            watch.close()
            outbox.close(flush=finished)

    def _run(
        self, audio: bytes, request: Request, outbox: _Outbox, watch: _LeaseWatch
    ) -> tuple[bytes, JobOutput]:
        """Run the job in a temporary folder: the zip's bytes and the job's output."""
        from freestems.jobrun import run_job

        def progress(fraction: float) -> None:
            watch.check()
            outbox.event({"type": "progress", "progress": fraction})

        folder = Path(tempfile.mkdtemp(prefix="freestems-job-"))
        try:
            source = folder / f"input{_suffix(request.filename)}"
            source.write_bytes(audio)
            model, precision = self._served(request.options.model)
            result = run_job(
                source,
                folder / "stems.zip",
                model,
                work_dir=folder / "stems",
                options=request.options,
                max_duration=request.max_duration,
                progress=progress,
                device=self.device,
                precision=precision,
                display_name=request.filename,
                preload=True,
                parallel_encode=True,
            )
            return result.archive.read_bytes(), result
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _served(self, name: str | None) -> tuple[LoadedModel, str]:
        """The model a request names (None: the default) on this container's device, and its precision.
        Another served model moves to the GPU on its first use here (its precision probed then)."""
        if name is None or name == self.model.name:
            return self.model, self.precision
        model = self.others.get(name)
        if model is None:
            served = ", ".join((self.model.name, *self.others))
            raise JobFailed(
                FailureCode.INVALID_OPTIONS, f"model {name!r} is not served here; served: {served}"
            )
        if name not in self.on_device:
            model.module.to(self.device)
            precision = "fp32"
            if self.device.type == "cuda":  # probed once per model, GPU and torch (the precision cache)
                precision, _, _ = cached_precision(
                    model, self.device, modal_settings.modal_precision, precision_cache()
                )
            self.on_device[name] = precision
        return model, self.on_device[name]

    def _usage(self, request: Request, audio_seconds: float, timings: dict[str, float]) -> UsageRecord:
        """What this call used, for ``freestems cost --modal`` (the job id is the progress key's head)."""
        job_id = (request.progress or "").rsplit("-", 1)[0] or uuid.uuid4().hex[:16]
        return UsageRecord(
            job_id=job_id,
            finished_at=time.time(),
            model=request.options.model or self.model.name,
            gpu=self.shape.gpu,
            audio_seconds=audio_seconds,
            gpu_seconds=timings.get("gpu_seconds"),
            cost_usd=timings["cost_usd"],
            timings=timings,
        )


GPU_CLASS_OPTIONS = gpu_class_options(modal_settings)
CPU_CLASS_OPTIONS = cpu_class_options(modal_settings)
"""What :class:`Separator` and :class:`CpuSeparator` are declared with, kept as plain values so they can
be checked without Modal."""


@app.cls(**GPU_CLASS_OPTIONS)
class Separator(_SeparatorCode):
    """The separator on a GPU: refuses to start without one."""

    tier = "gpu"


@app.cls(**CPU_CLASS_OPTIONS)
class CpuSeparator(_SeparatorCode):
    """The same separator on CPU-only containers (``FREESTEMS_MODAL_TIER=cpu`` or ``overflow``)."""

    tier = "cpu"


def _was_restored(snapshot_task: str | None, loaded_at: float) -> bool:
    """Whether this container was restored from a snapshot another container took (Modal gives a restored
    container a new task id; without ids to compare, a long gap since the snapshot says so)."""
    task = os.environ.get("MODAL_TASK_ID")
    if snapshot_task and task:
        return task != snapshot_task
    return time.time() - loaded_at > 30.0


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _warm_up(model: LoadedModel, device: torch.device, precision: str) -> None:
    """One short job end to end: decoding, the model, the MP3 encoders, the zip (imports and lazy
    initialisation happen here, before the snapshot, instead of in the first request)."""
    import numpy as np

    from freestems.audio import encode
    from freestems.jobrun import run_job

    folder = Path(tempfile.mkdtemp(prefix="freestems-warm-up-"))
    try:
        rng = np.random.default_rng(0)
        noise = (0.05 * rng.standard_normal((2, int(WARM_UP_SECONDS * model.sample_rate)))).astype(np.float32)
        source = encode(noise, folder / "warm-up.mp3", "mp3", bitrate=128)
        run_job(
            source,
            folder / "warm-up.zip",
            model,
            work_dir=folder / "stems",
            options=SeparationOptions(format="mp3", mp3_bitrate=192),
            device=device,
            precision=precision,
            preload=True,
            parallel_encode=True,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _warm_up_device(model: LoadedModel, device: torch.device, precision: str) -> None:
    """One chunk through the model on ``device`` (CUDA context, kernels and FFT plans)."""
    import numpy as np

    from freestems.engine import separate

    separate(np.zeros((2, model.segment), np.float32), model, device=device, precision=precision)


def _configure_logging() -> None:
    if not modal.is_local():  # in a container: our INFO lines go to `modal app logs`
        logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------- web tier


def web_function_options(settings: Settings, deployment: ModalSettings) -> dict[str, Any]:
    """The ``@app.function`` arguments of :func:`web`, from the settings."""
    # A WebSocket is one input until the server closes it at socket_lifetime; a POST /separate is one input
    # for its upload and its job. The timeout is above both, so Modal never ends an input the server would.
    longest = max(settings.socket_lifetime, settings.upload_timeout + deployment.modal_timeout)
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


def web_settings(in_container: bool) -> Settings:
    """The web tier's settings: in a container its data folder is the Volume's mount."""
    changes: dict[str, Any] = {"workers": executor_workers(modal_settings)}
    if in_container:
        changes["data_dir"] = Path(DATA_MOUNT)
    return settings.replace(**changes)


def make_executor() -> ModalExecutor:
    """The web tier's executor: jobs to the GPU class, the CPU class or both (``FREESTEMS_MODAL_TIER``),
    each call with a lease this web container renews while it waits."""
    tier = modal_settings.modal_tier
    return ModalExecutor(
        remote_calls(),
        progress_channel(),
        model_description,
        gpu=modal_settings.modal_gpu,
        workers=executor_workers(modal_settings),
        cpu_calls=cpu_calls() if tier != "gpu" else None,
        tier=tier,
        overflow_backlog=modal_settings.modal_overflow_backlog,
        leases=lease_store(),
        lease_seconds=modal_settings.modal_lease_seconds,
    )


WEB_FUNCTION_OPTIONS = web_function_options(settings, modal_settings)
WEB_CONCURRENCY = {"max_inputs": modal_settings.modal_web_max_inputs}
"""What :func:`web` is declared with (``@app.function``, ``@modal.concurrent``), kept as plain values."""


@app.function(**WEB_FUNCTION_OPTIONS)
@modal.concurrent(**WEB_CONCURRENCY)
@modal.asgi_app()
def web() -> FastAPI:
    """The service (``POST /separate``, jobs, the session WebSocket, the page), jobs on the GPU class."""
    from freestems.service import create_app

    _configure_logging()
    return create_app(web_settings(not modal.is_local()), executor=make_executor(), state=shared_state())


@app.local_entrypoint()
def main(audio: str, out: str = "stems.zip", two_stems: str = "", wav: bool = False) -> None:
    """``modal run -m freestems.deploy.modal_app --audio song.mp3 [--two-stems vocals] [--out F]``."""
    options = SeparationOptions(two_stems=two_stems or None, format="wav" if wav else "mp3")
    clock = time.perf_counter()
    data = Separator().separate.remote(Path(audio).read_bytes(), options, filename=Path(audio).name)
    Path(out).write_bytes(data)
    print(f"{out}: {len(data)} bytes in {time.perf_counter() - clock:.1f} s")


__all__ = [
    "Separator",
    "app",
    "image",
    "modal_settings",
    "settings",
    "web",
]
