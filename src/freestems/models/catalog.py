"""The catalog of released checkpoints freestems knows how to run: SCNet, BS-RoFormer (PoPE variant included),
Mel-Band RoFormer, MDX23C and HT-Demucs, and ensemble presets of them.

Every SCNet entry records what the file needs at inference time: the constructor arguments of
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
from dataclasses import dataclass, field, replace
from typing import Any

from freestems.contract import SEGMENT, SOURCES
from freestems.models.errors import ModelChoiceError, ModelNotAvailable

RELEASES_URL = "https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/download/"
"""Base of every asset URL in the catalog."""


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
    """One released checkpoint (or a named ensemble of them).

    Attributes:
        name: the CLI id (``freestems separate -m NAME``).
        title: a human title.
        architecture: the network family: ``scnet``, ``bs_roformer``, ``mel_band_roformer``, ``mdx23c``,
            ``htdemucs`` or ``ensemble``.
        config: what builds the network; treat it as read-only. SCNet: keyword arguments of
            :class:`~freestems.models.scnet.SCNet` (without ``spec_norm``). RoFormers and MDX23C
            (:data:`MSST_FAMILIES`): the whole MSST YAML as a dict, or empty when it is not known here (then
            the YAML at ``config_url`` is downloaded beside the weights, and it decides the stems and
            segment). HT-Demucs: ``{"weights": per-member per-stem bag weights}`` (the networks' own config
            is inside the ``.th`` files). Ensembles: ``{"members": [[name, {stem: weight}], ...]}``.
        sources: stem names in the order the model outputs them.
        url: the weights file (the first member's, for a bag).
        config_url: the MSST YAML published with the weights (downloaded only when ``config`` is empty).
        more_urls: further weights files of a bag (HT-Demucs ``htdemucs_ft``: one file per specialist).
        size: file size in bytes, or None when unknown.
        sha256: hex digest, or None when unknown (then the digest of the first download is pinned beside
            the file and checked on every load). Demucs file names carry a published sha256 prefix
            (``<signature>-<8 hex>.th``), checked on download.
        license: licence of the weights as published ("MIT", "MIT (model card)", "none stated", ...).
        sdr: published SDR (dB) per stem (and ``avg``), measured on ``sdr_set``.
        sdr_set: the test set of ``sdr``: ``"MUSDB18-HQ"``, ``"Multisong"`` (MVSep's Multisong dataset) or
            ``"DrumSep test"`` (the DrumSep models' own test set, as MSST's release table names it).
        spec_norm: (SCNet) the model normalises its spectrogram inside ``forward`` (authors' code) or not.
        normalize: normalise the whole track by the mono mix's mean and std before separation.
        segment: chunk length in samples the model was trained on.
        relative_cost: seconds per minute of audio relative to ``scnet``, measured by
            ``bench/bench_models.py`` on one machine (None until measured).
        parameters_m: millions of network parameters, counted on the release configuration built with
            seeded weights (None when the configuration is not known here); an ensemble's is its members' sum.
        note: where the numbers come from, for entries that need saying (ensembles).
    """

    name: str
    title: str
    architecture: str
    config: dict[str, Any]
    sources: tuple[str, ...]
    url: str
    config_url: str
    more_urls: tuple[str, ...] = ()
    size: int | None = None
    sha256: str | None = None
    license: str = "MIT"
    sdr: dict[str, float] = field(default_factory=dict)
    sdr_set: str = "MUSDB18-HQ"
    spec_norm: bool = False
    normalize: bool = False
    segment: int = SEGMENT
    relative_cost: float | None = None
    parameters_m: float | None = None
    note: str = ""

    @property
    def filename(self) -> str:
        """The file name of the weights in the cache (last URL path component)."""
        return _filename(self.url)

    @property
    def urls(self) -> tuple[str, ...]:
        """Every weights file of the entry (one, or a bag's members); none for an ensemble."""
        return () if self.architecture == "ensemble" else (self.url, *self.more_urls)

    @property
    def config_filename(self) -> str | None:
        """The config downloaded beside the weights (an MSST family's, when not embedded), else None."""
        if self.architecture in MSST_FAMILIES and not self.config:
            return _filename(self.config_url)
        return None


def _filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _sdr(avg: float, bass: float, drums: float, vocals: float, other: float) -> dict[str, float]:
    return {"avg": avg, "bass": bass, "drums": drums, "vocals": vocals, "other": other}


def _entry(
    name: str,
    title: str,
    config: dict[str, Any],
    release: str,
    weights: str,
    yaml: str,
    *,
    sdr: dict[str, float],
    spec_norm: bool,
    normalize: bool,
    cost: float | None,
) -> ModelInfo:
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
        sdr_set="MUSDB18-HQ",
    )


# relative_cost: FLOPs of a 3 s stereo input (torch flop counter) were 42 / 228 / 253 / 410 GFLOP for
# base / large / XL / XL IHF and single-thread CPU time measured about the same (1 / 4.7 / 6.3 / 10.8).
_SCNETS = (
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

ROFORMERS = ("bs_roformer", "mel_band_roformer")
MSST_FAMILIES = (*ROFORMERS, "mdx23c")
"""The families built from an MSST YAML (:func:`freestems.models.loading.msst_model`)."""
MSST_CONFIGS = (  # MSST release v1.0.21 (2026-04-19) by its commit: a file there never changes; main does
    "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/"
    "ea7eb9c20ea0e3f94368a30fc1654b51cdd55789/configs/"
)
DEMUCS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/"
HTDEMUCS_SOURCES = ("drums", "bass", "other", "vocals")
MULTISONG = "Multisong"
_MULTI_STFT = {
    "multi_stft_resolution_loss_weight": 1.0,
    "multi_stft_resolutions_window_sizes": [4096, 2048, 1024, 512, 256],
    "multi_stft_hop_size": 147,
    "multi_stft_normalized": False,
}
_STFT = {
    "dim_freqs_in": 1025,
    "stft_n_fft": 2048,
    "stft_hop_length": 441,
    "stft_win_length": 2048,
    "stft_normalized": False,
    "mask_estimator_depth": 2,
}
_VOCALS_TRAINING = {"instruments": ["vocals", "other"], "target_instrument": "vocals"}

KIM_CONFIG: dict[str, Any] = {
    "audio": {
        "chunk_size": 352800,
        "dim_f": 1024,
        "dim_t": 256,
        "hop_length": 441,
        "n_fft": 2048,
        "num_channels": 2,
        "sample_rate": 44100,
        "min_mean_abs": 0.0,
    },
    "model": {
        "dim": 384,
        "depth": 6,
        "stereo": True,
        "num_stems": 1,
        "time_transformer_depth": 1,
        "freq_transformer_depth": 1,
        "num_bands": 60,
        "dim_head": 64,
        "heads": 8,
        "attn_dropout": 0,
        "ff_dropout": 0,
        "flash_attn": True,
        "sample_rate": 44100,
        **_STFT,
        **_MULTI_STFT,
    },
    "training": _VOCALS_TRAINING,
    "inference": {"batch_size": 4, "dim_t": 256, "num_overlap": 2},
}
"""MSST's configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml, as published."""

VIPERX_CONFIG: dict[str, Any] = {
    "audio": {"chunk_size": 352800, "num_channels": 2, "sample_rate": 44100},
    "model": {
        "dim": 512,
        "depth": 12,
        "stereo": True,
        "num_stems": 1,
        "time_transformer_depth": 1,
        "freq_transformer_depth": 1,
        "linear_transformer_depth": 0,
        "freqs_per_bands": [2] * 24 + [4] * 12 + [12] * 8 + [24] * 8 + [48] * 8 + [128, 129],
        "dim_head": 64,
        "heads": 8,
        "attn_dropout": 0.1,
        "ff_dropout": 0.1,
        "flash_attn": True,
        **_STFT,
        **_MULTI_STFT,
    },
    "training": _VOCALS_TRAINING,
    "inference": {"num_overlap": 2},
}
"""MSST's configs/viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml (the model and stem facts)."""

MDX23C_VOCALS_CONFIG: dict[str, Any] = {
    "audio": {
        "chunk_size": 261120,
        "dim_f": 4096,
        "dim_t": 256,
        "hop_length": 1024,
        "n_fft": 8192,
        "num_channels": 2,
        "sample_rate": 44100,
        "min_mean_abs": 0.001,
    },
    "model": {
        "act": "gelu",
        "bottleneck_factor": 4,
        "growth": 128,
        "norm": "InstanceNorm",
        "num_blocks_per_scale": 2,
        "num_channels": 128,
        "num_scales": 5,
        "num_subbands": 4,
        "scale": [2, 2],
    },
    "training": {"instruments": ["vocals", "other"], "target_instrument": None},
    "inference": {"batch_size": 1, "dim_t": 256, "num_overlap": 4},
}
"""MSST's configs/config_vocals_mdx23c.yaml (its audio, model, stem and inference facts, unchanged since the
repository's first commit, 4f27a63 of 2023-11-06; the release v1.0.0 publishes it beside the weights)."""

DRUMSEP_RELEASE = (
    "https://github.com/jarredou/models/releases/download/aufr33-jarredou_MDX23C_DrumSep_model_v0.1/"
    "aufr33-jarredou_DrumSep_model_mdx23c_ep_141_sdr_10.8059"
)
"""The 6-stem MDX23C DrumSep model's release, as MSST's table links it (add ``.ckpt`` or ``.yaml``)."""

# Measured by bench/bench_models.py: seconds per minute of audio relative to scnet. htdemucs and the Kim and
# viperx RoFormers: wall time, back to back on an idle 2-core CPU (bench/results/models.json). htdemucs_6s,
# htdemucs_ft and bs-roformer-4stem: single-thread CPU time in one run beside htdemucs and mel-roformer-kim
# on a busy machine (bench/results/models_more.json), scaled by those anchors' idle ratios (6s and ft by
# htdemucs's, the BS-RoFormer by Kim's; that run's own CPU ratio for Kim was 15.7 against 15.4 idle). None:
# not measured (mel-roformer-4stem: its geometry is known only from the YAML published beside its weights).
_MEASURED: dict[str, float] = {
    "htdemucs": 2.2,
    "htdemucs_6s": 2.3,
    "htdemucs_ft": 8.7,
    "mel-roformer-kim": 15.4,
    "bs-roformer-4stem": 24.3,
    "bs-roformer-viperx": 34.8,
}

# Millions of parameters of each release configuration, counted by building it with seeded weights.
_PARAMETERS_M: dict[str, float] = {
    "scnet": 10.6,
    "scnet-large": 42.2,
    "scnet-large-authors": 42.2,
    "scnet-xl": 54.0,
    "scnet-xl-ihf": 53.5,
    "mel-roformer-kim": 228.2,
    "bs-roformer-viperx": 159.8,
    "bs-roformer-4stem": 131.7,
    "mdx23c-vocals": 112.0,
    "htdemucs": 42.0,
    "htdemucs_ft": 167.9,
    "htdemucs_6s": 42.0,
}


def _msst(
    name: str,
    title: str,
    architecture: str,
    config: dict[str, Any],
    url: str,
    config_url: str,
    *,
    sources: tuple[str, ...],
    sdr: dict[str, float],
    sdr_set: str,
    license: str,
    note: str = "",
) -> ModelInfo:
    """An entry of a family built from an MSST YAML (:data:`MSST_FAMILIES`); without ``config`` the YAML at
    ``config_url`` is downloaded beside the weights and decides the segment (485100 here is a placeholder)."""
    segment: int = config.get("audio", {}).get("chunk_size", 352800) if config else 485_100
    return ModelInfo(
        name=name,
        title=title,
        architecture=architecture,
        config=copy.deepcopy(config),
        sources=sources,
        url=url,
        config_url=config_url,
        license=license,
        sdr=sdr,
        sdr_set=sdr_set,
        normalize=False,
        segment=segment,
        note=note,
    )


def _demucs(
    name: str,
    title: str,
    files: list[str],
    *,
    sources: tuple[str, ...] = HTDEMUCS_SOURCES,
    weights: list[list[float]] | None = None,
    sdr: dict[str, float],
) -> ModelInfo:
    weights = weights or [[1.0] * len(sources)]
    return ModelInfo(
        name=name,
        title=title,
        architecture="htdemucs",
        config={"weights": weights},
        sources=sources,
        url=DEMUCS_URL + files[0],
        config_url="",
        more_urls=tuple(DEMUCS_URL + file for file in files[1:]),
        license="none stated (code MIT)",
        sdr=sdr,
        sdr_set=MULTISONG,
        normalize=True,
        segment=343_980,  # 7.8 s, HT-Demucs's training segment (checked against the file on load)
    )


def _ensemble(
    name: str,
    title: str,
    members: list[tuple[str, dict[str, float]]],
    *,
    sources: tuple[str, ...],
    sdr: dict[str, float],
    sdr_set: str,
    note: str,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        title=title,
        architecture="ensemble",
        config={"members": [[member, dict(weights)] for member, weights in members]},
        sources=sources,
        url="",
        config_url="",
        license="as its members",
        sdr=sdr,
        sdr_set=sdr_set,
        note=note,
    )


_VOCALS = ("vocals",)
_OTHERS = {"vocals": 0.0}
_ONLY_VOCALS = {"drums": 0.0, "bass": 0.0, "other": 0.0}

_FAMILIES = (
    _msst(
        "mel-roformer-kim",
        "Mel-Band RoFormer vocals (Kimberley Jensen)",
        "mel_band_roformer",
        KIM_CONFIG,
        "https://huggingface.co/KimberleyJSN/melbandroformer/resolve/main/MelBandRoformer.ckpt",
        MSST_CONFIGS + "KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml",
        sources=_VOCALS,
        sdr={"vocals": 10.98},
        sdr_set=MULTISONG,
        license="MIT (model card)",
    ),
    _msst(
        "bs-roformer-viperx",
        "BS-RoFormer vocals (viperx, ep 317)",
        "bs_roformer",
        VIPERX_CONFIG,
        "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models/"
        "model_bs_roformer_ep_317_sdr_12.9755.ckpt",
        MSST_CONFIGS + "viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml",
        sources=_VOCALS,
        sdr={"vocals": 10.87},
        sdr_set=MULTISONG,
        license="none stated",
    ),
    _msst(
        "bs-polarformer",
        "BS PolarFormer vocals (ZFTurbo: BS-RoFormer with PoPE positions)",
        "bs_roformer",
        {},
        RELEASES_URL + "v1.0.20/model_bs_polarformer_float16.ckpt",
        RELEASES_URL + "v1.0.20/model_bs_polarformer_float16.yaml",
        sources=_VOCALS,
        sdr={"vocals": 11.00},
        sdr_set=MULTISONG,
        license="none stated (repository MIT)",
        note="Config (and so its stems) downloaded beside the weights; float16 weights, run in float32.",
    ),
    _msst(
        "bs-roformer-4stem",
        "BS-RoFormer 4 stems (ZFTurbo, MUSDB18-HQ training)",
        "bs_roformer",
        {},
        RELEASES_URL + "v1.0.12/model_bs_roformer_ep_17_sdr_9.6568.ckpt",
        RELEASES_URL + "v1.0.12/config_bs_roformer_384_8_2_485100.yaml",
        sources=("drums", "bass", "other", "vocals"),
        sdr=_sdr(9.65, 8.48, 11.61, 11.08, 7.44),
        sdr_set="MUSDB18-HQ",
        license="none stated (repository MIT)",
    ),
    _msst(
        "mel-roformer-4stem",
        "Mel-Band RoFormer 4 stems (ZFTurbo experiment, MUSDB18-HQ training)",
        "mel_band_roformer",
        {},
        RELEASES_URL + "v1.0.11/model_mel_band_roformer_ep_1_sdr_8.2175.ckpt",
        RELEASES_URL + "v1.0.11/model_mel_band_roformer_ep_1_sdr_8.2175.yaml",
        sources=("drums", "bass", "other", "vocals"),
        sdr={"avg": 8.22},
        sdr_set="MUSDB18-HQ",
        license="none stated (repository MIT)",
    ),
    _msst(
        "mdx23c-vocals",
        "MDX23C vocals (ZFTurbo)",
        "mdx23c",
        MDX23C_VOCALS_CONFIG,
        RELEASES_URL + "v1.0.0/model_vocals_mdx23c_sdr_10.17.ckpt",
        RELEASES_URL + "v1.0.0/config_vocals_mdx23c.yaml",
        sources=("vocals", "other"),
        sdr={"vocals": 10.17},
        sdr_set=MULTISONG,
        license="none stated (repository MIT)",
    ),
    _msst(
        "mdx23c-drumsep",
        "MDX23C DrumSep, 6 drum stems (aufr33 & jarredou)",
        "mdx23c",
        {},
        DRUMSEP_RELEASE + ".ckpt",
        DRUMSEP_RELEASE + ".yaml",
        sources=("kick", "snare", "toms", "hh", "ride", "crash"),
        sdr={"kick": 14.54, "snare": 9.79, "toms": 10.63, "hh": 3.19},
        sdr_set="DrumSep test",
        license="none stated",
        note="Separates a drums track (not a whole mix: run it on a drums stem). Cymbals (ride + crash "
        "together): 6.08 dB on the DrumSep test. Config (and so the stems' order) downloaded beside the "
        "weights.",
    ),
    _demucs(
        "htdemucs",
        "HT-Demucs v4",
        ["955717e8-8726e21a.th"],
        sdr=_sdr(9.16, 11.76, 10.88, 8.24, 5.74),
    ),
    _demucs(
        "htdemucs_ft",
        "HT-Demucs v4 fine-tuned (bag of 4 specialists)",
        ["f7e0c4bc-ba3fe64a.th", "d12395a8-e57c48e6.th", "92cfc3b6-ef3bcb9c.th", "04573f0d-f3cf25b2.th"],
        weights=[[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)],
        sdr={"bass": 11.96, "drums": 11.13, "vocals": 8.38, "other": 5.85},  # each from its specialist
    ),
    _demucs(
        "htdemucs_6s",
        "HT-Demucs v4, 6 stems (guitar, piano)",
        ["5c90dfd2-34c22ccb.th"],
        sources=(*HTDEMUCS_SOURCES, "guitar", "piano"),
        sdr={"bass": 11.22, "drums": 10.22, "vocals": 8.05},
    ),
)

_PRESETS = (
    _ensemble(
        "ensemble-vocals-kim-ft",
        "Kim Mel-Band RoFormer vocals + HT-Demucs ft drums/bass/other",
        [("mel-roformer-kim", {}), ("htdemucs_ft", _OTHERS)],
        sources=HTDEMUCS_SOURCES,
        sdr={"bass": 11.96, "drums": 11.13, "vocals": 10.98, "other": 5.85},
        sdr_set=MULTISONG,
        note="Multisong: vocals 10.98 (Kim) beats htdemucs_ft's 8.38 and every SCNet's (<= 9.05); "
        "drums 11.13, bass 11.96, other 5.85 (htdemucs_ft) beat every SCNet's Multisong figures. Each stem "
        "comes from one member, so each stem's SDR is its member's published figure.",
    ),
    _ensemble(
        "ensemble-vocals-kim-scnet",
        "Kim Mel-Band RoFormer vocals + SCNet Large (authors) drums/bass/other",
        [("mel-roformer-kim", {}), ("scnet-large-authors", _OTHERS)],
        sources=SOURCES,
        sdr={"bass": 11.27, "drums": 11.23, "vocals": 10.98, "other": 5.57},
        sdr_set=MULTISONG,
        note="Multisong: vocals 10.98 (Kim) over SCNet Large (authors) 9.05; drums 11.23, bass 11.27, "
        "other 5.57 from SCNet Large (authors). The cheaper choice of the two presets.",
    ),
)


def _measured(info: ModelInfo) -> ModelInfo:
    """``info`` with the bench's numbers: its own, or for a preset the sum of its members' (an ensemble runs
    each member once over the same input, so its cost and size are theirs added up)."""
    if info.architecture != "ensemble":
        cost = info.relative_cost if info.relative_cost is not None else _MEASURED.get(info.name)
        return replace(info, relative_cost=cost, parameters_m=_PARAMETERS_M.get(info.name))
    members = [_MODELS[name] for name, _ in info.config["members"]]
    costs = [member.relative_cost for member in members]
    sizes = [member.parameters_m for member in members]
    return replace(
        info,
        relative_cost=None if None in costs else round(sum(c for c in costs if c is not None), 1),
        parameters_m=None if None in sizes else round(sum(s for s in sizes if s is not None), 1),
    )


_MODELS = {info.name: _measured(info) for info in (*_SCNETS, *_FAMILIES)}
CATALOG: dict[str, ModelInfo] = {**_MODELS, **{info.name: _measured(info) for info in _PRESETS}}
"""Every known model by name: the SCNets cheapest first, then the other families, then ensemble presets."""

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


OPTION_NAMES = ("-m/--model", "--model-file", "--model-config")
"""How the CLI spells a model's name, its checkpoint file and that file's config."""


def check_model_choice(
    name: str | None,
    model_file: object,
    model_config: object,
    *,
    spelled: tuple[str, str, str] = OPTION_NAMES,
    name_with_file: bool = False,
) -> None:
    """The one rule for naming the model to run: a catalog name or a checkpoint file, not both, and a config
    only with a file. ``spelled`` names the three as the user wrote them (options, or ``FREESTEMS_*``
    variables). ``name_with_file``: a name beside a file means the catalog config for that file
    (:func:`load_model`'s library use) instead of a conflict.

    Raises:
        ModelChoiceError: the three do not fit together; the message names them as ``spelled``.
    """
    name_option, file_option, config_option = spelled
    if name and model_file is not None and not name_with_file:
        raise ModelChoiceError(f"give either {name_option} or {file_option}, not both")
    if model_config is not None and model_file is None:
        raise ModelChoiceError(f"{config_option} needs {file_option}")
