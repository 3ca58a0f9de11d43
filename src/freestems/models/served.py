"""Several models served by one process: described at start, loaded on first use, kept under a memory budget.

A server that offers SCNet, a RoFormer and an HT-Demucs bag cannot keep every network in memory on a small
machine, and should not load all of them before it answers its first request. So:

* at start every served model is *described* without building its network: its name, title, stems and a
  fingerprint of everything that decides its output (the sha256 of its weights files, its config, its
  flags). Catalog files missing from the cache are downloaded then, so that a request never waits on a
  download and a model that cannot be had fails the start, not a job. The fingerprint is a part of the
  result cache key, so it must be known before the model is loaded;
* :class:`LoadedModels` loads a model when a job first needs it and keeps the loaded ones in LRU order under
  a budget in bytes, counted from the networks' parameters and buffers (:func:`model_bytes`: what the
  weights take, wherever they live, not the process's RSS which also holds the allocator's caches);
* a model in use by a running job is pinned: it is never evicted. A load that does not fit while other
  models are pinned waits until one is released (or the job is cancelled), so the budget holds with any
  number of workers. The one exception: a model larger than the whole budget is loaded alone (every idle
  model evicted first), since it could never run otherwise; the log says so.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestems.errors import Cancelled
from freestems.models.catalog import JOB_TITLES, JOBS, ModelInfo, get_model_info, member_names, served_jobs
from freestems.models.errors import ModelChoiceError

if TYPE_CHECKING:  # torch is imported only where a model is loaded (a web tier never loads one)
    from torch import nn

    from freestems.contract import LoadedModel

log = logging.getLogger(__name__)

WAIT_SLICE = 0.25
"""Seconds between two looks at the cancel event while a load waits for memory."""


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One model a server offers: what to show about it, what decides its output, and how to load it.

    ``info`` is the catalog entry (None for a checkpoint file, and for an ad-hoc ensemble ``a+b`` or chain);
    ``estimate`` the bytes its weights files take on disk, the guess of its size before its first load.
    """

    name: str
    title: str
    sources: tuple[str, ...]
    fingerprint: str
    load: Callable[[], LoadedModel] = dataclasses.field(repr=False, compare=False)
    info: ModelInfo | None = None
    estimate: int = 0

    def describe(self) -> dict[str, Any]:
        """The public facts of the model (see :func:`public_facts`)."""
        return public_facts(self.name, self.sources, self.title)


def public_facts(name: str, sources: Sequence[str], title: str = "") -> dict[str, Any]:
    """What ``GET /config`` says about a served model: its title, its stems as a separation yields them
    (a one-stem model also gives the rest, ``no_vocals``), the published SDR and its test set, the measured
    relative time (seconds per minute of audio relative to ``scnet``) and the weights' licence, from the
    catalog (a checkpoint file has no catalog facts: its name is its title)."""
    from freestems.models.catalog import CATALOG
    from freestems.rules import output_names

    info = CATALOG.get(name)
    own, by_two_stems = served_jobs(name, sources)
    return {
        "name": name,
        "title": title or (info.title if info else name),
        "stems": output_names(sources),
        "sdr": dict(info.sdr) if info else {},
        "sdr_set": info.sdr_set if info else None,
        "relative_cost": info.relative_cost if info else None,
        "license": info.license if info else "as published with the file",
        "jobs": [job for job in JOBS if job in own or job in by_two_stems],
    }


def jobs_offered(models: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, Any]]:
    """What ``GET /config`` says about the jobs (:data:`~freestems.models.catalog.JOBS`, in its order) for the
    served ``models`` (``(name, sources)``, the operator's order): each job's title, what it gives and the
    models that serve it, best first. Best: a model whose own jobs name it (:func:`served_jobs`) before one
    that serves it by two stems (a vocals model before a four-stem one for karaoke), then the operator's
    order. Published scores do not rank them: they are measured on different test sets (MUSDB18-HQ,
    Multisong, DrumSep's), and most models of the newer jobs publish none. A job no model serves is listed
    with no models."""
    ranked: dict[str, list[tuple[int, int, str]]] = {job: [] for job in JOBS}
    for index, (name, sources) in enumerate(models):
        own, by_two_stems = served_jobs(name, sources)
        for job in own:
            ranked[job].append((0, index, name))
        for job in by_two_stems:
            ranked[job].append((1, index, name))
    return [
        {
            "name": job,
            "title": JOB_TITLES[job],
            "description": JOBS[job],
            "models": [name for _, _, name in sorted(ranked[job])],
        }
        for job in JOBS
    ]


# --------------------------------------------------------------------------------------------- describing


def serve_catalog(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = False,
    spec_norm: bool | None = None,
    normalize: bool | None = None,
) -> ServedModel:
    """A catalog name, a preset, an ad-hoc ensemble (``a+b``) or chain (``a>drums:b``) described for
    serving: its files fetched into the cache (downloaded when missing) and fingerprinted; nothing is loaded.

    Raises:
        ModelNotAvailable: an unknown name, or a file that cannot be had.
        CheckpointError: a cached file changed since it was pinned.
        ModelChoiceError: a bad ensemble or chain.
    """
    from freestems.models.chain import describe_chain
    from freestems.models.download import file_sha256
    from freestems.models.ensemble import weighted_sources
    from freestems.models.loading import fetch_files
    from freestems.models.spelling import SEPARATOR, is_chain, parse_members

    if is_chain(name):
        info = None
        infos, sources, title = describe_chain(name)
    elif SEPARATOR in name:
        members = parse_members(name)
        info = None
        infos = [get_model_info(member) for member, _ in members]
        sources = weighted_sources(
            name, [(item.sources, weights) for item, (_, weights) in zip(infos, members, strict=True)]
        )
        title = " + ".join(item.title for item in infos)
    else:
        info = get_model_info(name)
        infos = [info]
        sources, title = tuple(info.sources), info.title
    files = [
        path for item in infos for path in fetch_files(item, cache_dir, progress=progress, download=download)
    ]
    header = {
        "name": name,
        "entries": [dataclasses.asdict(item) for item in infos],
        "flags": [spec_norm, normalize],
        "files": [file_sha256(path) for path in files],
    }
    return ServedModel(
        name=name,
        title=title,
        sources=sources,
        fingerprint=_digest(header),
        load=lambda: load_model(
            name,
            cache_dir=cache_dir,
            download=download,
            progress=progress,
            spec_norm=spec_norm,
            normalize=normalize,
        ),
        info=info,
        estimate=sum(_size(path) for path in files),
    )


FAMILY_TITLES = {
    "SCNet": "SCNet",
    "BSRoformer": "BS-RoFormer",
    "MelBandRoformer": "Mel-Band RoFormer",
    "DemucsModule": "HT-Demucs",
}
"""The network families by their module's class, as titles say them."""


def file_title(model: LoadedModel) -> str:
    """A title for a model the catalog does not describe (a checkpoint file): its family and its name,
    ``SCNet (release)``, ``HT-Demucs (955717e8)``; empty for a catalog name or a family it does not know
    (then the catalog's title, or the name, stands)."""
    from freestems.models.catalog import CATALOG

    family = FAMILY_TITLES.get(type(model.module).__name__)
    return f"{family} ({model.name})" if family and model.name not in CATALOG else ""


def serve_loaded(model: LoadedModel, fingerprint: str | None = None) -> ServedModel:
    """A model already in memory (a checkpoint file loaded at start), fingerprinted from its weights."""
    return ServedModel(
        name=model.name,
        title=file_title(model) or model.name,
        sources=tuple(model.sources),
        fingerprint=fingerprint or fingerprint_loaded(model),
        load=lambda: model,
        estimate=model_bytes(model),
    )


def fingerprint_loaded(model: LoadedModel) -> str:
    """A fingerprint of everything in a loaded model that decides its output (weights included)."""
    digest = hashlib.sha256()
    module = model.module
    flags = {key: value for key, value in vars(module).items() if isinstance(value, (bool, int, float, str))}
    header = [model.name, list(model.sources), model.segment, model.normalize, repr(module), flags]
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        tensor = tensor.detach().cpu().contiguous()
        try:
            data = tensor.numpy().tobytes()
        except TypeError:  # bfloat16 has no numpy type
            data = tensor.float().numpy().tobytes()
        digest.update(data)
    return digest.hexdigest()[:32]


def unservable(name: str) -> list[ModelInfo]:
    """The catalog entries behind ``name`` (a model; a preset's, an ensemble ``a+b``'s or a chain
    ``a>stem:b``'s models, however nested) whose weights' licence does not allow serving them; an unknown or
    malformed name is left to the describing that follows."""
    try:
        entries = catalog_entries(name, strict=False)
    except ModelChoiceError:
        return []
    return [info for info in entries if not member_names(info) and not info.servable]


def catalog_entries(name: str, *, strict: bool = True) -> list[ModelInfo]:
    """Every catalog entry the model name ``name`` runs (a catalog name, a preset, an ensemble ``a+b``, a
    chain ``a>stem:b``, however nested), presets and their members alike, in order, each once: the one
    place that sees through a served name to its models (the licence check, the Modal image's weights).
    ``network_entries`` keeps those with weights of their own.

    Raises:
        ModelNotAvailable: (``strict``) an unknown catalog name; otherwise it is left out.
        ModelChoiceError: a malformed ensemble or chain.
    """
    from freestems.models.catalog import CATALOG
    from freestems.models.spelling import SEPARATOR, is_chain, parse_chain, parse_members

    found: list[ModelInfo] = []
    if is_chain(name):
        spec = parse_chain(name)
        parts = [spec.first, *(model for _, model in spec.links)]
    elif SEPARATOR in name:
        parts = [member for member, _ in parse_members(name)]
    else:
        info = get_model_info(name) if strict else CATALOG.get(name)
        found, parts = ([info], member_names(info)) if info is not None else ([], [])
    found += [entry for part in parts for entry in catalog_entries(part, strict=strict)]
    return list({entry.name: entry for entry in found}.values())


def network_entries(name: str) -> list[ModelInfo]:
    """The entries of :func:`catalog_entries` that are networks with weights files (no preset)."""
    return [info for info in catalog_entries(name) if not member_names(info)]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_model(*args: Any, **kwargs: Any) -> LoadedModel:
    """:func:`freestems.models.loading.load_model`, imported when a model is loaded (it imports torch)."""
    from freestems.models.loading import load_model as load

    return load(*args, **kwargs)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def model_bytes(model: LoadedModel | nn.Module) -> int:
    """Bytes of a model's parameters and buffers (each storage counted once: tied weights and ensemble
    members shared by two presets are not counted twice)."""
    from freestems.contract import LoadedModel

    module = model.module if isinstance(model, LoadedModel) else model
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen or storage.data_ptr() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


# --------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class _Entry:
    model: LoadedModel
    size: int
    users: int = 0


class LoadedModels:
    """The served models, loaded on first use, at most ``budget`` bytes of them at once (None: no limit).

    Thread-safe: worker threads call :meth:`use` around each job.
    """

    def __init__(self, served: Sequence[ServedModel], budget: int | None = None) -> None:
        if not served:
            raise ModelChoiceError("no model to serve")
        names = [model.name for model in served]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ModelChoiceError(f"two served models are called {', '.join(twice)}; serve each once")
        self.served: dict[str, ServedModel] = {model.name: model for model in served}
        self.budget = budget if budget else None
        self._loaded: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # LRU first
        self._loading: dict[str, int] = {}  # name -> bytes reserved while it loads
        self._sizes: dict[str, int] = {}  # measured sizes of models loaded before
        self._condition = threading.Condition()
        self.evictions = 0

    @property
    def default(self) -> ServedModel:
        return next(iter(self.served.values()))

    def preload(self, name: str, model: LoadedModel) -> None:
        """Count a model loaded already (a checkpoint file loaded at start) as loaded, under the budget."""
        with self._condition:
            size = model_bytes(model)
            self._sizes[name] = size
            self._evict_for(size, keep=name)
            self._loaded[name] = _Entry(model, size)

    @contextmanager
    def use(self, name: str | None, cancel: threading.Event | None = None) -> Iterator[LoadedModel]:
        """The model ``name`` (default: the first served) loaded and pinned for the ``with`` block.

        Raises:
            ModelChoiceError: ``name`` is not served.
            Cancelled: ``cancel`` was set while the load waited for memory.
        """
        key = name or self.default.name
        model = self._acquire(key, cancel)
        try:
            yield model
        finally:
            with self._condition:
                entry = self._loaded.get(key)
                if entry is not None:
                    entry.users -= 1
                self._condition.notify_all()

    def loaded(self) -> dict[str, int]:
        """The models in memory now and their bytes, least recently used first."""
        with self._condition:
            return {name: entry.size for name, entry in self._loaded.items()}

    def loaded_models(self) -> dict[str, LoadedModel]:
        """The models in memory now, least recently used first."""
        with self._condition:
            return {name: entry.model for name, entry in self._loaded.items()}

    @property
    def loaded_bytes(self) -> int:
        with self._condition:
            return sum(entry.size for entry in self._loaded.values())

    def in_use(self) -> dict[str, int]:
        """Jobs using each loaded model now (only the pinned ones)."""
        with self._condition:
            return {name: entry.users for name, entry in self._loaded.items() if entry.users}

    def clear(self) -> None:
        """Forget every idle loaded model (at shutdown)."""
        with self._condition:
            for name in [name for name, entry in self._loaded.items() if not entry.users]:
                del self._loaded[name]
        _release_memory()

    # ----------------------------------------------------------------------------------------- inside

    def _acquire(self, name: str, cancel: threading.Event | None) -> LoadedModel:
        served = self.served.get(name)
        if served is None:
            raise ModelChoiceError(f"model {name!r} is not served here; served: {', '.join(self.served)}")
        with self._condition:
            while True:
                entry = self._loaded.get(name)
                if entry is not None:
                    entry.users += 1
                    self._loaded.move_to_end(name)
                    return entry.model
                if name not in self._loading:
                    need = self._sizes.get(name, served.estimate)
                    evicted = self._evict_for(need, keep=name)
                    if self._fits(need) or not self._pinned():
                        if not self._fits(need):
                            log.warning(
                                "model %s (about %.0f MB) is larger than the model memory budget (%.0f MB): "
                                "it is loaded alone",
                                name,
                                need / 1e6,
                                (self.budget or 0) / 1e6,
                            )
                        self._loading[name] = need
                        break
                    if evicted:
                        _release_memory()
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled while waiting for memory to load model {name}")
                self._condition.wait(WAIT_SLICE)
        try:
            log.info("loading model %s", name)
            model = served.load()
        except BaseException:
            with self._condition:
                self._loading.pop(name, None)
                self._condition.notify_all()
            raise
        size = model_bytes(model)
        with self._condition:
            self._loading.pop(name, None)
            self._sizes[name] = size
            self._loaded[name] = _Entry(model, size, users=1)
            if self._evict_for(0, keep=name):  # the estimate was low: make room after the fact
                _release_memory()
            self._condition.notify_all()
        log.info(
            "model %s loaded (%.1f MB; %.1f MB of models in memory)", name, size / 1e6, self._total() / 1e6
        )
        return model

    def _total(self) -> int:
        return sum(entry.size for entry in self._loaded.values()) + sum(self._loading.values())

    def _fits(self, need: int) -> bool:
        return self.budget is None or self._total() + need <= self.budget

    def _pinned(self) -> bool:
        return bool(self._loading) or any(entry.users for entry in self._loaded.values())

    def _evict_for(self, need: int, keep: str) -> int:
        """Evict idle models, least recently used first, until ``need`` more bytes fit; returns how many."""
        evicted = 0
        for name in list(self._loaded):
            if self._fits(need):
                break
            entry = self._loaded[name]
            if entry.users or name == keep:
                continue
            del self._loaded[name]
            self.evictions += 1
            evicted += 1
            log.info(
                "model %s unloaded (%.1f MB) to stay under the model memory budget", name, entry.size / 1e6
            )
        return evicted


def _release_memory() -> None:
    """Give evicted weights back: Python's references go with the entry; the CUDA allocator keeps freed
    blocks cached unless told."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - a broken CUDA setup must not fail a job over a cache flush
        log.debug("emptying the CUDA cache failed", exc_info=True)


def serve_models(
    names: Sequence[str],
    files: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str] | None]] = (),
    *,
    budget: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = False,
    spec_norm: bool | None = None,
    normalize: bool | None = None,
) -> LoadedModels:
    """The models a server offers: catalog names (presets, ``a+b`` ensembles) described, each checkpoint
    file (with its config, or None) loaded now (its name is its file's stem, or the name a freestems
    checkpoint carries). Names come first, in order, then the files: the first is the default.

    A catalog model whose licence does not allow serving it (:attr:`ModelInfo.servable`) is served, since
    the operator named it, with a warning (:func:`unservable`); the default never is one.

    Raises:
        ModelError: an unknown name, a file that cannot be had or loaded, two models of one name.
    """
    for name in names:
        for info in unservable(name):
            log.warning(
                "model %s: the licence of its weights (%s) does not allow serving them; served because the "
                "operator named it",
                info.name if info.name == name else f"{name} (member {info.name})",
                info.license,
            )
    served = [
        serve_catalog(
            name,
            cache_dir=cache_dir,
            download=download,
            progress=progress,
            spec_norm=spec_norm,
            normalize=normalize,
        )
        for name in names
    ]
    loaded = []
    for path, config in files:
        model = load_model(model_file=path, model_config=config, spec_norm=spec_norm, normalize=normalize)
        served.append(serve_loaded(model))
        loaded.append(model)
    models = LoadedModels(served, budget)
    for model in loaded:
        models.preload(model.name, model)
    return models
