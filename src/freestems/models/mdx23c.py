"""MDX23C (TFC-TDF v3): the U-Net on spectrograms that won MDX 2023, for the checkpoints released with MSST.

MSST (the Music-Source-Separation-Training collection) trained MDX23C vocals and 4-stem models, and others
trained with its code jarredou's and aufr33-jarredou's DrumSep models, phantom-centre and de-reverb models.
:class:`MDX23C` takes the settings of their YAML configs, loads those checkpoints with ``strict=True`` and
their unchanged keys (``encoder_blocks.0.tfc_tdf.blocks.0.tfc1.2.weight``, ...) and gives the reference
output, as ``(batch, stems, channels, samples)``.

How it separates: the STFT's real and imaginary parts are channels (``[L.re, L.im, R.re, R.im]``), of which
only the first ``dim_f`` frequency bins are kept, cut into ``num_subbands`` equal bands stacked as channels
too. A U-Net of TFC-TDF blocks (time-frequency convolutions, plus a bottlenecked fully connected layer across
frequency) halves time and frequency ``num_scales`` times and comes back up; its output, multiplied by its
first layer's, and the input spectrogram make the stems' spectrograms through two 1x1 convolutions. The
dropped high bins are zeros in the output.

The network runs on exactly ``chunk_size`` samples (``audio.chunk_size`` in the YAML): shorter input is
padded with silence and the output trimmed; longer input is refused (the engine cuts a track into chunks).

Typical use::

    module, facts = mdx23c_from_msst(yaml_dict)  # facts: sources, segment, normalize, sample_rate
    module.load_state_dict(state_dict, strict=True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from freestems.models.errors import CheckpointError
from freestems.models.msst import MsstFacts, model_section, msst_facts, plain, section

Norm = Callable[[int], nn.Module]
"""Makes the normalisation layer for a number of channels."""


def norm_layer(name: str) -> Norm:
    """The reference's norms by name: ``BatchNorm``, ``InstanceNorm`` (affine), ``GroupNormN`` (N groups);
    any other name means none."""
    if name == "BatchNorm":
        return nn.BatchNorm2d
    if name == "InstanceNorm":
        return lambda channels: nn.InstanceNorm2d(channels, affine=True)
    if "GroupNorm" in name:
        groups = int(name.replace("GroupNorm", ""))
        return lambda channels: nn.GroupNorm(num_groups=groups, num_channels=channels)
    return lambda channels: nn.Identity()


def activation(name: str) -> nn.Module:
    """The reference's activations by name: ``gelu``, ``relu`` or ``eluA`` (ELU with alpha ``A``)."""
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name.startswith("elu"):
        return nn.ELU(float(name[3:]))
    raise ValueError(f"unknown activation {name!r} (gelu, relu or eluA, as elu1.0)")


# ------------------------------------------------------------------------------------------ building blocks


class TfcTdfBlock(nn.Module):
    """Time-frequency convolution, a fully connected layer across frequency (TDF, through a bottleneck of
    ``frequencies // bottleneck``), another convolution, and a 1x1 shortcut around them all.

    Works on ``(batch, channels, frames, frequencies)``. Each part is (norm, activation, layer), so the
    layers are at index 2 and 5 of their ``nn.Sequential``, as in the reference.
    """

    def __init__(
        self, in_channels: int, channels: int, frequencies: int, bottleneck: int, norm: Norm, act: str
    ):
        super().__init__()
        self.tfc1 = nn.Sequential(
            norm(in_channels), activation(act), nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        )
        self.tdf = nn.Sequential(
            norm(channels),
            activation(act),
            nn.Linear(frequencies, frequencies // bottleneck, bias=False),
            norm(channels),
            activation(act),
            nn.Linear(frequencies // bottleneck, frequencies, bias=False),
        )
        self.tfc2 = nn.Sequential(
            norm(channels), activation(act), nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        )
        self.shortcut = nn.Conv2d(in_channels, channels, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        out: torch.Tensor = self.tfc2(x) + shortcut
        return out


class TfcTdf(nn.Module):
    """``count`` :class:`TfcTdfBlock` in a row (``blocks.N``), the first taking ``in_channels``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        count: int,
        frequencies: int,
        bottleneck: int,
        norm: Norm,
        act: str,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            TfcTdfBlock(in_channels if i == 0 else channels, channels, frequencies, bottleneck, norm, act)
            for i in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Rescale(nn.Module):
    """Norm, activation, then a strided (transposed, when ``up``) convolution of kernel = stride = ``scale``:
    time and frequency shrink (or grow) by ``scale``. The reference's ``Downscale`` and ``Upscale``."""

    def __init__(
        self, in_channels: int, out_channels: int, scale: Sequence[int], norm: Norm, act: str, up: bool
    ):
        super().__init__()
        kernel = (int(scale[0]), int(scale[1]))
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = nn.Sequential(
            norm(in_channels),
            activation(act),
            conv(in_channels, out_channels, kernel_size=kernel, stride=kernel, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class EncoderBlock(nn.Module):
    """A level of the U-Net on the way down: TFC-TDF blocks, then :class:`Rescale` down."""

    def __init__(self, tfc_tdf: TfcTdf, downscale: Rescale):
        super().__init__()
        self.tfc_tdf = tfc_tdf
        self.downscale = downscale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The level's output (the skip connection to its decoder) and its rescaled copy."""
        skip: torch.Tensor = self.tfc_tdf(x)
        return skip, self.downscale(skip)


class DecoderBlock(nn.Module):
    """A level of the U-Net on the way up: :class:`Rescale` up, then TFC-TDF blocks on it and the skip."""

    def __init__(self, upscale: Rescale, tfc_tdf: TfcTdf):
        super().__init__()
        self.upscale = upscale
        self.tfc_tdf = tfc_tdf

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tfc_tdf(torch.cat([self.upscale(x), skip], dim=1))
        return out


# ------------------------------------------------------------------------------------------------ network


class MDX23C(nn.Module):
    """The reference's ``TFC_TDF_net`` with its settings as arguments (``audio.X`` and ``model.X`` in the
    YAML: ``audio_channels`` is ``audio.num_channels``, ``num_channels`` the U-Net's first width).

    ``forward`` maps ``(batch, audio_channels, samples)``, at most ``chunk_size`` samples, to
    ``(batch, num_stems, audio_channels, samples)``.
    """

    window: torch.Tensor  # registered buffer (not saved): the periodic Hann window of the STFT

    def __init__(
        self,
        *,
        num_stems: int,
        n_fft: int,
        hop_length: int,
        dim_f: int,
        chunk_size: int,
        num_subbands: int,
        num_scales: int,
        scale: Sequence[int],
        num_blocks_per_scale: int,
        num_channels: int,
        growth: int,
        bottleneck_factor: int,
        norm: str = "InstanceNorm",
        act: str = "gelu",
        audio_channels: int = 2,
    ):
        super().__init__()
        self.num_stems, self.audio_channels = num_stems, audio_channels
        self.n_fft, self.hop_length, self.dim_f, self.chunk_size = n_fft, hop_length, dim_f, chunk_size
        self.num_subbands = num_subbands
        self._check_geometry(num_scales, scale)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

        make_norm = norm_layer(norm)
        activation(act)  # an unknown name fails here, before any layer is built
        dim_c = num_subbands * audio_channels * 2  # real and imaginary parts of each channel, per subband
        channels, frequencies = num_channels, dim_f // num_subbands

        def blocks(in_channels: int, out_channels: int) -> TfcTdf:
            """The TFC-TDF blocks of the level being built (``frequencies`` wide)."""
            level = (num_blocks_per_scale, frequencies, bottleneck_factor, make_norm, act)
            return TfcTdf(in_channels, out_channels, *level)

        self.first_conv = nn.Conv2d(dim_c, channels, 1, 1, 0, bias=False)
        self.encoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            down = Rescale(channels, channels + growth, scale, make_norm, act, up=False)
            self.encoder_blocks.append(EncoderBlock(blocks(channels, channels), down))
            frequencies //= scale[1]
            channels += growth
        self.bottleneck_block = blocks(channels, channels)
        self.decoder_blocks = nn.ModuleList()
        for _ in range(num_scales):
            up = Rescale(channels, channels - growth, scale, make_norm, act, up=True)
            frequencies *= scale[1]
            channels -= growth
            self.decoder_blocks.append(DecoderBlock(up, blocks(2 * channels, channels)))
        self.final_conv = nn.Sequential(
            nn.Conv2d(channels + dim_c, channels, 1, 1, 0, bias=False),
            activation(act),
            nn.Conv2d(channels, num_stems * dim_c, 1, 1, 0, bias=False),
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        batch, channels, length = audio.shape
        if channels != self.audio_channels:
            raise ValueError(f"this model needs {self.audio_channels} audio channels, got {channels}")
        if length > self.chunk_size:
            raise ValueError(f"this model takes at most {self.chunk_size} samples at a time, got {length}")
        audio = F.pad(audio, (0, self.chunk_size - length))

        # (b, channels * 2, dim_f, frames) -> subbands as channels: (b, dim_c, dim_f / subbands, frames)
        spec = self._stft(audio)
        mix = x = spec.reshape(batch, -1, self.dim_f // self.num_subbands, spec.shape[-1])
        first = x = self.first_conv(x)
        x = x.transpose(-1, -2)  # (b, c, frames, frequencies): the TDF layers act on the last axis
        skips = []
        for encoder in self.encoder_blocks:
            skip, x = encoder(x)
            skips.append(skip)
        x = self.bottleneck_block(x)
        for decoder in self.decoder_blocks:
            x = decoder(x, skips.pop())
        x = x.transpose(-1, -2) * first  # the reference's "reduce artifacts"
        x = self.final_conv(torch.cat([mix, x], dim=1))
        stems = x.reshape(batch, self.num_stems, channels * 2, self.dim_f, -1)  # subbands back to frequency
        return self._istft(stems)[..., :length]

    def _check_geometry(self, num_scales: int, scale: Sequence[int]) -> None:
        """Refuse settings the U-Net cannot run (the reference would fail later, on a shape mismatch)."""
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive integers (time, frequency), got {list(scale)}")
        bins, dim_f, subbands = self.n_fft // 2 + 1, self.dim_f, self.num_subbands
        if not 0 < dim_f <= bins:
            raise ValueError(f"dim_f must be between 1 and {bins} (n_fft // 2 + 1), got {dim_f}")
        time_step, freq_step = scale[0] ** num_scales, scale[1] ** num_scales
        if dim_f % subbands or (dim_f // subbands) % freq_step:
            raise ValueError(
                f"dim_f ({dim_f}) must split into {subbands} subbands of a multiple of {freq_step} bins"
            )
        frames = self.chunk_size // self.hop_length + 1
        if frames % time_step:
            raise ValueError(
                f"chunk_size {self.chunk_size} gives {frames} STFT frames, not a multiple of {time_step}: "
                f"use hop_length * (a multiple of {time_step} - 1) samples"
            )

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, channels, chunk) -> (b, channels * 2, dim_f, frames): [L.re, L.im, R.re, R.im] per bin."""
        batch, channels, _ = audio.shape
        spec = torch.stft(
            audio.float().flatten(0, 1), self.n_fft, self.hop_length, window=self.window, return_complex=True
        )
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # (b * channels, 2, bins, frames), centred frames
        return spec.reshape(batch, channels * 2, -1, spec.shape[-1])[:, :, : self.dim_f]

    def _istft(self, stems: torch.Tensor) -> torch.Tensor:
        """(b, stems, channels * 2, dim_f, frames) -> (b, stems, channels, chunk), the dropped bins zero."""
        batch, num_stems, parts, _, frames = stems.shape
        bins = self.n_fft // 2 + 1
        stems = F.pad(stems.float(), (0, 0, 0, bins - self.dim_f))
        spec = torch.view_as_complex(stems.reshape(-1, 2, bins, frames).permute(0, 2, 3, 1).contiguous())
        audio = torch.istft(spec, self.n_fft, self.hop_length, window=self.window, length=self.chunk_size)
        return audio.view(batch, num_stems, parts // 2, self.chunk_size)


# ------------------------------------------------------------------------------------------- MSST configs

_AUDIO_KEYS = ("n_fft", "hop_length", "dim_f", "chunk_size")
_MODEL_KEYS = (
    "num_subbands",
    "num_scales",
    "scale",
    "num_blocks_per_scale",
    "num_channels",
    "growth",
    "bottleneck_factor",
    "norm",
    "act",
)
"""The settings the network reads from each section of an MSST YAML (all required)."""

ARCHITECTURE = "mdx23c"
"""MSST's ``model_type`` for this family."""


def is_mdx23c(model: Mapping[str, Any]) -> bool:
    """Whether an MSST ``model:`` section is MDX23C's (it has keys no other family has)."""
    return {"num_subbands", "num_scales", "num_blocks_per_scale", "bottleneck_factor"} <= set(model)


def mdx23c_from_msst(config: Mapping[str, Any], name: str = "config") -> tuple[MDX23C, MsstFacts]:
    """An MDX23C with fresh weights in eval mode, and its facts, from a parsed MSST YAML (a dict).

    The network comes from the ``model:`` and ``audio:`` sections, the stems from ``training:``; unknown
    model keys are ignored with a warning. Anything unusable raises :class:`CheckpointError`.
    """
    model, audio = model_section(config, name), section(config, "audio")
    missing = [f"audio.{key}" for key in _AUDIO_KEYS if key not in audio]
    missing += [f"model.{key}" for key in _MODEL_KEYS if key not in model]
    if missing:
        raise CheckpointError(f"{name}: an MDX23C config needs {', '.join(missing)}")
    unknown = sorted(str(key) for key in model if key not in _MODEL_KEYS)
    if unknown:
        warnings.warn(f"{name}: ignoring unknown {ARCHITECTURE} keys: {', '.join(unknown)}", stacklevel=2)
    channels = audio.get("num_channels", 2)
    if channels != 2:
        raise CheckpointError(f"{name}: audio.num_channels is {channels!r}; freestems runs stereo models")
    kwargs = {key: plain(audio[key]) for key in _AUDIO_KEYS}
    kwargs.update({key: plain(model[key]) for key in _MODEL_KEYS})
    facts = msst_facts(config, ARCHITECTURE, kwargs, name)
    facts = replace(facts, max_segment=facts.segment)  # the U-Net runs on its chunk, never a longer one
    try:
        module = MDX23C(num_stems=len(facts.sources), **kwargs)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as error:
        raise CheckpointError(f"{name}: invalid {ARCHITECTURE} config ({error})") from None
    return module.eval(), facts
