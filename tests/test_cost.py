"""Cost accounting: prices, cost per job, the projection per song, the table, `freestems cost`."""

from __future__ import annotations

import pytest

from freestems.cli import main
from freestems.cost import (
    DEFAULT_GPU_PRICES,
    PriceError,
    UsageRecord,
    format_projections,
    job_cost,
    parse_prices,
    price_of,
    project,
)
from freestems.deploy.settings import ModalSettings
from freestems.service import Settings, SettingsError
from freestems.service.store import JobStore


def record(job_id: str, gpu: str | None, audio: float | None, gpu_seconds: float | None) -> UsageRecord:
    return UsageRecord(job_id, 1.0, "scnet", gpu, audio, gpu_seconds, timings={"separate": 1.0})


# Hand-computed: three L4 jobs use 9/180 = 0.05, 6/60 = 0.1 and 3/120 = 0.025 GPU s per audio s: median
# 0.05, so 9 GPU s for 180 s of audio, x $0.000222 = $0.001998. One T4 job: 20/200 = 0.1, 18 GPU s x
# $0.000164 = $0.002952. A CPU job and an H100 job without audio are not counted.
RECORDS = [
    record("a", "L4", 180.0, 9.0),
    record("b", "L4", 60.0, 6.0),
    record("c", "l4", 120.0, 3.0),
    record("d", "T4", 200.0, 20.0),
    record("e", None, 180.0, None),
    record("f", "H100", 0.0, 1.0),
]


def test_prices_parse_over_the_defaults_and_name_the_bad_entry():
    assert parse_prices("L4=0.0003, B200=0.0015", DEFAULT_GPU_PRICES)["L4"] == 0.0003
    assert parse_prices("B200=0.0015")["B200"] == 0.0015 and parse_prices("") == {}
    for bad in ("L4", "L4=cheap", "=0.1", "L4=-1"):
        with pytest.raises(PriceError, match="TYPE=dollars_per_second"):
            parse_prices(bad)
    settings = Settings.from_env({"FREESTEMS_GPU_PRICES": "L4=0.0003"})
    assert settings.gpu_prices == {**DEFAULT_GPU_PRICES, "L4": 0.0003}
    with pytest.raises(SettingsError, match="FREESTEMS_GPU_PRICES"):
        Settings.from_env({"FREESTEMS_GPU_PRICES": "L4:0.0003"})
    with pytest.raises(SettingsError, match="FREESTEMS_MODAL_SCALEDOWN_WINDOW"):
        ModalSettings.from_env({"FREESTEMS_MODAL_SCALEDOWN_WINDOW": "1"})


def test_the_cost_of_a_job_is_its_gpu_seconds_times_the_price():
    assert job_cost(12.5, "L4", DEFAULT_GPU_PRICES) == pytest.approx(0.002775)  # 12.5 x 0.000222
    assert job_cost(10.0, "h100", DEFAULT_GPU_PRICES) == pytest.approx(0.01097)
    assert job_cost(10.0, "H100:2", DEFAULT_GPU_PRICES) == pytest.approx(0.02194)  # two GPUs, twice
    assert price_of("A100-80GB", DEFAULT_GPU_PRICES) == 0.000694
    assert job_cost(10.0, None, DEFAULT_GPU_PRICES) is None  # a CPU
    assert job_cost(10.0, "B200", DEFAULT_GPU_PRICES) is None  # no price for it
    assert job_cost(None, "L4", DEFAULT_GPU_PRICES) is None


def test_the_projection_per_song_is_the_median_rate_times_three_minutes_times_the_price():
    l4, t4 = project(RECORDS, DEFAULT_GPU_PRICES)  # no H100: its one record had no audio
    assert (l4.gpu, l4.jobs, l4.audio_seconds, l4.gpu_seconds) == ("L4", 3, 360.0, 18.0)
    assert l4.gpu_seconds_per_audio_second == pytest.approx(0.05)
    assert l4.gpu_seconds_per_song == pytest.approx(9.0)
    assert l4.usd_per_song == pytest.approx(0.001998)
    assert l4.songs_per_dollar == pytest.approx(1 / 0.001998)
    assert (t4.gpu, t4.jobs) == ("T4", 1) and t4.usd_per_song == pytest.approx(0.002952)
    # Other song lengths and a choice of types:
    (only,) = project(RECORDS, DEFAULT_GPU_PRICES, gpus=["t4"], song_seconds=60.0)
    assert only.usd_per_song == pytest.approx(6.0 * 0.000164)


def test_a_type_without_a_price_is_projected_in_seconds_and_listed_last():
    projections = project([*RECORDS, record("g", "B200", 100.0, 1.0)], DEFAULT_GPU_PRICES)
    assert [p.gpu for p in projections] == ["L4", "T4", "B200"]
    assert projections[-1].usd_per_song is None and projections[-1].gpu_seconds_per_song == pytest.approx(1.8)


def test_the_table_shows_every_type_and_says_which_have_no_records():
    projections = project(RECORDS, DEFAULT_GPU_PRICES, gpus=["L4", "T4", "H100"])
    table = format_projections(projections, asked=["L4", "T4", "H100"], skipped=1)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["gpu", "jobs"] and "$ / song" in lines[0]
    assert lines[1].split()[0] == "L4" and "0.00200" in lines[1] and "9.00" in lines[1]
    assert lines[2].split()[0] == "T4" and "0.00295" in lines[2]
    assert "H100: no recorded jobs on this GPU type" in table
    assert "1 recorded job(s) without GPU time" in table
    assert "target: under $0.005 per 3-minute song" in table
    assert format_projections([]) == "no recorded jobs with GPU time yet: separate some songs on a GPU first"


def test_usage_records_round_trip_through_the_store(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        for item in RECORDS:
            store.record_usage(item)
        store.record_usage(record("a", "L4", 180.0, 8.0))  # the same job again replaces its row
        assert sorted(r.job_id for r in store.usage_records()) == ["a", "b", "c", "d", "e", "f"]
        assert store.usage("a").gpu_seconds == 8.0 and store.usage("a").timings == {"separate": 1.0}
        assert store.usage("e").gpu is None and store.usage("zzz") is None
    finally:
        store.close()


def test_the_cost_command_prints_the_projection_from_a_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FREESTEMS_GPU_PRICES", "T4=0.0001")
    store = JobStore(tmp_path / "jobs.sqlite3")
    for item in RECORDS:
        store.record_usage(item)
    store.close()
    assert main(["cost", "--data-dir", str(tmp_path), "--gpu", "T4", "--gpu", "A10G"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"6 recorded job(s) in {tmp_path / 'jobs.sqlite3'}")
    t4 = next(line for line in out.splitlines() if line.startswith("T4"))
    assert "18.00" in t4 and "0.00180" in t4  # 18 GPU s x the overridden $0.0001
    assert "A10G: no recorded jobs on this GPU type" in out and "L4 " not in out

    assert main(["cost", "--data-dir", str(tmp_path / "elsewhere")]) == 1
    assert "no job store at" in capsys.readouterr().err
