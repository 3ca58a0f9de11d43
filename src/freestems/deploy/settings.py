"""The Modal deployment's own settings: ``FREESTEMS_MODAL_*`` variables, read where ``modal deploy`` runs.

Apart from the service's :class:`~freestems.service.settings.Settings` (which the web tier and the GPU
containers use as well), read and checked the same way (:class:`~freestems.service.settings.EnvSettings`),
and importable without the ``modal`` package (``freestems cost --modal`` needs the app's name).
The GPU prices stay with the service's settings: the service prices its own usage records with them too.
"""

from __future__ import annotations

from pydantic import Field

from freestems.executors.modal import Tier
from freestems.rules import Precision
from freestems.service.settings import AtLeastOne, CommaList, EnvSettings, Name, Positive

WEB_CPU = 1.0
"""Cores of a web container (CPU only: it loads no model)."""
WEB_SCALEDOWN_WINDOW = 300
"""Seconds the (CPU-only, cheap) web container stays up without a request or an open WebSocket."""


class ModalSettings(EnvSettings):
    """What ``modal deploy`` declares: the app, its GPU class and its web tier."""

    modal_app_name: Name = "freestems"
    """Name of the deployed Modal app (its usage log is the Dict ``<name>-usage``)."""
    modal_gpu: Name = "L4"
    """GPU type of the separation class, as Modal names it (``T4``, ``L4``, ``A10G``, ``L40S``, ``H100``...).
    L4: a light model on a cheap, modern GPU (bf16, fp16 tensor cores, 24 GB); compare with
    ``freestems cost`` after a few songs on another type."""
    modal_region: CommaList = ()
    """Regions the GPU class may run in (comma list); empty: anywhere (the fastest to find a GPU)."""
    modal_scaledown_window: int = Field(10, ge=2, le=3600)
    """Seconds an idle GPU container stays up (Modal's range: 2 to 3600). Idle seconds are billed; the
    window that bounds them is the container's start time (:func:`freestems.cost.scaledown_window`: 10 s
    from the estimated start, until ``freestems cost`` shows the measured one)."""
    modal_max_containers: AtLeastOne = 10
    """Most GPU containers at once (bounds the spend); also how many jobs the web tier runs at once."""
    modal_timeout: int = Field(900, ge=10, le=86400)
    """Seconds one separation may take on the GPU before Modal stops it."""
    modal_cpu: Positive = 4.0
    """CPU cores of a GPU container: decoding and the MP3 encoders (one per stem) run there."""
    modal_gpu_snapshot: bool = False
    """Also snapshot GPU memory (Modal's experimental GPU snapshots): the model is on the GPU and warm
    right after a restore. Off: the snapshot holds the model on the CPU and it moves to the GPU after."""
    modal_precision: Precision = "auto"
    """Precision on the GPU: ``auto`` (fp16, else bf16, if a probe shows the output stays faithful; else
    fp32), ``fp32``, ``fp16`` or ``bf16``."""
    modal_secret_name: Name = "freestems"
    """The ``modal.Secret`` holding ``FREESTEMS_HMAC_SECRET`` for the web tier."""
    modal_web_max_inputs: AtLeastOne = 500
    """Requests and WebSockets one web container holds at once (``@modal.concurrent``)."""

    # -- web tier: containers and memory (branch scaleout) --
    modal_web_max_containers: AtLeastOne = 10
    """Most web containers at once. They share jobs, keys and socket slots (``modal.Dict`` s
    ``<app>-state-*``) and the data Volume ``<app>-data``, so any of them serves any request."""
    modal_request_seconds: int = Field(120, ge=10, le=150)
    """Seconds one HTTP request to the web tier may take, upload included: Modal ends a web request at 150 s
    (with a ``303`` that a page cannot follow across origins). The web tier sets ``FREESTEMS_UPLOAD_TIMEOUT``
    to at most this (a 100 MB upload then needs about 6.7 Mbit/s upstream; 150 s: 5.3) and
    ``FREESTEMS_SEPARATE_WAIT`` to it: a ``POST /separate`` whose job is not done by then answers ``202``
    with the job to follow, as ``POST /jobs`` does."""
    modal_web_memory: int = Field(1024, ge=256, le=65536)
    """MiB of memory requested per web container (uploads stream to the Volume; result zips are written
    there by the executor, not held in memory while served)."""
    modal_weights_sha256: CommaList = ()
    """Pins of the weights the image build downloads: ``FILE=SHA256`` entries (the build prints one line per
    file to copy here). A file whose digest differs fails the build; a file without a pin is trusted as
    first downloaded (today's catalog entries carry no sha256; the Demucs file names carry a prefix of
    theirs, checked)."""
    modal_device_exports: bool = True
    """Export the served models that can run in the visitor's browser (SCNet; ``freestems export``) while the
    image is built, into ``/device``, the web tier's ``FREESTEMS_DEVICE_DIR``: the page then offers to
    separate on the device, and the web tier serves the files at hash-named URLs. It adds the ``export``
    extra to the image (see "Separating on the device" in the Modal docs). Off: no export, no such layer."""
    modal_torch: str = "torch==2.13.0"
    """The torch requirement of the image."""
    modal_torch_index: str = "https://download.pytorch.org/whl/cu126"
    """The package index of torch: the CUDA 12.6 build, which Modal's driver runs (575.57.08, CUDA 12.9 at
    most; PyPI's torch 2.13.0 is a CUDA 13.0 build, which needs driver 580+). Empty: PyPI."""

    # ------------------------------------------------------ GPU/CPU tiers and cost (branch modal, issue 13)
    modal_tier: Tier = "gpu"
    """Where jobs run: ``gpu`` (the GPU class), ``cpu`` (the CPU class: same code, CPU-only containers), or
    ``overflow``: the GPU class, except a job goes to the CPU class when the GPU class already has
    ``FREESTEMS_MODAL_OVERFLOW_BACKLOG`` or more inputs waiting for a container (Modal's backlog, read
    when the job is dispatched)."""
    modal_memory: int = Field(4096, ge=128, le=262144)
    """MiB of memory the GPU class reserves (the decoded upload of a long song, the stems, the zip)."""
    modal_cpu_class_cpu: Positive = 2.0
    """Physical cores of a CPU-class container (the model runs on them)."""
    modal_cpu_class_memory: int = Field(3072, ge=128, le=262144)
    """MiB of memory a CPU-class container reserves."""
    modal_cpu_max_containers: AtLeastOne = 20
    """Most CPU-class containers at once."""
    modal_cpu_scaledown_window: int = Field(5, ge=2, le=3600)
    """Seconds an idle CPU-class container stays up (its start time, as for the GPU class)."""
    modal_overflow_backlog: AtLeastOne = 2
    """With ``FREESTEMS_MODAL_TIER=overflow``: GPU inputs waiting at which a new job goes to the CPU."""
    modal_lease_seconds: int = Field(30, ge=2, le=3600)
    """A job's lease: the web tier renews it while it waits for the job; a GPU/CPU container whose job's
    lease has not been renewed for this long stops the job (its web container is gone)."""
