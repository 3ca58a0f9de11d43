"""One job, from an audio file to a zip of its stems: the single code path of every executor.

The in-process worker (:class:`freestems.executors.LocalExecutor`) and the Modal GPU class
(:mod:`freestems.deploy.modal_app`) both call :func:`run_job`; it runs the streaming pipeline
(:func:`freestems.pipeline.separate_file`), zips the stems (:func:`freestems.pipeline.zip_stems`), removes
its working folder on every path, and turns the expected failures into one picklable exception,
:class:`JobFailed`, whose :class:`~freestems.errors.FailureCode` a service maps to an HTTP status.

Cancelling is cooperative: a job runs with a cancel token (a :class:`threading.Event`), checked after every
chunk of the engine and before zipping; once it is set, the job raises :class:`Cancelled` within one chunk
and cleans up like any other failure. A caller that cannot pass the token (a Modal method, whose arguments
cross the network) sets it for the calls in its thread with :func:`cancel_scope`.

:func:`choose_precision` decides, once per process, whether half precision keeps a model's output
faithful on a GPU.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from freestems.errors import Cancelled, FailureCode
from freestems.options import SeparationOptions

if TYPE_CHECKING:
    import torch

    from freestems.contract import LoadedModel
    from freestems.segments import SegmentReport

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = SeparationOptions()

FAITHFUL_SNR_DB = 40.0
"""Half precision is used only if its output is at least this close to fp32's (signal-to-error ratio,
over every stem of a probe chunk): 40 dB is an error 1 % of the signal's amplitude, far below what the
model's own separation error is (SDR 9-10 dB)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_MESSAGE = "the server's disk is full, so the stems could not be written; try again later"


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is 'no space left' (or 'quota exceeded')."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


class JobFailed(Exception):
    """An expected failure of a job: ``code`` is ``too_long``, ``not_audio``, ``encode_failed``,
    ``disk_full`` (no space left for the stems: the server's state, worth a retry) or ``invalid_options``;
    ``message`` is for the user. Picklable (it crosses the Modal boundary)."""

    def __init__(self, code: FailureCode | str, message: str) -> None:
        super().__init__(str(code), message)  # plain strings in args: unpickles without this enum's module
        self.code = FailureCode(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


_SCOPE_CANCEL: ContextVar[threading.Event | None] = ContextVar("freestems_cancel", default=None)


@contextmanager
def cancel_scope(cancel: threading.Event) -> Iterator[None]:
    """Within this block (this thread and context), :func:`run_job` calls without a token of their own
    stop once ``cancel`` is set."""
    token = _SCOPE_CANCEL.set(cancel)
    try:
        yield
    finally:
        _SCOPE_CANCEL.reset(token)


@dataclass
class JobOutput:
    """What a finished job left: the zip, the audio length, and how the time went (seconds)."""

    archive: Path
    samples: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def audio_seconds(self) -> float:
        from freestems.contract import SAMPLE_RATE

        return self.samples / SAMPLE_RATE


def run_job(
    source: str | Path,
    archive: str | Path,
    model: LoadedModel,
    *,
    work_dir: str | Path,
    options: SeparationOptions = DEFAULT_OPTIONS,
    max_duration: float | None = None,
    progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    display_name: str | None = None,
    preload: bool = False,
    parallel_encode: bool = False,
    segments: str | Path | None = None,
    on_segment: Callable[[SegmentReport], None] | None = None,
) -> JobOutput:
    """Separate ``source`` and write the zip of its stems to ``archive`` (atomically).

    Args:
        work_dir: a folder of this job only, for the stems before they are zipped; removed on every path.
        options: what to separate and how to encode the stems (checked against ``model`` first).
        progress: called with the fraction done; whatever it raises aborts the job.
        cancel: the job's cancel token (default: the one of the enclosing :func:`cancel_scope`, if any),
            checked after every chunk and before zipping.
        display_name: the file's name as its owner knows it, used in messages instead of the stored name.
        preload, parallel_encode: as for :func:`freestems.pipeline.separate_file`.
        segments: a folder for the progressive results (:mod:`freestems.segments`; emptied first): every
            finished block of every stem as a FLAC segment, each reported to ``on_segment`` once written.
            Not removed here: it belongs to the caller, like ``archive``.

    Returns:
        The archive, the number of samples, and ``timings``: the pipeline's ``decode``, ``separate``,
        ``encode`` (busy seconds, overlapping), ``total``, plus ``zip`` and ``audio_seconds``.

    Raises:
        JobFailed: the input is not audio or too long, a stem cannot be encoded, the options are invalid.
        Cancelled: ``cancel`` was set.
        Anything else (a bug, what ``progress`` raises) propagates unchanged.
    """
    from freestems.pipeline import separate_file, zip_stems
    from freestems.rules import output_names
    from freestems.segments import SegmentWriter

    source, archive, work = Path(source), Path(archive), Path(work_dir)
    check = _CancelCheck(cancel if cancel is not None else _SCOPE_CANCEL.get(), progress)
    try:
        check()
        options.check_model(model.name, model.sources)
        writer = None
        if segments is not None:
            names = output_names(model.sources, options.two_stems)
            writer = SegmentWriter(Path(segments), names, on_segment)
        result = separate_file(
            source,
            work,
            model,
            output=options.output(),
            max_duration=max_duration,
            progress=check.chunk_done,
            device=device,
            precision=precision,
            preload=preload,
            parallel_encode=parallel_encode,
            segments=writer,
            **options.engine(),
        )
        check()
        clock = time.perf_counter()
        archive.parent.mkdir(parents=True, exist_ok=True)
        zip_stems(result.stems, archive)
        timings = result.timings.as_dict()
        timings["zip"] = round(time.perf_counter() - clock, 3)
        timings["audio_seconds"] = round(result.duration, 3)
        return JobOutput(archive=archive, samples=result.samples, timings=timings)
    except Exception as error:
        failure = job_failure(error, source.name, display_name or source.name)
        if failure is None:
            raise
        raise failure from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _CancelCheck:
    """A job's cancel token, checked when called and after every chunk (before its progress report)."""

    def __init__(self, cancel: threading.Event | None, progress: Callable[[float], None] | None) -> None:
        self.cancel, self.progress = cancel, progress

    def __call__(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled

    def chunk_done(self, fraction: float) -> None:
        self()
        if self.progress is not None:
            self.progress(fraction)


def job_failure(error: Exception, stored_name: str, display_name: str) -> JobFailed | None:
    """The :class:`JobFailed` an expected failure of a job becomes, or None for anything else (a bug).

    Messages name the stored file; its owner knows it by ``display_name``, so they say that instead.
    """
    from freestems.audio import AudioDecodeError, AudioEncodeError, AudioTooLong
    from freestems.rules import SeparationError

    def rename(message: str) -> str:
        return message.replace(stored_name, display_name) if display_name != stored_name else message

    if isinstance(error, AudioDecodeError):
        code = FailureCode.TOO_LONG if isinstance(error, AudioTooLong) else FailureCode.NOT_AUDIO
        return JobFailed(code, rename(str(error)))
    if isinstance(error, (AudioEncodeError, OSError)) and disk_full(error):
        return JobFailed(FailureCode.DISK_FULL, DISK_FULL_MESSAGE)
    if isinstance(error, AudioEncodeError):
        return JobFailed(FailureCode.ENCODE_FAILED, rename(str(error)))
    if isinstance(error, SeparationError):
        return JobFailed(FailureCode.INVALID_OPTIONS, str(error))
    return None  # an OSError that is not a full disk (the stems' folder, the zip) is a bug or a broken disk


# ------------------------------------------------------------------------------------------- precision


def fidelity_db(model: LoadedModel, device: torch.device, precision: str, seconds: float = 4.0) -> float:
    """Signal-to-error ratio (dB) of the model's output in ``precision`` against fp32, on a fixed probe.

    The probe is seeded noise plus a few tones, one chunk long at most; the comparison is over every
    stem, so a stem the half format breaks (overflow, NaN) drags the number down.
    """
    import numpy as np

    from freestems.engine import separate

    rng = np.random.default_rng(0)
    samples = min(int(seconds * model.sample_rate), model.segment)
    t = np.arange(samples) / model.sample_rate
    tones = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (110.0, 440.0, 1760.0))
    probe = (0.1 * rng.standard_normal((2, samples)) + tones).astype(np.float32)
    reference = separate(probe, model, device=device, precision="fp32")
    candidate = separate(probe, model, device=device, precision=precision)
    signal = sum(float(np.sum(reference[name].astype(np.float64) ** 2)) for name in reference)
    error = sum(
        float(np.sum((reference[name] - candidate[name]).astype(np.float64) ** 2)) for name in reference
    )
    if not np.isfinite(error):
        return float("-inf")
    if error == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / error))


def choose_precision(
    model: LoadedModel,
    device: torch.device,
    requested: str = "auto",
    *,
    candidates: tuple[str, ...] | None = None,
    threshold_db: float = FAITHFUL_SNR_DB,
) -> tuple[str, dict[str, float]]:
    """The precision to run ``model`` in on ``device``, and the fidelity measured for each candidate.

    An explicit ``requested`` precision is used as it is. ``auto`` tries ``candidates`` in order (default:
    fp16 then bf16 on a CUDA device, none elsewhere) and takes the first whose output stays within
    ``threshold_db`` of fp32's; else fp32.
    """
    if requested != "auto":
        return requested, {}
    if candidates is None:
        candidates = ("fp16", "bf16") if device.type == "cuda" else ()
    measured: dict[str, float] = {}
    for candidate in candidates:
        try:
            measured[candidate] = fidelity_db(model, device, candidate)
        except Exception as error:  # a format the device does not support
            log.warning("precision %s cannot run on %s: %s", candidate, device, error)
            measured[candidate] = float("-inf")
            continue
        if measured[candidate] >= threshold_db:
            return candidate, measured
    return "fp32", measured
