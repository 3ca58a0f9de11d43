"""Mel-Band RoFormer: overlapping bands placed by a mel filter bank; overlapping masks are averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from freestems.models.roformer.bands import mel_bands
from freestems.models.roformer.base import BandRoformer


class MelBandRoformer(BandRoformer):
    """Mel-Band RoFormer with the constructor arguments (names and defaults) of MSST's ``MelBandRoformer``.

    Band ``i`` holds the STFT bins where mel filter ``i`` of ``num_bands`` (for ``sample_rate``) is non-zero;
    each bin's mask is the mean of the masks of the bands holding it. Arguments listed in
    :data:`~.base.IGNORED_ARGUMENTS` are accepted and have no effect (``match_input_audio_length`` among
    them: the output always has the input's length, where the reference returns a few hundred samples
    short by default). ``use_pope=True`` gives polar positions instead of rotary ones, as in the reference.
    """

    freq_indices: torch.Tensor  # registered buffer (not saved): each band's spectrogram rows, bands in order
    bands_per_row: torch.Tensor  # registered buffer (not saved): how many bands hold each spectrogram row

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
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        flash_attn: bool = True,
        dim_freqs_in: int = 1025,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn: Callable[[int], torch.Tensor] | None = None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: Sequence[int] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn: Callable[[int], torch.Tensor] | None = None,
        match_input_audio_length: bool = False,
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
            transformer_norm_output=True,
        )
        bands = mel_bands(sample_rate, stft_n_fft, num_bands)  # (num_bands, bins) bool
        bins = bands.shape[1]
        # Every band's bins, bands one after another, as row indices of the (bin, channel) spectrogram rows.
        freq_indices = torch.arange(bins).expand(num_bands, bins)[bands]
        channels = self.audio_channels
        freq_indices = (freq_indices[:, None] * channels + torch.arange(channels)).reshape(-1)
        self.register_buffer("freq_indices", freq_indices, persistent=False)
        bands_per_row = bands.sum(dim=0).repeat_interleave(channels)
        self.register_buffer("bands_per_row", bands_per_row.float(), persistent=False)
        self._build_bands(dim, bands.sum(dim=1).tolist(), mask_estimator_depth + 1, mlp_expansion_factor)

    def _band_values(self, spec: torch.Tensor) -> torch.Tensor:
        return spec.index_select(1, self.freq_indices)

    def _spectrum_mask(self, mask: torch.Tensor) -> torch.Tensor:
        batch, num_stems, _, frames, _ = mask.shape
        rows = self.bands_per_row.numel()
        summed = mask.new_zeros(batch, num_stems, rows, frames, 2).index_add_(2, self.freq_indices, mask)
        return summed / self.bands_per_row.clamp(min=1e-8)[:, None, None]
