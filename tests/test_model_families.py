"""One catalog, one loader: RoFormers, HT-Demucs and ensembles through load_model and the CLI.

Small seeded models built here stand in for the released files; catalog entries point at a local HTTP server
on 127.0.0.1, so every download path (config beside the weights, a bag's files, Demucs's sha256 prefixes,
the pinned sha256 on every load) is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from audio_samples import write_test_file
from model_helpers import make_small_checkpoint, serve_directory
from reference import ROFORMER_FIXTURES

from freestems.audio import decode
from freestems.cli import main
from freestems.engine import SeparationError, separate, separate_blocks
from freestems.models import (
    CATALOG,
    CheckpointError,
    ModelChoiceError,
    ModelInfo,
    ModelNotAvailable,
    load_model,
)
from freestems.models.ensemble import make_ensemble
from freestems.models.roformer import roformer_from_msst

pytest.importorskip("demucs")
from demucs.states import save_with_checksum  # noqa: E402
from test_htdemucs import small_htdemucs  # noqa: E402

SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]


def roformer_yaml(family: str = "mel_band_roformer", segment: int = 66_150) -> dict:
    """An MSST YAML (as a dict) of the small fixture config: one vocals stem for the Mel-Band RoFormer."""
    model = json.loads((ROFORMER_FIXTURES / f"{family}_config.json").read_text())
    if family == "mel_band_roformer":
        training = {"instruments": ["vocals", "other"], "target_instrument": "vocals"}
    else:
        training = {"instruments": ["bass", "drums", "vocals", "other"]}
    return {"audio": {"chunk_size": segment, "sample_rate": 44100}, "model": model, "training": training}


def save_roformer(folder: Path, name: str, config: dict, seed: int = 0) -> tuple[Path, Path]:
    """A seeded RoFormer state_dict as MSST saves it, and its YAML beside it."""
    torch.manual_seed(seed)
    module, _ = roformer_from_msst(config)
    weights = folder / f"{name}.ckpt"
    torch.save(module.state_dict(), weights)
    config_path = folder / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return weights, config_path


def save_demucs(model, folder: Path, signature: str) -> Path:
    """A Demucs ``.th`` file named ``<signature>-<sha256 prefix>.th``, as Demucs publishes them."""
    args, kwargs = model._init_args_kwargs
    package = {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": model.state_dict()}
    save_with_checksum(package, folder / f"{signature}.th")
    (path,) = folder.glob(f"{signature}-*.th")
    return path


def register(monkeypatch, **fields) -> ModelInfo:
    defaults = dict(config_url="", sdr={"vocals": 1.0}, sdr_set="Multisong", license="none stated")
    info = ModelInfo(**{**defaults, **fields})
    monkeypatch.setitem(CATALOG, info.name, info)
    return info


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((2, int(seconds * 44100))) * 0.1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ loading


def test_a_roformer_entry_downloads_its_yaml_beside_the_weights(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    config = roformer_yaml()
    weights, _ = save_roformer(served, "kim_small", config)
    cache = tmp_path / "cache"
    with serve_directory(served) as base:
        register(
            monkeypatch,
            name="tiny-mel",
            title="tiny",
            architecture="mel_band_roformer",
            config={},
            sources=("vocals",),
            url=f"{base}/kim_small.ckpt",
            config_url=f"{base}/kim_small.yaml",
            segment=66_150,
        )
        loaded = load_model("tiny-mel", cache_dir=cache, progress=False)
    assert (cache / "kim_small.yaml").is_file() and (cache / "kim_small.ckpt.sha256").is_file()
    assert (cache / "kim_small.yaml.sha256").is_file()  # every file is pinned and checked on every load
    assert loaded.sources == ("vocals",) and loaded.segment == 66_150 and not loaded.normalize
    again = load_model("tiny-mel", cache_dir=cache, download=False)  # the server is gone: the cache
    state = torch.load(weights, weights_only=True)
    for key, value in again.module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    stems = separate(noise(2.0), again)
    assert list(stems) == ["vocals", "no_vocals"]  # a one-stem model gives its stem and the rest
    (cache / "kim_small.yaml").write_text((cache / "kim_small.yaml").read_text() + "\n# edited\n")
    with pytest.raises(CheckpointError, match="sha256"):
        load_model("tiny-mel", cache_dir=cache, download=False)


def test_an_embedded_roformer_config_needs_only_the_weights(tmp_path, monkeypatch):
    config = roformer_yaml("bs_roformer")
    save_roformer(tmp_path, "bs_small", config, seed=3)
    with serve_directory(tmp_path) as base:
        register(
            monkeypatch,
            name="tiny-bs",
            title="tiny",
            architecture="bs_roformer",
            config=config,
            sources=("bass", "drums", "vocals", "other"),
            url=f"{base}/bs_small.ckpt",
            segment=66_150,
        )
        loaded = load_model("tiny-bs", cache_dir=tmp_path / "cache", progress=False)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [
        "bs_small.ckpt",
        "bs_small.ckpt.sha256",
    ]
    assert loaded.sources == ("bass", "drums", "vocals", "other")


def demucs_bag_entry(monkeypatch, base: str, files: list[Path], name: str = "tiny-bag") -> ModelInfo:
    weights = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]][: len(files)] if len(files) > 1 else [[1.0] * 4]
    return register(
        monkeypatch,
        name=name,
        title="tiny bag",
        architecture="htdemucs",
        config={"weights": weights},
        sources=("drums", "bass", "other", "vocals"),
        url=f"{base}/{files[0].name}",
        more_urls=tuple(f"{base}/{path.name}" for path in files[1:]),
        normalize=True,
        segment=44100,
    )


def test_an_htdemucs_bag_entry_downloads_both_files_and_checks_their_prefixes(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    files = [
        save_demucs(small_htdemucs(seed=5), served, "aaaa1111"),
        save_demucs(small_htdemucs(seed=6), served, "bbbb2222"),
    ]
    cache = tmp_path / "cache"
    with serve_directory(served) as base:
        demucs_bag_entry(monkeypatch, base, files)
        loaded = load_model("tiny-bag", cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.glob("*.th")) == sorted(p.name for p in files)
    assert loaded.chunk_tail == "centred" and loaded.max_segment == 44100 and loaded.normalize
    assert len(loaded.module.members) == 2
    # The drums come from the first file alone (weights [1, 0] for drums): as that model run alone.
    alone = load_model(model_file=files[0])
    mix = noise(1.5, seed=2)
    np.testing.assert_allclose(separate(mix, loaded)["drums"], separate(mix, alone)["drums"], atol=1e-5)
    with pytest.raises(SeparationError, match="at most 44100 samples"):
        separate(mix, loaded, segment=50_000)


def test_a_demucs_file_whose_name_prefix_does_not_match_is_refused(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    good = save_demucs(small_htdemucs(seed=5), served, "aaaa1111")
    wrong = good.with_name("aaaa1111-00000000.th")
    good.rename(wrong)
    with serve_directory(served) as base:
        demucs_bag_entry(monkeypatch, base, [wrong], name="tiny-wrong")
        with pytest.raises(ModelNotAvailable, match="expected a sha256 starting 00000000"):
            load_model("tiny-wrong", cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.th"))  # nothing half-checked sits in the cache
    # A file copied into the cache by hand is checked against its name's prefix before it is pinned.
    (tmp_path / "cache" / wrong.name).write_bytes(wrong.read_bytes())
    with pytest.raises(CheckpointError, match="its name says it starts with 00000000"):
        load_model("tiny-wrong", cache_dir=tmp_path / "cache", download=False)


def test_model_file_and_config_pick_the_family(tmp_path):
    weights, config = save_roformer(tmp_path, "mine", roformer_yaml())
    loaded = load_model(model_file=weights, model_config=config)
    assert loaded.name == "mine" and loaded.sources == ("vocals",)
    bs_weights, bs_config = save_roformer(tmp_path, "four", roformer_yaml("bs_roformer"))
    assert load_model(model_file=bs_weights, model_config=bs_config).sources == (
        "bass",
        "drums",
        "vocals",
        "other",
    )
    demucs = load_model(model_file=save_demucs(small_htdemucs(SIX), tmp_path, "cccc3333"))
    assert demucs.sources == tuple(SIX) and demucs.chunk_tail == "centred"
    scnet = load_model(model_file=make_small_checkpoint(tmp_path / "small.pt"))
    assert scnet.chunk_tail == "zeros" and scnet.max_segment is None
    with pytest.raises(CheckpointError, match="do not fit"):  # RoFormer weights under the wrong config
        load_model(model_file=weights, model_config=bs_config)


def test_a_missing_demucs_extra_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    path = save_demucs(small_htdemucs(), tmp_path, "dddd4444")
    monkeypatch.setitem(sys.modules, "demucs", None)  # as if the extra were not installed
    with pytest.raises(ModelNotAvailable, match=r'pip install "freestems\[demucs\]"'):
        load_model(model_file=path)


# ---------------------------------------------------------------------------------------------- ensembles


def test_an_ensemble_is_the_weighted_average_of_its_members_run_alone(tmp_path):
    weights, config = save_roformer(tmp_path, "voc", roformer_yaml(segment=66_150), seed=1)
    roformer = load_model(model_file=weights, model_config=config)  # vocals, 1.5 s, no normalisation
    scnet = load_model(model_file=make_small_checkpoint(tmp_path / "s.pt", seed=2, normalize=True))  # 2 s
    demucs = load_model(model_file=save_demucs(small_htdemucs(seed=3), tmp_path, "eeee5555"))  # 1 s, centred
    mix = noise(3.3, seed=4)
    alone = {model.name: separate(mix, model, overlap=0.25) for model in (roformer, scnet, demucs)}
    ensemble = make_ensemble(
        "trio", [(scnet, {}), (roformer, {"vocals": 3.0}), (demucs, {"drums": 0.0, "bass": 2.0})]
    )
    assert ensemble.sources == ("drums", "bass", "other", "vocals") and ensemble.normalize
    assert ensemble.max_segment == 44100
    stems = separate(mix, ensemble, overlap=0.25)
    s, r, d = alone[scnet.name], alone[roformer.name], alone[demucs.name]
    expected = {
        "drums": s["drums"],
        "bass": (s["bass"] + 2 * d["bass"]) / 3,
        "other": (s["other"] + d["other"]) / 2,
        "vocals": (s["vocals"] + 3 * r["vocals"] + d["vocals"]) / 5,
    }
    assert list(stems) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(stems[name], value, atol=1e-5, rtol=0)
    # Streamed in odd blocks, the ensemble gives the same stems (lockstep over one shared input).
    blocks = [mix[:, i : i + 7777] for i in range(0, mix.shape[1], 7777)]
    from freestems.contract import MixStats

    parts = list(
        separate_blocks(blocks, ensemble, stats=MixStats.of([mix]), overlap=0.25, two_stems="vocals")
    )
    vocals = np.concatenate([part["vocals"] for part in parts], axis=1)
    np.testing.assert_allclose(vocals, expected["vocals"], atol=1e-5, rtol=0)
    rest = np.concatenate([part["no_vocals"] for part in parts], axis=1)
    np.testing.assert_allclose(rest, mix - expected["vocals"], atol=1e-5, rtol=0)


def test_two_vocals_models_average_into_vocals_and_no_vocals(tmp_path):
    a = load_model(
        model_file=save_roformer(tmp_path, "a", roformer_yaml(), seed=1)[0], model_config=tmp_path / "a.yaml"
    )
    b = load_model(
        model_file=save_roformer(tmp_path, "b", roformer_yaml(), seed=2)[0], model_config=tmp_path / "b.yaml"
    )
    mix = noise(1.7)
    stems = separate(mix, make_ensemble("pair", [(a, {}), (b, {})]))
    assert list(stems) == ["vocals", "no_vocals"]
    expected = (separate(mix, a)["vocals"] + separate(mix, b)["vocals"]) / 2
    np.testing.assert_allclose(stems["vocals"], expected, atol=1e-5, rtol=0)


def test_ensemble_names_and_weights_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailable, match="unknown model 'nope'"):
        load_model("scnet+nope", download=False)
    with pytest.raises(ModelChoiceError, match="empty member"):
        load_model("scnet+", download=False)
    with pytest.raises(ModelChoiceError, match="not a number"):
        load_model("scnet:x+htdemucs", download=False)
    one = load_model(model_file=make_small_checkpoint(tmp_path / "one.pt"))
    with pytest.raises(ModelChoiceError, match="no stem guitar"):
        make_ensemble("bad", [(one, {"guitar": 1.0}), (one, {})])
    with pytest.raises(ModelChoiceError, match="every weight is 0"):
        make_ensemble("zero", [(one, {"*": 0.0}), (one, {"*": 0.0})])


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def small_catalog(tmp_path, monkeypatch):
    """A RoFormer vocals entry, a 6-stem Demucs entry and a preset of both, served from 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    save_roformer(served, "voc", roformer_yaml(), seed=1)
    six = save_demucs(small_htdemucs(SIX, seed=2), served, "ffff6666")
    with serve_directory(served) as base:
        register(
            monkeypatch,
            name="tiny-kim",
            title="tiny vocals",
            architecture="mel_band_roformer",
            config={},
            sources=("vocals",),
            url=f"{base}/voc.ckpt",
            config_url=f"{base}/voc.yaml",
            segment=66_150,
        )
        register(
            monkeypatch,
            name="tiny_6s",
            title="tiny six",
            architecture="htdemucs",
            config={"weights": [[1.0] * 6]},
            sources=tuple(SIX),
            url=f"{base}/{six.name}",
            normalize=True,
            segment=44100,
            sdr={"bass": 1.0},
        )
        register(
            monkeypatch,
            name="tiny-preset",
            title="tiny preset",
            architecture="ensemble",
            config={"members": [["tiny-kim", {}], ["tiny_6s", {"vocals": 0.0}]]},
            sources=tuple(SIX),
            url="",
            note="test",
        )
        yield tmp_path / "cache"


def cli(tmp_path, *args) -> int:
    return main(["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), *map(str, args)])


@pytest.mark.parametrize(
    ("model", "stems"),
    [
        ("tiny-kim", ["no_vocals", "vocals"]),
        ("tiny_6s", sorted(SIX)),
        ("tiny-preset", sorted(SIX)),
        ("tiny-kim+tiny_6s", sorted(SIX)),
    ],
)
def test_separate_any_family_from_the_cli(tmp_path, small_catalog, model, stems, capsys):
    write_test_file(tmp_path / "song.wav", "wav", seconds=2.3)
    assert cli(tmp_path, "-m", model, "--cache-dir", small_catalog) == 0, capsys.readouterr().err
    folder = tmp_path / "out" / model / "song"
    assert sorted(path.stem for path in folder.iterdir()) == stems
    length = decode(tmp_path / "song.wav").shape[1]
    for path in folder.iterdir():
        assert decode(path).shape == (2, length)


def test_a_segment_longer_than_demucs_takes_is_a_clean_error(tmp_path, small_catalog, capsys):
    write_test_file(tmp_path / "song.wav", "wav", seconds=1.0)
    assert cli(tmp_path, "-m", "tiny_6s", "--cache-dir", small_catalog, "--segment", "2") == 1
    err = capsys.readouterr().err
    assert "at most 44100 samples (1.00 s" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_models_lists_every_entry_with_sdr_test_set_cost_and_cache(tmp_path, capsys):
    """The table by job (licences and sizes are under ``freestems models NAME``: test_models_command)."""
    assert main(["models", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in CATALOG}
    assert set(lines) == set(CATALOG)
    assert "vocals 10.98" in lines["mel-roformer-kim"] and "Multisong" in lines["mel-roformer-kim"]
    assert "vocals, no_vocals" in lines["mel-roformer-kim"]
    assert "6 stems" in lines["htdemucs_6s"]
    assert "MUSDB18-HQ" in lines["scnet"] and "1.0x" in lines["scnet"]
    for name, info in CATALOG.items():
        cost = "?" if info.relative_cost is None else f"{info.relative_cost:.1f}x"
        assert f" {cost} " in lines[name]
        assert "  no  " in lines[name]  # nothing is cached in an empty cache folder
