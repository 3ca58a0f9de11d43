"""The HT-Demucs family on our engine: same output as Demucs's apply_model, and safe loading of its files.

The fidelity tests build small seeded HT-Demucs models with the demucs package's classes, separate a few
seconds of encoded audio with our engine, and compare with ``demucs.apply.apply_model`` on the same input
(same segment and overlap, ``shifts=0``, ``split=True``, the whole-track normalisation of Demucs's command
line). The SNR of the difference measured here was 137-140 dB in every case (float32 rounding); the
assertion is >= 40 dB.
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_samples import write_test_file

pytest.importorskip("demucs")
from demucs.apply import BagOfModels, apply_model  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.states import get_state, load_model, save_with_checksum  # noqa: E402

from freestems.audio import decode  # noqa: E402
from freestems.engine import separate  # noqa: E402
from freestems.models import CheckpointError, ModelNotAvailable  # noqa: E402
from freestems.models.htdemucs import (  # noqa: E402
    load_demucs_bag,
    load_demucs_file,
    read_demucs_package,
    wrap_demucs,
)

FOUR = ["drums", "bass", "other", "vocals"]
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]
MIN_SNR_DB = 40.0


def small_htdemucs(sources=FOUR, seed=0, segment=Fraction(1)) -> HTDemucs:
    """A small HT-Demucs (all parts of the real one, fewer channels and layers) with seeded weights."""
    torch.manual_seed(seed)
    model = HTDemucs(
        sources=list(sources), channels=8, depth=4, nfft=2048, t_layers=1, t_heads=4, segment=segment
    )
    for parameter in model.parameters():  # lift the tiny initial scales so every branch shows in the output
        parameter.data.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> np.ndarray:
    """4.3 s of music-like audio (chords, a bass line, noise hits) through a real FLAC file."""
    rate, n = 44100, int(44100 * 4.3)
    rng = np.random.default_rng(7)
    t = np.arange(n) / rate
    chords = sum(0.1 * np.sin(2 * np.pi * f * t + phase) for f, phase in [(261.6, 0), (329.6, 1), (392.0, 2)])
    bass = 0.25 * np.sin(2 * np.pi * 55 * (1 + (t % 1 > 0.5)) * t)
    hits = np.zeros(n)
    for start in range(0, n, rate // 4):
        length = min(rate // 8, n - start)
        hits[start : start + length] = rng.standard_normal(length) * np.exp(-np.arange(length) / 800) * 0.3
    signal = np.stack([chords + bass + hits, 0.8 * chords + bass + 0.6 * hits]).astype(np.float32)
    path = tmp_path_factory.mktemp("music") / "music.flac"
    write_test_file(path, "flac", signal=signal)
    return decode(path)


def demucs_reference(model, mix: np.ndarray, overlap: float = 0.25) -> np.ndarray:
    """What Demucs's command line computes: whole-track normalisation around apply_model."""
    wav = torch.from_numpy(mix)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        out = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=overlap)[0]
    return (out * std + mean).numpy()


def snr_db(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / max(((ours - reference) ** 2).sum(), 1e-30)))


def ours_stacked(loaded, mix, **options) -> np.ndarray:
    stems = separate(mix, loaded, **options)
    return np.stack([stems[name] for name in loaded.sources])


# Tails: a centred last chunk; an extra chunk after one that reached the end; one chunk shorter than L.
@pytest.mark.parametrize("seconds", [4.3, 3.9, 0.6])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_engine_matches_apply_model_htdemucs(music, seconds, overlap):
    mix = music[:, : int(44100 * seconds)]
    model = small_htdemucs()
    loaded = wrap_demucs(model, "small")
    assert loaded.segment == 44100 and loaded.normalize and loaded.sources == tuple(FOUR)
    ours = ours_stacked(loaded, mix, overlap=overlap)
    reference = demucs_reference(model, mix, overlap)
    assert ours.shape == reference.shape == (4, 2, mix.shape[1])
    assert np.abs(reference).mean() > 1e-3  # the model does produce something to compare
    measured = snr_db(ours, reference)
    print(f"htdemucs {seconds} s overlap {overlap}: SNR {measured:.1f} dB")
    assert measured >= MIN_SNR_DB


def test_engine_matches_apply_model_six_sources(music):
    model = small_htdemucs(SIX, seed=3)
    loaded = wrap_demucs(model, "six")
    ours = ours_stacked(loaded, music)
    measured = snr_db(ours, demucs_reference(model, music))
    print(f"htdemucs 6 sources: SNR {measured:.1f} dB")
    assert loaded.sources == tuple(SIX) and ours.shape[0] == 6
    assert measured >= MIN_SNR_DB


def test_engine_matches_apply_model_bag_with_per_stem_weights(music):
    weights = [[1.0, 0.0, 0.5, 2.0], [0.0, 1.0, 0.5, 1.0]]  # a specialist each for drums and bass
    bag = BagOfModels([small_htdemucs(seed=1), small_htdemucs(seed=2)], weights)
    loaded = wrap_demucs(bag, "bag")
    ours = ours_stacked(loaded, music)
    reference = demucs_reference(bag, music)
    measured = snr_db(ours, reference)
    print(f"bag of two: SNR {measured:.1f} dB")
    assert measured >= MIN_SNR_DB
    # The drums come from the first model alone: the second one's drums do not leak in.
    alone = ours_stacked(wrap_demucs(small_htdemucs(seed=1), "one"), music)
    np.testing.assert_allclose(ours[0], alone[0], atol=1e-5)


def test_longer_chunks_than_the_training_segment_are_refused(music):
    loaded = wrap_demucs(small_htdemucs(), "small")
    with pytest.raises(ValueError, match="at most 44100 samples"):
        separate(music, loaded, segment=50_000)


# ------------------------------------------------------------------------------------------------- files


def save_like_demucs_training(model, folder: Path, name: str) -> Path:
    """Write ``model`` as Demucs's training does (``serialize_model``'s dict, ``save_with_checksum``).

    ``serialize_model`` itself only adds ``OmegaConf.to_container(training_args)``, i.e. plain containers;
    omegaconf is a training-only dependency, so the same dict is built here with a plain dict of args.
    """
    args, kwargs = model._init_args_kwargs
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=True),
        "training_args": {"dset": {"segment": 10, "sources": list(model.sources)}, "epochs": 360},
    }
    save_with_checksum(package, folder / f"{name}.th")
    (path,) = folder.glob(f"{name}-*.th")
    return path


def test_a_file_saved_by_demucs_loads_safely_and_gives_demucs_output(tmp_path, music):
    path = save_like_demucs_training(small_htdemucs(seed=4), tmp_path, "f00dcafe")
    package = read_demucs_package(path)
    assert package["kwargs"]["segment"] == Fraction(1)  # a Fraction came through the allow-list
    loaded = load_demucs_file(path, name="mine")
    assert loaded.name == "mine" and loaded.segment == 44100
    theirs = load_model(path)  # Demucs's own loader (full unpickling: fine for a file we just wrote)
    ours = ours_stacked(loaded, music)
    reference = demucs_reference(theirs.eval(), music)
    measured = snr_db(ours, reference)
    print(f"saved by demucs, loaded by freestems: SNR {measured:.1f} dB")
    assert measured >= MIN_SNR_DB
    # And the weights are exactly Demucs's: the same module output on one chunk.
    chunk = torch.from_numpy(music[None, :, :44100])
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(chunk), theirs(chunk), rtol=0, atol=0)


def test_a_bag_loads_from_its_yaml_and_folder(tmp_path, music):
    models = [small_htdemucs(seed=5), small_htdemucs(seed=6)]
    signatures = ["aaaa1111", "bbbb2222"]
    paths = [save_like_demucs_training(m, tmp_path, sig) for m, sig in zip(models, signatures, strict=True)]
    assert all(path.name.count("-") == 1 for path in paths)
    (tmp_path / "pair.yaml").write_text(f"models: {signatures}\nweights: [[1, 0, 1, 1], [0, 1, 1, 1]]\n")
    loaded = load_demucs_bag(tmp_path / "pair.yaml")
    assert loaded.name == "pair" and len(loaded.module.members) == 2
    bag = BagOfModels([load_model(path) for path in paths], [[1, 0, 1, 1], [0, 1, 1, 1]])
    measured = snr_db(ours_stacked(loaded, music), demucs_reference(bag, music))
    print(f"bag from yaml: SNR {measured:.1f} dB")
    assert measured >= MIN_SNR_DB


def test_a_damaged_bag_member_is_caught_by_its_name_hash(tmp_path):
    path = save_like_demucs_training(small_htdemucs(), tmp_path, "aaaa1111")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "one.yaml").write_text("models: ['aaaa1111']\n")
    with pytest.raises(CheckpointError, match="damaged"):
        load_demucs_bag(tmp_path / "one.yaml")
    (tmp_path / "two.yaml").write_text("models: ['cccc3333']\n")
    with pytest.raises(ModelNotAvailable, match="no file for model cccc3333"):
        load_demucs_bag(tmp_path / "two.yaml")


class _Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"training_args": argparse.Namespace(lr=1)}, "argparse.Namespace"),
        ({"klass": torch.nn.Linear}, "torch.nn.modules.linear.Linear"),
        ("payload", "system"),
    ],
)
def test_a_file_with_any_other_global_is_refused(tmp_path, extra, name):
    path = save_like_demucs_training(small_htdemucs(), tmp_path, "dddd4444")
    package = torch.load(path, weights_only=False)
    marker = tmp_path / "pwned"
    package.update({"training_args": _Payload(marker)} if extra == "payload" else extra)
    bad = tmp_path / "bad.th"
    torch.save(package, bad)
    with pytest.raises(CheckpointError, match=f"references .*{name}.* refuses this file"):
        load_demucs_file(bad)
    assert not marker.exists()
    # The allow-list was scoped to our load: plain weights-only loading still refuses Demucs classes.
    with pytest.raises(Exception, match="HTDemucs"):
        torch.load(path, weights_only=True)


def test_files_that_are_not_demucs_models_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "plain.th")
    with pytest.raises(CheckpointError, match="not a Demucs model file"):
        load_demucs_file(tmp_path / "plain.th")
    (tmp_path / "text.th").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_demucs_file(tmp_path / "text.th")
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_demucs_file(tmp_path / "missing.th")
    path = save_like_demucs_training(small_htdemucs(), tmp_path, "eeee5555")
    package = torch.load(path, weights_only=False)
    package["kwargs"] = {**package["kwargs"], "channels": 16}
    torch.save(package, tmp_path / "misfit.th")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_demucs_file(tmp_path / "misfit.th")
