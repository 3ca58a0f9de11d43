"""RoFormer source separators (BS-RoFormer, Mel-Band RoFormer) for the checkpoints released with MSST.

MSST is the Music-Source-Separation-Training collection, whose code trained Kimberley Jensen's Mel-Band
RoFormer vocals model, the viperx BS-RoFormers, the MUSDB18-HQ 4-stem BS-RoFormer and the "BS PolarFormer" (a
BS-RoFormer with PoPE positions, ``use_pope``). These classes take the same constructor arguments, load those
checkpoints with ``strict=True`` and their unchanged keys, and give the reference output; they keep the stem
axis for one stem and always return the input's length.

Typical use::

    module, facts = roformer_from_msst(yaml_dict)  # facts: sources, segment, normalize, sample_rate
    module.load_state_dict(state_dict, strict=True)
"""

from freestems.models.roformer.base import IGNORED_ARGUMENTS, BandRoformer
from freestems.models.roformer.bs import BSRoformer
from freestems.models.roformer.mel import MelBandRoformer
from freestems.models.roformer.msst import (
    ARCHITECTURES,
    RoformerFacts,
    guess_architecture,
    roformer_from_msst,
)

__all__ = [
    "ARCHITECTURES",
    "IGNORED_ARGUMENTS",
    "BSRoformer",
    "BandRoformer",
    "MelBandRoformer",
    "RoformerFacts",
    "guess_architecture",
    "roformer_from_msst",
]
