"""The `freestems` command end to end: real console script, real files, small seeded checkpoint."""

import dataclasses
import json
import shutil
import socket
import subprocess
import zipfile

import numpy as np
import pytest
from audio_samples import tiny_png, write_test_file
from model_helpers import make_small_checkpoint, small_config
from reference import SCNET_FIXTURES

from freestems.audio import decode
from freestems.cli import main
from freestems.models import CATALOG

STEMS = ["bass", "drums", "other", "vocals"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


def run(*args, cwd):
    freestems = shutil.which("freestems")
    assert freestems, "the freestems console script is not installed"
    return subprocess.run([freestems, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_separate_an_mp3_into_four_mp3_stems_of_exact_length(tmp_path, checkpoint):
    write_test_file(tmp_path / "song.mp3", "mp3", seconds=6.5)
    result = run("separate", "song.mp3", "--model-file", checkpoint, "--format", "mp3", "--zip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "separated" / "small" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [f"{s}.mp3" for s in STEMS]
    length = decode(tmp_path / "song.mp3").shape[1]
    for stem in STEMS:
        assert decode(folder / f"{stem}.mp3").shape == (2, length)
    with zipfile.ZipFile(folder.with_suffix(".zip")) as bundle:
        assert sorted(bundle.namelist()) == [f"{s}.mp3" for s in STEMS]


def test_folder_with_a_bad_file_separates_the_others_and_reports(tmp_path, checkpoint, capsys):
    album = tmp_path / "album"
    album.mkdir()
    write_test_file(album / "a.wav", "wav", seconds=2.0)
    write_test_file(album / "b.flac", "flac", seconds=2.0)
    (album / "cover.mp3").write_bytes(tiny_png())
    (album / "notes.txt").write_text("not audio, not even named like it")
    code = main(["separate", str(album), "-o", str(tmp_path / "out"), "--model-file", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 1
    assert "cover.mp3: not an audio file (looks like a PNG image)" in err
    assert "2 separated, 1 failed" in err
    assert "Traceback" not in err
    out = tmp_path / "out" / "small"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"{s}.wav" for s in STEMS]
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


def test_two_stems_karaoke_in_24_bit_flac(tmp_path, checkpoint):
    write_test_file(tmp_path / "song.m4a", "m4a", seconds=3.0)
    options = [
        "--two-stems",
        "vocals",
        "--format",
        "flac",
        "--bit-depth",
        "24",
        "--shifts",
        "2",
        "--overlap",
        "0.5",
    ]
    code = main(
        [
            "separate",
            str(tmp_path / "song.m4a"),
            "-o",
            str(tmp_path / "out"),
            "--model-file",
            str(checkpoint),
            *options,
        ]
    )
    assert code == 0
    folder = tmp_path / "out" / "small" / "song"
    assert sorted(p.name for p in folder.iterdir()) == ["no_vocals.flac", "vocals.flac"]
    mix = decode(tmp_path / "song.m4a")
    both = decode(folder / "vocals.flac") + decode(folder / "no_vocals.flac")
    assert np.abs(both - mix).max() < 1e-3  # 24-bit quantisation of each stem


def test_msst_checkpoint_and_yaml_config(tmp_path, capsys):
    model = small_config()
    yaml_lines = ["audio:", "  chunk_size: 88200", "model:"]
    for key, value in model.items():
        yaml_lines.append(f"  {key}: {json.dumps(value)}")
    yaml_lines += ["inference:", "  normalize: true"]
    (tmp_path / "config.yaml").write_text("\n".join(yaml_lines) + "\n")
    shutil.copy(SCNET_FIXTURES / "msst_small_state.pt", tmp_path / "msst.ckpt")
    write_test_file(tmp_path / "song.ogg", "ogg", seconds=2.0)
    code = main(
        ["separate", str(tmp_path / "song.ogg"), "-o", str(tmp_path / "out"),
         "--model-file", str(tmp_path / "msst.ckpt"), "--model-config", str(tmp_path / "config.yaml")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "msst" / "song").iterdir()) == [
        f"{s}.wav" for s in STEMS
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-file", "missing.ckpt"], "missing.ckpt"),
        (["-m", "no-such-model"], "scnet"),
        (["-m", "scnet", "--model-file", "x.pt"], "not both"),
        (["--model-config", "c.yaml"], "needs --model-file"),
        (["--two-stems", "piano", "--model-file", "{ckpt}"], "two_stems"),
        (["--format", "flac", "--bit-depth", "32", "--model-file", "{ckpt}"], "FLAC"),
    ],
)
def test_bad_arguments_get_one_clear_line(tmp_path, checkpoint, capsys, args, message):
    write_test_file(tmp_path / "song.wav", "wav", seconds=1.0)
    args = [a.replace("{ckpt}", str(checkpoint)) for a in args]
    code = main(["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_input_is_reported(tmp_path, checkpoint, capsys):
    code = main(["separate", str(tmp_path / "nothing.mp3"), "--model-file", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 1 and "nothing.mp3: no such file or folder" in err


def test_offline_download_error_says_where_to_put_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FREESTEMS_CACHE", str(tmp_path / "cache"))
    write_test_file(tmp_path / "song.wav", "wav", seconds=1.0)
    # Point the default model at a closed local port: the same failure as having no network.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    info = dataclasses.replace(CATALOG["scnet"], url=f"http://127.0.0.1:{port}/scnet.ckpt")
    monkeypatch.setitem(CATALOG, "scnet", info)
    code = main(["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"http://127.0.0.1:{port}/scnet.ckpt" in err
    assert str(tmp_path / "cache" / "scnet.ckpt") in err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_models_and_version(tmp_path):
    listing = run("models", cwd=tmp_path)
    assert listing.returncode == 0
    for name in ["scnet", "scnet-large", "scnet-large-authors", "scnet-xl", "scnet-xl-ihf"]:
        assert name in listing.stdout
    assert "(default)" in listing.stdout
    version = run("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("freestems ")
