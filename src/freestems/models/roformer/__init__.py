"""RoFormer source separators: BS-RoFormer and Mel-Band RoFormer, compatible with the MSST checkpoints."""

from freestems.models.roformer.bs import BSRoformer
from freestems.models.roformer.mel import MelBandRoformer

__all__ = ["BSRoformer", "MelBandRoformer"]
