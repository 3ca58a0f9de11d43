"""Build a RoFormer, and the facts the engine needs to run it, from an MSST YAML config.

An MSST config's ``model:`` section holds the constructor arguments; the stems, the segment, the
normalisation and the sample rate live in its other sections (:mod:`freestems.models.msst` reads them), and
the number of stems must equal ``model.num_stems``.

MSST picks the class from its ``--model_type`` (``bs_roformer`` or ``mel_band_roformer``), which is not in the
file: :func:`roformer_from_msst` takes it as ``architecture``, or tells it from the model keys
(``num_bands`` is the Mel-Band RoFormer's, ``freqs_per_bands`` the BS-RoFormer's).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

from freestems.models.errors import CheckpointError
from freestems.models.msst import MsstFacts, model_section, msst_facts, plain
from freestems.models.roformer.base import BandRoformer
from freestems.models.roformer.bs import BSRoformer
from freestems.models.roformer.mel import MelBandRoformer

ARCHITECTURES: dict[str, type[BandRoformer]] = {
    "bs_roformer": BSRoformer,
    "mel_band_roformer": MelBandRoformer,
}
"""MSST ``model_type`` names and the classes that run them."""

_NOT_FROM_YAML = {"self", "dim", "stft_window_fn", "multi_stft_window_fn"}  # callables cannot come from YAML

RoformerFacts = MsstFacts
"""The facts of a RoFormer config: :class:`freestems.models.msst.MsstFacts`."""


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
    model = model_section(config, name)
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
    kwargs = {key: plain(value) for key, value in model.items() if key in accepted}
    if "dim" not in kwargs or "depth" not in kwargs:
        raise CheckpointError(f"{name}: the model section needs 'dim' and 'depth'")
    num_stems = kwargs.get("num_stems", 1)
    if isinstance(num_stems, bool) or not isinstance(num_stems, int) or num_stems < 1:
        raise CheckpointError(f"{name}: model.num_stems must be a positive integer, got {num_stems!r}")
    facts = msst_facts(config, architecture, kwargs, name, num_stems)

    try:
        module = ARCHITECTURES[architecture](**kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{name}: invalid {architecture} config ({error})") from None
    return module.eval(), facts
