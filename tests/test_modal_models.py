"""The Modal deployment serves several models with one GPU class that loads them on demand.

The deployment module is imported in-process with ``FREESTEMS_MODELS=scnet,mel-roformer-kim`` (small seeded
stand-ins of both families, ``served_helpers``); only Modal's cloud is replaced (``modal_helpers``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from audio_samples import write_test_file
from conftest import one_torch_thread
from modal_helpers import Deployment, load_modal_app, modal_environment
from served_helpers import KIM, SCNET, stand_in_catalog

from freestems.deploy.image import bake_weights, read_descriptions
from freestems.jobrun import JobFailed
from freestems.models.served import serve_catalog, serve_models
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


def test_the_build_bakes_every_model_of_a_served_chain(tmp_path):
    """An ad-hoc chain served beside the default: the weights step fetches both of its models' files into
    /weights (a container never downloads), and the chain's description is the one served in-process."""
    chain = f"{SCNET}>vocals:{KIM}"
    with stand_in_catalog(tmp_path / "catalog") as entries, one_torch_thread():
        weights = tmp_path / "weights"
        bake_weights(KIM, None, None, str(weights), others=(chain,))
        baked = json.loads((weights / "model.json").read_text())
        files = {Path(entries[name].url).name for name in (SCNET, KIM)}
        assert {entry["file"] for entry in baked["files"]} == files
        assert {path.name for path in weights.rglob("*.ckpt")} == files
        default, served = read_descriptions(weights)
        assert (default.name, served.name) == (KIM, chain)
        assert served.sources == ("drums", "bass", "other", "vocals-vocals", "vocals-no_vocals")
        assert served.fingerprint == serve_catalog(chain, cache_dir=weights, download=False).fingerprint
