"""The engine's rules that need no torch: devices, precisions, option checks, stem names and the folder
a model's output goes in.

The web tier (the service, the Modal web function) checks a request's options with these before any job
runs, and must not import torch for it (a multi-GB import on every cold start of a CPU-only container):
:mod:`freestems.engine` re-exports them and applies them to the tensors.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda", "mps"]
"""Where the model runs; ``auto`` picks cuda, then mps, then cpu. The one list: settings and CLI use it."""
DEVICES: tuple[Device, ...] = get_args(Device)
Precision = Literal["auto", "fp32", "fp16", "bf16"]
"""The model's arithmetic; ``auto`` is fp16 autocast on CUDA, fp32 elsewhere. The one list, as ``Device``."""
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


class SeparationError(ValueError):
    """Invalid separation options or an unusable device; the message says which and why."""


MAX_OVERLAP = 0.9
"""Overlap is in [0, MAX_OVERLAP): at 0.9 each sample would be computed ten times over."""
MAX_SHIFTS = 20


def check_overlap(overlap: float) -> None:
    """The engine's rule for ``overlap`` (callers that validate earlier, like the service, use it too)."""
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < MAX_OVERLAP:
        raise SeparationError(f"overlap must be a number in [0, {MAX_OVERLAP:g}), got {overlap!r}")


def check_shifts(shifts: int) -> None:
    """The engine's rule for ``shifts``."""
    if isinstance(shifts, bool) or not isinstance(shifts, numbers.Integral) or not 1 <= shifts <= MAX_SHIFTS:
        raise SeparationError(f"shifts must be an integer from 1 to {MAX_SHIFTS}, got {shifts!r}")


COMPLEMENT_PREFIX = "no_"


def complement(stem: str) -> str:
    """The name of what is left of the mix without ``stem`` in two-stem mode: ``no_<stem>``.

    The pair sums to the mix: the complement is the mix minus the stem (see :func:`two_stem_pair`), not the
    sum of the other stems, so together they give back the input exactly.
    """
    return f"{COMPLEMENT_PREFIX}{stem}"


def pair_stem(sources: Iterable[str], two_stems: str | None) -> str | None:
    """The stem a separation pairs with its complement: ``two_stems``, or the only stem of a one-stem model
    (a vocals model gives ``vocals`` and ``no_vocals``, the mix minus the vocals)."""
    sources = list(sources)
    return sources[0] if two_stems is None and len(sources) == 1 else two_stems


def output_names(sources: Iterable[str], two_stems: str | None = None) -> list[str]:
    """The stem names a separation yields, in order."""
    sources = list(sources)
    two_stems = pair_stem(sources, two_stems)
    if two_stems is None:
        return sources
    if two_stems not in sources:
        raise SeparationError(f"two_stems must be one of {', '.join(sources)}, got {two_stems!r}")
    return [two_stems, complement(two_stems)]


CHAIN_LINK = ">"
"""``a>drums:b``: what separates a chain's first model from each link (:mod:`freestems.models.chain`)."""
CHAIN_STEM = ":"
"""``drums:b``: what separates a chain link's stem from its model."""

FOLDER_LINK = "--"
"""What a chain link's ``>`` becomes in a folder name."""
FOLDER_BY = "-by-"
"""What a chain link's ``:`` becomes in a folder name."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)


def model_folder(name: str) -> str:
    """The folder named after the model ``name`` that its output goes in (``DIR/<model>/<track>/``): the
    name itself when it is a plain catalog name, else a name safe on every file system and in every shell,
    still readable. A chain ``a>drums:b`` becomes ``a--drums-by-b`` (``>`` gives ``--``, a link's ``:``
    gives ``-by-``); then every character but letters, digits and ``. _ - +`` becomes ``_`` (an ensemble's
    weights ``a+b:vocals=2`` give ``a+b_vocals_2``, a space ``_``); leading dots and dashes and trailing
    dots go (no hidden folder, nothing read as an option), a name Windows reserves (``con``, ``nul``...)
    gets a ``_`` before it, and nothing left is ``model``."""
    first, *links = name.split(CHAIN_LINK)
    parts = [first.strip()]
    for link in links:
        stem, colon, model = link.partition(CHAIN_STEM)
        parts.append(f"{stem.strip()}{FOLDER_BY if colon else ''}{model.strip()}")
    folder = _UNSAFE.sub("_", FOLDER_LINK.join(parts)).lstrip(".-").rstrip(".")
    if _RESERVED.fullmatch(folder):
        folder = "_" + folder
    return folder or "model"
