"""The engine: exact overlap-add, streaming, shifts, two stems, consistency, normalisation, silence."""

import numpy as np
import pytest
import torch
from model_helpers import small_config
from reference import SCNET_FIXTURES

from freestems.contract import LoadedModel, MixStats
from freestems.engine import SeparationError, separate, separate_blocks, window
from freestems.models.scnet import SCNet

SOURCES = ("drums", "bass", "other", "vocals")
GAINS = (1.0, 2.0, -1.0, 0.5)


class Gains(torch.nn.Module):
    """A 'model' whose stems are fixed multiples of its input, so the output shows how chunks were joined."""

    def __init__(self):
        super().__init__()
        self.gains = torch.nn.Parameter(torch.tensor(GAINS), requires_grad=False)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return x[:, None] * self.gains[None, :, None, None]


def gains_model(segment=10_000, normalize=False) -> LoadedModel:
    return LoadedModel(module=Gains(), name="gains", sources=SOURCES, segment=segment, normalize=normalize)


def small_scnet(normalize=False, segment=44_100) -> LoadedModel:
    module = SCNet(**small_config(), spec_norm=True).eval()
    module.load_state_dict(torch.load(SCNET_FIXTURES / "small_state.pt", weights_only=True))
    return LoadedModel(module=module, name="small", sources=SOURCES, segment=segment, normalize=normalize)


def noise(samples, seed=0):
    return np.random.default_rng(seed).standard_normal((2, samples)).astype(np.float32) * 0.3


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 0.89])
@pytest.mark.parametrize("samples", [1, 4095, 10_000, 10_001, 33_333, 123_457])
@pytest.mark.parametrize("shifts", [1, 3])
def test_overlap_add_gives_back_the_input_exactly(overlap, samples, shifts):
    mix = noise(samples)
    stems = separate(mix, gains_model(), overlap=overlap, shifts=shifts, batch_size=3)
    assert list(stems) == list(SOURCES)
    for name, gain in zip(SOURCES, GAINS, strict=True):
        assert stems[name].shape == mix.shape
        np.testing.assert_allclose(stems[name], gain * mix, atol=2e-6, rtol=0)


@pytest.mark.parametrize("block", [1, 777, 10_000, 44_100])
def test_streaming_in_any_block_size_equals_whole_track(block):
    mix = noise(54_321, seed=1)
    whole = separate(mix, gains_model(), overlap=0.5)
    blocks = (mix[:, i : i + block] for i in range(0, mix.shape[1], block))
    streamed = [part["vocals"] for part in separate_blocks(blocks, gains_model(), overlap=0.5)]
    assert sum(part.shape[1] for part in streamed) == mix.shape[1]
    np.testing.assert_allclose(np.concatenate(streamed, axis=1), whole["vocals"], atol=1e-6)


def test_stems_are_yielded_while_input_still_arrives():
    """Bounded memory: output starts before the input has ended, and nothing waits for the end."""
    mix = noise(200_000)
    seen = []

    def blocks():
        for i in range(0, mix.shape[1], 10_000):
            seen.append(i)
            yield mix[:, i : i + 10_000]

    stream = separate_blocks(blocks(), gains_model(segment=20_000))
    next(stream)
    assert seen[-1] < 60_000


def test_chunks_are_batched():
    model = gains_model()
    separate(noise(100_000), model, overlap=0.25, batch_size=4)
    assert max(model.module.calls) == 4
    assert sum(model.module.calls) == 13  # ceil((100000 - 10000) / 7500) + 1 chunks


def test_window_is_a_positive_trapezoid():
    weights = window(100, 20)
    assert weights.min() > 0 and weights.max() == 1
    assert torch.equal(weights, weights.flip(0))
    assert torch.all(weights[20:80] == 1)


def test_two_stems_pair_sums_to_the_mix():
    mix = noise(60_000, seed=2)
    stems = separate(mix, small_scnet(), two_stems="vocals")
    assert list(stems) == ["vocals", "no_vocals"]
    np.testing.assert_allclose(stems["vocals"] + stems["no_vocals"], mix, atol=1e-5)


def test_consistency_makes_all_stems_sum_to_the_mix():
    mix = noise(60_000, seed=3)
    plain = separate(mix, small_scnet())
    assert np.abs(sum(plain.values()) - mix).max() > 1e-2  # random weights do not sum to the mix
    stems = separate(mix, small_scnet(), consistency=True)
    np.testing.assert_allclose(sum(stems.values()), mix, atol=1e-5)


def test_shifts_are_seeded_and_reproducible():
    mix = noise(70_000, seed=4)
    first = separate(mix, small_scnet(), shifts=2, seed=7)
    again = separate(mix, small_scnet(), shifts=2, seed=7)
    other = separate(mix, small_scnet(), shifts=2, seed=8)
    np.testing.assert_array_equal(first["drums"], again["drums"])
    assert np.abs(first["drums"] - other["drums"]).max() > 1e-6


def test_real_model_streaming_matches_whole_track():
    mix = noise(100_000, seed=5)
    whole = separate(mix, small_scnet(), overlap=0.25)
    parts = list(separate_blocks([mix[:, :30_000], mix[:, 30_000:]], small_scnet(), overlap=0.25))
    np.testing.assert_allclose(np.concatenate([p["bass"] for p in parts], axis=1), whole["bass"], atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_digital_silence_gives_silence(normalize):
    stems = separate(np.zeros((2, 50_000), np.float32), small_scnet(normalize=normalize))
    for audio in stems.values():
        assert np.isfinite(audio).all()
    # Normalisation must not blow silence up (std 0 would divide by zero).
    assert MixStats.of([np.zeros((2, 10), np.float32)]).std == 1.0


def test_normalisation_is_whole_track_and_affine():
    """With a linear 'model', normalising and undoing it is the identity (up to float error)."""
    mix = noise(40_000, seed=6) + 0.2
    stats = MixStats.of([mix])
    mono = mix.mean(axis=0)
    assert stats.mean == pytest.approx(mono.mean(), abs=1e-6)
    assert stats.std == pytest.approx(mono.std(ddof=1), rel=1e-5)
    stems = separate(mix, gains_model(normalize=True), overlap=0.25)
    np.testing.assert_allclose(stems["bass"], 2 * mix - stats.mean, atol=1e-5)


def test_mono_input_is_duplicated():
    mono = noise(20_000)[:1]
    stems = separate(mono, gains_model())
    assert stems["drums"].shape == (2, 20_000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap": 0.95}, "overlap"),
        ({"shifts": 0}, "shifts"),
        ({"two_stems": "piano"}, "two_stems"),
        ({"device": "tpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(SeparationError, match=message):
        separate(noise(5000), gains_model(), **options)


def test_empty_input_is_refused():
    with pytest.raises(SeparationError, match="no samples"):
        list(separate_blocks([], gains_model()))


def test_progress_reaches_one():
    seen = []
    separate(noise(100_000), gains_model(), progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 3


@pytest.mark.parametrize("samples", [286_650, 88_200, 154_350])
def test_track_ending_exactly_on_a_chunk_border_is_complete(samples):
    """A regression: the last chunk ended at the input's end before the stream reported its end."""
    mix = noise(samples)
    parts = list(separate_blocks([mix], gains_model(segment=88_200), overlap=0.25))
    np.testing.assert_allclose(np.concatenate([p["drums"] for p in parts], axis=1), mix, atol=1e-6)
