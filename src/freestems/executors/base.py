"""Where a separation runs: one small interface between the service and the compute.

The service decides *whether* and *what* runs (keys, limits, queue, cache); an executor only runs work
items and reports what happens to them. Two executors sit behind this interface:

- :class:`freestems.executors.LocalExecutor` runs ``workers`` jobs at a time in threads of this process,
  each on the model its options name, loaded on first use and kept under a memory budget (the embedded
  default; :mod:`freestems.models.served`);
- :class:`freestems.executors.ModalExecutor` sends each job to a GPU class on Modal and relays what the
  GPU container reports (see :mod:`freestems.executors.modal`).

Both run a job through the same function, :func:`freestems.jobrun.run_job`.

The contract:

- every submitted item gets exactly one final report, ``done``, ``failed`` or ``cancelled`` (``started`` and
  ``progress`` reports come before it), *unless* the executor is closed while the item waits or runs (and
  was not cancelled before): then it gets none and its source file is kept, so the job can run again after
  a restart;
- after a final report, the item's source file and all working files are gone; only ``result`` remains
  (after ``done``);
- reports are made from worker threads. A caller living in an event loop hops back itself
  (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from freestems.options import SeparationOptions

if TYPE_CHECKING:
    from freestems.contract import LoadedModel
    from freestems.segments import SegmentReport

log = logging.getLogger(__name__)

EventKind = Literal["started", "progress", "segment", "done", "failed", "cancelled"]


class ExecutorError(RuntimeError):
    """The executor cannot take work (not started, closed, or its model failed to load)."""


@dataclass(frozen=True)
class ModelDescription:
    """What an executor runs. ``fingerprint`` changes whenever outputs could: part of result cache keys."""

    name: str
    sources: tuple[str, ...]
    fingerprint: str
    title: str = ""
    """A human title (the catalog's); empty: the catalog's title for ``name``, else the name."""


@dataclass(frozen=True)
class JobEvent:
    """A report about one work item.

    ``failed`` carries a ``code`` a service can map to a status: ``too_long`` (the decoded audio is longer
    than ``max_duration``), ``not_audio`` (undecodable), ``encode_failed``, ``disk_full`` (no space left for
    the stems), ``invalid_options`` or ``internal`` (a bug or a broken machine; details are in the server
    log, not in ``message``).

    ``done`` carries ``timings`` (seconds: the pipeline's stages, ``audio_seconds``, and where a GPU ran
    the job ``gpu_seconds`` and the transfer and queueing times) and ``gpu``, the GPU type that ran it
    (None on a CPU), for cost accounting.

    ``segment`` (between ``started`` and the final report) says that a segment of the progressive results
    is written in the item's ``partials`` folder (:mod:`freestems.segments`). An executor that cannot write
    them where the service reads them (Modal) sends none: the service cuts them from the result instead.
    """

    job_id: str
    kind: EventKind
    progress: float = 0.0
    result: Path | None = None
    timings: Mapping[str, float] | None = None
    code: str | None = None
    message: str | None = None
    gpu: str | None = None
    segment: SegmentReport | None = None


@dataclass(frozen=True)
class WorkItem:
    """One separation: ``source`` (an audio file) in, a zip of the stems at ``result`` out."""

    job_id: str
    source: Path
    result: Path
    report: Callable[[JobEvent], None]
    options: SeparationOptions = SeparationOptions()
    """What to separate and how to encode the stems, as parsed where the request arrived."""
    max_duration: float | None = None
    display_name: str = "audio"
    """The file's name as its owner knows it, used in error messages instead of the stored name."""
    partials: Path | None = None
    """A folder for progressive results (segments), if the service wants them; like ``result``, it stays
    after ``done`` and is removed after any other final report."""


class Executor(Protocol):
    """Runs work items somewhere. ``models`` (and ``model``) are valid once :meth:`start` has returned.

    An executor may serve several models: an item runs on the one its ``options.model`` names (None: the
    first, the default).
    """

    @property
    def model(self) -> ModelDescription:
        """The default model (the first of :attr:`models`)."""
        ...

    @property
    def models(self) -> tuple[ModelDescription, ...]:
        """Every model served, the default first."""
        ...

    def start(self) -> None:
        """Get ready (load the model...); blocking. Raises if the executor cannot work."""

    def submit(self, item: WorkItem) -> None:
        """Queue an item; returns at once. Items run in submission order."""

    def cancel(self, job_id: str) -> None:
        """Stop an item: dropped if waiting, stopped within one chunk if running. Unknown ids are ignored."""

    def close(self) -> None:
        """Stop taking work, interrupt running items (no final report, sources kept), release resources."""


def report(item: WorkItem, event: JobEvent) -> None:
    """Give ``event`` to the item's listener; a listener that raises is logged, never propagated. A
    listener that could not take a ``done`` is told ``failed`` instead, so the item still ends."""
    try:
        item.report(event)
    except Exception:  # a broken listener must not kill the worker or skip the cleanup
        log.exception("reporting %s of job %s failed", event.kind, item.job_id)
        if event.kind == "done":
            failed = JobEvent(item.job_id, "failed", code="internal", message="the result could not be kept")
            try:
                item.report(failed)
            except Exception:
                log.exception("reporting the failure of job %s failed too", item.job_id)


def describe(model: LoadedModel) -> ModelDescription:
    """A model's name, sources, a fingerprint of everything that decides its output (weights too) and, for a
    checkpoint file, a title of its family (:func:`~freestems.models.served.file_title`)."""
    from freestems.models.served import file_title, fingerprint_loaded

    return ModelDescription(model.name, tuple(model.sources), fingerprint_loaded(model), file_title(model))
