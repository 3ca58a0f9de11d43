"""``freestems eval`` and :mod:`freestems.evaluate` on synthetic multitracks whose scores are known.

The songs' stems are apart by channel (``left`` holds a sine on the left channel only, ``right`` another on
the right), so tiny models can give known answers through the real engine: the true stems (the channels
split), the mixture for every stem (SDR in closed form: the stems' energy ratio) or silence (0 dB exactly by
MSST's formula). The files are float WAV, read back bit for bit. The command itself runs end to end with
the small seeded SCNet on a MUSDB18-HQ layout, its scores checked against ``freestems.separate``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from audio_samples import write_test_file
from conftest import one_torch_thread
from model_helpers import make_small_checkpoint
from torch import nn

import freestems
from freestems.audio import decode
from freestems.cli import main
from freestems.contract import SAMPLE_RATE, LoadedModel
from freestems.evaluate import EvaluationError, Layout, evaluate, find_songs
from freestems.metrics import sdr

SECONDS = 3  # 441 Hz and 882 Hz fill whole periods in every second: the closed forms below are exact
LENGTH = SECONDS * SAMPLE_RATE
LEFT_AMP, RIGHT_AMP = 0.5, 0.25
MUSDB = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


class Answer(nn.Module):
    """(batch, 2, n) -> (batch, 2 stems, 2, n): ``split`` gives each channel alone (the true stems here),
    ``mixture`` the input twice, ``silence`` zeros."""

    def __init__(self, answer: str):
        super().__init__()
        self.answer = answer
        self.gain = nn.Parameter(torch.ones(()))  # the engine reads the device of a parameter

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if self.answer == "split":
            left, right = mix.clone(), mix.clone()
            left[:, 1], right[:, 0] = 0, 0
            return torch.stack([left, right], dim=1) * self.gain
        stems = torch.stack([mix, mix], dim=1) * self.gain
        return stems if self.answer == "mixture" else stems * 0


def answer_model(answer: str) -> LoadedModel:
    return LoadedModel(Answer(answer).eval(), answer, ("left", "right"), segment=SAMPLE_RATE, normalize=False)


def write_wav(path, signal: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_test_file(path, "wav", bit_depth=32, signal=signal, seconds=signal.shape[1] / SAMPLE_RATE)


def channel_stems() -> dict[str, np.ndarray]:
    t = np.arange(LENGTH) / SAMPLE_RATE
    left, right = np.zeros((2, LENGTH), np.float32), np.zeros((2, LENGTH), np.float32)
    left[0] = LEFT_AMP * np.sin(2 * np.pi * 441 * t)
    right[1] = RIGHT_AMP * np.sin(2 * np.pi * 882 * t)
    return {"left": left, "right": right}


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """``whole`` has both stems; ``half`` only ``left.wav``."""
    folder = tmp_path_factory.mktemp("songs")
    stems = channel_stems()
    for song, names in {"whole": ("left", "right"), "half": ("left",)}.items():
        write_wav(folder / song / "mixture.wav", stems["left"] + stems["right"])
        for name in names:
            write_wav(folder / song / f"{name}.wav", stems[name])
    return folder


def test_the_true_stems_score_very_high(songs):
    result = evaluate(songs, answer_model("split"))
    assert [song.name for song in result.songs] == ["half", "whole"]
    whole = result.songs[1]
    assert sorted(whole.scores) == ["left", "right"] and whole.error is None
    for score in whole.scores.values():
        assert score.sdr > 100 and score.sdr_museval > 100  # float32 rounding at most, or exact (inf)


def test_the_mixture_scores_the_energy_ratio_of_the_stems(songs):
    result = evaluate(songs, answer_model("mixture"))
    left, right = (LENGTH * LEFT_AMP**2 / 2, LENGTH * RIGHT_AMP**2 / 2)  # sums of sin^2 over whole periods
    whole = result.songs[1].scores
    assert whole["left"].sdr == pytest.approx(10 * math.log10((left + 1e-8) / (right + 1e-8)), abs=1e-3)
    assert whole["right"].sdr == pytest.approx(10 * math.log10((right + 1e-8) / (left + 1e-8)), abs=1e-3)
    assert whole["left"].sdr_museval == pytest.approx(20 * math.log10(LEFT_AMP / RIGHT_AMP), abs=1e-3)
    assert list(whole["left"].frames.shape) == [SECONDS]
    half = result.songs[0]
    assert list(half.scores) == ["left"] and half.missing == ["right"]
    # totals: left over both songs, right over the one that has it
    assert result.total_sdr()["right"] == pytest.approx(whole["right"].sdr)
    assert result.total_sdr()["avg"] == pytest.approx((whole["left"].sdr + whole["right"].sdr) / 2)


def test_silence_scores_zero_and_no_frame(songs):
    result = evaluate(songs, answer_model("silence"))
    for song in result.songs:
        for score in song.scores.values():
            assert score.sdr == 0.0  # (E + eps) / (E + eps)
            assert math.isnan(score.sdr_museval)  # every frame has a silent estimate
    report = json.loads(json.dumps(result.as_dict(), allow_nan=False))  # standard JSON: no NaN
    assert report["total"]["sdr_mean"] == {"left": 0.0, "right": 0.0, "avg": 0.0}
    assert report["total"]["sdr_museval_median"] == {"left": None, "right": None, "avg": None}


def test_other_layouts_are_named_by_their_files(tmp_path):
    stems = channel_stems()
    write_wav(tmp_path / "one" / "mix.wav", stems["left"] + stems["right"])
    write_wav(tmp_path / "one" / "l.wav", stems["left"])
    layout = Layout.parse("mix.wav", ["left=l.wav"])
    assert layout.stem_file("right") == "right.wav"
    result = evaluate(tmp_path / "one", answer_model("split"), layout=layout)  # one song's own folder
    assert [song.name for song in result.songs] == ["one"]
    assert list(result.songs[0].scores) == ["left"] and result.songs[0].scores["left"].sdr > 100


def test_a_song_without_any_stem_is_an_error_for_that_song_only(tmp_path):
    stems = channel_stems()
    write_wav(tmp_path / "bare" / "mixture.wav", stems["left"])
    write_wav(tmp_path / "good" / "mixture.wav", stems["left"] + stems["right"])
    write_wav(tmp_path / "good" / "right.wav", stems["right"])
    result = evaluate(tmp_path, answer_model("split"))
    bare, good = result.songs
    assert bare.error == "bare: none of the model's stems is in its folder (left.wav, right.wav)"
    assert not bare.scores and good.error is None and list(good.scores) == ["right"]


def test_layout_and_folder_errors_are_one_line():
    with pytest.raises(EvaluationError, match="give STEM=FILE"):
        Layout.parse("mixture.wav", ["vocals"])
    with pytest.raises(EvaluationError, match="given twice"):
        Layout.parse("mixture.wav", ["vocals=a.wav", "vocals=b.wav"])
    with pytest.raises(EvaluationError, match="no such stem"):
        Layout.parse("mixture.wav", ["piano=p.wav"]).check(MUSDB)


def test_find_songs_refuses_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(EvaluationError, match="no such folder"):
        find_songs(tmp_path / "nothing")
    (tmp_path / "song").mkdir()
    with pytest.raises(EvaluationError, match="no folder in it holds mixture.wav"):
        find_songs(tmp_path)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    """A MUSDB18-HQ layout: ``test/a`` with the four stems, ``test/b`` with vocals only, 16-bit WAV."""
    root = tmp_path_factory.mktemp("musdb18hq")
    rng = np.random.default_rng(0)
    for song, names in {"a": MUSDB, "b": ("vocals",)}.items():
        stems = {
            name: (rng.standard_normal((2, 2 * SAMPLE_RATE)) * 0.05).astype(np.float32) for name in MUSDB
        }
        folder = root / "test" / song
        folder.mkdir(parents=True)
        write_test_file(folder / "mixture.wav", "wav", seconds=2.0, signal=sum(stems.values()))
        for name in names:
            write_test_file(folder / f"{name}.wav", "wav", seconds=2.0, signal=stems[name])
    return root


def test_the_command_prints_the_table_and_writes_every_score(musdb, checkpoint, tmp_path, capsys):
    report = tmp_path / "scores.json"
    code = main(
        ["eval", str(musdb), "--model-file", str(checkpoint), "--json", str(report), "--overlap", "0.5"]
    )
    model = freestems.load_model(model_file=checkpoint)
    song = musdb / "test" / "a"
    estimates = freestems.separate(decode(song / "mixture.wav"), model, overlap=0.5)
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SDR", "in", "dB", *MUSDB, "avg"]
    assert "test/a" in lines and "test/b" in lines
    assert (
        "total over 2 songs" in out
        and "mean over songs (MVSEP)" in out
        and "median over songs (MUSDB)" in out
    )
    results = json.loads(report.read_text())
    assert results["model"] == "small" and results["options"]["overlap"] == 0.5
    assert set(results["metrics"]) == {"sdr", "sdr_museval"}
    scores = results["songs"][0]["stems"]
    for stem in MUSDB:
        expected = sdr(decode(song / f"{stem}.wav"), estimates[stem])
        assert scores[stem]["sdr"] == pytest.approx(expected, abs=1e-5)
        assert len(scores[stem]["frames"]) == 2
    assert results["songs"][1]["missing"] == ["drums", "bass", "other"]
    vocals = [entry["stems"]["vocals"]["sdr"] for entry in results["songs"]]
    assert results["total"]["sdr_mean"]["vocals"] == pytest.approx(np.mean(vocals), abs=1e-5)
    assert results["total"]["sdr_mean"]["drums"] == scores["drums"]["sdr"]


def test_the_command_reports_a_song_without_stems_and_goes_on(musdb, checkpoint, tmp_path, capsys):
    folder = tmp_path / "songs"
    for song in ("a", "b"):
        (folder / song).mkdir(parents=True)
        (folder / song / "mixture.wav").write_bytes((musdb / "test" / "a" / "mixture.wav").read_bytes())
    (folder / "a" / "vocals.wav").write_bytes((musdb / "test" / "a" / "vocals.wav").read_bytes())
    report = tmp_path / "scores.json"
    code = main(["eval", str(folder), "--model-file", str(checkpoint), "--json", str(report)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "freestems: b: none of the model's stems is in its folder (drums.wav, bass.wav, other.wav" in err
    assert "1 evaluated, 1 failed" in err and "Traceback" not in err
    assert "total over 1 song" in out
    assert json.loads(report.read_text())["total"]["failed"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such folder"),
        (["{empty}"], "no folder in it holds mixture.wav"),
        (["{musdb}", "--stem", "piano=p.wav"], "--stem piano: the model gives no such stem"),
        (["{musdb}", "--stem", "vocals"], "give STEM=FILE"),
        (["{musdb}", "--overlap", "0.95"], "overlap must be"),
        (["{musdb}", "--json", "{missing}/scores.json"], "no such folder"),
    ],
)
def test_bad_arguments_get_one_clear_line(musdb, checkpoint, tmp_path, capsys, args, message):
    places = {"{missing}": str(tmp_path / "missing"), "{empty}": str(tmp_path), "{musdb}": str(musdb)}
    for key, value in places.items():
        args = [arg.replace(key, value) for arg in args]
    code = main(["eval", *args, "--model-file", str(checkpoint)])
    out, err = capsys.readouterr()
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""
