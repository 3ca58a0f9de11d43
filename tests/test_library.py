"""The front door: ``import freestems`` and the three calls the README shows, run as written there."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from audio_samples import write_test_file

import freestems
from freestems import library
from freestems.audio import decode
from freestems.models import ModelNotAvailable, get_model_info
from freestems.models.download import cache_path
from freestems.models.loading import build_model, catalog_spec
from freestems.rules import SeparationError


@pytest.fixture
def scnet_in_cache(tmp_path, monkeypatch):
    """The catalog's ``scnet`` in a private cache: release-size, seeded weights (no network here; speed and
    shapes do not depend on the values). The front door's model memo is cleared before and after."""
    info = get_model_info("scnet")
    torch.manual_seed(0)
    (tmp_path / "cache").mkdir()
    torch.save(build_model(catalog_spec(info)).state_dict(), cache_path(info, tmp_path / "cache"))
    monkeypatch.setenv("FREESTEMS_CACHE", str(tmp_path / "cache"))
    library._load_named.cache_clear()
    yield
    library._load_named.cache_clear()


def test_the_readme_example_runs(tmp_path, scnet_in_cache):
    song = tmp_path / "song.mp3"
    write_test_file(song, "mp3", seconds=1.5)
    stems = freestems.separate(song, model="scnet")
    assert list(stems) == ["drums", "bass", "other", "vocals"]
    length = decode(song).shape[1]
    assert all(stem.shape == (2, length) and stem.dtype == np.float32 for stem in stems.values())
    result = freestems.separate_file(song, tmp_path / "stems", model="scnet", format="mp3")
    assert sorted(path.name for path in result.stems.values()) == [
        "bass.mp3",
        "drums.mp3",
        "other.mp3",
        "vocals.mp3",
    ]
    assert all(decode(path).shape[1] == length for path in result.stems.values())
    assert library._load_named.cache_info().hits == 1  # the second call reused the model


def test_a_waveform_and_a_loaded_model(small_model):
    mix = np.random.default_rng(0).standard_normal((2, 44100), dtype=np.float32) * 0.1
    stems = freestems.separate(mix, model=small_model, two_stems="vocals", overlap=0.5)
    assert sorted(stems) == ["no_vocals", "vocals"]
    np.testing.assert_allclose(stems["vocals"] + stems["no_vocals"], mix, atol=1e-5)


def test_bad_choices_are_told_before_any_work(tmp_path, small_model):
    with pytest.raises(ModelNotAvailable, match="no-such-model"):
        freestems.separate(np.zeros((2, 100), np.float32), model="no-such-model")
    song = tmp_path / "song.wav"
    write_test_file(song, "wav", seconds=0.5)
    with pytest.raises(SeparationError, match="format"):
        freestems.separate_file(song, tmp_path / "out", model=small_model, format="ogg")
    with pytest.raises(SeparationError, match="bitrate"):
        freestems.separate_file(song, tmp_path / "out", model=small_model, format="mp3", bitrate=100)
    assert not (tmp_path / "out").exists()


def test_importing_the_package_loads_no_torch():
    code = "import sys, freestems; assert freestems.SAMPLE_RATE == 44100; print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "False"


def test_the_front_door_names_are_the_library_calls():
    assert freestems.separate is library.separate
    assert freestems.load_model is freestems.models.load_model
    with pytest.raises(AttributeError, match="no attribute"):
        _ = freestems.no_such_call
