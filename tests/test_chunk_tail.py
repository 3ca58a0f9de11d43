"""The engine's ``chunk_tail="centred"``: the last chunks hold real audio, as Demucs plans them."""

import numpy as np
import pytest
import torch

from freestems.contract import LoadedModel
from freestems.engine import SeparationError, separate, separate_blocks

SOURCES = ("a", "b")


class Recorder(torch.nn.Module):
    """Returns its input twice (gains 1 and -2) and records every chunk it was given."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # the engine reads its device
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        self.seen.extend(chunk.numpy().copy() for chunk in x)
        return torch.stack([x, -2 * x], dim=1)


def recorder_model(tail: str, segment: int = 10_000) -> LoadedModel:
    model = LoadedModel(module=Recorder(), name="rec", sources=SOURCES, segment=segment, normalize=False)
    model.chunk_tail = tail
    return model


def noise(samples, seed=0):
    return np.random.default_rng(seed).standard_normal((2, samples)).astype(np.float32)


def test_the_last_chunks_are_centred_on_real_audio():
    mix = noise(25_000)
    model = recorder_model("centred")
    separate(mix, model, overlap=0.25)
    # Demucs's plan: a chunk at every stride (7500) before the end; the last one (2500 real samples) is moved
    # back by half of its 7500 missing samples, so it starts at 18_750 and ends in 3750 zeros.
    starts = [0, 7500, 15_000, 18_750]
    assert len(model.module.seen) == len(starts)
    padded = np.concatenate([mix, np.zeros((2, 10_000), np.float32)], axis=1)
    for chunk, start in zip(model.module.seen, starts, strict=True):
        np.testing.assert_array_equal(chunk, padded[:, start : start + 10_000])
    # The default fills the end with zeros instead, and stops once a chunk reaches the end.
    zeros = recorder_model("zeros")
    separate(mix, zeros, overlap=0.25)
    assert len(zeros.module.seen) == 3
    np.testing.assert_array_equal(zeros.module.seen[-1], padded[:, 15_000:25_000])


@pytest.mark.parametrize("samples", [1, 4095, 10_000, 25_000, 33_333])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("shifts", [1, 3])
def test_centred_tails_still_give_back_the_input_exactly(samples, overlap, shifts):
    mix = noise(samples, seed=1)
    stems = separate(mix, recorder_model("centred"), overlap=overlap, shifts=shifts, batch_size=2)
    np.testing.assert_allclose(stems["a"], mix, atol=2e-6, rtol=0)
    np.testing.assert_allclose(stems["b"], -2 * mix, atol=4e-6, rtol=0)


@pytest.mark.parametrize("block", [1, 777, 10_000])
def test_centred_tails_stream_like_the_whole_track(block):
    mix = noise(54_321, seed=2)

    class Nonlinear(Recorder):
        def forward(self, x):  # depends on the whole chunk, so a chunk read from the wrong place shows
            return torch.stack([x * x.std(), x.abs()], dim=1)

    def model():
        loaded = recorder_model("centred")
        loaded.module = Nonlinear()
        return loaded

    whole = separate(mix, model(), overlap=0.25)
    blocks = (mix[:, i : i + block] for i in range(0, mix.shape[1], block))
    streamed = list(separate_blocks(blocks, model(), overlap=0.25))
    for name in SOURCES:
        joined = np.concatenate([part[name] for part in streamed], axis=1)
        np.testing.assert_allclose(joined, whole[name], atol=1e-6)


def test_an_unknown_chunk_tail_is_refused():
    with pytest.raises(SeparationError, match="chunk_tail"):
        separate(noise(100), recorder_model("reflect"))
