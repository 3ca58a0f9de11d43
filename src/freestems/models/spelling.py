"""How a served model name is spelt, an ensemble ``a+b`` or a chain ``a>drums:b``, parsed without torch:
the pricing of a request, the licence check and the Modal image's recipe read a served name's models with it;
:mod:`freestems.models.ensemble` and :mod:`freestems.models.chain` run what it names."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from freestems.models.errors import ModelChoiceError
from freestems.rules import CHAIN_LINK, CHAIN_STEM

LINK = CHAIN_LINK
"""``a>drums:b``: what separates the first model from each link (defined with the folder-name rule,
:func:`freestems.rules.model_folder`)."""

STEM = CHAIN_STEM
"""``drums:b``: what separates a link's stem from its model."""

HINT = "write FIRST>STEM:SECOND, e.g. htdemucs_ft>drums:mdx23c-drumsep"
"""How a chain is written, for the errors that say it is not."""


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """A chain by name: the first model and its links ``(stem, model)``; each model a name as ``-m`` takes."""

    first: str
    links: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ChainSpec:
        """From a catalog entry's config ``{"first": name, "links": [[stem, name], ...]}``."""
        return cls(str(config["first"]), tuple((str(stem), str(model)) for stem, model in config["links"]))

    def __str__(self) -> str:
        return LINK.join([self.first, *(f"{stem}{STEM}{model}" for stem, model in self.links)])


def is_chain(name: str) -> bool:
    """Whether ``name`` spells a chain (``a>drums:b``) rather than a catalog name or an ensemble."""
    return LINK in name


def parse_chain(text: str) -> ChainSpec:
    """``a>drums:b>vocals:c`` into its first model and links; raises :class:`ModelChoiceError` when
    malformed (which stems exist is :func:`chain_outputs`' business)."""
    first, *links = (part.strip() for part in text.split(LINK))
    if not first:
        raise ModelChoiceError(f"chain {text!r} has no first model ({HINT})")
    parsed = []
    for link in links:
        stem, colon, model = link.partition(STEM)
        if not (stem.strip() and colon and model.strip()):
            raise ModelChoiceError(f"chain {text!r}: link {link!r} is not STEM{STEM}MODEL ({HINT})")
        parsed.append((stem.strip(), model.strip()))
    return ChainSpec(first, tuple(parsed))


SEPARATOR = "+"
"""``-m a+b``: the members of an ad-hoc ensemble."""


def parse_members(text: str) -> list[tuple[str, dict[str, float]]]:
    """``a+b`` or ``a:2+b:vocals=0,drums=2`` into ``[(name, {stem: weight})]``; ``:2`` weighs every stem.

    Raises :class:`ModelChoiceError` for an empty member or a weight that is not a non-negative number.
    """
    members = []
    for part in text.split(SEPARATOR):
        name, _, spec = part.strip().partition(":")
        if not name:
            raise ModelChoiceError(f"ensemble {text!r} has an empty member name (write a+b)")
        weights: dict[str, float] = {}
        for item in filter(None, (piece.strip() for piece in spec.split(","))):
            stem, equals, value = item.rpartition("=")
            key = stem.strip() if equals else "*"
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not weight >= 0 or weight == float("inf"):
                raise ModelChoiceError(f"ensemble member {part!r}: weight {value!r} is not a number >= 0")
            weights[key] = weight
        members.append((name, weights))
    return members
