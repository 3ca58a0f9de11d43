"""The catalog of released SCNet checkpoints freestems knows how to run.

Every entry records what the file needs at inference time: the constructor arguments of
:class:`freestems.models.scnet.SCNet`, whether the spectrogram is normalised inside the model (``spec_norm``)
and whether the whole track is normalised before separation (``normalize``). The values come from the
release table of the Music-Source-Separation-Training (MSST) collection (``docs/pretrained_models.md``) and
the SCNet paper/code; they cannot be verified against the weights here, so they are our best knowledge and a
user can override both flags (``load_model(..., spec_norm=..., normalize=...)``).

Licences: the MSST repository (which hosts the files) is MIT and the SCNet authors' code is MIT as well; the
released weights carry no separate licence file, so "MIT" is our best knowledge, not a legal statement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from freestems import SAMPLE_RATE
from freestems.models.errors import ModelNotAvailable

RELEASES_URL = "https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/download/"
"""Base of every asset URL in the catalog."""

SOURCES = ("drums", "bass", "other", "vocals")
SEGMENT = 485_100
"""Training segment of every released SCNet: 11 s at 44.1 kHz."""

_BASE: dict[str, Any] = {
    "sources": list(SOURCES),
    "audio_channels": 2,
    "dims": [4, 32, 64, 128],
    "nfft": 4096,
    "hop_size": 1024,
    "win_size": 4096,
    "normalized": True,
    "band_SR": [0.175, 0.392, 0.433],
    "band_stride": [1, 4, 16],
    "band_kernel": [3, 4, 16],
    "conv_depths": [3, 2, 1],
    "compress": 4,
    "conv_kernel": 3,
    "num_dplayer": 6,
    "expand": 1,
}
_LARGE = {**_BASE, "dims": [4, 64, 128, 256], "band_SR": [0.225, 0.372, 0.403]}
_XL = {**_LARGE, "band_SR": [0.230, 0.370, 0.400], "num_dplayer": 8}
_XL_IHF = {**_XL, "band_stride": [1, 4, 4], "band_kernel": [3, 4, 4], "conv_depths": [3, 3, 3]}


@dataclass(frozen=True)
class ModelInfo:
    """One released checkpoint.

    Attributes:
        name: the CLI id (``freestems separate -m NAME``).
        title: a human title.
        architecture: the network family (``"scnet"``).
        config: keyword arguments of the :class:`~freestems.models.scnet.SCNet` constructor (without
            ``spec_norm``); treat it as read-only.
        sources: stem names in the order the model outputs them.
        url: the weights file.
        config_url: the MSST YAML published with the weights (for reference; ``config`` is authoritative).
        size: file size in bytes, or None when unknown.
        sha256: hex digest, or None when unknown (then only the size, if known, and a strict load check it).
        license: licence of the weights as far as we know (see the module docstring).
        sdr: published SDR (dB) on the MUSDB18-HQ test set: ``avg``, ``bass``, ``drums``, ``vocals``,
            ``other``.
        spec_norm: the model normalises its spectrogram inside ``forward`` (authors' current code) or not
            (MSST code).
        normalize: normalise the whole track by the mono mix's mean and std before separation.
        segment: chunk length in samples the model was trained on.
        relative_cost: rough compute per second of audio relative to the base model (an estimate: measured
            FLOPs and CPU time of the architecture, rounded).
    """

    name: str
    title: str
    architecture: str
    config: dict[str, Any]
    sources: tuple[str, ...]
    url: str
    config_url: str
    size: int | None = None
    sha256: str | None = None
    license: str = "MIT"
    sdr: dict[str, float] = field(default_factory=dict)
    spec_norm: bool = False
    normalize: bool = False
    segment: int = SEGMENT
    relative_cost: float = 1.0
    sample_rate: int = SAMPLE_RATE

    @property
    def filename(self) -> str:
        """The file name of the weights in the cache (last URL path component)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def _sdr(avg: float, bass: float, drums: float, vocals: float, other: float) -> dict[str, float]:
    return {"avg": avg, "bass": bass, "drums": drums, "vocals": vocals, "other": other}


def _entry(name, title, config, release, weights, yaml, *, sdr, spec_norm, normalize, cost) -> ModelInfo:
    return ModelInfo(
        name=name,
        title=title,
        architecture="scnet",
        config=copy.deepcopy(config),
        sources=tuple(config["sources"]),
        url=RELEASES_URL + release + "/" + weights,
        config_url=RELEASES_URL + release + "/" + yaml,
        sdr=sdr,
        spec_norm=spec_norm,
        normalize=normalize,
        relative_cost=cost,
    )


# relative_cost: FLOPs of a 3 s stereo input (torch flop counter) were 42 / 228 / 253 / 410 GFLOP for
# base / large / XL / XL IHF and single-thread CPU time scaled about the same (1 / 4.7 / 6.3 / 10.8).
_ENTRIES = (
    _entry(
        "scnet",
        "SCNet (authors' base)",
        _BASE,
        "v.1.0.6",
        "scnet_checkpoint_musdb18.ckpt",
        "config_musdb18_scnet.yaml",
        sdr=_sdr(9.03, 8.89, 10.44, 9.90, 6.89),
        spec_norm=False,
        normalize=True,
        cost=1.0,
    ),
    _entry(
        "scnet-large",
        "SCNet Large (ZFTurbo)",
        _LARGE,
        "v1.0.8",
        "model_scnet_sdr_9.3244.ckpt",
        "config_musdb18_scnet_large.yaml",
        sdr=_sdr(9.32, 8.63, 10.89, 10.69, 7.06),
        spec_norm=False,
        normalize=False,
        cost=5.0,
    ),
    _entry(
        "scnet-large-authors",
        "SCNet Large (authors)",
        _LARGE,
        "v1.0.9",
        "SCNet-large_starrytong_fixed.ckpt",
        "config_musdb18_scnet_large_starrytong.yaml",
        sdr=_sdr(9.70, 9.38, 11.15, 10.94, 7.31),
        spec_norm=True,
        normalize=True,
        cost=5.0,
    ),
    _entry(
        "scnet-xl",
        "SCNet XL",
        _XL,
        "v1.0.13",
        "model_scnet_ep_54_sdr_9.8051.ckpt",
        "config_musdb18_scnet_xl.yaml",
        sdr=_sdr(9.80, 9.23, 11.51, 11.05, 7.41),
        spec_norm=False,
        normalize=False,
        cost=6.0,
    ),
    _entry(
        "scnet-xl-ihf",
        "SCNet XL IHF",
        _XL_IHF,
        "v1.0.15",
        "model_scnet_ep_36_sdr_10.0891.ckpt",
        "config_musdb18_scnet_xl_more_wide_v5.yaml",
        sdr=_sdr(10.08, 9.23, 11.81, 11.42, 7.88),
        spec_norm=False,
        normalize=False,
        cost=10.0,
    ),
)

CATALOG: dict[str, ModelInfo] = {info.name: info for info in _ENTRIES}
"""Every known model by name, cheapest first."""

DEFAULT_MODEL = "scnet"
"""The light base model: the cheapest inference, which is what keeps separation free."""


def get_model_info(name: str) -> ModelInfo:
    """The catalog entry called ``name``; raises :class:`ModelNotAvailable` naming the valid ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelNotAvailable(
            f"unknown model {name!r}; available: {', '.join(CATALOG)} (see `freestems models`)"
        ) from None
