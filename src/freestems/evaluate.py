"""How well a model separates, measured on songs whose true stems are known (``freestems eval``).

A model's published SDR was measured by other code, on other songs, often with other settings. This module
measures any model freestems runs (a catalog model, an ensemble ``a+b``, a checkpoint file), with the engine
options it will run with, on a folder of multitracks:

- the layout is MUSDB18-HQ's by default: one folder per song holding ``mixture.wav`` and one file per stem
  (``vocals.wav``, ``drums.wav``, ``bass.wav``, ``other.wav``); a :class:`Layout` names other files. Every
  folder under the one given that holds the mixture file is a song (so ``musdb18hq/`` finds ``train/`` and
  ``test/`` songs alike; give ``musdb18hq/test`` for the test set).
- each song's mixture is separated, and every stem the model gives and the song has is scored with both SDRs
  of :mod:`freestems.metrics`: ``sdr`` (whole-track, MSST and MVSEP) and ``sdr_museval`` (median of the
  1-second BSSEval v4 frames, MUSDB papers). A stem the song lacks is skipped; a song lacking all of them is
  an error for that song, and the other songs go on.
- the totals are labelled by how they are taken: the mean over songs of ``sdr`` (as MVSEP does) and the
  median over songs of ``sdr_museval`` (as MUSDB papers do); ``avg`` is the mean of a row's stems.

Memory: a whole song is in memory at once, its mixture, its reference stems and the model's stems, float32
stereo at about 10.6 MB per audio minute each: some 0.5 GB for a five-minute song with four stems, besides
the model. Right for MUSDB's songs of a few minutes; not meant for hour-long recordings.

    from freestems.evaluate import evaluate
    result = evaluate("musdb18hq/test", "scnet", overlap=0.5)
    result.total_sdr()          # {"drums": 9.1, ..., "avg": 8.9}: the mean over songs
    json.dumps(result.as_dict())
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freestems.audio import AudioError, decode
from freestems.contract import SAMPLE_RATE, LoadedModel
from freestems.files import atomic_path
from freestems.library import load_model, separate
from freestems.metrics import EPS, frame_sdrs, median_sdr, sdr
from freestems.rules import output_names
from freestems.version import __version__

METRICS = {
    "sdr": f"whole-track SDR, 10*log10((sum(ref^2) + {EPS:g}) / (sum((ref - est)^2) + {EPS:g})) over all "
    "channels and samples, as MSST's utils/metrics.py sdr() and the MVSEP leaderboard; totals: mean over "
    "songs",
    "sdr_museval": "museval's BSSEval v4 SDR: the median over 1-second frames of 10*log10(sum(ref^2) / "
    "sum((ref - est)^2)), frames where any evaluated reference or estimate is silent skipped; totals: median "
    "over songs, as MUSDB papers report",
}
"""What each number is, written into the JSON results."""


class EvaluationError(Exception):
    """A folder or a layout that cannot be evaluated; the message says which and why, on one line."""


@dataclass(frozen=True)
class Layout:
    """The files of a song's folder: the mixture, and a stem's file by its name (default ``<stem>`` with
    the mixture's extension: ``vocals.wav`` beside ``mixture.wav``, ``vocals.flac`` beside ``mix.flac``)."""

    mixture: str = "mixture.wav"
    stems: Mapping[str, str] = field(default_factory=dict)

    def stem_file(self, stem: str) -> str:
        return self.stems.get(stem, stem + Path(self.mixture).suffix)

    @classmethod
    def parse(cls, mixture: str, stems: Iterable[str] = ()) -> Layout:
        """A layout from ``--mixture FILE`` and ``--stem STEM=FILE`` options."""
        files: dict[str, str] = {}
        for value in stems:
            stem, _, name = value.partition("=")
            if not stem.strip() or not name.strip():
                raise EvaluationError(f"--stem {value}: give STEM=FILE, e.g. --stem vocals=vox.wav")
            if stem.strip() in files:
                raise EvaluationError(f"--stem {stem.strip()} is given twice")
            files[stem.strip()] = name.strip()
        return cls(mixture, files)

    def check(self, stems: Sequence[str]) -> None:
        """Refuse a stem file named for a stem the model does not give (a typo would silently skip it)."""
        unknown = [stem for stem in self.stems if stem not in stems]
        if unknown:
            raise EvaluationError(
                f"--stem {unknown[0]}: the model gives no such stem (it gives {', '.join(stems)})"
            )


def find_songs(folder: str | os.PathLike[str], layout: Layout = Layout()) -> list[Path]:  # noqa: B008
    """The song folders: ``folder`` and every folder under it that holds the mixture file, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such folder")
    songs = sorted(path for path in [root, *root.rglob("*")] if (path / layout.mixture).is_file())
    if not songs:
        raise EvaluationError(
            f"no songs in {root}: no folder in it holds {layout.mixture} "
            "(name the mixture file with --mixture)"
        )
    return songs


def song_name(folder: str | os.PathLike[str], song: Path) -> str:
    """A song's name: its folder's path under ``folder``, or its own name when it is ``folder``."""
    relative = song.relative_to(folder).as_posix()
    return song.name if relative == "." else relative


@dataclass(frozen=True)
class StemScore:
    """One stem of one song: its whole-track SDR and its museval frame SDRs (NaN: a skipped frame)."""

    sdr: float
    frames: np.ndarray = field(repr=False)

    @property
    def sdr_museval(self) -> float:
        """The median over the frames (NaN when every frame was skipped)."""
        return median_sdr(self.frames)


@dataclass
class SongResult:
    """One song: the stems scored, those the song lacks, notes (a stem of another length) or an error."""

    name: str
    folder: Path
    samples: int = 0
    scores: dict[str, StemScore] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        stems = {
            stem: {
                "sdr": _number(score.sdr),
                "sdr_museval": _number(score.sdr_museval),
                "frames": [_number(value) for value in score.frames],
            }
            for stem, score in self.scores.items()
        }
        return {
            "name": self.name,
            "folder": str(self.folder),
            "seconds": round(self.samples / SAMPLE_RATE, 3),
            "stems": stems,
            "missing": self.missing,
            "notes": self.notes,
            "error": self.error,
        }


def evaluate_song(
    song: Path,
    model: LoadedModel,
    layout: Layout = Layout(),  # noqa: B008 - frozen
    *,
    name: str | None = None,
    progress: Callable[[float], None] | None = None,
    **options: Any,
) -> SongResult:
    """Separate one song's mixture and score every stem the model gives and the song has.

    A song whose files cannot be read, or that has none of the model's stems, gives a result with its
    ``error``; a reference of another length than the mixture is cut or padded with silence (a note says
    so). ``options`` are the engine's (:func:`freestems.separate`); a bad one raises ``SeparationError``.
    """
    name = name or song.name
    stems = output_names(model.sources, options.get("two_stems"))
    files = {stem: song / layout.stem_file(stem) for stem in stems}
    present = [stem for stem in stems if files[stem].is_file()]
    result = SongResult(name, song, missing=[stem for stem in stems if stem not in present])
    if not present:
        listed = ", ".join(layout.stem_file(stem) for stem in stems)
        result.error = f"{name}: none of the model's stems is in its folder ({listed})"
        return result
    try:
        mix = decode(song / layout.mixture)
        references = _references(files, present, mix.shape[1], result.notes)
    except AudioError as error:
        result.error = f"{name}: {error}"
        return result
    estimated = separate(mix, model, progress=progress, **options)
    result.samples = mix.shape[1]
    del mix
    estimates = np.stack([estimated.pop(stem) for stem in present])
    frames = frame_sdrs(references, estimates)
    for index, stem in enumerate(present):
        result.scores[stem] = StemScore(sdr(references[index], estimates[index]), frames[index])
    return result


def _references(files: dict[str, Path], stems: list[str], length: int, notes: list[str]) -> np.ndarray:
    """The stems' files, decoded into one ``(stems, 2, length)`` array, each cut or padded to ``length``."""
    references = np.zeros((len(stems), 2, length), dtype=np.float32)
    for index, stem in enumerate(stems):
        audio = decode(files[stem])
        if audio.shape[1] != length:
            shorter = audio.shape[1] < length
            notes.append(
                f"{files[stem].name} is {abs(audio.shape[1] - length)} samples "
                f"{'shorter' if shorter else 'longer'} than the mixture: "
                f"{'padded with silence' if shorter else 'cut'}"
            )
        kept = min(audio.shape[1], length)
        references[index, :, :kept] = audio[:, :kept]
    return references


@dataclass
class Evaluation:
    """A model's scores on a folder of songs, and the totals over them."""

    model: str
    stems: tuple[str, ...]
    """What the model gives, in its order (the table's columns)."""
    folder: Path
    layout: Layout
    options: dict[str, Any]
    songs: list[SongResult] = field(default_factory=list)

    def total_sdr(self) -> dict[str, float]:
        """Per stem, the mean over songs of the whole-track SDR (MVSEP); ``avg``: the mean of the stems."""
        return _totals(self._values(lambda score: score.sdr), _mean)

    def total_museval(self) -> dict[str, float]:
        """Per stem, the median over songs of the frame medians (MUSDB papers); ``avg``: the mean of the
        stems. A song whose frames were all skipped does not count (pandas' median, as museval's)."""
        return _totals(self._values(lambda score: score.sdr_museval), _median)

    def _values(self, value: Callable[[StemScore], float]) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {stem: [] for stem in self.stems}
        for song in self.songs:
            for stem, score in song.scores.items():
                found[stem].append(value(score))
        return {stem: values for stem, values in found.items() if values}

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`as_dict` to ``path``, whole or not at all."""
        with atomic_path(path) as partial:
            partial.write_text(json.dumps(self.as_dict(), indent=1) + "\n")

    def as_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON values (NaN: null; infinity: "inf")."""
        return {
            "freestems": __version__,
            "model": self.model,
            "model_stems": list(self.stems),
            "folder": str(self.folder),
            "layout": {
                "mixture": self.layout.mixture,
                "stems": {stem: self.layout.stem_file(stem) for stem in self.stems},
            },
            "options": {key: _plain(value) for key, value in self.options.items()},
            "metrics": METRICS,
            "total": {
                "songs": sum(1 for song in self.songs if song.scores),
                "failed": sum(1 for song in self.songs if song.error),
                "sdr_mean": {key: _number(value) for key, value in self.total_sdr().items()},
                "sdr_museval_median": {key: _number(value) for key, value in self.total_museval().items()},
            },
            "songs": [song.as_dict() for song in self.songs],
        }


def evaluate(
    folder: str | os.PathLike[str],
    model: str | LoadedModel = "scnet",
    *,
    layout: Layout = Layout(),  # noqa: B008 - frozen
    on_song: Callable[[SongResult], None] | None = None,
    **options: Any,
) -> Evaluation:
    """Evaluate ``model`` (a catalog name, an ensemble ``"a+b"`` or a loaded model) on every song under
    ``folder``; ``on_song`` is called with each song's result as it is done. ``options``: the engine's, as
    for :func:`freestems.separate`. Raises :class:`EvaluationError` when ``folder`` holds no song."""
    songs = find_songs(folder, layout)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    stems = tuple(output_names(loaded.sources, options.get("two_stems")))
    layout.check(stems)
    evaluation = Evaluation(loaded.name, stems, Path(folder), layout, dict(options))
    for song in songs:
        result = evaluate_song(song, loaded, layout, name=song_name(folder, song), **options)
        evaluation.songs.append(result)
        if on_song is not None:
            on_song(result)
    return evaluation


LABEL_WIDTH = 40


def format_header(stems: Sequence[str]) -> str:
    """The table's first line: the stems' names over their columns, then ``avg``."""
    return _row("SDR in dB", {stem: stem for stem in [*stems, "avg"]}, stems)


def format_song(song: SongResult, stems: Sequence[str]) -> str:
    """A song's lines: its name, then its ``sdr`` and its ``sdr_museval`` per stem ("-": not scored)."""
    whole = _with_avg({stem: score.sdr for stem, score in song.scores.items()})
    frames = _with_avg({stem: score.sdr_museval for stem, score in song.scores.items()})
    return "\n".join(
        [
            song.name,
            _row("  sdr", _cells(whole), stems),
            _row("  sdr_museval (frame median)", _cells(frames), stems),
        ]
    )


def format_total(evaluation: Evaluation) -> str:
    """The totals' lines, each labelled with how it is taken."""
    count = sum(1 for song in evaluation.songs if song.scores)
    stems = evaluation.stems
    return "\n".join(
        [
            f"total over {count} song{'s' if count != 1 else ''}",
            _row("  sdr: mean over songs (MVSEP)", _cells(evaluation.total_sdr()), stems),
            _row("  sdr_museval: median over songs (MUSDB)", _cells(evaluation.total_museval()), stems),
        ]
    )


def _row(label: str, cells: Mapping[str, str], stems: Sequence[str]) -> str:
    columns = [*stems, "avg"]
    text = "".join(cells.get(column, "-").rjust(max(8, len(column) + 2)) for column in columns)
    return label.ljust(LABEL_WIDTH) + text


def _cells(values: Mapping[str, float]) -> dict[str, str]:
    return {key: _cell(value) for key, value in values.items()}


def _cell(value: float) -> str:
    """Three decimals; "-" for NaN (nothing counted), "inf" for an estimate equal to its reference."""
    return "-" if math.isnan(value) else f"{value:.3f}" if math.isfinite(value) else f"{value:.0f}"


def _totals(values: dict[str, list[float]], reduce: Callable[[list[float]], float]) -> dict[str, float]:
    return _with_avg({stem: reduce(found) for stem, found in values.items()})


def _with_avg(values: dict[str, float]) -> dict[str, float]:
    """``values`` and ``avg``, the mean of those that are not NaN."""
    counted = [value for value in values.values() if not math.isnan(value)]
    return {**values, "avg": float(np.mean(counted)) if counted else math.nan}


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _median(values: list[float]) -> float:
    return median_sdr(np.asarray(values))  # the same rule: the median of those that are not NaN


def _number(value: float) -> float | str | None:
    """A float for JSON: NaN is null, an infinity "inf" or "-inf" (JSON has neither)."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(float(value), 6)


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


__all__ = [
    "METRICS",
    "Evaluation",
    "EvaluationError",
    "Layout",
    "SongResult",
    "StemScore",
    "evaluate",
    "evaluate_song",
    "find_songs",
    "format_header",
    "format_song",
    "format_total",
    "song_name",
]
