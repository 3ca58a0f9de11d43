"""Chains: a model run on one stem of another's output (drums -> drum parts, vocals -> de-reverbed vocals).

Syntax, the same for the CLI's ``-m``, ``load_model``, ``freestems.separate(model=...)``, the API's
``model`` field and ``freestems serve -m`` (quote it in a shell: ``>`` redirects)::

    FIRST>STEM:SECOND[>STEM:SECOND...]       htdemucs_ft>drums:mdx23c-drumsep

``FIRST`` separates the mix; each link ``>STEM:SECOND`` runs ``SECOND`` on the stem ``STEM`` of FIRST's
output. Every link names a stem of the *first* model (``a>drums:b>vocals:c`` splits a's drums with b and a's
vocals with c; a stem is chained once); to split a link's stem further, chain a chain preset. ``+`` binds
tighter than ``>``: ``a+b>drums:c`` chains the ensemble ``a+b``, ``a>drums:b+c`` runs the ensemble ``b+c``
on the drums. A catalog preset of architecture ``chain`` names one (config ``{"first": name, "links":
[[stem, name], ...]}``, catalog names only).

Result: FIRST's stems in their order, each chained stem replaced in place by the stems SECOND gives when run
alone on it, named ``<stem>-<its stem>``: ``drums`` becomes ``drums-kick``, ``drums-snare``, ...; a one-stem
SECOND gives its stem and the rest of its input, so a de-reverb model whose stem is ``dry`` turns ``vocals``
into ``vocals-dry`` and ``vocals-no_dry`` (the reverb). The parts sum to the parent stem exactly when SECOND
is one-stem (the rest is its input minus its stem), and as nearly as SECOND's stems sum to their input
otherwise; nothing enforces it (``consistency`` spreads the residual over the chain's stems against the mix).

Bounded memory, one pass: the chain is a :class:`~freestems.contract.LoadedModel` whose ``stream`` runs FIRST
through the engine's block stream (``separate_blocks``) over the input read once, and feeds each chained
stem's blocks, as FIRST yields them, into SECOND's own ``separate_blocks`` run; the link whose output is
furthest behind runs next (as ensemble members do), and the chain yields a stretch as soon as every link has
given it. Memory is a few chunks of each model, whatever the track length, and progressive results work as
for any model. Each model runs its own way: its segment, its chunk tail, its overlap-add, on the same
options. Progress is the mean of the models' fractions done.

Normalisation: a model that normalises the whole track needs its input's statistics before its first chunk.
A link's input (the stem) is known whole only once FIRST has run the whole track, so its own statistics would
cost a second run of FIRST (twice the time) or keeping the whole stem (memory growing with the length). So a
normalising link gets the *mix's* whole-track statistics (those FIRST gets): its stem keeps the level it has
in the mix instead of being brought to unit spread. A link that does not normalise (MSST's MDX23C and
RoFormers: DrumSep, the de-reverb models) runs exactly as alone, so the chain equals running FIRST, then
SECOND on the stem. The chain asks for the statistics when any of its models normalises.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch import nn

from freestems.contract import LoadedModel, MixStats
from freestems.models.catalog import ModelInfo, get_model_info
from freestems.models.ensemble import (
    Pending,
    SharedInput,
    Stream,
    lockstep,
    progress_shares,
    weighted_sources,
)
from freestems.models.errors import ModelChoiceError, ModelNotAvailable
from freestems.models.spelling import HINT, SEPARATOR, ChainSpec, is_chain, parse_chain, parse_members
from freestems.rules import output_names

PART = "-"
"""``drums-kick``: a chained stem's name, its link's stem's name, and this between them."""


def part_name(stem: str, part: str) -> str:
    """``drums`` split into ``kick`` gives ``drums-kick``."""
    return f"{stem}{PART}{part}"


def chain_outputs(
    name: str, first: Sequence[str], links: Sequence[tuple[str, Sequence[str]]]
) -> tuple[str, ...]:
    """The stems of a chain: ``first`` (the first model's output names) with each link's stem replaced in
    place by the link model's output names (``links``: ``(stem, names)``), prefixed by the stem.

    Raises:
        ModelChoiceError: no link, a stem the first model does not give, a stem chained twice, or two
            stems of one name.
    """
    if not links:
        raise ModelChoiceError(f"chain {name!r} has no link ({HINT})")
    parts: dict[str, list[str]] = {}
    for stem, outputs in links:
        if stem not in first:
            raise ModelChoiceError(
                f"chain {name!r}: the first model has no stem {stem!r} (its stems: {', '.join(first)})"
            )
        if stem in parts:
            raise ModelChoiceError(f"chain {name!r}: stem {stem!r} is chained twice; chain each stem once")
        parts[stem] = [part_name(stem, part) for part in outputs]
    names = [out for stem in first for out in parts.get(stem, [stem])]
    twice = sorted({out for out in names if names.count(out) > 1})
    if twice:
        raise ModelChoiceError(f"chain {name!r}: two stems would be called {', '.join(twice)}")
    return tuple(names)


# ------------------------------------------------------------------------------- from the catalog alone


def described_outputs(name: str) -> tuple[str, ...]:
    """The stems a model name gives (a catalog name or preset, ``a+b``, or a chain), from the catalog alone:
    nothing is fetched or loaded. Raises :class:`ModelNotAvailable` for an unknown catalog name (in a chain:
    :class:`ModelChoiceError`) and :class:`ModelChoiceError` for a bad ensemble or chain."""
    if is_chain(name):
        return spec_outputs(name, parse_chain(name))
    if SEPARATOR in name:
        members = [(get_model_info(member).sources, weights) for member, weights in parse_members(name)]
        return tuple(output_names(weighted_sources(name, members)))
    return tuple(output_names(get_model_info(name).sources))


def spec_outputs(name: str, spec: ChainSpec) -> tuple[str, ...]:
    """The stems of the chain ``spec`` (called ``name``), every model and stem in it checked against the
    catalog; an unknown model is a :class:`ModelChoiceError` naming the chain."""
    try:
        return chain_outputs(
            name,
            described_outputs(spec.first),
            [(stem, described_outputs(model)) for stem, model in spec.links],
        )
    except ModelNotAvailable as error:  # an unknown name (nothing is fetched here)
        raise ModelChoiceError(f"chain {name!r}: {error}") from None


def describe_chain(name: str) -> tuple[list[ModelInfo], tuple[str, ...], str]:
    """A chain spelled ``name``, for serving: the catalog entries it runs (presets as themselves), its stems
    and a title. Raises :class:`ModelChoiceError` for a malformed chain, an unknown model or stem."""
    spec = parse_chain(name)
    outputs = spec_outputs(name, spec)

    def entries(part: str) -> list[ModelInfo]:
        names = [member for member, _ in parse_members(part)] if SEPARATOR in part else [part]
        return [get_model_info(member) for member in names]

    def title(part: str) -> str:
        return " + ".join(entry.title for entry in entries(part))

    infos = [entry for part in (spec.first, *(model for _, model in spec.links)) for entry in entries(part)]
    links = "; ".join(f"{stem} split by {title(model)}" for stem, model in spec.links)
    return infos, outputs, f"{title(spec.first)}; {links}"


# ----------------------------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class Link:
    """A loaded link: the first model's ``stem`` it runs on, its ``model``, and the names that model gives
    alone (``outputs``)."""

    stem: str
    model: LoadedModel
    outputs: tuple[str, ...]


def make_chain(name: str, first: LoadedModel, links: Sequence[tuple[str, LoadedModel]]) -> LoadedModel:
    """A chain of loaded models: ``first``, and each ``(stem, model)`` run on that stem of first's output.

    Raises:
        ModelChoiceError: as :func:`chain_outputs`.
    """
    first_outputs = tuple(output_names(first.sources))
    parts = [Link(stem, model, tuple(output_names(model.sources))) for stem, model in links]
    sources = chain_outputs(name, first_outputs, [(link.stem, link.outputs) for link in parts])
    models = [first, *(link.model for link in parts)]
    limits = [model.max_segment for model in models if model.max_segment is not None]
    chain = Chain(first, first_outputs, parts, sources)
    return LoadedModel(
        module=nn.ModuleList(model.module for model in models),
        name=name,
        sources=sources,
        segment=min(model.segment for model in models),
        normalize=any(model.normalize for model in models),
        max_segment=min(limits) if limits else None,
        stream=chain.stream,
    )


class Chain:
    """The models of a chain and its runner (:meth:`stream`, the ``LoadedModel.stream`` of a chain)."""

    def __init__(
        self, first: LoadedModel, outputs: Sequence[str], links: Sequence[Link], sources: Sequence[str]
    ):
        self.first = first
        self.outputs = tuple(outputs)
        self.links = list(links)
        self.sources = tuple(sources)

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
        ``separate_blocks``, called for the first model on the input and for each link on its stem, all
        with the engine's options and the mix's statistics."""
        shared = SharedInput(blocks)
        shares = progress_shares(progress, 1 + len(self.links))
        first = run(shared.reader(0), self.first, length=length, stats=stats, progress=shares[0], **options)
        feed = _Feed(first, self.outputs, [link.stem for link in self.links])
        runs = [
            run(feed.reader(i), link.model, length=length, stats=stats, progress=shares[i + 1], **options)
            for i, link in enumerate(self.links)
        ]
        try:
            for pending, lo, hi in lockstep(runs, [link.outputs for link in self.links]):
                yield self._assemble(feed.take(hi - lo), pending, hi - lo), shared.take(lo, hi)
                shared.forget_before(hi)
        finally:
            for stream in (*runs, first):
                stream.close()

    def _assemble(self, kept: dict[str, np.ndarray], pending: list[Pending], count: int) -> np.ndarray:
        """The next ``count`` samples of every stem, in ``sources`` order."""
        stems = dict(kept)
        for link, part in zip(self.links, pending, strict=True):
            taken = part.take(count)
            stems.update({part_name(link.stem, name): taken[name] for name in link.outputs})
        return np.stack([stems[name] for name in self.sources])


class _Feed:
    """The first model's output, read once: each chained stem's blocks wait in a queue for their link to ask
    for them; the other stems wait in ``kept`` until the chain yields them."""

    def __init__(self, stream: Stream, outputs: Sequence[str], chained: Sequence[str]):
        self.stream = stream
        self.chained = list(chained)
        self.names = [name for name in outputs if name not in self.chained]
        self.queues: list[collections.deque[np.ndarray]] = [collections.deque() for _ in self.chained]
        self.kept = Pending()
        self.ended = False

    def reader(self, index: int) -> Iterator[np.ndarray]:
        """The blocks of chained stem ``index``, pulled from the first model as the link needs them."""
        queue = self.queues[index]
        while True:
            while not queue and not self.ended:
                self._pull()
            if not queue:
                return
            yield queue.popleft()

    def _pull(self) -> None:
        block = next(self.stream, None)
        if block is None:
            self.ended = True
            return
        for queue, stem in zip(self.queues, self.chained, strict=True):
            queue.append(block[stem])
        if self.names:
            self.kept.add(block, self.names)

    def take(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` samples of the stems no link replaces (the first model is always ahead)."""
        return self.kept.take(count) if self.names else {}
