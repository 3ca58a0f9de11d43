"""BS-RoFormer and Mel-Band RoFormer equal the MSST reference (fixtures made with MSST's own code)."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from reference import ROFORMER_FIXTURES

from freestems.models.errors import CheckpointError
from freestems.models.roformer import BSRoformer, MelBandRoformer, roformer_from_msst
from freestems.models.roformer.bands import hz_to_mel, mel_bands, mel_filter_bank, mel_to_hz

FAMILIES = {"bs_roformer": BSRoformer, "mel_band_roformer": MelBandRoformer}
TOLERANCE = 1e-4


def fixture_config(family: str) -> dict:
    return json.loads((ROFORMER_FIXTURES / f"{family}_config.json").read_text())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    """(name, model with the fixture weights, reference input, reference output as (b, stems, ch, t))."""
    name = request.param
    model = FAMILIES[name](**fixture_config(name)).eval()
    model.load_state_dict(torch.load(ROFORMER_FIXTURES / f"{name}_state.pt", weights_only=True), strict=True)
    io = torch.load(ROFORMER_FIXTURES / f"{name}_io.pt", weights_only=True)
    output = (
        io["output"] if io["output"].ndim == 4 else io["output"].unsqueeze(1)
    )  # reference squeezes 1 stem
    return name, model, io["input"], output


def run(model, audio):
    with torch.no_grad():
        return model(audio)


def test_fixture_state_dict_has_exactly_our_keys(family):
    name, model, _, _ = family
    state = torch.load(ROFORMER_FIXTURES / f"{name}_state.pt", weights_only=True)
    assert list(model.state_dict()) == list(state)
    assert all(model.state_dict()[key].shape == value.shape for key, value in state.items())


def test_matches_reference_output(family):
    name, model, audio, expected = family
    out = run(model, audio)
    assert out.shape == (*expected.shape[:3], audio.shape[-1])  # the input's length, even where MSST is short
    error = (out[..., : expected.shape[-1]] - expected).abs().max().item()
    assert error < TOLERANCE, f"{name}: max abs error {error}"


def test_mel_band_output_is_full_length_where_the_reference_is_short(family):
    name, _, audio, expected = family
    if name == "mel_band_roformer":
        assert expected.shape[-1] < audio.shape[-1]  # what the fixture documents: 22491 of 22827


def test_one_stem_keeps_the_stem_axis():
    model = MelBandRoformer(**fixture_config("mel_band_roformer")).eval()
    assert model.num_stems == 1
    assert run(model, torch.randn(1, 2, 8000)).shape == (1, 1, 2, 8000)


def test_batch_items_are_separated_independently(family):
    name, model, audio, expected = family
    other = torch.flip(audio, dims=[-1]) * 0.5
    out = run(model, torch.cat([audio, other]))
    assert out.shape[0] == 2
    assert (out[:1, ..., : expected.shape[-1]] - expected).abs().max().item() < TOLERANCE
    assert (out[1:] - run(model, other)).abs().max().item() < 1e-5


@pytest.mark.parametrize("length", [1, 700, 1025, 4097, 44100 + 123, 441 * 100, 512 * 90])
def test_any_length_gives_back_that_length(family, length):
    name, model, _, _ = family
    out = run(model, torch.randn(2, 2, length) * 0.1)
    assert out.shape == (2, model.num_stems, 2, length)
    assert torch.isfinite(out).all()


def test_stereo_model_refuses_other_channel_counts():
    model = BSRoformer(**fixture_config("bs_roformer")).eval()
    with pytest.raises(ValueError, match="2 audio channels"):
        run(model, torch.randn(1, 1, 4096))


def test_mono_model_separates_each_channel_on_its_own():
    torch.manual_seed(0)
    config = {**fixture_config("bs_roformer"), "stereo": False, "num_stems": 2, "depth": 1}
    model = BSRoformer(**config).eval()
    audio = torch.randn(1, 2, 6000) * 0.1
    out = run(model, audio)
    assert out.shape == (1, 2, 2, 6000)
    for channel in range(2):
        alone = run(model, audio[:, channel : channel + 1])
        assert (out[:, :, channel : channel + 1] - alone).abs().max().item() < 1e-5


def test_variant_keys_follow_the_reference_names():
    """Linear attention and skip connections (not in the fixtures): names as MSST's modules give them."""
    config = {**fixture_config("mel_band_roformer"), "linear_transformer_depth": 1, "skip_connection": True}
    model = MelBandRoformer(**config).eval()
    keys = set(model.state_dict())
    linear = "layers.0.0.layers.0.0."
    assert {
        linear + name for name in ("norm.gamma", "to_qkv.0.weight", "temperature", "to_out.1.weight")
    } <= keys
    assert "layers.0.1.layers.0.0.rotary_embed.freqs" in keys  # the time stack moves to index 1
    assert "layers.0.2.norm.gamma" in keys
    assert run(model, torch.randn(1, 2, 5000)).shape == (1, 1, 2, 5000)


def test_freqs_per_bands_must_cover_the_spectrum():
    config = {**fixture_config("bs_roformer"), "freqs_per_bands": [512, 512]}
    with pytest.raises(ValueError, match="1025 STFT bins"):
        BSRoformer(**config)


# ------------------------------------------------------------------------------------- mel filter bank


def test_slaney_mel_scale_fixed_points():
    # Linear at 200/3 Hz per mel up to 1 kHz (15 mels), then 27 mels per factor 6.4.
    hz = np.array([0.0, 200.0 / 3, 500.0, 1000.0, 6400.0, 1000.0 * 6.4**2])
    mels = np.array([0.0, 1.0, 7.5, 15.0, 42.0, 69.0])
    assert np.allclose(hz_to_mel(hz), mels)
    assert np.allclose(mel_to_hz(mels), hz)


def test_filters_are_triangles_between_mel_points():
    sr, n_fft, n_mels = 44100, 2048, 16

    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)

    def to_hz(m):
        return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    top = to_mel(sr / 2)
    points = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    bank = mel_filter_bank(sr, n_fft, n_mels)
    assert bank.shape == (n_mels, n_fft // 2 + 1) and bank.dtype == np.float32
    bin_hz = sr / n_fft
    for i in range(n_mels):
        low, centre, high = points[i : i + 3]
        inside = [k for k in range(n_fft // 2 + 1) if low < k * bin_hz < high]
        assert np.flatnonzero(bank[i]).tolist() == inside
        # Slaney norm: peak 2 / (high - low), so every triangle has unit area in Hz.
        k = round(centre / bin_hz)
        expected = (
            2 / (high - low) * min((k * bin_hz - low) / (centre - low), (high - k * bin_hz) / (high - centre))
        )
        assert bank[i, k] == pytest.approx(expected, rel=1e-5)
        if len(inside) > 20:
            assert bank[i].sum() * bin_hz == pytest.approx(1.0, rel=0.01)


def test_kim_vocals_band_layout():
    """The 60 bands of Kimberley Jensen's Mel-Band RoFormer (bins per band, as librosa 0.11 places them)."""
    bands = mel_bands(44100, 2048, 60)
    assert bands.sum(dim=1).tolist() == [
        7, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 9, 9, 9, 10, 10, 11, 13, 13, 13, 15, 16, 17,
        19, 20, 20, 22, 24, 26, 28, 29, 31, 33, 36, 39, 41, 44, 47, 50, 54, 57, 61, 66, 71, 76, 80, 86, 93,
        99, 105, 113, 122, 130,
    ]  # fmt: skip
    per_bin = bands.sum(dim=0)
    assert per_bin.min() == 1 and per_bin.max() == 2  # every bin in one or two neighbouring bands
    assert bands[0, 0] and bands[-1, -1]  # forced in, as the reference does


# ----------------------------------------------------------------------------------------- MSST configs


def msst_config(model: dict, **sections) -> dict:
    config = {
        "audio": {"chunk_size": 352800, "sample_rate": 44100},
        "model": model,
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
        "inference": {"batch_size": 4, "num_overlap": 2},
    }
    config.update(sections)
    return config


def test_kim_style_config_builds_the_mel_band_model_and_its_facts():
    model_section = {
        **fixture_config("mel_band_roformer"),
        "multi_stft_resolutions_window_sizes": (4096, 2048),
    }
    module, facts = roformer_from_msst(msst_config(model_section))
    assert isinstance(module, MelBandRoformer) and not module.training
    assert facts.architecture == "mel_band_roformer"
    assert facts.sources == ("vocals",)
    assert (facts.segment, facts.normalize, facts.sample_rate) == (352800, False, 44100)
    state = torch.load(ROFORMER_FIXTURES / "mel_band_roformer_state.pt", weights_only=True)
    module.load_state_dict(state, strict=True)


def test_four_stem_config_takes_the_instruments_in_order():
    config = msst_config(
        {
            **fixture_config("bs_roformer"),
            "freqs_per_bands": tuple(fixture_config("bs_roformer")["freqs_per_bands"]),
        },
        training={"instruments": ["drums", "bass", "other", "vocals"], "target_instrument": None},
        inference={"normalize": True},
    )
    module, facts = roformer_from_msst(config)
    assert isinstance(module, BSRoformer)
    assert facts.sources == ("drums", "bass", "other", "vocals")
    assert facts.normalize is True
    assert facts.config["freqs_per_bands"] == fixture_config("bs_roformer")["freqs_per_bands"]


def test_unknown_model_keys_are_ignored_with_a_warning():
    config = msst_config({**fixture_config("mel_band_roformer"), "sage_attention": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        roformer_from_msst(config)
    assert any("sage_attention" in str(warning.message) for warning in caught)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].update(num_stems=2), "2 stem"),
        (lambda c: c["model"].update(num_stems="two"), "num_stems"),
        (lambda c: c["audio"].pop("chunk_size"), "chunk_size"),
        (lambda c: c["audio"].update(sample_rate=48000), "44100"),
        (lambda c: c["model"].pop("num_bands") and c["model"].pop("sample_rate"), "architecture"),
        (lambda c: c.pop("model"), "model"),
        (lambda c: c["training"].clear(), "instruments"),
    ],
)
def test_unusable_configs_raise_checkpoint_errors(change, message):
    config = msst_config(dict(fixture_config("mel_band_roformer")))
    change(config)
    with pytest.raises(CheckpointError, match=message):
        roformer_from_msst(config)


def test_architecture_can_be_given():
    model_section = {
        key: value for key, value in fixture_config("mel_band_roformer").items() if key != "num_bands"
    }
    model_section.pop("sample_rate")
    module, facts = roformer_from_msst(msst_config(model_section), architecture="mel_band_roformer")
    assert isinstance(module, MelBandRoformer) and facts.architecture == "mel_band_roformer"
    with pytest.raises(CheckpointError, match="unknown architecture"):
        roformer_from_msst(msst_config(model_section), architecture="scnet")
