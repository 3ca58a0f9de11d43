"""Build a RoFormer, and the facts the engine needs to run it, from an MSST YAML config.

An MSST config's ``model:`` section holds the constructor arguments; the rest of what running the model
needs lives elsewhere in the file:

* stems: ``training.target_instrument`` when set (a one-stem model, like Kimberley Jensen's vocals model),
  otherwise ``training.instruments``; their number must equal ``model.num_stems``;
* segment: ``audio.chunk_size`` samples (352800, 8 s, for the Kim vocals model);
* normalisation: ``inference.normalize`` (default False);
* sample rate: 44100 Hz (``audio.sample_rate``, when given, must say so).

MSST picks the class from its ``--model_type`` (``bs_roformer`` or ``mel_band_roformer``), which is not in the
file: :func:`roformer_from_msst` takes it as ``architecture``, or tells it from the model keys
(``num_bands`` is the Mel-Band RoFormer's, ``freqs_per_bands`` the BS-RoFormer's).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freestems.contract import SAMPLE_RATE
from freestems.models.errors import CheckpointError
from freestems.models.roformer.base import BandRoformer
from freestems.models.roformer.bs import BSRoformer
from freestems.models.roformer.mel import MelBandRoformer

ARCHITECTURES: dict[str, type[BandRoformer]] = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
}
"""MSST ``model_type`` names and the classes that run them."""

_NOT_FROM_YAML = {"self", "dim", "stft_window_fn", "multi_stft_window_fn"}  # callables cannot come from YAML


@dataclass(frozen=True)
class RoformerFacts:
    """What the engine needs besides the module: the fields of ``LoadedModel`` plus the constructor config."""

    architecture: str
    sources: tuple[str, ...]
    segment: int
    normalize: bool
    config: dict[str, Any]
    sample_rate: int = SAMPLE_RATE


def config_keys(architecture: str) -> tuple[str, ...]:
    """The ``model:`` keys the class for ``architecture`` accepts (``dim`` included)."""
    parameters = inspect.signature(ARCHITECTURES[architecture].__init__).parameters
    return ("dim", *(name for name in parameters if name not in _NOT_FROM_YAML))


def guess_architecture(model: Mapping[str, Any]) -> str | None:
    """``mel_band_roformer`` or ``bs_roformer`` from the keys only one of them has; None when unclear."""
    mel = "num_bands" in model or "sample_rate" in model or "match_input_audio_length" in model
    bs = "freqs_per_bands" in model
    if mel == bs:
        return None
    return "mel_band_roformer" if mel else "bs_roformer"


def roformer_from_msst(
    config: Mapping[str, Any], architecture: str | None = None, name: str = "config"
) -> tuple[BandRoformer, RoformerFacts]:
    """A RoFormer with fresh weights in eval mode, and its :class:`RoformerFacts`, from a parsed MSST YAML.

    ``config`` is the whole file as a dict (``!!python/tuple`` values may be tuples or lists);
    ``architecture`` is MSST's model type (guessed from the keys when None); ``name`` names the config in
    error messages. Unknown model keys are ignored with a warning (state_dict loading with ``strict=True``
    catches any that changed the network). Anything unusable raises :class:`CheckpointError`.
    """
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"{name} has no 'model:' section")
    if architecture is None:
        architecture = guess_architecture(model)
        if architecture is None:
            raise CheckpointError(
                f"{name}: cannot tell a BS-RoFormer from a Mel-Band RoFormer by its model keys; "
                f"give the architecture ({' or '.join(ARCHITECTURES)})"
            )
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{name}: unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})"
        )

    accepted = config_keys(architecture)
    unknown = sorted(str(key) for key in model if key not in accepted)
    if unknown:
        warnings.warn(f"{name}: ignoring unknown {architecture} keys: {', '.join(unknown)}", stacklevel=2)
    kwargs = {key: _plain(value) for key, value in model.items() if key in accepted}
    if "dim" not in kwargs or "depth" not in kwargs:
        raise CheckpointError(f"{name}: the model section needs 'dim' and 'depth'")

    sections: dict[str, Mapping[str, Any]] = {}
    for key in ("training", "audio", "inference"):
        section = config.get(key)
        sections[key] = section if isinstance(section, Mapping) else {}
    rate = sections["audio"].get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise CheckpointError(
            f"{name}: audio.sample_rate is {rate!r}; freestems runs models at {SAMPLE_RATE} Hz"
        )
    segment = sections["audio"].get("chunk_size")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment <= 0:
        raise CheckpointError(
            f"{name}: audio.chunk_size must be a positive number of samples, got {segment!r}"
        )
    num_stems = kwargs.get("num_stems", 1)
    if isinstance(num_stems, bool) or not isinstance(num_stems, int) or num_stems < 1:
        raise CheckpointError(f"{name}: model.num_stems must be a positive integer, got {num_stems!r}")
    sources = _sources(sections["training"], num_stems, name)

    try:
        module = ARCHITECTURES[architecture](**kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{name}: invalid {architecture} config ({error})") from None
    facts = RoformerFacts(
        architecture=architecture,
        sources=sources,
        segment=segment,
        normalize=bool(sections["inference"].get("normalize", False)),
        config=kwargs,
    )
    return module.eval(), facts


def _sources(training: Mapping[str, Any], num_stems: int, name: str) -> tuple[str, ...]:
    """The model's stems, in output order, as MSST names them."""
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
    if len(sources) != num_stems:
        where = "training.target_instrument" if target else "training.instruments"
        raise CheckpointError(
            f"{name}: the model has {num_stems} stem(s) (model.num_stems) but {where} names {len(sources)}"
        )
    return tuple(sources)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config compares and serialises the same whatever its origin."""
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
