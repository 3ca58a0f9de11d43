"""freestems on Modal: the app, its GPU and CPU separator classes, and the web function in front of them.

    modal deploy -m freestems.deploy.modal_app      # settings come from FREESTEMS_* where this runs

This is the module Modal deploys and runs: it creates the ``modal.App`` and registers on it, when imported,
every class and function of the deployment. What they are made of lives beside it, each module with one
job, none importing this one: :mod:`~freestems.deploy.image` (the image: requirements, the weights baked
into ``/weights``, the containers' environment), :mod:`~freestems.deploy.probe` (the GPU refusal, the
precision probe and its cache, the warm-ups, the memory given back before the snapshot),
:mod:`~freestems.deploy.call` (one call: its request parsed, its events sent, its lease watched),
:mod:`~freestems.deploy.stores` (the app's Dicts, Queues and Volume) and :mod:`~freestems.deploy.web_tier`
(the web function's options, settings and executor).

Nothing here is a second copy of the engine or the service: the classes' method runs
:func:`freestems.jobrun.run_job` (the function the in-process worker runs), and the web function serves
:func:`freestems.service.create_app` with a :class:`~freestems.executors.modal.ModalExecutor`.

**Settings.** This module reads ``Settings.from_env()`` (the service's) and ``ModalSettings.from_env()``
(the deployment's, :mod:`freestems.deploy.settings`) when it is imported: by ``modal deploy`` on the
deployer's machine (the ``FREESTEMS_*`` variables there decide the GPU type, scale-down window and every
limit), and again in each container, where the image's environment carries the same values (see
:func:`~freestems.deploy.image.image_environment`; machine-local ones such as paths and the HMAC secret are
left out). The other modules read no environment: they are given these settings.

**GPU and CPU classes.** :class:`Separator` (on a GPU) and :class:`CpuSeparator` (CPU-only containers)
are the same code (:class:`_SeparatorCode`) with a memory snapshot. ``@modal.enter(snap=True)`` loads
the model on the CPU, runs one small job end to end (decode, model, MP3 encoders, zip), so imports and
lazy initialisation are in the snapshot, and gives the memory that freed back
(:func:`~freestems.deploy.probe.trim_memory`); ``@modal.enter(snap=False)`` moves the model to the GPU and
picks the precision (fp16, else bf16, if a probe shows the output stays faithful; the answer is kept in the
Dict ``<app>-precision``, so the probe runs once per model, GPU type and torch). A GPU-class container
whose torch sees no GPU refuses to start (:class:`~freestems.deploy.probe.NoAccelerator`, naming the driver
and the wheel's CUDA). With ``FREESTEMS_MODAL_GPU_SNAPSHOT=1`` (Modal's experimental GPU snapshots) all of
that happens before the snapshot and a restored container is ready at once. Each call checks its lease
(Dict ``<app>-leases``) and stops once the web tier stopped renewing it; each container records its
wake-up when it scales down.

**Where the seconds go.** A job's GPU container decodes the whole upload first (one pass, on its CPU
cores), then runs the model while one MP3 encoder per stem works on other cores, then zips: compressed
audio in, the zip of encoded stems out. Each call records its timings, ``busy_seconds`` (the method's
wall time) and ``cost_usd`` (counted whole: :mod:`freestems.cost`) in the Dict ``<app>-usage`` (read by
``freestems cost --modal``) and sends them, with ``started`` and ``progress`` events, to the caller
through the Queue ``<app>-progress`` (see :mod:`freestems.executors.modal`).

**Web tier.** The function ``web``: up to ``FREESTEMS_MODAL_WEB_MAX_CONTAINERS`` CPU-only containers
sharing their state through Modal's Dicts, a Queue and a Volume (see :mod:`freestems.deploy.web_tier`).
It never imports torch.

For tests, :data:`stores` (its methods ``progress_channel``, ``usage_log``, ``lease_store``,
``precision_cache`` and ``shared_state``), :func:`remote_calls` and :func:`cpu_calls` are the only ways out
to Modal's cloud, and :func:`in_container` says where the code runs; replacing them runs everything
in-process (``Separator().separate.local``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import modal

from freestems.cost import Shape, UsageRecord, WakeRecord
from freestems.errors import FailureCode
from freestems.executors.base import ModelDescription
from freestems.executors.modal import ModalCalls, ModalExecutor, RemoteCalls
from freestems.jobrun import JobFailed, JobOutput
from freestems.options import SeparationOptions
from freestems.service.settings import Settings

from .call import LeaseWatch, Outbox, Request, parse_request
from .image import WEIGHTS_DIR, build_image, load_configured_model, other_model_names, served_descriptions
from .probe import (
    NoAccelerator,
    cached_precision,
    driver_version,
    gpu_refusal,
    trim_memory,
    warm_up,
    warm_up_device,
)
from .settings import ModalSettings
from .stores import USAGE_FOLDER, Stores, roll_up_forever
from .web_tier import modal_executor, web_function_options, web_settings

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

    from freestems.contract import LoadedModel

log = logging.getLogger("freestems.modal")

_IMPORTED_AT = time.time()
"""When this module was imported: the start of a container that was not restored from a snapshot."""


# ------------------------------------------------------------------------------------------- settings


def serving_settings(environ: Mapping[str, str]) -> Settings:
    """The settings of the deployment: ``environ``'s, seen as the public server it is.

    The host is ``0.0.0.0``, so ``FREESTEMS_AUTH=none`` needs ``FREESTEMS_ALLOW_PUBLIC_NOAUTH`` here too.
    ``FREESTEMS_TRUST_PROXY`` stays off by default: Modal hands an ASGI app the client's address as the
    connection's peer (``scope["client"]``), while an ``X-Forwarded-For`` header may be the client's own.
    """
    return Settings.from_env(environ, host="0.0.0.0")


settings = serving_settings(os.environ)
modal_settings = ModalSettings.from_env(os.environ)

app = modal.App(modal_settings.modal_app_name, include_source=False)
image = build_image(settings, modal_settings, os.environ)
stores = Stores(modal_settings.modal_app_name)
"""The app's Dicts, Queues and Volume: the ways out to Modal's cloud that a test replaces."""


# ------------------------------------------------------------------------------------------- the ways out


def remote_calls() -> RemoteCalls:
    """How the web tier reaches the GPU class."""
    return ModalCalls(Separator().separate)


def cpu_calls() -> RemoteCalls:
    """How the web tier reaches the CPU class."""
    return ModalCalls(CpuSeparator().separate)


def in_container() -> bool:
    """Whether this runs in a Modal container (not in-process, e.g. ``.local()`` in a test)."""
    return not modal.is_local()


def model_description() -> tuple[ModelDescription, ...]:
    """What the GPU class runs, for the web tier (every served model, the default first): written at build
    time (no model is loaded in the web container), else (running in-process) computed from the models."""
    return served_descriptions(settings, WEIGHTS_DIR if in_container() else None)


def make_executor() -> ModalExecutor:
    """The web tier's executor (:func:`~freestems.deploy.web_tier.modal_executor`) on this app's classes
    and stores."""
    return modal_executor(modal_settings, stores, remote_calls, cpu_calls, model_description)


# ------------------------------------------------------------------------------------------- the classes


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


class _SeparatorCode:
    """The separator, on a GPU (:class:`Separator`) or on CPU-only containers (:class:`CpuSeparator`):
    ``separate(audio, options) -> zip``, as ``POST /separate`` answers."""

    tier: ClassVar[str] = "gpu"

    @modal.enter(snap=True)
    def load(self) -> None:
        """Before the snapshot: the model on the CPU (on the GPU with GPU snapshots), one job run, and
        the memory that run freed given back.

        Without GPU snapshots nothing here may ask CUDA anything (not even ``torch.cuda.is_available()``):
        no GPU is attached before a CPU memory snapshot, and torch keeps the device count of its first
        query, so a restored container would see none and refuse to start (:class:`NoAccelerator`)."""
        import torch

        from freestems.executors import describe

        _configure_logging()
        begin = time.time()
        self.snapshot_task = os.environ.get("MODAL_TASK_ID")
        self.shape = class_shape(self.tier, modal_settings)
        self.model = load_configured_model(settings)
        # The other served models (FREESTEMS_MODELS): in the snapshot's memory, on the GPU at first use.
        self.others = {name: load_configured_model(settings, name) for name in other_model_names(settings)}
        self.on_device: dict[str, str] = {}
        self.fingerprint = describe(self.model).fingerprint  # on the CPU, before the snapshot: free later
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.fidelity: dict[str, float] = {}
        self.precision_cached = False
        if self.tier == "gpu" and modal_settings.modal_gpu_snapshot and torch.cuda.is_available():
            self._use(torch.device("cuda"))  # only then is a GPU here now
        warm_up(self.model, self.device, self.precision)
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
        self.wake_seconds = self.container_start  # until the first input says when it was spawned
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
        start = max(self.container_start, getattr(self, "wake_seconds", 0.0))  # the restore too, if timed
        record = WakeRecord(
            task=os.environ.get("MODAL_TASK_ID") or uuid.uuid4().hex[:12],
            tier=self.shape.tier,
            ended_at=now,
            start_seconds=round(start, 3),
            busy_seconds=round(self.busy, 3),
            idle_seconds=round(max(0.0, now - ready_at - self.busy), 3),
            inputs=self.inputs,
            cost_usd=self.shape.cost(start + now - ready_at, settings.gpu_prices),
        )
        try:
            stores.usage_log().record_wake(record)
        except Exception:
            log.warning("recording the wake-up failed", exc_info=True)

    def _use(self, device: torch.device) -> None:
        self.model.module.to(device)
        self.device = device
        self.precision, self.fidelity, self.precision_cached = cached_precision(
            self.model,
            device,
            modal_settings.modal_precision,
            stores.precision_cache(),
            fingerprint=self.fingerprint,
        )
        if not self.fidelity or self.precision_cached:  # no probe ran to warm the GPU: warm it now
            warm_up_device(self.model, device, self.precision)

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
        spawned_at: float | None = None,
    ) -> bytes:
        """The zip of the stems of ``audio`` (any format ``POST /separate`` takes, as bytes).

        ``options``: a :class:`~freestems.options.SeparationOptions` (what the web tier sends), or the
        fields of ``POST /separate`` as a dict (``two_stems``, ``shifts``, ``overlap``, ``mp3``,
        ``mp3_bitrate``, ``format``, ``model``, plus ``seed``, ``max_duration``, ``filename`` and
        ``progress``). ``max_duration`` (seconds), ``filename`` (used in messages) and ``progress`` (an event
        key) may also come as keyword arguments; ``lease`` names the caller's lease (the job stops once it
        lapses; none: the job runs to its end); ``spawned_at`` (the caller's clock when it spawned the call)
        times a wake-up from the spawn, the restore included (``wake_seconds``).
        Raises :class:`freestems.jobrun.JobFailed` for a bad input or bad options,
        :class:`freestems.errors.Cancelled` when the lease lapsed.
        """
        received, clock = time.time(), time.perf_counter()
        self.inputs += 1
        container_start = self.container_start if self.inputs == 1 else 0.0
        if self.inputs == 1 and spawned_at is not None:  # the restore happened before ready() began
            self.wake_seconds = max(self.container_start, min(received - spawned_at, 3600.0))
        request = parse_request(
            options,
            self.model.sources,
            self.model.name,
            settings,
            max_duration=max_duration,
            filename=filename,
            progress=progress,
        )
        interval = max(0.5, min(5.0, modal_settings.modal_lease_seconds / 4))
        watch = LeaseWatch(stores.lease_store() if lease else None, lease, interval)
        channel = stores.progress_channel() if request.progress else None
        outbox = Outbox(channel, request.progress, stores.usage_log())
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
                **({"wake_seconds": round(self.wake_seconds, 3)} if self.inputs == 1 else {}),
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
        self, audio: bytes, request: Request, outbox: Outbox, watch: LeaseWatch
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
                    model, self.device, modal_settings.modal_precision, stores.precision_cache()
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


def _configure_logging() -> None:
    if not modal.is_local():  # in a container: our INFO lines go to `modal app logs`
        logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------- web function


WEB_FUNCTION_OPTIONS = web_function_options(settings, modal_settings, image, stores.data_volume)
WEB_CONCURRENCY = {"max_inputs": modal_settings.modal_web_max_inputs}
"""What :func:`web` is declared with (``@app.function``, ``@modal.concurrent``), kept as plain values."""


@app.function(**WEB_FUNCTION_OPTIONS)
@modal.concurrent(**WEB_CONCURRENCY)
@modal.asgi_app()
def web() -> FastAPI:
    """The service (``POST /separate``, jobs, the session WebSocket, the page), jobs on the GPU class."""
    from freestems.service import create_app

    _configure_logging()
    served = web_settings(settings, modal_settings, in_container=not modal.is_local())
    state = stores.shared_state()
    if in_container() and state is not None:  # the usage log outlives Modal's 7 days, on the data Volume
        folder = served.data_dir / USAGE_FOLDER
        roll_up = (stores.usage_dict, folder, state.commit, state.container)
        threading.Thread(target=roll_up_forever, args=roll_up, name="freestems-usage", daemon=True).start()
    return create_app(served, executor=make_executor(), state=state)


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
