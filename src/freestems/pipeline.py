"""From an audio file to stem files: decode, separate and encode as one pipeline over blocks.

Three stages run at once, joined by small bounded queues, so memory stays a few blocks whatever the track
length and the CPU never waits for the slowest stage more than it must::

    decode thread ──blocks──> engine (this thread, torch) ──stem blocks──> encode thread ──> <stem>.<ext>

Stem files are written under temporary names and renamed when complete (see :mod:`freestems.audio`), so a
failure at any point leaves nothing half-written behind.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from freestems.audio import AudioReader, open_writer
from freestems.audio.formats import OutputFormat  # re-exported: it lives where no torch is imported
from freestems.contract import SAMPLE_RATE, MixStats
from freestems.engine import Progress, separate_blocks
from freestems.files import atomic_path
from freestems.rules import output_names

if TYPE_CHECKING:
    import numpy as np

    from freestems.contract import LoadedModel
    from freestems.segments import SegmentWriter

T = TypeVar("T")

BLOCK_SECONDS = 10
QUEUE_DEPTH = 4


@dataclass
class Timings:
    """Busy seconds of each stage; they overlap, so they add up to more than ``total``."""

    decode: float = 0.0
    separate: float = 0.0
    encode: float = 0.0
    total: float = 0.0
    first_pass: float = 0.0
    """Of ``decode``: the pass before the model starts (whole-track statistics, or ``preload``)."""
    first_block: float = 0.0
    """From the start until the engine gave its first finished block: what a listener waits for."""

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in vars(self).items()}


@dataclass
class TrackResult:
    stems: dict[str, Path]
    samples: int
    timings: Timings = field(default_factory=Timings)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE


def separate_file(
    source: str | Path,
    destination: str | Path,
    model: LoadedModel,
    *,
    output: OutputFormat = OutputFormat(),  # noqa: B008 - a frozen dataclass
    max_duration: float | None = None,
    progress: Progress | None = None,
    preload: bool = False,
    parallel_encode: bool = False,
    segments: SegmentWriter | None = None,
    **options: Any,
) -> TrackResult:
    """Separate one audio file into ``destination/<stem>.<ext>``.

    Args:
        source: any audio or video file PyAV can read.
        destination: folder for the stems (created if needed).
        model: a loaded model.
        output: encoding of the stems.
        max_duration: refuse tracks longer than this many seconds (``AudioDecodeError``).
        progress: callback with the fraction done.
        preload: decode the whole track into memory before the model starts (one pass, even for a model
            that normalises the whole track, which otherwise decodes twice), so that the model never
            waits for the decoder: for a fast GPU, where decoding is the slower stage. Costs memory:
            ~10.6 MB per minute of audio.
        parallel_encode: one encoder thread per stem instead of one for all (lameenc releases the GIL),
            for machines with cores to spare next to the model (a GPU container).
        segments: also write every finished block as a segment (progressive results), in a thread of its
            own that takes each block before the stem encoders do; the stem files do not change.
        **options: engine options, as for :func:`freestems.engine.separate_blocks`.

    Raises:
        freestems.audio.AudioDecodeError: the input cannot be read or breaks a limit.
        freestems.audio.AudioEncodeError: a stem cannot be written.
        freestems.engine.SeparationError: invalid options.
    """
    started = time.perf_counter()
    timings = Timings()
    reader = AudioReader(source, max_duration=max_duration)
    names = output_names(model.sources, options.get("two_stems"))
    track = _first_pass(reader, model, preload, timings)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    paths = {name: destination / f"{name}{output.extension}" for name in names}
    writers = _open_writers(paths, output)
    if track.decoded is not None:
        decoder: _Producer[np.ndarray] | _Decoded = _Decoded(track.decoded)
    else:
        decoder = _Producer(reader.blocks(BLOCK_SECONDS * SAMPLE_RATE), name="freestems-decode")
    encoders = _encoders(writers, parallel_encode)
    if segments is not None:
        if track.stats is not None or track.decoded is not None:
            segments.total = track.length  # counted, so exact (a container's own figure may be off)
        encoders.insert(0, _Consumer(segments.write, name="freestems-segments"))
    samples = 0
    try:
        clock = time.perf_counter()
        stems = separate_blocks(
            decoder, model, length=track.length, stats=track.stats, progress=progress, **options
        )
        for block in stems:
            if not samples:
                timings.first_block = time.perf_counter() - started
            if segments is not None:
                encoders[0].put(block)  # first: the listener hears it before the stems are encoded
            stem_encoders = encoders[1:] if segments is not None else encoders
            if parallel_encode:
                for name, encoder in zip(names, stem_encoders, strict=True):
                    encoder.put(block[name])
            else:
                stem_encoders[0].put(block)
            samples += block[names[0]].shape[1]
        waited = sum(encoder.waited for encoder in encoders)
        timings.separate = time.perf_counter() - clock - decoder.waited - waited
        for encoder in encoders:
            encoder.join()
        for writer in writers.values():
            writer.close()
        if segments is not None:
            segments.finish(samples)
    except BaseException:
        decoder.stop()
        for encoder in encoders:
            encoder.stop()
        for writer in writers.values():
            writer.abort()
        raise
    timings.decode += decoder.busy
    timings.encode = sum(encoder.busy for encoder in encoders[1 if segments is not None else 0 :])
    timings.total = time.perf_counter() - started
    return TrackResult(stems=paths, samples=samples, timings=timings)


@dataclass
class _Track:
    """What is known of a track before the model starts: its length, its statistics, maybe its blocks."""

    length: int | None = None
    stats: MixStats | None = None
    decoded: collections.deque[np.ndarray] | None = None


def _first_pass(reader: AudioReader, model: LoadedModel, preload: bool, timings: Timings) -> _Track:
    """Decode the whole track first when asked to (``preload``) or when the model needs whole-track
    statistics; else only read the length the container states."""
    if not preload and not model.normalize:
        return _Track(length=round(reader.duration * SAMPLE_RATE) if reader.duration else None)
    clock = time.perf_counter()
    try:
        if preload:
            decoded = collections.deque(reader.blocks(BLOCK_SECONDS * SAMPLE_RATE))
            length = sum(block.shape[1] for block in decoded)
            stats = MixStats.of(decoded) if model.normalize else None
            return _Track(length, stats, decoded)
        # Decoding in a thread of its own while this one sums: the same blocks in the same order, so the
        # same statistics, in about half the time on two cores (it is on the way to the first sound).
        decoder = _Producer(reader.blocks(BLOCK_SECONDS * SAMPLE_RATE), name="freestems-stats")
        try:
            counted = _Counted(decoder)
            stats = MixStats.of(counted)
        finally:
            decoder.stop()
        return _Track(counted.samples, stats)
    finally:
        timings.first_pass = time.perf_counter() - clock
        timings.decode += timings.first_pass


def _open_writers(paths: dict[str, Path], output: OutputFormat) -> dict[str, Any]:
    """One writer per stem, in ``output``'s format."""
    return {
        name: open_writer(path, output.format, bitrate=output.bitrate, bit_depth=output.bit_depth)
        for name, path in paths.items()
    }


def _encoders(writers: dict[str, Any], parallel: bool) -> list[_Consumer[Any]]:
    """One encoder thread for all stems, or with ``parallel`` one per stem."""
    if parallel:
        return [_Consumer(writer.write, name=f"freestems-encode-{name}") for name, writer in writers.items()]

    def encode(block: dict[str, np.ndarray]) -> None:
        for name, writer in writers.items():
            writer.write(block[name])

    return [_Consumer(encode, name="freestems-encode")]


def zip_stems(stems: dict[str, Path], archive: str | Path) -> Path:
    """Pack stem files into ``archive``, atomically, every one stored as it is: MP3 and FLAC are compressed
    already, and deflating PCM saves about a tenth of a WAV for seconds of billed CPU per song."""
    archive = Path(archive)
    with atomic_path(archive) as partial, zipfile.ZipFile(partial, "w") as bundle:
        for path in stems.values():
            bundle.write(path, path.name, compress_type=zipfile.ZIP_STORED)
    return archive


class _Counted:
    """Iterates blocks and counts their samples."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self.blocks = blocks
        self.samples = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.samples += block.shape[1]
            yield block


class _Decoded:
    """Blocks decoded beforehand, handed out (and forgotten) in order; a :class:`_Producer` look-alike."""

    busy = 0.0
    waited = 0.0

    def __init__(self, blocks: collections.deque[np.ndarray]):
        self.blocks = blocks

    def __iter__(self) -> Iterator[np.ndarray]:
        while self.blocks:
            yield self.blocks.popleft()

    def stop(self) -> None:
        self.blocks.clear()


_DONE = object()


class _Producer(Generic[T]):
    """Runs an iterator in a thread, a few items ahead of its consumer, which gets its errors too."""

    def __init__(self, items: Iterable[T], name: str):
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)  # items (T), then _DONE or an error
        self.stopped = threading.Event()
        self.busy = 0.0  # seconds spent producing
        self.waited = 0.0  # seconds the consumer spent waiting
        self.thread = threading.Thread(target=self._run, args=(iter(items),), name=name, daemon=True)
        self.thread.start()

    def _run(self, items: Iterator[T]) -> None:
        try:
            while not self.stopped.is_set():
                clock = time.perf_counter()
                item = next(items, _DONE)
                self.busy += time.perf_counter() - clock
                self._put(item)
                if item is _DONE:
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)

    def _put(self, item: object) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[T]:
        while True:
            clock = time.perf_counter()
            item = self.queue.get()
            self.waited += time.perf_counter() - clock
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


class _Consumer(Generic[T]):
    """Applies ``handle`` to items in a thread; errors surface on the next ``put`` or on ``join``."""

    def __init__(self, handle: Callable[[T], None], name: str):
        self.handle = handle
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)  # items (T), then _DONE
        self.error: BaseException | None = None
        self.busy = 0.0
        self.waited = 0.0  # seconds the producer waited for queue space
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # drain without work after a failure
            clock = time.perf_counter()
            try:
                self.handle(item)
            except BaseException as error:
                self.error = error
            self.busy += time.perf_counter() - clock

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: T) -> None:
        self._check()
        clock = time.perf_counter()
        self.queue.put(item)
        self.waited += time.perf_counter() - clock

    def join(self) -> None:
        self.queue.put(_DONE)
        self.thread.join()
        self._check()

    def stop(self) -> None:
        self.error = self.error or RuntimeError("stopped")
        if self.thread.is_alive():
            self.queue.put(_DONE)
            self.thread.join(timeout=5)
