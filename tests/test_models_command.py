"""``freestems models``: the catalog by job in 100 columns, one model's every detail, the catalog as JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from freestems.cli import main
from freestems.models import CATALOG, ModelInfo
from freestems.models.catalog import JOBS
from freestems.models.download import cache_path
from freestems.models.listing import WIDTH, stems_cell


def _run(capsys, *args):
    code = main(["models", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str) -> dict[str, str]:
    """The entry lines of the listing, by model name."""
    rows = {}
    for line in out.splitlines():
        first = line.split()[0] if line.startswith("  ") and line.strip() else ""
        if first in CATALOG:
            rows[first] = line
    return rows


def test_the_listing_groups_every_model_by_job_within_100_columns(tmp_path, capsys):
    code, out, err = _run(capsys, "--cache-dir", tmp_path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert all(f"{job}: {what}" in lines for job, what in JOBS.items())
    rows = _rows(out)
    assert set(rows) == set(CATALOG)  # each model once, under the heading of its jobs
    for name, info in CATALOG.items():
        heading = lines.index(f"{info.jobs[-1]}: {JOBS[info.jobs[-1]]}")
        assert heading < lines.index(rows[name]), name
        assert stems_cell(info.sources) in rows[name], name
    assert "(default)" in rows["scnet"] and "avg 9.03" in rows["scnet"] and "MUSDB18-HQ" in rows["scnet"]
    assert "vocals, no_vocals" in rows["mel-roformer-kim"] and "vocals 10.98" in rows["mel-roformer-kim"]
    assert "crowd 5.99" in rows["mel-roformer-crowd"] and "unnamed" in rows["mel-roformer-crowd"]
    assert "15.4x" in rows["mel-roformer-kim"]


def test_the_listing_says_which_models_are_cached_and_servable(tmp_path, capsys):
    scnet = CATALOG["scnet"]
    path = cache_path(scnet, tmp_path)
    path.write_bytes(b"weights")
    rows = _rows(_run(capsys, "--cache-dir", tmp_path)[1])
    cells = {name: row.split()[-2:] for name, row in rows.items()}  # cached, serve
    assert cells["scnet"] == ["yes", "yes"]
    assert cells["scnet-large"] == ["no", "no"]  # ZFTurbo's SCNet: no licence stated for its weights
    assert cells["scnet-large-authors"] == ["no", "yes"]
    assert cells["bs-roformer-viperx"] == ["no", "no"]
    assert cells["ensemble-vocals-kim-scnet"] == ["no", "yes"]


def test_one_model_shows_every_detail(tmp_path, capsys):
    code, out, err = _run(capsys, "mel-roformer-crowd", "--cache-dir", tmp_path)
    info = CATALOG["mel-roformer-crowd"]
    assert code == 0 and err == ""
    assert out.splitlines()[0] == f"{info.name}: {info.title}"
    flat = " ".join(out.split())  # values may wrap
    for text in (
        "family mel_band_roformer",
        "crowd (the mix without its crowd noise",
        "crowd, and no_crowd",
        "crowd 5.99 (test set not named)",
        "cost not measured",
        f"licence {info.license}",
        "servable no:",
        "sha256 not published",
        info.url,
        info.config_url,
        str(cache_path(info, tmp_path)),
        str(cache_path(info, tmp_path, info.config_url)),
        "(missing)",
        "cached no",
        "note crowd: the crowd noise",
    ):
        assert text in flat, text
    code, out, _ = _run(capsys, "scnet", "--cache-dir", tmp_path)
    assert "servable yes" in " ".join(out.split()) and "parameters 10.6 M" in " ".join(out.split())
    code, out, _ = _run(capsys, "ensemble-vocals-kim-ft", "--cache-dir", tmp_path)
    assert "members mel-roformer-kim (not cached), htdemucs_ft (not cached)" in " ".join(out.split())


def _plain(info: ModelInfo) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(info)))


def test_json_is_the_whole_catalog_with_every_field(capsys):
    code, out, err = _run(capsys, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["default"] == "scnet" and data["jobs"] == JOBS
    assert list(data["models"]) == list(CATALOG)
    fields = {field.name for field in dataclasses.fields(ModelInfo)}
    for name, info in CATALOG.items():
        assert set(data["models"][name]) == fields
        assert data["models"][name] == _plain(info), name
    code, out, _ = _run(capsys, "demucs-drumsep", "--json")
    assert json.loads(out) == _plain(CATALOG["demucs-drumsep"])


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_an_unknown_name_is_one_line_and_exit_1(capsys, extra):
    code, out, err = _run(capsys, "scnet-huge", *extra)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("freestems: unknown model 'scnet-huge'")
