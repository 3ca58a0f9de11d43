"""Progressive results: a separation's finished audio as numbered FLAC segments, written while it runs.

The engine yields stem blocks as soon as no later chunk can change them (:mod:`freestems.engine`); the
pipeline hands each block to a :class:`SegmentWriter` in a thread of its own (so writing them never delays
the model or the stem encoders), which writes segment ``i`` of every stem as
``<folder>/<i:05d>.<stem>.flac`` (16-bit stereo 44.1 kHz, exactly the block's samples, quantised as a 16-bit
stem file is) and then reports it. When the separation has finished, :meth:`SegmentWriter.finish` writes
``manifest.json``: the stems, every segment's ``[index, start, end]`` and the total length.

Segments are contiguous from sample 0 and the same for every stem. The first one is the engine's first
finished block, so it exists one chunk of model time after the model starts.

A folder can also be rebuilt from a finished job's zip (:func:`rebuild_segments`): a result cache hit, a
job that ran where no segments were written (Modal), or a server restart.

This module knows files and audio, not HTTP: the service (:mod:`freestems.service.partials`) serves them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freestems.contract import SAMPLE_RATE
from freestems.files import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SEGMENT_EXTENSION = ".flac"
REBUILT_SEGMENT_SECONDS = 30
"""Length of the segments cut from a finished result (all exist at once, so fewer, longer ones)."""
REBUILD_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class SegmentReport:
    """Segment ``index`` covers samples ``[start, end)`` of every stem in ``stems``; ``total`` is the
    track's exact length in samples when known before the end (else None). Picklable."""

    index: int
    start: int
    end: int
    stems: tuple[str, ...]
    total: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A finished segment folder: every segment, and the length of the whole track."""

    stems: tuple[str, ...]
    segments: tuple[tuple[int, int, int], ...]
    total: int

    def as_json(self) -> str:
        return json.dumps(
            {"stems": list(self.stems), "segments": [list(s) for s in self.segments], "total": self.total}
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The folder's manifest, or None if it has none (not finished) or it is unreadable."""
        try:
            data = json.loads((folder / MANIFEST).read_text())
            return cls(
                tuple(str(s) for s in data["stems"]),
                tuple((int(i), int(a), int(b)) for i, a, b in data["segments"]),
                int(data["total"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        with atomic_path(folder / MANIFEST) as partial:
            partial.write_text(self.as_json())


def segment_path(folder: Path, index: int, stem: str) -> Path:
    """Where segment ``index`` of ``stem`` lives."""
    return folder / f"{index:05d}.{stem}{SEGMENT_EXTENSION}"


def write_segment(folder: Path, index: int, stem: str, audio: np.ndarray) -> Path:
    """One segment file (16-bit FLAC, atomically)."""
    from freestems.audio import encode

    return encode(audio, segment_path(folder, index, stem), "flac", bit_depth=16)


def link_or_copy(source: Path, destination: Path) -> None:
    """A second name for ``source`` (a copy where hard links are not supported)."""
    try:
        os.link(source, destination)
    except FileExistsError:
        pass
    except OSError:
        shutil.copyfile(source, destination)


def clear(folder: Path) -> None:
    """An empty ``folder`` (created, or emptied of an earlier run's segments)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


class SegmentWriter:
    """Writes each finished block as a segment of every stem, then calls ``on_segment`` with its report.

    A failure to write (a full disk) is logged and ends the segments of this run, never the separation:
    the final stems do not depend on them.
    """

    def __init__(
        self,
        folder: Path,
        stems: Sequence[str],
        on_segment: Callable[[SegmentReport], None] | None = None,
        total: int | None = None,
    ) -> None:
        self.folder = folder
        self.stems = tuple(stems)
        self.on_segment = on_segment
        self.total = total
        self.segments: list[tuple[int, int, int]] = []
        self.position = 0
        self.failed = False
        self._lock = threading.Lock()
        clear(folder)

    def write(self, block: dict[str, np.ndarray]) -> None:
        """Write the next block (``{stem: (2, n) float32}``, in order); called from one thread."""
        size = block[self.stems[0]].shape[1]
        start, index = self.position, len(self.segments)
        self.position += size
        if self.failed or size == 0:
            return
        try:
            for stem in self.stems:
                write_segment(self.folder, index, stem, block[stem])
        except Exception as error:  # the separation goes on; only its progressive results stop here
            log.warning(
                "segment %d in %s could not be written, no more segments: %s", index, self.folder, error
            )
            self.failed = True
            return
        with self._lock:
            self.segments.append((index, start, self.position))
        if self.on_segment is not None:
            self.on_segment(SegmentReport(index, start, self.position, self.stems, self.total))

    def finish(self, samples: int) -> None:
        """The separation ended with ``samples`` per stem: write the manifest if every segment exists."""
        if self.failed or self.position != samples or not self.segments:
            return
        try:
            Manifest(self.stems, tuple(self.segments), samples).write(self.folder)
        except OSError as error:
            log.warning("the segment manifest in %s could not be written: %s", self.folder, error)


# ---------------------------------------------------------------------------------------------- rebuild


def copy_finished(source: Path, destination: Path) -> Manifest | None:
    """Give ``destination`` the segments of a finished folder (hard links, else copies), manifest last;
    None (and ``destination`` left empty) if ``source`` has no complete set."""
    manifest = Manifest.read(source)
    if manifest is None:
        return None
    clear(destination)
    try:
        for index, _, _ in manifest.segments:
            for stem in manifest.stems:
                link_or_copy(segment_path(source, index, stem), segment_path(destination, index, stem))
        manifest.write(destination)
    except OSError:  # the source expired meanwhile: the caller cuts them from the result instead
        clear(destination)
        return None
    return manifest


def rebuild_segments(
    archive: Path, folder: Path, segment_seconds: float = REBUILT_SEGMENT_SECONDS
) -> Manifest:
    """Cut the stems of a finished result (``archive``, a zip of stem files) into segments in ``folder``.

    The segments are the stems as their files decode, so their concatenation is the final stem exactly.
    Raises OSError, zipfile.BadZipFile or :class:`freestems.audio.AudioDecodeError` if the zip is unusable.
    """
    from freestems.audio import AudioReader

    size = max(1, round(segment_seconds * SAMPLE_RATE))
    clear(folder)
    with zipfile.ZipFile(archive) as bundle, tempfile.TemporaryDirectory(dir=folder) as scratch:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        stems = tuple(Path(info.filename).stem for info in members)
        paths = [Path(bundle.extract(info, scratch)) for info in members]

        def cut(path: Path, stem: str) -> int:
            return _cut(AudioReader(path).blocks(), size, folder, stem)

        with ThreadPoolExecutor(max_workers=REBUILD_THREADS) as pool:  # decoders and encoders free the GIL
            lengths = list(pool.map(cut, paths, stems))
    total = min(lengths) if lengths else 0
    bounds = [(index, start, min(start + size, total)) for index, start in enumerate(range(0, total, size))]
    manifest = Manifest(stems, tuple(bounds), total)
    manifest.write(folder)
    return manifest


def _cut(blocks: Iterator[np.ndarray], size: int, folder: Path, stem: str) -> int:
    """Write ``blocks`` as segments of ``size`` samples; returns the number of samples."""
    pending: list[np.ndarray] = []
    held = total = index = 0
    for block in blocks:
        pending.append(block)
        held += block.shape[1]
        while held >= size:
            data = np.concatenate(pending, axis=1)
            write_segment(folder, index, stem, data[:, :size])
            index, total, held = index + 1, total + size, held - size
            pending = [data[:, size:]]
    if held:
        write_segment(folder, index, stem, np.concatenate(pending, axis=1))
        total += held
    return total
