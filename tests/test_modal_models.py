"""The Modal deployment serves several models with one GPU class that loads them on demand.

The deployment module is imported in-process with ``FREESTEMS_MODELS=scnet,mel-roformer-kim`` (small seeded
stand-ins of both families, ``served_helpers``); only Modal's cloud is replaced (``modal_helpers``).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import pytest
from audio_samples import write_test_file
from conftest import one_torch_thread
from modal_helpers import Deployment, load_modal_app, modal_environment
from served_helpers import KIM, SCNET, stand_in_catalog

from freestems.deploy.image import bake_weights, read_descriptions
from freestems.jobrun import JobFailed
from freestems.models.served import serve_models
from freestems.options import SeparationOptions


@pytest.fixture
def two_model_deployment(monkeypatch, tmp_path) -> Iterator[Deployment]:
    with stand_in_catalog(tmp_path / "catalog"), one_torch_thread():
        cache = tmp_path / "cache"
        serve_models([SCNET, KIM], cache_dir=cache)  # what the image build bakes into /weights
        environ = modal_environment(
            tmp_path / "unused.pt", tmp_path / "data", FREESTEMS_MODELS=f"{SCNET},{KIM}"
        )
        del environ["FREESTEMS_MODEL_FILE"]
        yield load_modal_app(monkeypatch, {**environ, "FREESTEMS_CACHE": str(cache)})


def names_in(data: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_one_gpu_class_runs_each_served_model_by_name(two_model_deployment, tmp_path):
    module = two_model_deployment.module
    described = module.model_description()
    assert [(model.name, model.sources) for model in described] == [
        (SCNET, ("drums", "bass", "other", "vocals")),
        (KIM, ("vocals",)),
    ]
    weights = tmp_path / "weights"
    bake_weights(SCNET, None, None, str(weights), others=(KIM,))
    baked = read_descriptions(weights)
    assert [model.name for model in baked] == [SCNET, KIM]
    assert baked[1].fingerprint == described[1].fingerprint  # the same files, the same cache key part

    song = tmp_path / "song.wav"
    write_test_file(song, "wav", seconds=2.0)
    separator = two_model_deployment.Separator()
    audio = song.read_bytes()
    assert names_in(separator.separate.local(audio, SeparationOptions())) == [
        "bass.mp3",
        "drums.mp3",
        "other.mp3",
        "vocals.mp3",
    ]
    data = separator.separate.local(audio, SeparationOptions(model=KIM), progress="0123456789abcdef-beef")
    assert names_in(data) == ["no_vocals.mp3", "vocals.mp3"]
    assert [record.model for record in two_model_deployment.usage.records] == [SCNET, KIM]
    with pytest.raises(JobFailed, match="not served here; served: scnet, mel-roformer-kim"):
        separator.separate.local(audio, SeparationOptions(model="htdemucs"))
