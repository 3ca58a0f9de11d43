"""A server that separates only on the visitor's device (``FREESTEMS_DEVICE_ONLY``): it sends files, and
runs nothing.

Such a server costs its operator bandwidth and nothing else, and cannot be made to run up a compute bill: the
page separates in the browser (:mod:`.device`), and everything that would start a separation here is
refused with 403 ``device_only`` (:func:`refusal`: ``POST /separate``, ``POST /jobs``, ``WS /session``).

It needs no model in memory either. :class:`DeviceOnlyExecutor` stands where the in-process executor would
be: it describes the served models from their exports' manifests (their stems; the catalog's title for a
catalog name), so ``GET /config`` and the page know them, and never downloads, loads or imports a model
(torch is never imported). It refuses to be made (:func:`describe_exports`) unless every served model has an
export in ``device_dir`` and the in-browser runtime is installed, with a message saying what to do. A job
left unfinished in the store by an earlier run of the same data folder (before the switch) ends ``failed``
with a message saying why, as its owner's page will show.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freestems.errors import FailureCode
from freestems.executors import ModelDescription
from freestems.executors.pool import Running, WorkerPool
from freestems.jobrun import JobFailed

from . import device
from .errors import ServiceError, forbidden
from .settings import Settings, SettingsError

RUNTIME_ENTRY = "onnxruntime-web/ort.wasm.min.mjs"
"""The runtime's file the page loads first (under :data:`.device.VENDOR`): there, the runtime is installed."""
REFUSED = (
    "this server separates only on your own device: open its page in a browser to separate a song there "
    "(nothing is uploaded); it runs no separation itself"
)


def refusal() -> ServiceError:
    """403 ``device_only``: what a request that would start a separation here is answered."""
    return forbidden("device_only", REFUSED)


def describe_exports(settings: Settings, names: tuple[str, ...] | None = None) -> list[ModelDescription]:
    """The served models (``names``, else the settings': ``models``, ``model`` or the catalog's default, each
    the name of a folder in ``device_dir``) as their exports describe them.

    Raises:
        SettingsError: a model has no export, or the runtime is not installed; the message says what to run.
    """
    names = names or settings.served_models
    runtime = device.VENDOR / RUNTIME_ENTRY
    if not runtime.is_file():
        raise SettingsError(
            f"{Settings.variable('device_only')}: the in-browser runtime is not installed ({runtime} is "
            "missing), so no visitor could separate anything; run scripts/fetch_web_deps.sh (it needs npm) "
            "and start the server again"
        )
    described = []
    for name in names:
        folder = device.export_folder(settings, name)
        manifest = _manifest(folder) if folder is not None else None
        if manifest is None:
            raise SettingsError(
                f"{Settings.variable('device_only')}: model {name} has no export in {settings.device_dir} "
                f"(a readable {settings.device_dir}/{name}/{device.MANIFEST}); write one with "
                f"`freestems export {name} -o {settings.device_dir}/{name}`, or serve only exported models "
                f"({Settings.variable('models')})"
            )
        described.append(_description(name, manifest))
    return described


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The export's manifest (:func:`~.device.read_manifest`), if it names its stems."""
    manifest = device.read_manifest(folder)
    model = manifest.get("model") if manifest is not None else None
    stems = model.get("stems") if isinstance(model, dict) else None
    if not isinstance(stems, list) or not stems or not all(isinstance(stem, str) for stem in stems):
        return None
    return manifest


def _description(name: str, manifest: Mapping[str, Any]) -> ModelDescription:
    from freestems.models.catalog import CATALOG

    info = CATALOG.get(name)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:32]
    return ModelDescription(
        name=name,
        sources=tuple(manifest["model"]["stems"]),
        fingerprint=f"device-{digest}",
        title=info.title if info else "",
    )


class DeviceOnlyExecutor(WorkerPool):
    """The executor of a device-only server: the served models described from their exports; every item
    ends ``failed`` (only a job an earlier run left in the store can get here: the routes take none)."""

    thread_name = "freestems-device-only"

    def __init__(self, settings: Settings, names: tuple[str, ...] | None = None) -> None:
        super().__init__(workers=1)
        self.described = describe_exports(settings, names)

    def _prepare(self) -> list[ModelDescription]:
        return self.described

    def _run(self, running: Running) -> Mapping[str, float]:
        raise JobFailed(
            FailureCode.INVALID_OPTIONS,
            "this server now separates only on your own device: open its page and separate the song there "
            "(nothing is uploaded)",
        )
