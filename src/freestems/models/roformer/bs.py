"""BS-RoFormer (band-split RoFormer): consecutive, non-overlapping bands of given widths."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from freestems.models.roformer.attention import RMSNorm
from freestems.models.roformer.base import BandRoformer

DEFAULT_FREQS_PER_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
"""The reference's default: 62 bands over the 1025 bins of a 2048-point STFT."""


class BSRoformer(BandRoformer):
    """BS-RoFormer with the constructor arguments (names and defaults) of MSST's ``BSRoformer``.

    ``freqs_per_bands`` must sum to the STFT's bin count (``stft_n_fft // 2 + 1``). Arguments listed in
    :data:`~.base.IGNORED_ARGUMENTS` are accepted and have no effect. ``use_pope=True`` gives polar positions
    (PoPE) instead of rotary ones: MSST's "BS PolarFormer". ``mlp_expansion_factor`` sets the mask estimators'
    hidden width (``dim * mlp_expansion_factor``); ``skip_connection`` adds to the input of every layer the
    outputs of all the layers before it.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        freqs_per_bands: Sequence[int] = DEFAULT_FREQS_PER_BANDS,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn: Callable[[int], torch.Tensor] | None = None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Sequence[int] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn: Callable[[int], torch.Tensor] | None = None,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        use_pope: bool = False,
    ):
        super().__init__(
            dim,
            depth=depth,
            stereo=stereo,
            num_stems=num_stems,
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            linear_transformer_depth=linear_transformer_depth,
            dim_head=dim_head,
            heads=heads,
            stft_n_fft=stft_n_fft,
            stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length,
            stft_normalized=stft_normalized,
            stft_window_fn=stft_window_fn,
            zero_dc=zero_dc,
            skip_connection=skip_connection,
            use_pope=use_pope,
            transformer_norm_output=False,
        )
        bins = stft_n_fft // 2 + 1
        freqs_per_bands = [int(size) for size in freqs_per_bands]
        if len(freqs_per_bands) < 2 or sum(freqs_per_bands) != bins:
            raise ValueError(
                f"freqs_per_bands must list at least 2 bands covering the {bins} STFT bins, "
                f"got {len(freqs_per_bands)} bands covering {sum(freqs_per_bands)}"
            )
        self.final_norm = RMSNorm(dim)
        self._build_bands(dim, freqs_per_bands, mask_estimator_depth, mlp_expansion_factor)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.final_norm(x)
        return out
