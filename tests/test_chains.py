"""Chains (``a>drums:b``): a model run on one stem of another's output, in one pass and bounded memory.

Small seeded models of three families stand in for released ones: an SCNet (four stems, whole-track
normalisation), an MDX23C with DrumSep's six stems and a one-stem Mel-Band RoFormer. They are catalog entries
served from 127.0.0.1, with a chain preset of the first two, so loading, the CLI and the service take the
real code paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from audio_samples import write_test_file
from conftest import one_torch_thread
from model_helpers import make_small_checkpoint, serve_directory, small_config
from reference import MDX23C_FIXTURES
from served_helpers import KIM, SCNET, STAND_INS, roformer_config, stand_in_catalog
from service_helpers import leftover_files, post_job, running_server, small_settings, wait_for_state

from freestems.audio import decode
from freestems.cli import main
from freestems.client import Client
from freestems.contract import MixStats
from freestems.engine import separate, separate_blocks
from freestems.executors import LocalExecutor
from freestems.library import separate_file
from freestems.models import CATALOG, ModelChoiceError, ModelInfo, load_model
from freestems.models.catalog import _measured_chain, member_names
from freestems.models.chain import ChainSpec, chain_outputs, parse_chain, spec_outputs
from freestems.models.download import is_cached
from freestems.models.mdx23c import mdx23c_from_msst
from freestems.models.roformer import roformer_from_msst
from freestems.models.served import serve_models
from freestems.rules import model_folder
from freestems.service.paths import Paths

FIRST, PARTS, VOCALS, PRESET = "tiny-scnet", "tiny-drumsep", "tiny-vocals", "tiny-drum-parts"
DRUMS = ("kick", "snare", "toms", "hh", "ride", "crash")
FOUR = ("drums", "bass", "other", "vocals")
PRESET_STEMS = (*(f"drums-{part}" for part in DRUMS), "bass", "other", "vocals")
CHUNK = 32256  # the MDX23C fixture's chunk


def drumsep_config() -> dict:
    """The small MDX23C fixture's MSST YAML with DrumSep's six stems."""
    config = json.loads((MDX23C_FIXTURES / "mdx23c_config.json").read_text())
    config["training"] = {"instruments": list(DRUMS), "target_instrument": None}
    return config


def _save(folder: Path, name: str, module: torch.nn.Module) -> str:
    torch.save(module.state_dict(), folder / name)
    return name


def _entry(name: str, architecture: str, config: dict, url: str, sources: tuple, **fields) -> ModelInfo:
    facts = dict(title=name, config_url="", sdr={sources[0]: 1.0}, sdr_set="Multisong", license="none stated")
    return ModelInfo(
        name, architecture=architecture, config=config, url=url, sources=sources, **facts | fields
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Iterator[Path]:
    """The three small models and a preset chaining two in the catalog, their files served from 127.0.0.1 and
    fetched once into the returned cache."""
    folder = tmp_path_factory.mktemp("chains")
    served = folder / "served"
    served.mkdir()
    make_small_checkpoint(served / "scnet.ckpt", seed=3, normalize=True, segment=88_200)
    torch.manual_seed(4)
    parts = _save(served, "drumsep.ckpt", mdx23c_from_msst(drumsep_config())[0])
    torch.manual_seed(5)
    kim = roformer_config("mel_band_roformer")
    vocals = _save(served, "vocals.ckpt", roformer_from_msst(kim)[0])
    with serve_directory(served) as base, pytest.MonkeyPatch.context() as patch, one_torch_thread():
        entries = [
            _entry(
                FIRST, "scnet", small_config(), f"{base}/scnet.ckpt", FOUR, normalize=True, segment=88_200
            ),
            _entry(PARTS, "mdx23c", drumsep_config(), f"{base}/{parts}", DRUMS, segment=CHUNK),
            _entry(VOCALS, "mel_band_roformer", kim, f"{base}/{vocals}", ("vocals",), segment=44_100),
            _entry(PRESET, "chain", {"first": FIRST, "links": [["drums", PARTS]]}, "", PRESET_STEMS),
        ]
        for info in entries:
            patch.setitem(CATALOG, info.name, info)
        load_model(PRESET, cache_dir=folder / "cache", progress=False)
        load_model(VOCALS, cache_dir=folder / "cache", progress=False)
        yield folder / "cache"


def load(name: str, cache: Path):
    return load_model(name, cache_dir=cache, download=False)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((2, int(seconds * 44100))) * 0.1).astype(np.float32)


def assert_stems(stems: dict, expected: dict, length: int) -> None:
    assert list(stems) == list(expected)
    for name, audio in expected.items():
        assert stems[name].shape == (2, length) and stems[name].dtype == np.float32, name
        np.testing.assert_allclose(stems[name], audio, atol=1e-5, rtol=0, err_msg=name)


# ---------------------------------------------------------------------------------------------- syntax


def test_the_syntax_links_and_precedence():
    assert parse_chain("a>drums:b") == ChainSpec("a", (("drums", "b"),))
    assert (
        str(ChainSpec.of({"first": "a", "links": [["drums", "b"], ["vocals", "c"]]})) == "a>drums:b>vocals:c"
    )
    assert parse_chain(" a+b:vocals=2 > drums : c > vocals:d+e ") == ChainSpec(
        "a+b:vocals=2", (("drums", "c"), ("vocals", "d+e"))
    )
    assert chain_outputs("x", ["drums", "bass"], [("drums", ["kick", "snare"])]) == (
        "drums-kick",
        "drums-snare",
        "bass",
    )
    assert chain_outputs("x", ["vocals", "no_vocals"], [("vocals", ["dry", "no_dry"])]) == (
        "vocals-dry",
        "vocals-no_dry",
        "no_vocals",
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tiny-scnet>", "link '' is not STEM:MODEL"),
        (">drums:tiny-drumsep", "has no first model"),
        ("tiny-scnet>drums", "link 'drums' is not STEM:MODEL"),
        ("tiny-scnet>drums:", "is not STEM:MODEL"),
        ("tiny-scnet>:tiny-drumsep", "is not STEM:MODEL"),
        ("tiny-scnet>guitar:tiny-drumsep", "the first model has no stem 'guitar' .its stems: drums, bass"),
        ("tiny-scnet>drums:nope", "chain 'tiny-scnet>drums:nope': unknown model 'nope'"),
        ("nope>drums:tiny-drumsep", "unknown model 'nope'"),
        ("tiny-scnet>drums:tiny-drumsep>drums:tiny-vocals", "stem 'drums' is chained twice"),
        ("tiny-vocals>drums:tiny-drumsep", "no stem 'drums' .its stems: vocals, no_vocals"),
    ],
)
def test_a_bad_chain_is_a_one_line_choice_error_before_any_download(cache, tmp_path, name, message):
    with pytest.raises(ModelChoiceError, match=message) as caught:
        load_model(name, cache_dir=tmp_path / "empty", download=False)  # checked before a file is looked for
    assert "\n" not in str(caught.value)


def test_two_stems_of_one_name_are_refused():
    with pytest.raises(ModelChoiceError, match="two stems would be called drums-kick"):
        chain_outputs("x", ["drums", "drums-kick"], [("drums", ["kick"])])


# --------------------------------------------------------------------------------------------- running


def test_a_chain_is_its_first_model_then_the_second_on_the_stem(cache):
    chain, first, second = load(f"{FIRST}>drums:{PARTS}", cache), load(FIRST, cache), load(PARTS, cache)
    assert chain.normalize and chain.max_segment == CHUNK and chain.segment == CHUNK
    mix = noise(3.3)
    alone = separate(mix, first, overlap=0.25)
    parts = separate(alone["drums"], second, overlap=0.25)  # the stem, whole, run alone
    expected = {f"drums-{part}": parts[part] for part in DRUMS} | {
        s: alone[s] for s in ("bass", "other", "vocals")
    }
    assert chain.sources == tuple(expected)
    assert_stems(separate(mix, chain, overlap=0.25), expected, mix.shape[1])
    assert_stems(separate(mix, load(PRESET, cache), overlap=0.25), expected, mix.shape[1])  # the preset


def test_several_links_an_ensemble_first_odd_blocks_and_two_stems(cache):
    first = load(f"{FIRST}+{VOCALS}", cache)  # "+" binds tighter than ">"
    chain = load(f"{FIRST}+{VOCALS}>vocals:{VOCALS}>drums:{PARTS}", cache)
    mix = noise(2.7, seed=1)
    alone = separate(mix, first)
    vocals, parts = (
        separate(alone["vocals"], load(VOCALS, cache)),
        separate(alone["drums"], load(PARTS, cache)),
    )
    expected = (
        {f"drums-{part}": parts[part] for part in DRUMS}
        | {"bass": alone["bass"], "other": alone["other"]}
        | {"vocals-vocals": vocals["vocals"], "vocals-no_vocals": vocals["no_vocals"]}
    )
    stems = separate(mix, chain)
    assert_stems(stems, expected, mix.shape[1])
    # A one-stem link gives its stem and the rest: together they are the parent stem.
    np.testing.assert_allclose(stems["vocals-vocals"] + stems["vocals-no_vocals"], alone["vocals"], atol=1e-6)
    # Streamed in odd blocks, the same stems; two-stem mode pairs a chained stem with the rest of the mix.
    blocks = [mix[:, i : i + 7777] for i in range(0, mix.shape[1], 7777)]
    parts_out = list(separate_blocks(blocks, chain, stats=MixStats.of([mix]), two_stems="drums-kick"))
    assert all(list(part) == ["drums-kick", "no_drums-kick"] for part in parts_out)
    kick = np.concatenate([part["drums-kick"] for part in parts_out], axis=1)
    np.testing.assert_allclose(kick, expected["drums-kick"], atol=1e-5, rtol=0)
    rest = np.concatenate([part["no_drums-kick"] for part in parts_out], axis=1)
    np.testing.assert_allclose(rest, mix - expected["drums-kick"], atol=1e-5, rtol=0)


def test_a_normalising_link_gets_the_mix_statistics(cache):
    """The link's input is not known whole before the first model has run the whole track: a link that
    normalises gets the mix's whole-track statistics (see freestems.models.chain)."""
    chain, first, second = load(f"{VOCALS}>no_vocals:{FIRST}", cache), load(VOCALS, cache), load(FIRST, cache)
    assert chain.normalize and not first.normalize and second.normalize
    mix = noise(2.2, seed=2)
    rest = separate(mix, first)["no_vocals"]
    blocks = list(separate_blocks([rest], second, stats=MixStats.of([mix])))  # the mix's statistics
    parts = {name: np.concatenate([block[name] for block in blocks], axis=1) for name in second.sources}
    expected = {"vocals": separate(mix, first)["vocals"]} | {
        f"no_vocals-{s}": parts[s] for s in second.sources
    }
    assert_stems(separate(mix, chain), expected, mix.shape[1])


def test_the_first_block_comes_out_before_the_input_is_read_and_progress_covers_both(cache):
    chain = load(PRESET, cache)
    mix = noise(12.0, seed=3)
    size = 11025  # 0.25 s
    read = []

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, mix.shape[1], size):
            read.append(start)
            yield mix[:, start : start + size]

    fractions: list[float] = []
    stream = separate_blocks(
        blocks(), chain, length=mix.shape[1], stats=MixStats.of([mix]), progress=fractions.append
    )
    first = next(stream)
    assert first["drums-kick"].shape[1] > 0 and len(read) < len(range(0, mix.shape[1], size)) // 3
    assert fractions and max(fractions) < 0.5
    total = first["bass"].shape[1] + sum(block["bass"].shape[1] for block in stream)
    assert total == mix.shape[1]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


# ----------------------------------------------------------------------------------------------- catalog


def test_chain_presets_name_catalog_models_and_give_the_chains_stems():
    presets = [info for info in CATALOG.values() if info.architecture == "chain" and info.name != PRESET]
    assert presets
    for info in presets:
        assert all(name in CATALOG for name in member_names(info)), info.name
        assert spec_outputs(info.name, ChainSpec.of(info.config)) == info.sources, info.name
        assert info.urls == () and info.note and info.license == "as its members"
    drums = CATALOG["chain-drumsep-ft"]
    assert member_names(drums) == ["htdemucs_ft", "mdx23c-drumsep"]
    assert drums.sources == PRESET_STEMS
    assert drums.sdr == {k: CATALOG["htdemucs_ft"].sdr[k] for k in ("bass", "other", "vocals")}
    assert drums.sdr_set == CATALOG["htdemucs_ft"].sdr_set


def test_a_chains_cost_and_size_are_its_models_added_up():
    for info in CATALOG.values():
        if info.architecture == "chain":
            members = [CATALOG[name] for name in member_names(info)]
            costs = [member.relative_cost for member in members]
            assert info.relative_cost == (None if None in costs else round(sum(costs), 1))
    config = {"first": "scnet", "links": [["vocals", "mel-roformer-kim"]]}
    made = ModelInfo(
        name="x", title="x", architecture="chain", config=config, sources=(), url="", config_url=""
    )
    measured = _measured_chain(made)
    scnet, kim = CATALOG["scnet"], CATALOG["mel-roformer-kim"]
    assert measured.relative_cost == round(scnet.relative_cost + kim.relative_cost, 1)
    assert measured.parameters_m == round(scnet.parameters_m + kim.parameters_m, 1)


def test_a_chain_preset_is_cached_when_its_models_are(cache, tmp_path):
    assert is_cached(CATALOG[PRESET], cache) and not is_cached(CATALOG[PRESET], tmp_path)


# --------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("model", "folder"),
    [
        ("scnet", "scnet"),
        ("chain-drumsep-ft", "chain-drumsep-ft"),
        ("htdemucs_ft>drums:mdx23c-drumsep", "htdemucs_ft--drums-by-mdx23c-drumsep"),
        (" a+b:vocals=2 > drums : c > vocals:d+e ", "a+b_vocals_2--drums-by-c--vocals-by-d+e"),
        ("my model (v2)", "my_model__v2_"),
        ("../x", "_x"),
        ("-x.", "x"),
        ("nul", "_nul"),
        ("Con.ckpt", "_Con.ckpt"),
        ("...", "model"),
    ],
)
def test_a_model_folder_is_readable_and_safe_on_every_file_system_and_shell(model, folder):
    assert model_folder(model) == folder


def test_the_library_writes_a_chains_stems_under_their_own_names(cache, tmp_path):
    """``freestems.separate_file`` puts no model name in a path: the caller names the folder, the files are
    the chain's stems, which hold no character a folder or a shell would mind."""
    write_test_file(tmp_path / "song.wav", "wav", seconds=1.2)
    result = separate_file(tmp_path / "song.wav", tmp_path / "out", load(PRESET, cache))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(
        f"{s}.wav" for s in PRESET_STEMS
    )
    assert all(model_folder(stem) == stem for stem in result.stems)


@pytest.mark.parametrize(
    ("model", "folder_name", "stems"),
    [
        (PRESET, PRESET, list(PRESET_STEMS)),
        (
            f"{FIRST}>vocals:{VOCALS}",
            f"{FIRST}--vocals-by-{VOCALS}",
            ["drums", "bass", "other", "vocals-vocals", "vocals-no_vocals"],
        ),
    ],
)
def test_separate_with_a_chain_from_the_cli(cache, tmp_path, capsys, model, folder_name, stems):
    write_test_file(tmp_path / "song.wav", "wav", seconds=2.3)
    argv = ["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "-m", model]
    assert main([*argv, "--cache-dir", str(cache)]) == 0, capsys.readouterr().err
    second = PARTS if model == PRESET else VOCALS
    note = f'freestems: note: the weights of {FIRST}, {second} are published with the licences "none stated"'
    assert note in capsys.readouterr().err  # the tiny models' licence, as a catalog entry words it
    (folder,) = (tmp_path / "out").iterdir()
    assert folder.name == folder_name  # no '>' or ':' in a folder (see docs/cli.md)
    folder = folder / "song"
    assert sorted(path.stem for path in folder.iterdir()) == sorted(stems)
    length = decode(tmp_path / "song.wav").shape[1]
    assert all(decode(folder / f"{stem}.wav").shape == (2, length) for stem in stems)


def test_eval_notes_the_licence_of_the_weights_it_runs(cache, tmp_path, capsys):
    song = tmp_path / "songs" / "a"
    song.mkdir(parents=True)
    write_test_file(song / "mixture.wav", "wav", seconds=1.0)
    write_test_file(song / "vocals.wav", "wav", seconds=1.0)
    assert main(["eval", str(tmp_path / "songs"), "-m", FIRST, "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        f'freestems: note: the weights of {FIRST} are published with the licence "none stated"; you run '
        "them under that licence (not one that lets a service offer them)" in err
    )


def test_a_bad_chain_from_the_cli_is_one_line(cache, tmp_path, capsys):
    write_test_file(tmp_path / "song.wav", "wav", seconds=1.0)
    argv = [
        "separate",
        str(tmp_path / "song.wav"),
        "-o",
        str(tmp_path / "out"),
        "-m",
        f"{FIRST}>guitar:{PARTS}",
    ]
    assert main([*argv, "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert "has no stem 'guitar'" in err and "Traceback" not in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- service


@contextlib.contextmanager
def chain_server(tmp_path: Path, names: list[str]) -> Iterator:
    """A real server serving ``names`` with the stand-ins of ``scnet`` and ``mel-roformer-kim``."""
    with stand_in_catalog(tmp_path / "catalog"), one_torch_thread():
        cache = tmp_path / "catalog" / "cache"
        settings = small_settings(tmp_path / "data", models=tuple(names), auth="none")
        executor = LocalExecutor(
            lambda: serve_models(names, cache_dir=cache),
            Paths(settings.data_dir).work,
            workers=1,
            warm_up=False,
        )
        with running_server(settings, executor) as server:
            yield server
        assert leftover_files(settings.data_dir) == []


def test_the_api_serves_a_chain_and_says_its_stems(tmp_path):
    chain = f"{SCNET}>vocals:{KIM}"
    assert set(STAND_INS) >= {SCNET, KIM}
    with chain_server(tmp_path, [SCNET, chain]) as server:
        config = httpx.get(server.url + "/config").json()
        described = {model["name"]: model for model in config["models"]}
        assert described[chain]["stems"] == ["drums", "bass", "other", "vocals-vocals", "vocals-no_vocals"]
        assert described[chain]["title"] == (f"{CATALOG[SCNET].title}; vocals split by {CATALOG[KIM].title}")
        write_test_file(tmp_path / "song.wav", "wav", seconds=2.0)
        created = post_job(server, tmp_path / "song.wav", None, model=chain, format="wav")
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["model"] == chain
        wait_for_state(server, job, "done", timeout=120)
        result = httpx.get(
            f"{server.url}/jobs/{job['id']}/result", params={"token": job["token"]}, timeout=30
        )
        names = sorted(zipfile.ZipFile(io.BytesIO(result.content)).namelist())
        assert names == sorted(f"{stem}.wav" for stem in described[chain]["stems"])
        assert all(re.fullmatch(r"[a-z_-]+\.wav", name) for name in names)  # the zip holds no model name
        assert result.headers["content-disposition"] == 'attachment; filename="stems.zip"'
        with Client(server.url) as client:  # `freestems remote`: the folder is named as by `separate`
            stems = client.separate(
                tmp_path / "song.wav", model=chain, format="wav", out_dir=tmp_path / "out"
            )
        assert {path.parent for path in stems.values()} == {
            tmp_path / "out" / f"{SCNET}--vocals-by-{KIM}" / "song"
        }


def test_a_served_chain_is_checked_at_start(tmp_path):
    with stand_in_catalog(tmp_path / "catalog"), pytest.raises(ModelChoiceError, match="no stem 'piano'"):
        serve_models([f"{SCNET}>piano:{KIM}"], cache_dir=tmp_path / "cache")
