"""What an MSST YAML says besides the network: the stems, the chunk, the normalisation, the sample rate.

MSST (the Music-Source-Separation-Training collection) publishes each checkpoint with one YAML config. Its
``model:`` section holds the network's settings, which each family reads in its own way (the RoFormers take
them as constructor arguments, MDX23C reads them with the ``audio:`` section). What running the model needs
is the same for every family and lives elsewhere in the file:

* stems: ``training.target_instrument`` when set (a one-stem model, like Kimberley Jensen's vocals model),
  otherwise ``training.instruments``, in output order;
* segment: ``audio.chunk_size`` samples (352800, 8 s, for the Kim vocals model);
* normalisation: ``inference.normalize`` (default False);
* sample rate: 44100 Hz (``audio.sample_rate``, when given, must say so).

:func:`msst_facts` reads them and refuses what freestems cannot run, with a :class:`CheckpointError` that
says what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freestems.contract import SAMPLE_RATE
from freestems.models.errors import CheckpointError


@dataclass(frozen=True)
class MsstFacts:
    """What the engine needs besides the module: the fields of ``LoadedModel`` plus the network's config.

    ``max_segment`` is the longest chunk the network takes (None for any length): MDX23C runs on exactly
    its ``segment``.
    """

    architecture: str
    sources: tuple[str, ...]
    segment: int
    normalize: bool
    config: dict[str, Any]
    sample_rate: int = SAMPLE_RATE
    max_segment: int | None = None


def model_section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The ``model:`` section of a parsed MSST YAML; a :class:`CheckpointError` when there is none."""
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{name} has no 'model:' section")
    return model


def section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A section of a parsed MSST YAML, empty when it is missing (or not a mapping)."""
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def msst_facts(
    config: Mapping[str, Any],
    architecture: str,
    model_config: dict[str, Any],
    name: str,
    num_stems: int | None = None,
) -> MsstFacts:
    """The :class:`MsstFacts` of a parsed MSST YAML.

    ``model_config`` is what builds the network (kept in the facts); ``name`` names the config in errors;
    ``num_stems``, when the network's size is set apart from the stem names (the RoFormers'
    ``model.num_stems``), must equal their number.
    """
    audio = section(config, "audio")
    rate = audio.get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise CheckpointError(
            f"{name}: audio.sample_rate is {rate!r}; freestems runs models at {SAMPLE_RATE} Hz"
        )
    segment = audio.get("chunk_size")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment <= 0:
        raise CheckpointError(
            f"{name}: audio.chunk_size must be a positive number of samples, got {segment!r}"
        )
    return MsstFacts(
        architecture=architecture,
        sources=stems(section(config, "training"), name, num_stems),
        segment=segment,
        normalize=bool(section(config, "inference").get("normalize", False)),
        config=model_config,
    )


def stems(training: Mapping[str, Any], name: str, num_stems: int | None = None) -> tuple[str, ...]:
    """The model's stems, in output order, as MSST names them (``num_stems`` of them, when given)."""
    target = training.get("target_instrument")
    instruments = training.get("instruments")
    if target:
        sources = [target]
    elif isinstance(instruments, list | tuple):
        sources = list(instruments)
    else:
        raise CheckpointError(f"{name}: training.instruments (the stem names) is missing")
    if not all(isinstance(source, str) and source for source in sources):
        raise CheckpointError(f"{name}: stem names must be strings, got {sources!r}")
    if num_stems is not None and len(sources) != num_stems:
        where = "training.target_instrument" if target else "training.instruments"
        raise CheckpointError(
            f"{name}: the model has {num_stems} stem(s) (model.num_stems) but {where} names {len(sources)}"
        )
    return tuple(sources)


def plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config compares and serialises the same whatever its origin."""
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
