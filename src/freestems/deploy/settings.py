"""The Modal deployment's own settings: ``FREESTEMS_MODAL_*`` variables, read where ``modal deploy`` runs.

Apart from the service's :class:`~freestems.service.settings.Settings` (which the web tier and the GPU
containers use as well), read and checked the same way (:class:`~freestems.service.settings.EnvSettings`),
and importable without the ``modal`` package (``freestems cost --modal`` needs the app's name).
The GPU prices stay with the service's settings: the service prices its own usage records with them too.
"""

from __future__ import annotations

from pydantic import Field

from freestems.separate import Precision
from freestems.service.settings import AtLeastOne, CommaList, EnvSettings, Name, Positive


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
    modal_scaledown_window: int = Field(15, ge=2, le=3600)
    """Seconds an idle GPU container stays up (Modal's range: 2 to 3600). Idle seconds are billed: short,
    since a restore from the memory snapshot is quick."""
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
    modal_web_memory: int = Field(1024, ge=256, le=65536)
    """MiB of memory requested per web container (uploads stream to the Volume; result zips are written
    there by the executor, not held in memory while served)."""
    modal_torch: str = "torch==2.13.0"
    """The torch requirement of the image (PyPI's Linux wheels are CUDA builds)."""
    modal_torch_index: str = ""
    """A package index for torch (e.g. ``https://download.pytorch.org/whl/cu128``); empty: PyPI."""
