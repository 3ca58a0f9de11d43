"""What both RoFormers share: STFT in, band split, axial transformers, complex masks, inverse STFT out.

The subclasses only decide which frequency bins make up each band (:class:`~.bs.BSRoformer`: consecutive
runs; :class:`~.mel.MelBandRoformer`: overlapping mel bands) and how a mask over the bands becomes a mask
over the spectrogram.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from freestems.models.roformer.attention import PolarEmbedding, RotaryEmbedding, Transformer
from freestems.models.roformer.bands import BandSplit, MaskEstimator

IGNORED_ARGUMENTS = (
    "attn_dropout",
    "ff_dropout",
    "flash_attn",
    "dim_freqs_in",
    "multi_stft_resolution_loss_weight",
    "multi_stft_resolutions_window_sizes",
    "multi_stft_hop_size",
    "multi_stft_normalized",
    "multi_stft_window_fn",
    "use_torch_checkpoint",
    "match_input_audio_length",
)
"""Reference constructor arguments that change nothing at inference here: dropout rates (inactive in eval),
``flash_attn`` (fused attention is always used; the maths is the same), ``dim_freqs_in`` (unused by the
reference too), the multi-resolution STFT loss settings (training loss), ``use_torch_checkpoint`` (training
memory) and ``match_input_audio_length`` (the output always has the input's length here)."""


def _positions(
    dim_head: int, heads: int, use_pope: bool
) -> tuple[RotaryEmbedding | None, PolarEmbedding | None]:
    """The position embedding of a stack of transformers: rotary, or polar with ``use_pope``."""
    if use_pope:
        return None, PolarEmbedding(dim_head, heads)
    return RotaryEmbedding(dim_head), None


class BandRoformer(nn.Module):
    """The common skeleton; see :class:`~.bs.BSRoformer` and :class:`~.mel.MelBandRoformer`.

    ``forward`` maps ``(batch, channels, samples)`` (or ``(batch, samples)`` for a mono model) to
    ``(batch, num_stems, channels, samples)``: the stem axis is kept for one stem, and the length is the
    input's. A stereo model needs two channels; a mono model separates each channel on its own.
    """

    window: torch.Tensor  # registered buffer (not saved): the STFT window

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool,
        num_stems: int,
        time_transformer_depth: int,
        freq_transformer_depth: int,
        linear_transformer_depth: int,
        dim_head: int,
        heads: int,
        stft_n_fft: int,
        stft_hop_length: int,
        stft_win_length: int,
        stft_normalized: bool,
        stft_window_fn: Callable[[int], torch.Tensor] | None,
        zero_dc: bool,
        skip_connection: bool,
        use_pope: bool,
        transformer_norm_output: bool,
    ):
        super().__init__()
        if num_stems < 1:
            raise ValueError(f"num_stems must be at least 1, got {num_stems}")
        self.stereo = bool(stereo)
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.skip_connection = skip_connection
        self.zero_dc = zero_dc
        self.n_fft = stft_n_fft
        self.hop_length = stft_hop_length
        self.win_length = stft_win_length
        self.stft_normalized = stft_normalized
        window = (stft_window_fn or torch.hann_window)(stft_win_length)
        self.register_buffer("window", window.float(), persistent=False)

        # One position embedding for all time stacks and one for all frequency stacks, as in the reference:
        # its frequencies (and PoPE's key bias) appear in the state_dict under every attention layer.
        self.layers = nn.ModuleList()
        time_positions, freq_positions = (_positions(dim_head, heads, use_pope) for _ in range(2))
        for _ in range(depth):
            stacks = []
            if linear_transformer_depth > 0:
                stacks.append(
                    Transformer(
                        dim=dim,
                        depth=linear_transformer_depth,
                        heads=heads,
                        dim_head=dim_head,
                        norm_output=transformer_norm_output,
                        linear_attn=True,
                    )
                )
            time_and_freq = (
                (time_transformer_depth, *time_positions),
                (freq_transformer_depth, *freq_positions),
            )
            for stack_depth, rotary, pope in time_and_freq:
                stacks.append(
                    Transformer(
                        dim=dim,
                        depth=stack_depth,
                        heads=heads,
                        dim_head=dim_head,
                        rotary_embed=rotary,
                        pope_embed=pope,
                        norm_output=transformer_norm_output,
                    )
                )
            self.layers.append(nn.ModuleList(stacks))

    def _build_bands(
        self, dim: int, band_sizes: Sequence[int], mask_layers: int, mlp_expansion_factor: int
    ) -> None:
        """Band split and one mask estimator per stem, for bands of ``band_sizes`` frequency bins each."""
        dim_inputs = [2 * size * self.audio_channels for size in band_sizes]  # real/imag of every channel
        self.band_split = BandSplit(dim, dim_inputs)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dim_inputs, mask_layers, mlp_expansion_factor) for _ in range(self.num_stems)
        )

    # -------------------------------------------------------------------------------------- subclass hooks

    def _band_values(self, spec: torch.Tensor) -> torch.Tensor:
        """(b, bins * channels, frames, 2) -> the bands' bins in band order: (b, band bins, frames, 2)."""
        return spec

    def _spectrum_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(b, stems, band bins, frames, 2) -> (b, stems, bins * channels, frames, 2)."""
        return mask

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # --------------------------------------------------------------------------------------------- forward

    def _min_length(self) -> int:
        """Shortest input the centred STFT's reflect padding accepts."""
        return self.n_fft // 2 + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.ndim == 2 and not self.stereo:
            audio = audio.unsqueeze(1)
        if audio.ndim != 3:
            raise ValueError(f"expected audio of shape (batch, channels, samples), got {tuple(audio.shape)}")
        batch, channels, length = audio.shape
        if not self.stereo and channels != 1:  # a mono model separates each channel on its own
            out = self.forward(audio.reshape(batch * channels, 1, length))
            return out.view(batch, channels, self.num_stems, length).transpose(1, 2)
        if channels != self.audio_channels:
            raise ValueError(f"this model is stereo and needs 2 audio channels, got {channels}")
        if length < self._min_length():  # too short to reflect-pad: pad with silence, trim afterwards
            audio = F.pad(audio, (0, self._min_length() - length))

        spec = self._stft(audio)  # (b, bins * channels, frames, 2), bin-major: [f0 L, f0 R, f1 L, ...]
        frames = spec.shape[2]
        x = self._band_values(spec)
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, -1)  # (b, frames, band bins * 2)
        x = self.band_split(x)  # (b, frames, bands, dim)
        x = self._final_norm(self._transform(x))

        mask = torch.stack([estimator(x) for estimator in self.mask_estimators], dim=1)
        mask = mask.float().view(batch, self.num_stems, frames, -1, 2).transpose(2, 3)
        mask = torch.view_as_complex(self._spectrum_mask(mask).contiguous())  # (b, stems, bins * ch, frames)
        stems = torch.view_as_complex(spec).unsqueeze(1) * mask
        return self._istft(stems, audio.shape[-1])[..., :length]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """Axial transformers: (optionally over all positions,) over time per band, over bands per frame."""
        batch, frames, bands, dim = x.shape
        previous: list[torch.Tensor] = []
        for stacks in self.layers:
            *linear, time_stack, freq_stack = cast(nn.ModuleList, stacks)  # layers.N: [linear,] time, freq
            if linear:
                x = linear[0](x.reshape(batch, frames * bands, dim)).view(batch, frames, bands, dim)
            if self.skip_connection:
                for earlier in previous:
                    x = x + earlier
            x = x.transpose(1, 2).reshape(batch * bands, frames, dim)
            x = time_stack(x).view(batch, bands, frames, dim).transpose(1, 2)
            x = freq_stack(x.reshape(batch * frames, bands, dim)).view(batch, frames, bands, dim)
            if self.skip_connection:
                previous.append(x)
        return x

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        batch, channels, length = audio.shape
        spec = torch.stft(
            audio.float().reshape(batch * channels, length),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            normalized=self.stft_normalized,
            return_complex=True,
        )
        bins, frames = spec.shape[-2:]
        spec = torch.view_as_real(spec).view(batch, channels, bins, frames, 2)
        return spec.transpose(1, 2).reshape(batch, bins * channels, frames, 2)

    def _istft(self, stems: torch.Tensor, length: int) -> torch.Tensor:
        """(b, stems, bins * channels, frames) complex -> (b, stems, channels, length)."""
        batch, num_stems, _, frames = stems.shape
        channels = self.audio_channels
        stems = stems.view(batch, num_stems, -1, channels, frames).transpose(2, 3)
        stems = stems.reshape(batch * num_stems * channels, -1, frames)
        if self.zero_dc:
            stems = stems.index_fill(1, torch.tensor(0, device=stems.device), 0.0)
        audio = torch.istft(
            stems,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            normalized=self.stft_normalized,
            length=length,
        )
        return audio.view(batch, num_stems, channels, length)
