"""SCNet: sparse compression network for music source separation.

Our implementation of the architecture of Tong et al., "SCNet: Sparse Compression Network for Music Source
Separation" (ICASSP 2024). Module names and parameter shapes follow the reference code exactly, so released
checkpoints load with ``strict=True``; ``tests/test_scnet.py`` checks the output against reference fixtures.

Data flow of ``SCNet.forward``::

    waveform (B, C, L) -> pad -> STFT -> complex channels (B, 2C, F, T)
      -> [spectrogram normalisation] -> encoder (3 sparse down-sampling blocks, skips kept)
      -> separation net (dual-path BiLSTMs, alternating with an rFFT over time)
      -> decoder (3 x fusion + sparse up-sampling, deepest first) -> (B, 2C * S, F, T)
      -> [undo normalisation] -> inverse STFT -> (B, S, C, L)

The model predicts each source's complex spectrogram directly (no mask). ``forward`` is three steps, each a
method: :meth:`SCNet.spectrogram` (pad, STFT), :meth:`SCNet.network` (normalisation to its undoing) and
:meth:`SCNet.waveform` (inverse STFT, cut), so the network alone can be exported (:mod:`freestems.export`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

Bands = list[tuple[int, int]]


def band_splits(rows: int, ratios: Sequence[float]) -> Bands:
    """Split ``rows`` frequency rows into low/mid/high bands by the ``band_SR`` ratios (ceil at borders)."""
    low_end = math.ceil(rows * ratios[0])
    mid_end = math.ceil(rows * (ratios[0] + ratios[1]))
    return [(0, low_end), (low_end, mid_end), (mid_end, rows)]


class ConvolutionModule(nn.Module):
    """A stack of pre-norm residual convolution blocks working along time.

    Each block: GroupNorm(1) -> Conv1d to 2*hidden -> GLU -> depthwise Conv1d -> GroupNorm(1) -> Swish -> 1x1
    Conv1d, with hidden = channels / compress, added back to its input.
    """

    def __init__(self, channels: int, depth: int, compress: float = 4, kernel: int = 3):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {kernel}")
        hidden = int(channels / compress)
        padding = kernel // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, hidden * 2, kernel, padding=padding),
                nn.GLU(dim=1),
                nn.Conv1d(hidden, hidden, kernel, padding=padding, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),  # Swish
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class SDlayer(nn.Module):
    """Sparse down-sampling: one strided Conv2d over frequency per band."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        ratios: Sequence[float],
        strides: Sequence[int],
        kernels: Sequence[int],
    ):
        super().__init__()
        self.ratios = list(ratios)
        self.strides = list(strides)
        self.kernels = list(kernels)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (kernel, 1), (stride, 1))
            for stride, kernel in zip(self.strides, self.kernels, strict=True)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        outputs: list[torch.Tensor] = []
        lengths: list[int] = []
        for conv, stride, kernel, (start, end) in zip(
            self.convs, self.strides, self.kernels, band_splits(x.shape[2], self.ratios), strict=True
        ):
            band = x[:, :, start:end, :]
            lengths.append(end - start)
            # Stride 1 keeps the length ("same" padding); a larger stride pads up to a multiple of it.
            pad = kernel - 1 if stride == 1 else (stride - band.shape[2] % stride) % stride
            outputs.append(conv(F.pad(band, (0, 0, pad // 2, pad - pad // 2))))
        return outputs, lengths


class SUlayer(nn.Module):
    """Sparse up-sampling: one ConvTranspose2d per band, trimmed back to the band's original length."""

    def __init__(self, channels_in: int, channels_out: int, strides: Sequence[int], kernels: Sequence[int]):
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (kernel, 1), (stride, 1))
            for stride, kernel in zip(strides, kernels, strict=True)
        )

    def forward(self, x: torch.Tensor, lengths: list[int], original_lengths: list[int]) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        start = 0
        for convtr, length, original in zip(self.convtrs, lengths, original_lengths, strict=True):
            out = convtr(x[:, :, start : start + length, :])
            start += length
            trim = abs(original - out.shape[2]) // 2
            outputs.append(out[:, :, trim : trim + original, :])
        return torch.cat(outputs, dim=2)


class SDblock(nn.Module):
    """Encoder block: sparse down-sampling, per-band convolution modules, then a 3x3 global convolution."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        ratios: Sequence[float],
        strides: Sequence[int],
        kernels: Sequence[int],
        depths: Sequence[int],
        compress: float,
        conv_kernel: int,
    ):
        super().__init__()
        self.SDlayer = SDlayer(channels_in, channels_out, ratios, strides, kernels)
        self.conv_modules = nn.ModuleList(
            ConvolutionModule(channels_out, depth, compress, conv_kernel) for depth in depths
        )
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        bands, original_lengths = self.SDlayer(x)
        processed: list[torch.Tensor] = []
        for conv, band in zip(self.conv_modules, bands, strict=True):
            b, c, f, t = band.shape
            rows = band.permute(0, 2, 1, 3).reshape(b * f, c, t)  # every frequency row is a sequence in time
            processed.append(F.gelu(conv(rows).view(b, f, c, t).permute(0, 2, 1, 3)))
        lengths = [band.shape[2] for band in processed]
        skip = torch.cat(processed, dim=2)
        return self.globalconv(skip), skip, lengths, original_lengths


class FusionLayer(nn.Module):
    """Decoder fusion: add the encoder skip, repeat channels twice, 3x3 convolution, GLU over channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * 2, 3, 1, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = (x + skip).repeat(1, 2, 1, 1)
        return F.glu(self.conv(x), dim=1)


class DecoderStage(nn.ModuleList):
    """``decoder.N``: index 0 is the fusion layer, index 1 the sparse up-sampling layer (reference layout).

    A ``ModuleList`` rather than a ``Sequential``: the children keep the reference names ``0`` and ``1``, and
    ``forward`` takes the skip and band lengths as well as the input, which a ``Sequential`` cannot.
    """

    def __init__(self, fusion: FusionLayer, upsample: SUlayer):
        super().__init__([fusion, upsample])

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, lengths: list[int], original_lengths: list[int]
    ) -> torch.Tensor:
        fusion, upsample = cast(FusionLayer, self[0]), cast(SUlayer, self[1])
        out: torch.Tensor = upsample(fusion(x, skip), lengths, original_lengths)
        return out


class DualPathRNN(nn.Module):
    """Two pre-norm residual BiLSTM paths: across frequency (index 0), then across time (index 1)."""

    def __init__(self, channels: int, expand: int = 1):
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(channels, hidden, num_layers=1, bidirectional=True, batch_first=True) for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(hidden * 2, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        # Frequency path: one sequence over frequency per (item, frame).
        y = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(b * t, f, c)
        y = self.linear_layers[0](self.lstm_layers[0](y)[0])
        x = x + y.view(b, t, f, c).permute(0, 3, 2, 1)
        # Time path: one sequence over time per (item, frequency row).
        y = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(b * f, t, c)
        y = self.linear_layers[1](self.lstm_layers[1](y)[0])
        out: torch.Tensor = x + y.view(b, f, t, c).permute(0, 3, 1, 2)
        return out


class FeatureConversion(nn.Module):
    """Parameter-free switch between time and its rFFT: real and imaginary parts stacked along channels."""

    def __init__(self, inverse: bool):
        super().__init__()
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.inverse:
            real, imag = x.chunk(2, dim=1)
            wave: torch.Tensor = torch.fft.irfft(torch.complex(real, imag), dim=3, norm="ortho")
            return wave
        spec: torch.Tensor = torch.fft.rfft(x, dim=3, norm="ortho")
        return torch.cat([spec.real, spec.imag], dim=1)


class SeparationNet(nn.Module):
    """``num_layers`` dual-path layers; odd layers work on the rFFT over time, with twice the channels."""

    def __init__(self, channels: int, expand: int = 1, num_layers: int = 6):
        super().__init__()
        if num_layers % 2:
            raise ValueError(f"num_dplayer must be even, got {num_layers}")
        self.dp_modules = nn.ModuleList(
            DualPathRNN(channels * (2 if i % 2 else 1), expand) for i in range(num_layers)
        )
        self.feature_conversion = nn.ModuleList(
            FeatureConversion(inverse=bool(i % 2)) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dual_path, conversion in zip(self.dp_modules, self.feature_conversion, strict=True):
            x = conversion(dual_path(x))
        return x


class SCNet(nn.Module):
    """SCNet with the reference constructor arguments.

    ``spec_norm`` selects the one behaviour that differs between the released code bases: True normalises the
    spectrogram of each item inside ``forward`` (the authors' current code), False does not (the copy in the
    Music-Source-Separation-Training collection). A checkpoint must run the way it was trained.

    ``forward`` takes ``(batch, audio_channels, samples)`` (at least ``hop_size`` samples) and returns
    ``(batch, len(sources), audio_channels, samples)``.
    """

    window: torch.Tensor  # registered buffer (not saved): the rectangular STFT window

    def __init__(
        self,
        sources: Sequence[str] = ("drums", "bass", "other", "vocals"),
        audio_channels: int = 2,
        dims: Sequence[int] = (4, 32, 64, 128),
        nfft: int = 4096,
        hop_size: int = 1024,
        win_size: int = 4096,
        normalized: bool = True,
        band_SR: Sequence[float] = (0.175, 0.392, 0.433),  # noqa: N803 (reference argument name)
        band_stride: Sequence[int] = (1, 4, 16),
        band_kernel: Sequence[int] = (3, 4, 16),
        conv_depths: Sequence[int] = (3, 2, 1),
        compress: float = 4,
        conv_kernel: int = 3,
        num_dplayer: int = 6,
        expand: int = 1,
        spec_norm: bool = True,
    ):
        super().__init__()
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.dims = list(dims)
        self.hop_size = hop_size
        self.spec_norm = spec_norm
        self.nfft = nfft
        self.win_size = win_size
        self.normalized = normalized
        # The reference passes no window to the STFT, which means a rectangular one.
        self.register_buffer("window", torch.ones(win_size), persistent=False)

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(dims) - 1):
            self.encoder.append(
                SDblock(
                    dims[i],
                    dims[i + 1],
                    band_SR,
                    band_stride,
                    band_kernel,
                    conv_depths,
                    compress,
                    conv_kernel,
                )
            )
            out_channels = dims[i] * len(self.sources) if i == 0 else dims[i]
            stage = DecoderStage(
                FusionLayer(dims[i + 1]), SUlayer(dims[i + 1], out_channels, band_stride, band_kernel)
            )
            self.decoder.insert(0, stage)  # decoder.0 is the deepest stage
        self.separation_net = SeparationNet(dims[-1], expand, num_dplayer)

    def _padding(self, length: int) -> int:
        """Right padding so the STFT frame count (centred frames) is even, as the rFFT over time requires."""
        padding = self.hop_size - length % self.hop_size
        if ((length + padding) // self.hop_size) % 2 == 0:
            padding += self.hop_size
        return padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        return self.waveform(self.network(self.spectrogram(x)), length)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) waveforms -> (B, 2C, F, T) spectrograms, channels ``[L.re, L.im, R.re, R.im]``.

        The waveform is padded on the right by :meth:`_padding` zeros, then goes through a centred STFT.
        """
        batch, channels, length = x.shape
        if length < self.hop_size:
            raise ValueError(f"SCNet needs at least {self.hop_size} samples, got {length}")
        x = F.pad(x, (0, self._padding(length)))
        spec = torch.stft(
            x.reshape(batch * channels, -1),
            n_fft=self.nfft,
            hop_length=self.hop_size,
            win_length=self.win_size,
            window=self.window,
            center=True,
            normalized=self.normalized,
            return_complex=True,
        )
        _, freqs, frames = spec.shape
        x = torch.view_as_real(spec).view(batch, channels, freqs, frames, 2)
        return x.permute(0, 1, 4, 2, 3).reshape(batch, channels * 2, freqs, frames)

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2C, F, T) mix spectrograms -> (B, S * 2C, F, T) stem spectrograms: everything between the
        STFT and the inverse STFT (the spectrogram normalisation included). T must be even."""
        if self.spec_norm:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (1e-5 + std)

        skips = []
        for block in self.encoder:
            x, skip, lengths, original_lengths = block(x)
            skips.append((skip, lengths, original_lengths))
        x = self.separation_net(x)
        for stage in self.decoder:
            x = stage(x, *skips.pop())

        if self.spec_norm:
            x = x * std + mean
        return x

    def waveform(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """(B, S * 2C, F, T) stem spectrograms -> (B, S, C, length) waveforms (inverse STFT, then cut)."""
        batch, planes, freqs, frames = x.shape
        channels = planes // (2 * len(self.sources))
        # (B, S*C*2, F, T): for each source, each audio channel, its real and imaginary parts.
        x = x.reshape(-1, 2, freqs, frames).permute(0, 2, 3, 1).contiguous()
        wave = torch.istft(
            torch.view_as_complex(x),
            n_fft=self.nfft,
            hop_length=self.hop_size,
            win_length=self.win_size,
            window=self.window,
            center=True,
            normalized=self.normalized,
        )
        wave = wave.reshape(batch, len(self.sources), channels, -1)
        return wave[..., :length]
