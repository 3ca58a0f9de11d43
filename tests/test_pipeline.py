"""File to stem files: lengths, formats, timings, and nothing left behind on failure."""

import zipfile

import numpy as np
import pytest
from audio_samples import write_test_file
from model_helpers import make_small_checkpoint

from freestems.audio import AudioDecodeError, decode
from freestems.models import load_model
from freestems.pipeline import OutputFormat, separate_file, zip_stems


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(model_file=make_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt"))


@pytest.fixture(scope="module")
def normalizing_model(tmp_path_factory):
    path = make_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "norm.pt", normalize=True)
    return load_model(model_file=path)


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "output",
    [OutputFormat("wav", bit_depth=24), OutputFormat("flac", bit_depth=16), OutputFormat("mp3", 192)],
)
def test_stems_have_the_input_length_in_every_format(tmp_path, model, output):
    source = tmp_path / "song.mp3"
    write_test_file(source, "mp3", seconds=5.3)
    length = decode(source).shape[1]
    result = separate_file(source, tmp_path / "out", model, output=output)
    assert list(result.stems) == ["drums", "bass", "other", "vocals"]
    assert result.samples == length
    for path in result.stems.values():
        assert path.suffix == f".{output.format}"
        assert decode(path).shape == (2, length)
    assert files_under(tmp_path / "out") == sorted(f"{name}.{output.format}" for name in result.stems)


def test_two_stems_in_float_wav_sum_to_the_mix(tmp_path, normalizing_model):
    source = tmp_path / "song.flac"
    write_test_file(source, "flac", seconds=4.0)
    mix = decode(source)
    result = separate_file(
        source,
        tmp_path / "out",
        normalizing_model,
        output=OutputFormat("wav", bit_depth=32),
        two_stems="vocals",
    )
    assert set(result.stems) == {"vocals", "no_vocals"}
    total = decode(result.stems["vocals"]) + decode(result.stems["no_vocals"])
    np.testing.assert_allclose(total, mix, atol=1e-5)


def test_pipeline_equals_the_in_memory_engine(tmp_path, normalizing_model):
    from freestems.engine import separate

    source = tmp_path / "song.wav"
    write_test_file(source, "wav", seconds=3.0, bit_depth=32)
    expected = separate(decode(source), normalizing_model)
    result = separate_file(
        source, tmp_path / "out", normalizing_model, output=OutputFormat("wav", bit_depth=32)
    )
    for name, path in result.stems.items():
        np.testing.assert_allclose(decode(path), expected[name], atol=1e-5)


def test_timings_are_reported(tmp_path, model):
    source = tmp_path / "song.mp3"
    write_test_file(source, "mp3", seconds=3.0)
    timings = separate_file(source, tmp_path / "out", model, output=OutputFormat("mp3")).timings
    assert timings.total > 0 and timings.separate > 0 and timings.decode > 0 and timings.encode > 0


def test_too_long_input_leaves_nothing_behind(tmp_path, model):
    source = tmp_path / "long.wav"
    write_test_file(source, "wav", seconds=6.0)
    with pytest.raises(AudioDecodeError, match="limit"):
        separate_file(source, tmp_path / "out", model, max_duration=2.0)
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_failure_mid_stream_removes_partial_stems(tmp_path, model):
    """An error in the middle of the stream aborts every writer: no stem and no temporary file remains."""
    source = tmp_path / "song.wav"
    write_test_file(source, "wav", seconds=30.0)
    calls = []

    def progress(fraction):
        calls.append(fraction)
        if len(calls) == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        separate_file(source, tmp_path / "out", model, output=OutputFormat("mp3"), progress=progress)
    assert files_under(tmp_path / "out") == []


def test_zip_holds_the_stems(tmp_path, model):
    source = tmp_path / "song.mp3"
    write_test_file(source, "mp3", seconds=2.0)
    result = separate_file(source, tmp_path / "out", model, output=OutputFormat("mp3"))
    archive = zip_stems(result.stems, tmp_path / "stems.zip")
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]
        assert bundle.read("vocals.mp3") == result.stems["vocals"].read_bytes()
    assert files_under(tmp_path).count("stems.zip") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
