"""The image of the Modal deployment: what it installs, what it bakes into ``/weights``, and how a
container reads that back.

It exists so that :mod:`freestems.deploy.modal_app` declares the image in one line
(:func:`build_image`) and the recipe, which decides what a deploy rebuilds, is read and tested on its own.

**Layers.** Debian slim, torch as the CUDA 12.6 build (``FREESTEMS_MODAL_TORCH_INDEX``: Modal's driver,
575.57.08, runs CUDA 12.x wheels, not PyPI's CUDA 13 one), freestems' dependencies (read from its installed
metadata, so ``pyproject.toml`` stays the one list, with the extra of every model family served, such as
``demucs`` for HT-Demucs, each pinned to the version installed here:
:func:`requirements`), then a build step that runs the catalog's download code
(:func:`freestems.models.ensure_weights`) into ``/weights`` and writes the model's description there
(:func:`bake_weights`; its arguments carry the catalog's facts, :func:`catalog_facts`, so a catalog change
rebuilds it), then, where a served model can run in the browser (``FREESTEMS_MODAL_DEVICE_EXPORTS``), the
``export`` extra and a step that exports those models into :data:`DEVICE_DIR`, the web tier's
``device_dir`` (:func:`bake_device_exports`), and last the ``freestems`` source itself (mounted, so a code
change does not rebuild the layers above). Nothing is downloaded at request time: the containers load with
``download=False`` (:func:`load_configured_model`).

**Environment.** The containers read the same ``FREESTEMS_*`` settings as the deployer: the image carries
them (:func:`image_environment`), less the machine-local ones (paths, the HMAC secret).

Nothing here imports torch at module import (the web tier imports this module too), and nothing reads the
environment: every function is given the settings it needs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal

from freestems.executors.base import ModelDescription
from freestems.service.settings import PREFIX, Settings

from .settings import ModalSettings

if TYPE_CHECKING:
    from freestems.contract import LoadedModel

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
"""The image's Python is the deployer's: errors and values cross between the two pickled."""
WEIGHTS_DIR = "/weights"
DEVICE_DIR = "/device"
"""Where the image's build exports the served models that run in the browser, one folder per model: the web
tier's ``device_dir`` (:func:`freestems.deploy.web_tier.web_settings`)."""
DESCRIPTION_FILE = "model.json"
"""The model's description (name, sources, fingerprint), written into ``/weights`` at build time."""

LOCAL_ONLY = frozenset(
    {"HOST", "PORT", "DATA_DIR", "HMAC_SECRET", "CACHE", "MODEL_FILE", "MODEL_CONFIG", "DEVICE", "WORKERS",
     "THREADS", "DEVICE_DIR"}
)  # fmt: skip
"""Settings that describe the deployer's machine, not the containers: never put in the image."""


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


FAMILY_EXTRAS: dict[str, str] = {"htdemucs": "demucs"}
"""The package extra a served model family needs beyond freestems' dependencies and its ``serve`` extra:
HT-Demucs runs the ``demucs`` package's own classes; SCNet, MDX23C and the RoFormers are freestems' own
code. The ``export`` extra (ONNX) is never needed to serve."""


def model_families(models: Iterable[str]) -> set[str]:
    """The families of the catalog models ``models``: of every network each one runs (the members of an
    ensemble, ``a+b``, a chain ``a>stem:b`` or a preset, however nested:
    :func:`~freestems.models.served.network_entries`)."""
    from freestems.models.served import network_entries

    return {info.architecture for model in models for info in network_entries(model.strip())}


def served_families(settings: Settings) -> set[str]:
    """The families of every model ``settings`` serve: the catalog's, or a model file's (a Demucs ``.th``
    without a config is HT-Demucs)."""
    families = model_families([*filter(None, [default_model_name(settings)]), *other_model_names(settings)])
    file = settings.model_file
    if file is not None and file.suffix == ".th" and settings.model_config_file is None:
        families.add("htdemucs")
    return families


def _declared(extras: set[str]) -> list[tuple[str, str]]:
    """(name, spec) of freestems' dependencies and those of ``extras``, from the installed metadata."""
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
        if marker and marker not in {f'extra=="{extra}"' for extra in extras}:
            continue
        name = re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0].lower()
        if name in ("torch", "freestems"):
            continue
        found.append((name, spec.strip()))
    return found


def family_requirements(families: Iterable[str]) -> list[str]:
    """The names of the packages the extras of ``families`` declare (:data:`FAMILY_EXTRAS`)."""
    extras = {FAMILY_EXTRAS[family] for family in families if family in FAMILY_EXTRAS}
    return sorted({name for name, _ in _declared(extras)} - {name for name, _ in _declared(set())})


def requirements(models: Iterable[str] = (), families: Iterable[str] = ()) -> list[str]:
    """freestems' dependencies, its ``serve`` extra, and the extra of every family served (the catalog
    ``models``, and ``families``: :data:`FAMILY_EXTRAS`, so an HT-Demucs model brings ``demucs``), from
    the installed package's metadata, no torch, each pinned to the version installed where ``modal deploy``
    runs (``name==version``: the image runs what the deployer tested, and a new release upstream does not
    change it unseen)."""
    wanted = model_families(models) | set(families)
    extras = {"serve"} | {FAMILY_EXTRAS[family] for family in wanted if family in FAMILY_EXTRAS}
    found = set()
    for name, spec in _declared(extras):
        try:
            found.add(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.add(spec)  # not installed here: the declared range, as declared
    return sorted(found)


def catalog_facts(model: str | None, others: Sequence[str] = ()) -> str:
    """What the weights step bakes, as the catalog says it today: every entry of ``model`` (the default
    model if None; each model of a preset, an ensemble ``a+b`` or a chain ``a>stem:b``:
    :func:`~freestems.models.served.catalog_entries`) and of the ``others`` served, with its URLs, sizes,
    sha256 and config.

    It is an argument of the build step, so it is part of what Modal hashes to cache that layer: a catalog
    change (a URL, a checksum, a config, the default model) rebuilds it; nothing else does.
    """
    from freestems.models import DEFAULT_MODEL
    from freestems.models.served import catalog_entries

    entries = {
        info.name: dataclasses.asdict(info)
        for name in (model or DEFAULT_MODEL, *others)
        for info in catalog_entries(name.strip())
    }
    facts = {"model": model or DEFAULT_MODEL, "others": list(others), "entries": entries}
    return json.dumps(facts, sort_keys=True, default=str)


def default_model_name(settings: Settings) -> str | None:
    """The catalog name of the default model (the first of ``FREESTEMS_MODELS``), or None for a file."""
    if settings.model_file is not None:
        return None
    return settings.served_models[0] if settings.served_models else settings.model


def other_model_names(settings: Settings) -> tuple[str, ...]:
    """The other served models (``FREESTEMS_MODELS`` after the first): one GPU class loads them on demand
    (see the README, "Several models on Modal")."""
    return tuple(settings.models[1:]) if settings.model_file is None else ()


def parse_pins(pins: Sequence[str]) -> dict[str, str]:
    """``FILE=SHA256`` entries (``FREESTEMS_MODAL_WEIGHTS_SHA256``) as a dict.

    Raises:
        ValueError: an entry is not ``FILE=`` and 64 hex digits.
    """
    found = {}
    for entry in pins:
        name, _, digest = entry.partition("=")
        digest = digest.strip().lower()
        if not name.strip() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{entry!r} is not FILE=SHA256 (64 hex digits)")
        found[name.strip()] = digest
    return found


def record_files(paths: Sequence[Path], pins: Mapping[str, str]) -> list[dict[str, Any]]:
    """The size and sha256 of each file the build baked, printed to the build log (to copy into
    ``FREESTEMS_MODAL_WEIGHTS_SHA256``) and returned for the image's description. A file pinned there
    must have that digest.

    Raises:
        RuntimeError: a file's sha256 differs from its pin.
    """
    from freestems.models.download import file_sha256

    files = []
    for path in dict.fromkeys(paths):
        digest, size = file_sha256(path), path.stat().st_size
        pinned = pins.get(path.name)
        if pinned is not None and pinned != digest:
            raise RuntimeError(
                f"{path.name}: sha256 {digest}, but FREESTEMS_MODAL_WEIGHTS_SHA256 pins {pinned}: the file "
                "published at its URL changed; check it, then update the pin"
            )
        state = "pinned" if pinned else "not pinned (trusted as first downloaded)"
        print(f"weights {path.name}: {size} bytes, sha256 {digest}, {state}", flush=True)
        files.append({"file": path.name, "size": size, "sha256": digest, "pinned": pinned is not None})
    return files


def bake_weights(
    model: str | None,
    model_file: str | None,
    model_config: str | None,
    weights_dir: str,
    others: tuple[str, ...] = (),
    catalog: str | None = None,
    pins: tuple[str, ...] = (),
) -> None:
    """Image build step: the catalog model's weights into ``weights_dir`` (with the catalog's own
    download code: its size and sha256 checked where the catalog has them, a Demucs file's published
    sha256 prefix), and the model's description beside them; with ``FREESTEMS_MODELS``, the other served
    models' files and descriptions too (``others``). Each file's size and sha256 is printed and kept in
    the description, and checked against ``pins`` (``FILE=SHA256``, ``FREESTEMS_MODAL_WEIGHTS_SHA256``).
    ``catalog`` is :func:`catalog_facts` as the deployer saw it; the build checks that the image's
    catalog says the same, so an image never bakes other weights than the ones its hash names."""
    from freestems.executors import describe
    from freestems.models import DEFAULT_MODEL, load_model
    from freestems.models.loading import fetch_files
    from freestems.models.served import network_entries, serve_catalog

    baked: list[Path] = [Path(name) for name in (model_file, model_config) if name is not None]
    if model_file is None:
        if catalog is not None and catalog != catalog_facts(model, others):
            raise RuntimeError(
                "the image's model catalog differs from the deployer's; reinstall and redeploy"
            )
        names = (model or DEFAULT_MODEL, *others)
        networks = {info.name: info for name in names for info in network_entries(name.strip())}
        for info in networks.values():
            baked += fetch_files(info, cache_dir=weights_dir, progress=False)
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
    description["files"] = record_files(baked, parse_pins(pins))
    Path(weights_dir, DESCRIPTION_FILE).write_text(json.dumps(description))


def device_exports_wanted(settings: Settings, deployment: ModalSettings) -> bool:
    """Whether the image exports models for the browser: asked for, and a served model may be exportable
    (a catalog model of :data:`~freestems.models.catalog.EXPORTABLE_FAMILIES`, or a model file other than
    a Demucs one: its family is known once it is loaded, at the build)."""
    from freestems.models.catalog import EXPORTABLE_FAMILIES

    if not deployment.modal_device_exports:
        return False
    if settings.model_file is not None:
        return "htdemucs" not in served_families(settings)
    return bool(served_families(settings) & set(EXPORTABLE_FAMILIES))


def export_requirements() -> list[str]:
    """The packages of the ``export`` extra (onnx, onnxscript, onnxruntime), pinned to the versions installed
    here like :func:`requirements`'s: the image exports with what the deployer tested."""
    base = {name for name, _ in _declared(set())}
    found = set()
    for name, spec in _declared({"export"}):
        if name in base:
            continue
        try:
            found.add(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.add(spec)
    return sorted(found)


def exporter_fingerprint() -> str:
    """The sha256 of the code that decides what an export holds (``export.py``, the SCNet module): an
    argument of the export step, so a change to either rebuilds the exports (Modal hashes a step's own
    source and arguments only). Read as text: nothing here imports torch."""
    import hashlib

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for part in ("export.py", "models/scnet.py"):
        digest.update((package / part).read_bytes())
    return digest.hexdigest()


def bake_device_exports(
    model: str | None,
    model_file: str | None,
    model_config: str | None,
    weights_dir: str,
    device_dir: str,
    others: tuple[str, ...] = (),
    catalog: str | None = None,
    exporter: str = "",
) -> None:
    """Image build step: every served model that can run in the browser exported into
    ``<device_dir>/<served name>/`` (``freestems export``'s code, from the weights :func:`bake_weights`
    baked), one line printed per model; a model of another family is skipped, saying so. ``catalog`` and
    ``exporter`` (:func:`exporter_fingerprint`) are here for the layer's hash only.

    Raises:
        freestems.export.ExportError: an exportable model's export failed its checks (the build fails: a
            deployment must not lose the device silently).
    """
    from freestems import export
    from freestems.models import DEFAULT_MODEL, get_model_info, load_model
    from freestems.models.scnet import SCNet

    del catalog, exporter
    names: list[str | None] = [None] if model_file is not None else [model or DEFAULT_MODEL]
    for name in [*names, *others]:
        if name is not None and get_model_info(name).architecture not in export.EXPORTABLE:
            print(f"device export {name}: skipped, a {get_model_info(name).architecture} model", flush=True)
            continue
        loaded = load_model(
            name,
            model_file=model_file if name is None else None,
            model_config=model_config if name is None else None,
            cache_dir=weights_dir,
            download=False,
            progress=False,
        )
        if not isinstance(loaded.module, SCNet):
            print(f"device export {loaded.name}: skipped, not an SCNet model", flush=True)
            continue
        manifest = export.export_model(loaded, Path(device_dir) / loaded.name)
        files = ", ".join(f"{entry['file']} {entry['bytes']} bytes" for entry in manifest["onnx"]["files"])
        print(f"device export {loaded.name}: {files}", flush=True)


def build_image(settings: Settings, deployment: ModalSettings, environ: Mapping[str, str]) -> modal.Image:
    """The image of both functions (see the module docstring for the layers and why in this order)."""
    torch_index: dict[str, Any] = (
        {"index_url": deployment.modal_torch_index} if deployment.modal_torch_index else {}
    )
    image = (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install(deployment.modal_torch, **torch_index)
        .pip_install(*requirements(families=served_families(settings)))
    )
    model_file = model_config = None
    if settings.model_file is not None:
        model_file = f"{WEIGHTS_DIR}/{settings.model_file.name}"
        image = image.add_local_file(settings.model_file, model_file, copy=True)
    if settings.model_config_file is not None:
        model_config = f"{WEIGHTS_DIR}/config/{settings.model_config_file.name}"
        image = image.add_local_file(settings.model_config_file, model_config, copy=True)
    arguments = bake_arguments(settings, model_file, model_config, deployment.modal_weights_sha256)
    image = image.run_function(bake_weights, kwargs=arguments)
    if device_exports_wanted(settings, deployment):
        image = image.pip_install(*export_requirements()).run_function(
            bake_device_exports,
            kwargs=device_export_arguments(arguments),
            cpu=EXPORT_CPU,
            memory=EXPORT_MEMORY,
        )
    return image.env(image_environment(environ, settings)).add_local_python_source("freestems", ignore=[])


EXPORT_CPU, EXPORT_MEMORY = 4.0, 8192
"""Cores and MiB of the export step's build container (a release SCNet's export: see the Modal docs)."""


def device_export_arguments(bake: Mapping[str, Any]) -> dict[str, Any]:
    """The export step's arguments: the weights step's (``bake``: what it baked, hence what is exported),
    where to write, and the exporter's fingerprint."""
    names = ("model", "model_file", "model_config", "weights_dir", "others", "catalog")
    return {
        **{name: bake[name] for name in names},
        "device_dir": DEVICE_DIR,
        "exporter": exporter_fingerprint(),
    }


def bake_arguments(
    settings: Settings, model_file: str | None, model_config: str | None, pins: Sequence[str] = ()
) -> dict[str, Any]:
    """The arguments of the weights step (Modal hashes them with the function's source to cache the
    layer): the catalog's facts are among them, unless the model is a file (whose bytes are hashed), and
    the pinned digests (a new pin rebuilds the layer, and checks the files)."""
    parse_pins(pins)  # a malformed pin fails the deploy, not the build
    model, others = default_model_name(settings), other_model_names(settings)
    return {
        "pins": tuple(pins),
        "model": model,
        "model_file": model_file,
        "model_config": model_config,
        "weights_dir": WEIGHTS_DIR,
        "others": others,
        "catalog": None if model_file is not None else catalog_facts(model, others),
    }


def load_configured_model(settings: Settings, name: str | None = None) -> LoadedModel:
    """The model ``settings`` name (or ``name``, another served one): from ``/weights`` in a container
    (never downloaded there)."""
    from freestems.models import load_model

    if name is not None:
        return load_model(name, download=modal.is_local(), progress=False)
    return load_model(
        default_model_name(settings),
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


def served_descriptions(settings: Settings, weights_dir: str | Path | None) -> tuple[ModelDescription, ...]:
    """Every served model's description, the default first: the ones baked into ``weights_dir`` (a
    container's ``/weights``: no model is loaded in a web container), else (None, or nothing baked there:
    running in-process) computed from the models ``settings`` name."""
    baked = read_descriptions(weights_dir) if weights_dir is not None else ()
    if baked:
        return baked
    from freestems.executors import describe
    from freestems.models.served import serve_catalog

    others = [serve_catalog(name) for name in other_model_names(settings)]
    return (
        describe(load_configured_model(settings)),
        *(ModelDescription(o.name, o.sources, o.fingerprint, o.title) for o in others),
    )
