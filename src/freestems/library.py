"""The library's front door: the three calls most people need, reachable as ``freestems.<call>``.

::

    import freestems

    stems = freestems.separate("song.mp3")                       # {"drums": (2, n) float32, ...}
    model = freestems.load_model("mel-roformer-kim")             # load once, separate many
    freestems.separate_file("song.mp3", "stems/", model=model, format="mp3")

Everything here is a thin layer over the engine (:mod:`freestems.engine`), the streaming pipeline
(:mod:`freestems.pipeline`) and the loader (:mod:`freestems.models.loading`): it turns a path into audio and a
name into a model, and nothing more, so the rules stay where they are written once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from freestems.audio.decode import decode
from freestems.contract import LoadedModel
from freestems.engine import separate as _separate_waveform
from freestems.models.loading import load_model
from freestems.options import SeparationOptions
from freestems.pipeline import TrackResult
from freestems.pipeline import separate_file as _separate_file

ModelChoice = str | LoadedModel
"""A catalog name (``"scnet"``), an ensemble (``"a+b"``), a chain (``"a>drums:b"``) or a loaded model."""

Audio = str | os.PathLike[str] | np.ndarray
"""A file of any format PyAV reads, or float32 ``(channels, samples)`` at 44.1 kHz."""


def separate(
    audio: Audio,
    model: ModelChoice = "scnet",
    *,
    progress: Callable[[float], None] | None = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Separate a song into its stems, in memory.

    Args:
        audio: a path (decoded to stereo 44.1 kHz first) or a waveform ``(channels, samples)`` at 44.1 kHz.
        model: a catalog name, an ensemble ``"a+b"``, a chain ``"a>drums:b"`` or a :func:`load_model`
            result. A name is loaded once and kept for the next call with the same name (the last one only).
        progress: called with the fraction done, from 0 to 1.
        **options: ``overlap`` (0.25), ``shifts`` (1), ``two_stems`` (``"vocals"`` gives ``vocals`` and
            ``no_vocals``), ``consistency``, ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``),
            ``segment``, ``batch_size``, ``precision``, ``seed`` (:func:`freestems.engine.separate_blocks`).

    Returns:
        ``{stem: float32 (2, samples)}``, every stem exactly as long as the input.
    """
    mix = audio if isinstance(audio, np.ndarray) else decode(Path(audio))
    return _separate_waveform(mix, _model(model), progress=progress, **options)


def separate_file(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    model: ModelChoice = "scnet",
    *,
    format: str = "wav",
    bitrate: int = 192,
    bit_depth: int = 16,
    progress: Callable[[float], None] | None = None,
    **options: Any,
) -> TrackResult:
    """Separate a file into ``destination/<stem>.<ext>``, streaming: memory stays bounded for any length.

    Args:
        source: any audio or video file PyAV can read.
        destination: the folder for the stems (created when missing).
        model: as for :func:`separate`.
        format: ``"wav"``, ``"flac"`` or ``"mp3"``; ``bitrate`` (kbps) is for MP3, ``bit_depth`` for WAV/FLAC
            (a value they do not take raises :class:`freestems.rules.SeparationError` before any work).
        progress, **options: as for :func:`separate`.

    Returns:
        The written files (``result.stems``: stem name to path) and the track's length in samples.
    """
    output = SeparationOptions(format=format, mp3_bitrate=bitrate, bit_depth=bit_depth).output()  # checked
    return _separate_file(
        Path(source), Path(destination), _model(model), output=output, progress=progress, **options
    )


def _model(choice: ModelChoice) -> LoadedModel:
    return choice if isinstance(choice, LoadedModel) else _load_named(choice)


@functools.lru_cache(maxsize=1)
def _load_named(name: str) -> LoadedModel:
    """A catalog model by name, kept until another name is asked for (loading takes seconds)."""
    return load_model(name)


__all__ = ["ModelChoice", "load_model", "separate", "separate_file"]
