"""The catalog of released checkpoints freestems knows how to run: SCNet, BS-RoFormer (PoPE variant included),
Mel-Band RoFormer, MDX23C and HT-Demucs, and ensemble presets of them.

Every SCNet entry records what the file needs at inference time: the constructor arguments of
:class:`freestems.models.scnet.SCNet`, whether the spectrogram is normalised inside the model (``spec_norm``)
and whether the whole track is normalised before separation (``normalize``). The values come from the
release table of the Music-Source-Separation-Training (MSST) collection (``docs/pretrained_models.md``) and
the SCNet paper/code; they cannot be verified against the weights here, so they are our best knowledge and a
user can override both flags (``load_model(..., spec_norm=..., normalize=...)``).

Licences: an entry's ``license`` says what is stated for *the weights*, by whom, in one of the forms of
:data:`LICENSE_FORMS` (a licence of a repository or of code covers that code; it is named, but it is not the
weights' licence):

* ``"<licence> (<where it is stated>)"``: the weights' own licence, with where their authors state it:
  Kim's model card (``"MIT (model card)"``), the SCNet authors' answer in starrytong/SCNet#35 that the
  released SCNet and SCNet-large weights are MIT (``"MIT (authors: starrytong/SCNet#35)"``);
* ``"research only (<where it is stated>)"``: the authors state the weights are for research, not covered by
  their code's licence: the Demucs weights (``"research only (authors: facebookresearch/demucs#327)"``: "not
  covered by the MIT license, and are provided only for scientific purposes");
* ``"none stated (repository MIT)"``: no licence stated for the weights, which are published in a repository
  under that licence: ZFTurbo's own weights in MSST's releases,
  SCNet ones included, and the files others trained that MSST re-hosts;
* ``"none stated"``: nothing stated; ``"unknown (<why>)"``: not known here; a preset: ``"as its members"``.

An entry is *servable* (:func:`servable_license`) only when its weights' own licence allows redistribution;
weights with no licence stated, or an unknown one, run from the CLI and the library (the user downloads them),
but a service never offers them by default (:func:`default_served_model`). This is our best reading of what
is published, not a legal statement.

Each entry names the jobs it serves (:data:`JOBS`): ``freestems models`` groups the catalog by them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from freestems.contract import SEGMENT, SOURCES
from freestems.models.errors import ModelChoiceError, ModelNotAvailable

RELEASES_URL = "https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/download/"
"""Base of MSST's release assets (most weights of the catalog)."""

JOBS: dict[str, str] = {
    "four-stems": "drums, bass, other and vocals",
    "six-stems": "drums, bass, other, vocals, guitar and piano",
    "acapella": "the vocals alone",
    "karaoke": "the instrumental: the mix without its vocals",
    "lead-backing": "the lead vocal apart from the backing vocals",
    "drum-parts": "a drums track split into kick, snare, toms and cymbals",
    "de-reverb": "the dry sound without its reverb",
    "denoise": "the sound without its noise",
    "crowd": "the mix without its crowd noise (applause, cheering)",
}
"""The jobs an entry can serve, in the order ``freestems models`` lists them, with what each gives."""

JOB_TITLES: dict[str, str] = {
    "four-stems": "Four stems",
    "six-stems": "Six stems",
    "acapella": "Acapella",
    "karaoke": "Karaoke",
    "lead-backing": "Lead and backing vocals",
    "drum-parts": "Drum parts",
    "de-reverb": "Remove reverb",
    "denoise": "Clean up noise",
    "crowd": "Remove crowd noise",
}
"""Each job of :data:`JOBS` as a title a person reads (the web page's job picker)."""

STEM_JOBS: dict[str, frozenset[str]] = {
    "four-stems": frozenset(SOURCES),
    "six-stems": frozenset((*SOURCES, "guitar", "piano")),
}
"""The jobs a model without a catalog entry (a checkpoint file, an ad-hoc ensemble or chain) is taken to
serve: only these two, and only when its stems are exactly these. Its stems say nothing more: a one-stem
``vocals`` model may give the whole voice or only the lead (the karaoke model's ``vocals`` is the lead
vocal), and a ``dry`` stem may be without reverb or without noise."""

TWO_STEM_JOBS = ("acapella", "karaoke")
"""What a model serving :data:`STEM_JOBS` also serves when it gives a ``vocals`` stem: that stem and the rest
(``two_stems=vocals``), the vocals alone or the mix without them."""


def served_jobs(name: str, sources: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The jobs of :data:`JOBS` a model called ``name`` with these stems serves, in :data:`JOBS` order, as
    ``(its own, by two stems)``: its own are its catalog entry's jobs (without an entry: :data:`STEM_JOBS`
    by its stems); by two stems, :data:`TWO_STEM_JOBS` it gets from ``two_stems=vocals`` and does not name.
    """
    info = CATALOG.get(name)
    stems = frozenset(sources)
    own = set(info.jobs) if info else {job for job, wanted in STEM_JOBS.items() if stems == wanted}
    extra = set(TWO_STEM_JOBS) - own if own & set(STEM_JOBS) and "vocals" in stems else set()
    return tuple(job for job in JOBS if job in own), tuple(job for job in JOBS if job in extra)


SERVABLE_LICENSES = ("MIT", "Apache-2.0", "BSD", "CC0", "CC-BY-4.0")
"""Licences that allow redistributing the weights, so a service may offer them: an entry's ``license``
must start with one of these (``"MIT (model card)"`` does; ``"none stated (repository MIT)"`` does not)."""
EXPORTABLE_FAMILIES = ("scnet",)
"""The families ``freestems export`` can write for the browser (catalog ``architecture`` values): here, not
in :mod:`freestems.export`, so that the Modal image's recipe reads it without importing torch."""


LICENSE_FORMS = (
    r"(MIT|Apache-2\.0|BSD|CC0|CC-BY-4\.0) \((model card|authors: [\w.-]+/[\w.-]+#\d+)\)",
    r"research only \(authors: [\w.-]+/[\w.-]+#\d+\)",
    r"none stated \(repository (MIT|Apache-2\.0|BSD-\d-Clause)\)",
    r"none stated",
    r"unknown \(.+\)",
    r"as its members",
)
"""The forms an entry's ``license`` takes (regular expressions, matched whole; see the module docstring): a
licence stated for the weights says where, so a bare ``"MIT"`` is none of them."""


def servable_license(license: str) -> bool:
    """Whether weights published under ``license`` (as a catalog entry words it) may be served."""
    return any(license == name or license.startswith(name + " ") for name in SERVABLE_LICENSES)


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
            ``htdemucs``; or a preset of them: ``ensemble`` or ``chain``.
        config: what builds the network; treat it as read-only. SCNet: keyword arguments of
            :class:`~freestems.models.scnet.SCNet` (without ``spec_norm``). RoFormers and MDX23C
            (:data:`MSST_FAMILIES`): the whole MSST YAML as a dict, or empty when it is not known here (then
            the YAML at ``config_url`` is downloaded beside the weights, and it decides the stems and
            segment). HT-Demucs: ``{"weights": per-member per-stem bag weights}`` (the networks' own config
            is inside the ``.th`` files). Ensembles: ``{"members": [[name, {stem: weight}], ...]}``. Chains:
            ``{"first": name, "links": [[stem, name], ...]}`` (:mod:`freestems.models.chain`).
        sources: stem names in the order the model outputs them.
        url: the weights file (the first member's, for a bag).
        config_url: the MSST YAML published with the weights (downloaded only when ``config`` is empty).
        more_urls: further weights files of a bag (HT-Demucs ``htdemucs_ft``: one file per specialist).
        size: file size in bytes, or None when unknown.
        sha256: hex digest, or None when unknown (then the digest of the first download is pinned beside
            the file and checked on every load). Demucs file names carry a published sha256 prefix
            (``<signature>-<8 hex>.th``), checked on download.
        license: licence of the weights as published ("MIT", "MIT (model card)", "none stated", ...).
        sdr: published SDR (dB) per stem (and ``avg``), measured on ``sdr_set``; empty when none is published.
        sdr_set: the test set of ``sdr``: ``"MUSDB18-HQ"``, ``"Multisong"`` (MVSep's Multisong dataset) or
            ``"DrumSep test"`` (the DrumSep models' own test set, as MSST's release table names it); None
            when the publisher names none (or publishes no score).
        spec_norm: (SCNet) the model normalises its spectrogram inside ``forward`` (authors' code) or not.
        normalize: normalise the whole track by the mono mix's mean and std before separation.
        segment: chunk length in samples the model was trained on.
        relative_cost: seconds per minute of audio relative to ``scnet``, measured by
            ``bench/bench_models.py`` on one machine (None until measured).
        parameters_m: millions of network parameters, counted on the release configuration built with
            seeded weights (None when the configuration is not known here); an ensemble's is its members' sum.
        note: where the numbers come from, for entries that need saying (ensembles).
        jobs: the jobs of :data:`JOBS` the entry serves.
        servable: the licence allows a service to offer the weights (:func:`servable_license`; a preset:
            every member is servable). Not servable: runs from the CLI and the library, never a default of
            the service.
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
    license: str = "none stated"
    sdr: dict[str, float] = field(default_factory=dict)
    sdr_set: str | None = "MUSDB18-HQ"
    spec_norm: bool = False
    normalize: bool = False
    segment: int = SEGMENT
    relative_cost: float | None = None
    parameters_m: float | None = None
    note: str = ""
    jobs: tuple[str, ...] = ()
    servable: bool = False

    def __post_init__(self) -> None:
        unknown = [job for job in self.jobs if job not in JOBS]
        if unknown:
            raise ValueError(
                f"model {self.name}: unknown job(s) {', '.join(unknown)}; jobs: {', '.join(JOBS)}"
            )

    @property
    def filename(self) -> str:
        """The file name of the weights in the cache (last URL path component)."""
        return _filename(self.url)

    @property
    def urls(self) -> tuple[str, ...]:
        """Every weights file of the entry (one, or a bag's members); none for a preset (ensemble, chain)."""
        return () if self.architecture in ("ensemble", "chain") else (self.url, *self.more_urls)

    @property
    def config_filename(self) -> str | None:
        """The config downloaded beside the weights (an MSST family's, when not embedded), else None."""
        if self.architecture in MSST_FAMILIES and not self.config:
            return _filename(self.config_url)
        return None


def _filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


_FOUR = ("four-stems",)
_VOCAL_JOBS = ("acapella", "karaoke")
_DRUM_PARTS = ("drum-parts",)


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
    license: str,
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
        license=license,
        jobs=_FOUR,
        servable=servable_license(license),
    )


_AUTHORS = "MIT (authors: starrytong/SCNet#35)"
"""The SCNet authors' weights (base and Large): MIT, as the authors answered in starrytong/SCNet#35."""
_MSST_OWN = "none stated (repository MIT)"
"""Weights in MSST's releases with no licence of their own (ZFTurbo's SCNets among them)."""

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
        license=_AUTHORS,
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
        license=_MSST_OWN,
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
        license=_AUTHORS,
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
        license=_MSST_OWN,
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
        license=_MSST_OWN,
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

MSST_COMMIT = "ccc011abf7f89dd7922bb2888d48493b575c0289"
"""The MSST commit whose ``docs/pretrained_models.md`` and ``configs/`` the entries added for the jobs were
read from (its table names the weights and scores)."""
MSST_PINNED = f"https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/{MSST_COMMIT}/"
UVR_RELEASE = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models/"
"""UVR's release of public weights, as UVR's ``filelists/download_checks.json`` links them."""
UVR_COMMIT = "3826b05b570dbd4fbedbc807758803b35348ba1b"
UVR_CONFIGS = (
    f"https://raw.githubusercontent.com/TRvlvr/application_data/{UVR_COMMIT}/mdx_model_data/mdx_c_configs/"
)
"""UVR's copies of MSST YAMLs (TRvlvr/application_data), pinned to the commit read."""

KARAOKE_CONFIG: dict[str, Any] = {
    "audio": KIM_CONFIG["audio"],
    "model": KIM_CONFIG["model"],
    "training": {"instruments": ["vocals", "instrumental"], "target_instrument": "vocals"},
    "inference": {"batch_size": 1, "dim_t": 1101, "num_overlap": 4},
}
"""UVR's config_mel_band_roformer_karaoke.yaml: the audio and model sections are those of Kim's vocals model
(:data:`KIM_CONFIG`); the stems are the published ``Vocals`` (the lead vocal, the target) and
``Instrumental``, lower-cased as freestems names stems."""

DEREVERB_CONFIG: dict[str, Any] = {
    "audio": {
        "chunk_size": 352768,
        "dim_f": 1024,
        "dim_t": 801,
        "hop_length": 441,
        "n_fft": 2048,
        "num_channels": 2,
        "sample_rate": 44100,
        "min_mean_abs": 0.001,
    },
    "model": {
        **VIPERX_CONFIG["model"],
        "dim": 256,
        "depth": 8,
        "stft_hop_length": 512,
    },
    "training": {"instruments": ["dry", "reverb"], "target_instrument": "dry"},
    "inference": {"batch_size": 1, "dim_t": 801, "num_overlap": 4},
}
"""UVR's deverb_bs_roformer_8_256dim_8depth.yaml (anvuew's BS-RoFormer de-reverb): viperx's band layout and
settings with dim 256, depth 8 and an STFT hop of 512. The published stems ``No Reverb`` (the target) and
``Reverb`` are called ``dry`` and ``reverb`` here (a stem name with a space would make awkward files)."""

DRUMSEP_RELEASE = (
    "https://github.com/jarredou/models/releases/download/aufr33-jarredou_MDX23C_DrumSep_model_v0.1/"
    "aufr33-jarredou_DrumSep_model_mdx23c_ep_141_sdr_10.8059"
)
"""The 6-stem MDX23C DrumSep model's release, as MSST's table links it (add ``.ckpt`` or ``.yaml``)."""
JARREDOU_DRUMSEP = "https://github.com/jarredou/models/releases/download/DrumSep/"
"""jarredou's 5-stem MDX23C DrumSep release, as MSST's table links it."""

# Measured by bench/bench_models.py: seconds per minute of audio relative to scnet. htdemucs and the Kim and
# viperx RoFormers: wall time, back to back on an idle 2-core CPU (bench/results/models.json). htdemucs_6s,
# htdemucs_ft and bs-roformer-4stem: single-thread CPU time in one run beside htdemucs and mel-roformer-kim
# on a busy machine (bench/results/models_more.json), scaled by those anchors' idle ratios (6s and ft by
# htdemucs's, the BS-RoFormer by Kim's; that run's own CPU ratio for Kim was 15.7 against 15.4 idle). None:
# not measured (mel-roformer-4stem: its geometry is known only from the YAML published beside its weights).
# The entries added for the jobs (bench/results/models_jobs.json): single-thread CPU time over scnet's in the
# same run (10 s clip, a machine at load 6-13), unscaled; mel-roformer-karaoke is Kim's network and came out
# 18.3 there against Kim's 15.4: the short clip overstates these by about a sixth. Unmeasured: NOT_MEASURED.
_MEASURED: dict[str, float] = {
    "htdemucs": 2.2,
    "htdemucs_6s": 2.3,
    "htdemucs_ft": 8.7,
    "mel-roformer-kim": 15.4,
    "bs-roformer-4stem": 24.3,
    "bs-roformer-viperx": 34.8,
    "mdx23c-vocals": 11.7,
    "bs-roformer-dereverb": 15.1,
    "mel-roformer-karaoke": 18.3,
}

_BESIDE = "its geometry is published only in the YAML beside its weights, which the bench does not download"
NOT_MEASURED: dict[str, str] = {
    "mel-roformer-4stem": _BESIDE,
    "bs-polarformer": _BESIDE,
    "mdx23c-drumsep": _BESIDE,
    "mdx23c-drumsep-jarredou": _BESIDE,
    "mel-roformer-denoise": _BESIDE,
    "mel-roformer-crowd": _BESIDE,
    "demucs-drumsep": "bench_models.py builds it (MSST's config_drumsep.yaml), but its 40 s chunks need a "
    "clip of 40 s or more, which no run has had time for yet on the shared machine",
}
"""Why an entry has no measured cost (its ``note`` says so too); a preset of one of them has none either."""

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
    "mel-roformer-karaoke": 228.2,
    "bs-roformer-dereverb": 42.6,
    "demucs-drumsep": 83.6,  # HDemucs as MSST's configs/config_drumsep.yaml builds it
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
    sdr_set: str | None,
    license: str,
    jobs: tuple[str, ...],
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
        jobs=jobs,
        servable=servable_license(license),
    )


def _demucs(
    name: str,
    title: str,
    files: list[str],
    *,
    sources: tuple[str, ...] = HTDEMUCS_SOURCES,
    weights: list[list[float]] | None = None,
    sdr: dict[str, float],
    jobs: tuple[str, ...] = _FOUR,
) -> ModelInfo:
    weights = weights or [[1.0] * len(sources)]
    license = "research only (authors: facebookresearch/demucs#327)"
    return ModelInfo(
        name=name,
        title=title,
        architecture="htdemucs",
        config={"weights": weights},
        sources=sources,
        url=DEMUCS_URL + files[0],
        config_url="",
        more_urls=tuple(DEMUCS_URL + file for file in files[1:]),
        license=license,
        sdr=sdr,
        sdr_set=MULTISONG,
        normalize=True,
        segment=343_980,  # 7.8 s, HT-Demucs's training segment (checked against the file on load)
        jobs=jobs,
        servable=servable_license(license),
    )


def _drumsep_demucs() -> ModelInfo:
    """inagoy's DrumSep: a Demucs model file (MSST names it "DrumSep htdemucs"; MSST's config builds Demucs
    v3's hybrid network, HDemucs, which the Demucs family here runs as well)."""
    license = "none stated (repository MIT)"
    return ModelInfo(
        name="demucs-drumsep",
        title="Demucs DrumSep, 4 drum stems (inagoy)",
        architecture="htdemucs",
        config={"weights": [[1.0] * 4]},
        sources=("kick", "snare", "cymbals", "toms"),
        url=RELEASES_URL + "v1.0.5/model_drumsep.th",
        config_url=MSST_PINNED + "configs/config_drumsep.yaml",
        license=license,
        sdr={"kick": 10.52, "snare": 6.05, "toms": 4.68, "cymbals": 5.03},
        sdr_set="DrumSep test",
        normalize=True,
        segment=1_764_000,  # 40 s: the config's chunk_size and training segment (checked against the file)
        note="Separates a drums track (not a whole mix: run it on a drums stem); cymbals 5.03 is MSST's "
        "hh-cymbals figure. The network and its stems come from the file (a Demucs model file, as Demucs's "
        "training writes it); the config is MSST's description of it.",
        jobs=_DRUM_PARTS,
        servable=servable_license(license),
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
        jobs=_FOUR,
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
        jobs=_VOCAL_JOBS,
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
        jobs=_VOCAL_JOBS,
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
        jobs=_VOCAL_JOBS,
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
        jobs=_FOUR,
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
        jobs=_FOUR,
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
        jobs=_VOCAL_JOBS,
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
        jobs=_DRUM_PARTS,
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
        jobs=("six-stems",),
    ),
    _msst(
        "mdx23c-drumsep-jarredou",
        "MDX23C DrumSep, 5 drum stems (jarredou)",
        "mdx23c",
        {},
        JARREDOU_DRUMSEP + "drumsep_5stems_mdx23c_jarredou.ckpt",
        JARREDOU_DRUMSEP + "config_mdx23c.yaml",
        sources=("kick", "snare", "toms", "hh", "cymbals"),
        sdr={"kick": 16.66, "snare": 11.53, "toms": 12.33, "hh": 4.04, "cymbals": 6.36},
        sdr_set="DrumSep test",
        license="none stated",
        note="Separates a drums track (not a whole mix: run it on a drums stem); cymbals are ride + crash. "
        "Config (and so the stems' order) downloaded beside the weights.",
        jobs=_DRUM_PARTS,
    ),
    _drumsep_demucs(),
    _msst(
        "mel-roformer-karaoke",
        "Mel-Band RoFormer karaoke: the lead vocal apart (aufr33 & viperx)",
        "mel_band_roformer",
        KARAOKE_CONFIG,
        UVR_RELEASE + "mel_band_roformer_karaoke_aufr33_viperx_sdr_10.1956.ckpt",
        UVR_CONFIGS + "config_mel_band_roformer_karaoke.yaml",
        sources=_VOCALS,
        sdr={},
        sdr_set=None,
        license="none stated",
        note="vocals: the lead vocal; no_vocals: the rest, backing vocals included (a karaoke track that "
        "keeps the choir). Listed by UVR (download_checks.json) and python-audio-separator without a "
        "lead-vocal score: 10.1956 in the file name is the authors' validation figure, on a set not "
        "published. Stems: the published Vocals and Instrumental, lower-cased.",
        jobs=("lead-backing",),
    ),
    _msst(
        "bs-roformer-dereverb",
        "BS-RoFormer de-reverb (anvuew)",
        "bs_roformer",
        DEREVERB_CONFIG,
        "https://huggingface.co/anvuew/deverb_bs_roformer/resolve/main/deverb_bs_roformer_8_256dim_8depth.ckpt",
        UVR_CONFIGS + "deverb_bs_roformer_8_256dim_8depth.yaml",
        sources=("dry",),
        sdr={},
        sdr_set=None,
        license="unknown (its Hugging Face page was not read)",
        note="dry: the sound without its reverb; no_dry: the reverb. Listed by UVR (download_checks.json) "
        "without a score; the published stem names are No Reverb and Reverb.",
        jobs=("de-reverb",),
    ),
    _msst(
        "mel-roformer-denoise",
        "Mel-Band RoFormer denoise (aufr33)",
        "mel_band_roformer",
        {},
        RELEASES_URL + "v.1.0.7/denoise_mel_band_roformer_aufr33_sdr_27.9959.ckpt",
        RELEASES_URL + "v.1.0.7/model_mel_band_roformer_denoise.yaml",
        sources=("dry",),
        sdr={},
        sdr_set=None,
        license="none stated (repository MIT)",
        note="dry: the sound without its noise; no_dry: the noise. MSST's table gives no score. Config (and "
        "so its stems) downloaded beside the weights; dry is the target python-audio-separator lists.",
        jobs=("denoise",),
    ),
    _msst(
        "mel-roformer-crowd",
        "Mel-Band RoFormer crowd (aufr33 & viperx)",
        "mel_band_roformer",
        {},
        RELEASES_URL + "v.1.0.4/mel_band_roformer_crowd_aufr33_viperx_sdr_8.7144.ckpt",
        RELEASES_URL + "v.1.0.4/model_mel_band_roformer_crowd.yaml",
        sources=("crowd",),
        sdr={"crowd": 5.99},
        sdr_set=None,
        license="none stated (repository MIT)",
        note="crowd: the crowd noise; no_crowd: the mix without it. SDR crowd 5.99 as MSST's table gives it, "
        "on a test set it does not name. Config (and so its stems) downloaded beside the weights; crowd is "
        "the target python-audio-separator lists.",
        jobs=("crowd",),
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
    each member once over the same input, so its cost and size are theirs added up); a preset is servable
    when every member is."""
    if info.architecture != "ensemble":
        cost = info.relative_cost if info.relative_cost is not None else _MEASURED.get(info.name)
        why = NOT_MEASURED.get(info.name)
        note = f"{info.note} Cost not measured: {why}.".strip() if why else info.note
        return replace(info, relative_cost=cost, parameters_m=_PARAMETERS_M.get(info.name), note=note)
    members = [_MODELS[name] for name, _ in info.config["members"]]
    costs = [member.relative_cost for member in members]
    sizes = [member.parameters_m for member in members]
    return replace(
        info,
        relative_cost=None if None in costs else round(sum(c for c in costs if c is not None), 1),
        parameters_m=None if None in sizes else round(sum(s for s in sizes if s is not None), 1),
        servable=all(member.servable for member in members),
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


def default_served_model() -> str:
    """The model a service offers when its operator names none: :data:`DEFAULT_MODEL`, which a service may
    offer only while its weights are servable (an operator may still name any model, with a warning).

    Raises:
        ModelChoiceError: the default model's licence does not allow serving it.
    """
    info = get_model_info(DEFAULT_MODEL)
    if not info.servable:
        raise ModelChoiceError(
            f"the default model {info.name} may not be served by default (licence: {info.license}); "
            "name the model to serve"
        )
    return info.name


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


# ------------------------------------------------------------------------------------------------- chains
# Chain presets (freestems.models.chain): a model run on one stem of another's output, the stem replaced by
# the parts it gives (``drums`` -> ``drums-kick``, ...). Their stems are written out here (the catalog
# imports no model code); tests/test_chains.py holds them to the chain's naming rule.


def _chain(
    name: str, title: str, first: str, links: list[tuple[str, str]], jobs: tuple[str, ...], **facts: Any
) -> ModelInfo:
    """A chain preset: like an ensemble preset (no file of its own, its models' licences), another config."""
    config = {"first": first, "links": [[stem, model] for stem, model in links]}
    return replace(_ensemble(name, title, [], **facts), architecture="chain", config=config, jobs=jobs)


_CHAINS = (
    _chain(
        "chain-drumsep-ft",
        "HT-Demucs v4 ft, its drums split into kick, snare, toms, hi-hat, ride and crash by MDX23C DrumSep",
        "htdemucs_ft",
        [("drums", "mdx23c-drumsep")],
        _DRUM_PARTS,
        sources=(
            *("drums-kick", "drums-snare", "drums-toms", "drums-hh", "drums-ride", "drums-crash"),
            *("bass", "other", "vocals"),
        ),
        sdr={"bass": 11.96, "vocals": 8.38, "other": 5.85},
        sdr_set=MULTISONG,
        note="Bass, other and vocals are htdemucs_ft's (its Multisong figures). The drum parts are DrumSep's "
        "run on htdemucs_ft's drums; DrumSep's own figures (kick 14.54, snare 9.79, toms 10.63, hh 3.19, "
        "cymbals 6.08 dB) are on clean drum tracks (DrumSep test), so not these parts' figures.",
    ),
    _chain(
        "chain-dereverb-kim",
        "Mel-Band RoFormer vocals (Kim), de-reverbed by the BS-RoFormer de-reverb (anvuew)",
        "mel-roformer-kim",
        [("vocals", "bs-roformer-dereverb")],
        ("de-reverb",),
        sources=("vocals-dry", "vocals-no_dry", "no_vocals"),
        sdr={},
        sdr_set=None,
        note="vocals-dry: Kim's vocals without their reverb; vocals-no_dry: that reverb; no_vocals: the mix "
        "without Kim's vocals. No figure is published for the de-reverb model, so none for the chain.",
    ),
)


def member_names(info: ModelInfo) -> list[str]:
    """The catalog names a preset runs: an ensemble's members, a chain's first model then its links' models;
    none for a network of its own."""
    if info.architecture == "ensemble":
        return [name for name, _ in info.config["members"]]
    if info.architecture == "chain":
        return [info.config["first"], *(model for _, model in info.config["links"])]
    return []


def _measured_chain(info: ModelInfo) -> ModelInfo:
    """A chain preset with its cost and size: its models' added up (each runs once over the whole length,
    the first on the mix, each link on its stem); unknown when one of them is not measured."""
    members = [CATALOG[name] for name in member_names(info)]

    def added(values: list[float | None]) -> float | None:
        return None if None in values else round(sum(value or 0.0 for value in values), 1)

    unmeasured = [member.name for member in members if member.relative_cost is None]
    note = f"{info.note} Cost not measured: {', '.join(unmeasured)}'s is not." if unmeasured else info.note
    return replace(
        info,
        relative_cost=added([member.relative_cost for member in members]),
        parameters_m=added([member.parameters_m for member in members]),
        servable=all(member.servable for member in members),
        note=note,
    )


CATALOG.update({info.name: _measured_chain(info) for info in _CHAINS})
