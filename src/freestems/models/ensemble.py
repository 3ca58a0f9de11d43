"""Ensembles: a model that averages its members' stems by name, each member run exactly as it runs alone.

Design (why not one module on one chunk): members differ in training segment, whole-track normalisation and
how the end of the track is chunked (``chunk_tail``), and each gives its published quality only when run its
own way. Cutting the track into one chunk length for all, or normalising the input for a member trained
without it, would make an ensemble member a different model from the one whose SDR the catalog shows. So an
ensemble is a :class:`~freestems.contract.LoadedModel` whose ``stream`` runs every member through the
engine's own block stream (``separate_blocks``: its segment, its normalisation with the whole-track
statistics, its chunk tail) in lockstep over one shared input:

* the input blocks are read once; every member reads them through its own cursor, and a block is forgotten
  as soon as every member has read it and its stems are out;
* the member whose output is furthest behind runs next, so the members stay within a few chunks of each
  other and memory stays bounded whatever the track length;
* as soon as every member has yielded a stretch, the ensemble yields it: stem ``s`` is
  ``sum_i w_i[s] * member_i[s] / sum_i w_i[s]`` over the members that separate ``s`` (weight 1 unless
  given; 0 leaves a member out of that stem). A one-stem member (a vocals model) contributes its stem only.

Whole-track statistics are computed once (the ensemble normalises when any member does) and handed to every
member; a member that does not normalise ignores them, as the engine always does. ``two_stems`` and
``consistency`` apply to the averaged stems. The engine never branches on a family: it only calls
``model.stream`` when a model has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from freestems.contract import LoadedModel, MixStats
from freestems.models.errors import ModelChoiceError


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of an ensemble and its per-stem weights (stems not named weigh 1)."""

    model: LoadedModel
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def weight(self, stem: str) -> float:
        return float(self.weights.get(stem, 1.0)) if stem in self.model.sources else 0.0


def weighted_sources(
    name: str, members: Sequence[tuple[Sequence[str], Mapping[str, float]]]
) -> tuple[str, ...]:
    """The stems :func:`make_ensemble` will give for members with these stems and weights, known before any
    member is loaded (from the catalog). Raises :class:`ModelChoiceError` as :func:`make_ensemble` would."""
    sources: list[str] = []
    for stems, weights in members:
        every = float(weights.get("*", 1.0))
        sources += [stem for stem in stems if float(weights.get(stem, every)) > 0 and stem not in sources]
    if len(members) < 2 or not sources:
        raise ModelChoiceError(f"ensemble {name}: needs two members and a stem with a weight above 0")
    return tuple(sources)


def make_ensemble(name: str, members: Sequence[tuple[LoadedModel, Mapping[str, float]]]) -> LoadedModel:
    """An ensemble of loaded models; weights map stem names (``"*"``: every stem) to weights.

    Raises:
        ModelChoiceError: fewer than two members, or a stem left with no weight.
    """
    if len(members) < 2:
        raise ModelChoiceError(f"an ensemble needs at least two models, got {len(members)}")
    parts = []
    for model, weights in members:
        every = float(weights.get("*", 1.0))
        table = {stem: float(weights.get(stem, every)) for stem in model.sources}
        unknown = sorted(set(weights) - set(model.sources) - {"*"})
        if unknown:
            raise ModelChoiceError(
                f"ensemble {name}: model {model.name} has no stem {', '.join(unknown)} "
                f"(its stems: {', '.join(model.sources)})"
            )
        parts.append(Member(model, table))
    sources: list[str] = []
    for part in parts:
        sources += [stem for stem in part.model.sources if part.weight(stem) > 0 and stem not in sources]
    if not sources:
        raise ModelChoiceError(f"ensemble {name}: every weight is 0")
    limits = [part.model.max_segment for part in parts if part.model.max_segment is not None]
    ensemble = Ensemble(parts, tuple(sources))
    return LoadedModel(
        module=nn.ModuleList(part.model.module for part in parts),
        name=name,
        sources=tuple(sources),
        segment=min(part.model.segment for part in parts),
        normalize=any(part.model.normalize for part in parts),
        max_segment=min(limits) if limits else None,
        stream=ensemble.stream,
    )


class Ensemble:
    """The members and the lockstep runner (:meth:`stream`, the ``LoadedModel.stream`` of an ensemble)."""

    def __init__(self, members: Sequence[Member], sources: tuple[str, ...]):
        self.members = list(members)
        self.sources = sources
        # weights[i, s]: member i's share of stem s (rows of members without s are 0).
        table = np.array([[part.weight(stem) for stem in sources] for part in self.members], np.float32)
        self.weights = table / table.sum(axis=0, keepdims=True)

    def stream(
        self,
        run: Callable[..., Generator[dict[str, np.ndarray], None, None]],
        blocks: Iterable[np.ndarray],
        *,
        length: int | None,
        stats: MixStats | None,
        progress: Callable[[float], None] | None,
        **options: Any,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(stems (len(sources), 2, n), mix (2, n))`` blocks in order; ``run`` is the engine's
        ``separate_blocks``, called once per member with the engine's options."""
        shared = SharedInput(blocks)
        shares = progress_shares(progress, len(self.members))
        streams = [
            run(shared.reader(i), part.model, length=length, stats=stats, progress=shares[i], **options)
            for i, part in enumerate(self.members)
        ]
        try:
            for pending, lo, hi in lockstep(streams, [part.model.sources for part in self.members]):
                yield self._mix(pending, hi - lo), shared.take(lo, hi)
                shared.forget_before(hi)
        finally:
            for stream in streams:
                stream.close()

    def _mix(self, pending: list[Pending], count: int) -> np.ndarray:
        out = np.zeros((len(self.sources), 2, count), np.float32)
        for i, part in enumerate(pending):
            stems = part.take(count)
            for s, stem in enumerate(self.sources):
                if self.weights[i, s] > 0:
                    out[s] += self.weights[i, s] * stems[stem]
        return out


Stream = Iterator[dict[str, np.ndarray]]
"""One engine run (``separate_blocks``): named stem blocks in order."""


def progress_shares(progress: Callable[[float], None] | None, count: int) -> list[Callable[[float], None]]:
    """One progress callback for each of ``count`` models run together; ``progress`` gets their mean.
    Whatever ``progress`` raises (a cancellation) stops the model reporting, and so every model."""
    fractions = [0.0] * count

    def share(index: int) -> Callable[[float], None]:
        def update(fraction: float) -> None:
            fractions[index] = fraction
            if progress is not None:
                progress(sum(fractions) / count)

        return update

    return [share(index) for index in range(count)]


def lockstep(
    streams: Sequence[Stream], names: Sequence[Sequence[str]]
) -> Iterator[tuple[list[Pending], int, int]]:
    """Run ``streams`` together, the one whose output is furthest behind next, keeping stems ``names[i]`` of
    stream ``i``; yield ``(pending, lo, hi)`` whenever every stream has given samples up to ``hi`` (the caller
    takes ``hi - lo`` samples from each pending before the next)."""
    pending = [Pending() for _ in streams]
    done = [False] * len(streams)
    emitted = 0
    while not all(done):
        index = min((i for i in range(len(streams)) if not done[i]), key=lambda i: pending[i].end)
        block = next(streams[index], None)
        if block is None:
            done[index] = True
        else:
            pending[index].add(block, names[index])
        upto = min(part.end for part in pending)
        if upto > emitted:
            yield pending, emitted, upto
            emitted = upto


class Pending:
    """One model's stem blocks not yet used (an ensemble member's, a chain link's); ``end`` is how far its
    output has come."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}
        self.end = 0
        self.start = 0

    def add(self, block: dict[str, np.ndarray], sources: Sequence[str]) -> None:
        for stem in sources:
            self.parts.setdefault(stem, []).append(block[stem])
        self.end += block[sources[0]].shape[-1]

    def take(self, count: int) -> dict[str, np.ndarray]:
        out = {}
        for stem, parts in self.parts.items():
            joined = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            out[stem] = joined[:, :count]
            self.parts[stem] = [joined[:, count:]]
        self.start += count
        return out


class SharedInput:
    """One pass over the input blocks, read by every member at its own pace; also the mix for the output (a
    chain reads it with one reader, its first model)."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self.source = iter(blocks)
        self.blocks: list[np.ndarray] = []
        self.first = 0  # index of self.blocks[0] in the stream
        self.start = 0  # sample position of self.blocks[0]
        self.cursors: dict[int, int] = {}
        self.ended = False

    def reader(self, key: int) -> Iterator[np.ndarray]:
        self.cursors[key] = 0
        while True:
            index = self.cursors[key]
            while index - self.first >= len(self.blocks) and not self.ended:
                block = next(self.source, None)
                if block is None:
                    self.ended = True
                else:
                    self.blocks.append(np.asarray(block, np.float32))
            if index - self.first >= len(self.blocks):
                return
            self.cursors[key] = index + 1
            yield self.blocks[index - self.first]

    def take(self, lo: int, hi: int) -> np.ndarray:
        """The input samples ``[lo, hi)`` (stereo; all of them were read by the members already)."""
        parts, position = [], self.start
        for block in self.blocks:
            block = block if block.ndim == 2 else block[None]
            block = np.repeat(block, 2, axis=0) if block.shape[0] == 1 else block
            end = position + block.shape[-1]
            if end > lo and position < hi:
                parts.append(block[:, max(lo - position, 0) : hi - position])
            position = end
        return np.concatenate(parts, axis=-1)

    def forget_before(self, position: int) -> None:
        """Drop blocks that end before ``position`` and that every member has read."""
        oldest = min(self.cursors.values(), default=self.first)
        while self.blocks and self.first < oldest and self.start + self.blocks[0].shape[-1] <= position:
            self.start += self.blocks[0].shape[-1]
            self.blocks.pop(0)
            self.first += 1
