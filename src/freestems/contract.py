"""The model contract: what every layer agrees a model is, on the ground floor of the package.

The engine runs models, the model families build them, the loader fills them with weights, ensembles are made
of them, and the executors, the service and the CLI pass them around. So the types they share live here,
below all of them, and this module imports nothing of freestems: imports only flow one way (the layer test,
``tests/test_layers.py``, holds every module to it).

- :data:`SAMPLE_RATE`: every waveform inside freestems is float32 stereo at this rate.
- :class:`ModelSpec`: everything needed to build an SCNet and run it, apart from the weights.
- :class:`LoadedModel`: a network ready for the engine, with the facts the engine needs (stems, segment,
  normalisation, how to chunk the end of a track).
- :class:`MixStats`: the whole-track statistics that normalisation uses (the engine computes them once and
  hands them to every member of an ensemble).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the contract itself needs no torch: the web tier reads it without importing torch
    from torch import nn

SAMPLE_RATE = 44100
"""Every waveform inside freestems is float32 stereo at this rate."""

SOURCES = ("drums", "bass", "other", "vocals")
"""The four stems of MUSDB18, in the order the released SCNets give them."""

SEGMENT = 485_100
"""Training segment of every released SCNet: 11 s at 44.1 kHz."""

CHUNK_TAILS = ("zeros", "centred")
"""How the engine may fill the end of a track (:attr:`LoadedModel.chunk_tail`)."""


@dataclass
class ModelSpec:
    """Everything needed to build a model and run it, apart from the weights.

    ``config`` holds SCNet constructor arguments (``sources`` included; ``sources`` below wins when both are
    given), ``spec_norm`` the in-model spectrogram normalisation, ``normalize`` the whole-track normalisation
    before separation and ``segment`` the chunk length in samples.
    """

    name: str
    config: dict[str, Any]
    sources: tuple[str, ...] = SOURCES
    spec_norm: bool = False
    normalize: bool = False
    segment: int = SEGMENT


@dataclass
class LoadedModel:
    """A model ready for :mod:`freestems.engine`: ``module`` maps (batch, channels, samples) to
    (batch, len(sources), channels, samples) and is in eval mode.

    Besides stems, training ``segment`` and whole-track ``normalize``, the contract says how the engine
    fills the end of the track (``chunk_tail``: ``"zeros"``, or ``"centred"`` as Demucs's ``apply_model``
    does), the longest chunk the network accepts (``max_segment``, None for any: HT-Demucs refuses chunks
    longer than its training segment) and, for a model made of models, ``stream``: a callable that runs the
    members through the engine itself (see :mod:`freestems.models.ensemble`). A model with one stem yields
    it and its complement (``vocals`` and ``no_vocals``).
    """

    module: nn.Module = field(repr=False)
    name: str
    sources: tuple[str, ...]
    segment: int
    normalize: bool
    sample_rate: int = SAMPLE_RATE
    chunk_tail: str = "zeros"
    max_segment: int | None = None
    stream: Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MixStats:
    """Mean and standard deviation of the mono mix, for whole-track normalisation."""

    mean: float
    std: float

    @classmethod
    def of(cls, blocks: Iterable[np.ndarray]) -> MixStats:
        """Compute the statistics in one pass over ``blocks`` (float64 sums, so long tracks stay exact)."""
        count, total, squares = 0, 0.0, 0.0
        for block in blocks:
            mono = block.mean(axis=0, dtype=np.float64)
            count += mono.size
            total += mono.sum()
            squares += np.dot(mono, mono)
        if count < 2:
            return cls(0.0, 1.0)
        mean = total / count
        variance = max(squares - count * mean * mean, 0.0) / (count - 1)
        std = variance**0.5
        # Digital silence (or a constant) has no spread: leave the level alone instead of dividing by zero.
        return cls(float(mean), float(std) if std > 1e-8 else 1.0)
