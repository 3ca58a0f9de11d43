"""Band split, mask estimation and the Mel-Band RoFormer's band layout.

A RoFormer cuts the spectrogram's frequencies into bands, projects each band to ``dim`` features
(:class:`BandSplit`), and after the transformers estimates a complex mask for each band's frequencies again
(:class:`MaskEstimator`). The BS-RoFormer's bands are consecutive and given (``freqs_per_bands``); the
Mel-Band RoFormer's overlap and come from a mel filter bank (:func:`mel_filter_bank`, :func:`mel_bands`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from freestems.models.roformer.attention import RMSNorm


class BandSplit(nn.Module):
    """Per band: RMS norm over its (frequency, channel, real/imag) values, then a linear map to ``dim``."""

    def __init__(self, dim: int, dim_inputs: Sequence[int]):
        super().__init__()
        self.dim_inputs = list(dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(size), nn.Linear(size, dim)) for size in dim_inputs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., sum(dim_inputs)) -> (..., bands, dim)."""
        parts = torch.split(x, self.dim_inputs, dim=-1)
        return torch.stack([net(part) for net, part in zip(self.to_features, parts, strict=True)], dim=-2)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with tanh between them (the reference's ``MLP``; indices 0, 2, 4, ...)."""
    dims = [dim_in, *([dim_hidden] * (layers - 1)), dim_out]
    modules: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        modules.append(nn.Linear(size_in, size_out))
        if index < len(dims) - 2:
            modules.append(nn.Tanh())
    return nn.Sequential(*modules)


class MaskEstimator(nn.Module):
    """Per band: an MLP from ``dim`` to twice the band's size, halved by a GLU; bands concatenated back.

    ``layers`` counts the MLP's linear layers: the BS-RoFormer uses ``mask_estimator_depth`` of them, the
    Mel-Band RoFormer ``mask_estimator_depth + 1`` (the two reference files differ there).
    """

    def __init__(self, dim: int, dim_inputs: Sequence[int], layers: int, mlp_expansion_factor: int = 4):
        super().__init__()
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(mlp(dim, size * 2, hidden, layers), nn.GLU(dim=-1)) for size in dim_inputs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., bands, dim) -> (..., sum(dim_inputs))."""
        bands = x.unbind(dim=-2)
        return torch.cat([net(band) for net, band in zip(self.to_freqs, bands, strict=True)], dim=-1)


# ------------------------------------------------------------------------------------------------ mel bands


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (6.4x per 27 mels)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = hz / f_sp
    high = hz >= min_log_hz
    mels[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mels
    high = mels >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mels[high] - min_log_mel))
    return hz


def mel_filter_bank(sample_rate: float, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters on the Slaney mel scale with Slaney area norm.

    The same numbers, operation for operation, as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft,
    n_mels=n_mels)`` (fmin 0, fmax sample_rate / 2, htk False, norm "slaney"), which placed the Mel-Band
    RoFormer's bands when the released checkpoints were trained: filter ``i`` rises linearly from mel point
    ``i`` to ``i + 1`` and falls to ``i + 2``, where the ``n_mels + 2`` points are equally spaced in mels.
    Only where the filters are non-zero matters to the model, but the whole formula is kept so that the
    exact boundary cases (a frequency bin right on a mel point) come out as they did in training.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_points = mel_to_hz(
        np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2)
    )
    fdiff = np.diff(mel_points)
    ramps = np.subtract.outer(mel_points, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, np.newaxis]
    return weights


def mel_bands(sample_rate: float, n_fft: int, num_bands: int) -> torch.Tensor:
    """(num_bands, n_fft // 2 + 1) bool: which frequency bins each Mel-Band RoFormer band covers.

    The bins where :func:`mel_filter_bank` is positive, with the first bin forced into the first band and the
    last bin into the last band, as the reference does (the filters leave bin 0 out, and the last bin's tiny
    weight can round to zero). Neighbouring bands overlap.
    """
    bands = torch.from_numpy(mel_filter_bank(sample_rate, n_fft, num_bands) > 0)
    bands[0, 0] = True
    bands[-1, -1] = True
    if not bands.any(dim=0).all():
        raise ValueError(f"{num_bands} mel bands leave some of the {n_fft // 2 + 1} frequency bins uncovered")
    return bands
