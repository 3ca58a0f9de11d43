"""Cost accounting: prices, cost per job, the projection per song, the table, `freestems cost`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freestems.cli import main
from freestems.cost import (
    ASSUMED_START_SECONDS,
    CPU_CORE_PRICE,
    DEFAULT_GPU_PRICES,
    MEMORY_GIB_PRICE,
    PriceError,
    Shape,
    UsageRecord,
    bench_records,
    deployed_shape,
    format_projections,
    format_recorded,
    format_web,
    job_cost,
    parse_prices,
    price_of,
    project,
    project_deployment,
    project_web,
    region_multiplier,
    scaledown_window,
    wake_start,
)
from freestems.deploy.settings import ModalSettings
from freestems.service import Settings, SettingsError
from freestems.service.store import JobStore

ROOT = Path(__file__).resolve().parents[1]


def record(job_id: str, gpu: str | None, audio: float | None, gpu_seconds: float | None) -> UsageRecord:
    return UsageRecord(job_id, 1.0, "scnet", gpu, audio, gpu_seconds, timings={"separate": 1.0})


# Records as the job store keeps them: three L4 jobs, one T4 job (20/200 = 0.1 GPU s per audio s, so 18 s
# for a 3-minute song), a CPU job without busy seconds and an H100 job without audio (not counted).
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


def test_the_gpu_part_of_a_job_is_its_gpu_seconds_times_the_price():
    assert job_cost(12.5, "L4", DEFAULT_GPU_PRICES) == pytest.approx(0.002775)  # 12.5 x 0.000222
    assert job_cost(10.0, "h100", DEFAULT_GPU_PRICES) == pytest.approx(0.01097)
    assert job_cost(10.0, "H100:2", DEFAULT_GPU_PRICES) == pytest.approx(0.02194)  # two GPUs, twice
    assert price_of("A100-80GB", DEFAULT_GPU_PRICES) == 0.000694
    assert job_cost(10.0, None, DEFAULT_GPU_PRICES) is None  # a CPU
    assert job_cost(10.0, "B300", DEFAULT_GPU_PRICES) is None  # no price for it
    assert job_cost(None, "L4", DEFAULT_GPU_PRICES) is None


# Whole cost, hand-computed from Modal's published prices (freestems.cost.PRICES_SOURCE):
# an L4 container with 4 cores and 4 GiB costs 0.000222 + 4 x 0.0000131 + 4 x 0.00000222
# = 0.000222 + 0.0000524 + 0.00000888 = 0.00028328 $/s; the GPU alone is 78 % of it.
L4_RATE = 0.000222 + 4 * 0.0000131 + 4 * 0.00000222
T4_RATE = 0.000164 + 4 * 0.0000131 + 4 * 0.00000222
CPU_RATE = 2 * 0.0000131 + 3 * 0.00000222  # 2 cores, 3 GiB
IDLE = {"CPU": 5, "*": 10}


def test_a_container_costs_its_gpu_its_cores_and_its_memory_times_the_region_multiplier():
    l4 = Shape("L4", 4.0, 4096)
    assert l4.rate(DEFAULT_GPU_PRICES) == pytest.approx(L4_RATE)
    parts = l4.parts(DEFAULT_GPU_PRICES)
    assert parts == pytest.approx({"gpu": 0.000222, "cpu": 0.0000524, "memory": 0.00000888})
    # The cores alone add 24 % to an L4 and 32 % to a T4: what GPU price x GPU seconds left out.
    l4_share, t4_share = 4 * CPU_CORE_PRICE / 0.000222, 4 * CPU_CORE_PRICE / 0.000164
    assert round(l4_share, 3) == 0.236 and round(t4_share, 3) == 0.320
    assert Shape(None, 2.0, 3072).rate(DEFAULT_GPU_PRICES) == pytest.approx(CPU_RATE)
    tiny = Shape(None, 0.05, 64).rate(DEFAULT_GPU_PRICES)  # Modal's minimum reservations are billed
    assert tiny == pytest.approx(0.125 * CPU_CORE_PRICE + MEMORY_GIB_PRICE / 8)
    # Pinned to a region, everything costs more: broad 1.5x, narrow 1.75x, the smallest of a list.
    assert region_multiplier(()) == 1.0 and region_multiplier(["us"]) == 1.5
    assert region_multiplier(["us-east"]) == 1.75 and region_multiplier(["us-east", "eu"]) == 1.5
    pinned = Shape("L4", 4.0, 4096, ("us-west",))
    assert pinned.rate(DEFAULT_GPU_PRICES) == pytest.approx(1.75 * L4_RATE)
    assert pinned.cost(100.0, DEFAULT_GPU_PRICES) == pytest.approx(175 * L4_RATE)
    assert Shape("B300", 4.0, 4096).rate(DEFAULT_GPU_PRICES) is None  # no price: not a guess
    assert price_of("A10", DEFAULT_GPU_PRICES) == price_of("a10g", DEFAULT_GPU_PRICES) == 0.000306


def whole(job_id: str, tier: str | None, audio: float, busy: float, start: float = 0.0) -> UsageRecord:
    timings = {"busy_seconds": busy, "container_start": start}
    return UsageRecord(job_id, 1.0, "scnet", tier, audio, busy if tier else None, timings=timings)


def test_the_projection_counts_each_song_warm_and_with_a_wake_up():
    records = [
        whole("a", "L4", 180.0, 9.0, start=6.0),  # 0.05 s per audio s; this call woke its container
        whole("b", "L4", 60.0, 6.0),  # 0.1
        whole("c", "l4", 120.0, 3.0, start=8.0),  # 0.025
        whole("d", None, 180.0, 60.0),  # a CPU job: 1/3
        whole("e", "T4", 0.0, 5.0),  # no audio: skipped
    ]
    shapes = [Shape("L4", 4.0, 4096), Shape("T4", 4.0, 4096), Shape(None, 2.0, 3072)]
    l4, t4, cpu = project(records, shapes, DEFAULT_GPU_PRICES, idle_seconds=IDLE)
    assert (l4.tier, l4.jobs, l4.busy_per_song) == ("L4", 3, pytest.approx(9.0))  # median 0.05 x 180
    assert l4.warm_usd == pytest.approx(9.0 * L4_RATE)
    assert (l4.start_seconds, l4.start_measured, l4.idle_seconds) == (7.0, True, 10.0)  # median of 6 and 8
    assert l4.wake_usd == pytest.approx((7.0 + 10.0) * L4_RATE)
    assert l4.isolated_usd == pytest.approx((9.0 + 17.0) * L4_RATE)
    assert l4.window == 7  # the measured start: the window to deploy
    # A tier without records: its wake-up is priced, its song is not, and its start is the estimate.
    assert (t4.jobs, t4.warm_usd, t4.isolated_usd) == (0, None, None)
    assert t4.start_seconds == ASSUMED_START_SECONDS["gpu"] and not t4.start_measured
    assert t4.wake_usd == pytest.approx(20.0 * T4_RATE)
    assert (cpu.tier, cpu.jobs, cpu.busy_per_song, cpu.idle_seconds) == ("CPU", 1, pytest.approx(60.0), 5.0)
    assert cpu.isolated_usd == pytest.approx((60.0 + 5.0 + 5.0) * CPU_RATE)


def test_the_deployment_gives_each_tier_its_reservation_and_its_idle_tail():
    deployment = ModalSettings.from_env(
        {"FREESTEMS_MODAL_REGION": "us-east", "FREESTEMS_MODAL_CPU_CLASS_MEMORY": "2048"}
    )
    assert deployed_shape("L4", deployment) == Shape("L4", 4.0, 4096, ("us-east",))
    assert deployed_shape("cpu", deployment) == Shape(None, 2.0, 2048, ("us-east",))
    l4, cpu = project_deployment(RECORDS, deployment, DEFAULT_GPU_PRICES, ["L4", "CPU"])
    assert (l4.jobs, l4.idle_seconds, cpu.idle_seconds) == (3, 10.0, 5.0)  # the deployed scale-down windows
    assert l4.shape.regions == ("us-east",)


def test_a_bench_spent_nothing():
    bench = bench_records({"gpu": "L4", "runs": [{"seconds": 10.0, "wall": 1.0}]})
    assert format_recorded([*bench, record("a", "L4", 180.0, 9.0)], []).startswith("recorded spend: 1 job(s)")


def test_the_scaledown_window_is_the_start_time_within_modals_range():
    assert scaledown_window(7.2) == 8 and scaledown_window(0.3) == 2 and scaledown_window(5000) == 3600
    # The defaults deployed come from the same arithmetic on the estimated starts.
    deployment = ModalSettings()
    assert deployment.modal_scaledown_window == scaledown_window(ASSUMED_START_SECONDS["gpu"])
    assert deployment.modal_cpu_scaledown_window == scaledown_window(ASSUMED_START_SECONDS["cpu"])


def test_the_table_shows_every_part_and_states_its_assumptions():
    shapes = [Shape("L4", 4.0, 4096), Shape(None, 2.0, 3072)]
    projections = project([whole("a", "L4", 180.0, 9.0)], shapes, DEFAULT_GPU_PRICES, idle_seconds=IDLE)
    table = format_projections(projections)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["tier", "jobs"] and "isolated $/song" in lines[0]
    l4 = lines[1].split()
    assert l4[:3] == ["L4", "1", "9.0"] and l4[3] == "0.0002220+0.0000524+0.0000089"
    assert l4[4] == f"{9.0 * L4_RATE:.5f}" and l4[5] == "10*"
    assert lines[2].split()[:4] == ["CPU", "0", "no", "records"]
    assert "L4: 1 L4 + 4 cores + 4 GiB" in table and "CPU: 2 cores + 3 GiB" in table
    assert "https://modal.com/pricing" in table and "region" in table
    assert "target: under $0.005 per 3-minute song" in table


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
    assert main(["cost", "--data-dir", str(tmp_path), "--gpu", "T4", "--tier", "A10G"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"6 recorded job(s) in {tmp_path / 'jobs.sqlite3'}; 1 on the tiers shown")
    t4 = next(line for line in out.splitlines() if line.startswith("T4 ")).split()
    rate = 0.0001 + 4 * 0.0000131 + 4 * 0.00000222  # the overridden T4 price, the cores and the memory
    assert t4[:3] == ["T4", "1", "18.0"] and t4[4] == f"{18.0 * rate:.5f}"
    a10 = next(line for line in out.splitlines() if line.startswith("A10G ")).split()
    assert a10[:4] == ["A10G", "0", "no", "records"]
    assert "L4 " not in out

    assert main(["cost", "--data-dir", str(tmp_path / "elsewhere")]) == 1
    assert "no job store at" in capsys.readouterr().err


def test_the_cost_command_projects_the_cpu_tier_from_the_bench_results(capsys):
    """The recorded CPU timings of bench/bench_separate.py (a 2-thread VM) price the CPU tier."""
    results = ROOT / "bench" / "results" / "separate.json"
    assert main(["cost", "--bench", str(results)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:6] if line.strip()}
    assert set(rows) == {"tier", "T4", "L4", "A10G", "CPU"}
    data = json.loads(results.read_text())
    ratios = sorted(run["wall"] / run["seconds"] for run in data["runs"])
    busy = ratios[len(ratios) // 2] * 180
    assert rows["CPU"][:3] == ["CPU", str(len(data["runs"])), f"{busy:.1f}"]
    assert rows["CPU"][4] == f"{busy * CPU_RATE:.5f}"
    assert rows["L4"][2:4] == ["no", "records"]


# ------------------------------------------------------------------------------------ the web tier (issue 20)

WEB_RATE = 1 * 0.0000131 + 1 * 0.00000222  # the web container: 1 core, 1 GiB = 0.00001532 $/s


def test_the_web_tier_is_counted_per_visit_per_song_and_per_day_held_awake():
    web = project_web([], Shape(None, 1.0, 1024), 300, DEFAULT_GPU_PRICES)
    assert web.rate == pytest.approx(WEB_RATE)
    assert web.visit_usd == pytest.approx((3.0 + 300.0) * WEB_RATE)  # its start and its idle window
    assert round(web.visit_usd, 4) == 0.0046  # near the whole $0.005 target on its own
    assert web.day_usd == pytest.approx(86400 * WEB_RATE) and round(web.day_usd, 2) == 1.32
    assert web.song_usd == pytest.approx((3.0 + 60.0 + 300.0) * WEB_RATE) and not web.song_measured
    timed = UsageRecord("a", 1.0, "scnet", "L4", 180.0, 9.0, timings={
        "busy_seconds": 9.0, "upload": 2.0, "queue_wait": 11.0, "download": 1.0})  # fmt: skip
    measured = project_web([timed], Shape(None, 1.0, 1024), 300, DEFAULT_GPU_PRICES)
    assert measured.song_seconds == 23.0 and measured.song_measured  # a 180 s song: per audio second x 180
    text = format_web(measured)
    assert f"a visit that wakes it ${(303.0) * WEB_RATE:.5f}" in text
    assert f"a song that wakes it ${(326.0) * WEB_RATE:.5f}" in text and f"${86400 * WEB_RATE:.2f}" in text


def test_a_wake_up_counts_the_restore_from_the_spawn():
    restored = UsageRecord("a", 1.0, "scnet", "L4", 180.0, 9.0, timings={
        "busy_seconds": 9.0, "container_start": 2.0, "wake_seconds": 6.5})  # fmt: skip
    assert wake_start(restored) == 6.5  # spawn to the input taken: the restore before ready() included
    assert wake_start(whole("b", "L4", 180.0, 9.0, start=2.0)) == 2.0  # an older record: ready() only
    assert wake_start(whole("c", "L4", 180.0, 9.0)) is None  # a warm container: no wake-up


def test_the_cost_command_shows_the_web_tiers_share(capsys):
    results = ROOT / "bench" / "results" / "separate.json"
    assert main(["cost", "--bench", str(results)]) == 0
    out = capsys.readouterr().out
    web = next(line for line in out.splitlines() if line.startswith("web tier"))
    assert "1 cores + 1 GiB" in web and f"{WEB_RATE:.7f} $/s" in web
    assert (
        f"a visit that wakes it ${303.0 * WEB_RATE:.5f}" in web
        and f"held awake ${86400 * WEB_RATE:.2f}" in web
    )
    assert "A song that wakes both the web tier and a separator, alone: CPU $" in out


# ------------------------------------------------------------------- a separation on the device (issue 21)


def _export(folder: Path, name: str, fp16_snr: float | None) -> None:
    """A stand-in export: a manifest naming an fp32 file (40 MB) and, unless None, an fp16 one (20 MB)."""
    files = [{"file": "network.fp32.onnx", "precision": "fp32", "bytes": 40_000_000, "sha256": "a" * 64}]
    if fp16_snr is not None:
        files.append({"file": "network.fp16.onnx", "precision": "fp16 weights, fp32 arithmetic",
                      "bytes": 20_000_000, "sha256": "b" * 64, "snr_db_vs_fp32": fp16_snr})  # fmt: skip
    (folder / name).mkdir(parents=True)
    (folder / name / "manifest.json").write_text(json.dumps({"onnx": {"files": files}}))


def _runtime(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "ort-wasm-simd-threaded.wasm").write_bytes(b"w" * 15_000)
    (folder / "ort.wasm.min.mjs").write_bytes(b"m" * 500)
    (folder / "LICENSE").write_text("not loaded by the page")
    (folder / "ort-wasm-simd-threaded.asyncify.wasm").write_bytes(b"g" * 30_000)  # the WebGPU build's
    return folder


def test_a_device_separation_costs_the_bytes_of_a_first_visit_only(tmp_path):
    from freestems.cost import EGRESS_USD_PER_GB, project_device

    _export(tmp_path / "device", "faithful", fp16_snr=69.1)  # the page takes the fp16 file
    _export(tmp_path / "device", "loose", fp16_snr=62.0)  # under 66 dB: the fp32 one
    _export(tmp_path / "device", "only", fp16_snr=None)
    (tmp_path / "device" / "broken").mkdir()
    (tmp_path / "device" / "broken" / "manifest.json").write_text("{")
    vendor = _runtime(tmp_path / "vendor")
    costs = {c.model: c for c in project_device(tmp_path / "device", vendor, EGRESS_USD_PER_GB)}
    assert set(costs) == {"faithful", "loose", "only"}
    picked = {model: (cost.network_file, cost.network_bytes) for model, cost in costs.items()}
    assert picked == {"faithful": ("network.fp16.onnx", 20_000_000),
                      "loose": ("network.fp32.onnx", 40_000_000),
                      "only": ("network.fp32.onnx", 40_000_000)}  # fmt: skip
    faithful = costs["faithful"]
    manifest = (tmp_path / "device" / "faithful" / "manifest.json").stat().st_size
    assert faithful.runtime_bytes == 15_500 and faithful.manifest_bytes == manifest  # not the licence
    assert faithful.first_visit_bytes == 20_000_000 + manifest + 15_500
    assert faithful.first_visit_usd == pytest.approx(faithful.first_visit_bytes / 1e9 * 0.085)
    assert faithful.network_measured and faithful.runtime_measured


def test_without_exports_or_runtime_here_the_release_scnets_measured_sizes_stand_in(tmp_path):
    from freestems.cost import MEASURED_NETWORK, MEASURED_RUNTIME_BYTES, format_device, project_device

    (cost,) = project_device(None, tmp_path / "no-vendor", 0.01)
    assert (cost.model, cost.network_file, cost.network_bytes) == MEASURED_NETWORK[:3]
    assert cost.runtime_bytes == MEASURED_RUNTIME_BYTES and not cost.runtime_measured
    assert not cost.network_measured
    text = format_device([cost])
    assert "bandwidth at $0.01/GB" in text and f"${cost.first_visit_usd:.5f}" in text
    assert "network.fp16.onnx 21.4 MB*" in text and "its later ones $0" in text


def test_the_page_and_the_cost_take_the_same_network_file():
    from freestems.cost import FP16_AUTO_MIN_SNR_DB

    files = (ROOT / "src" / "freestems" / "web" / "static" / "device" / "files.js").read_text()
    assert f"export const FP16_AUTO_MIN_SNR_DB = {FP16_AUTO_MIN_SNR_DB:g};" in files


def test_the_cost_command_shows_a_device_separation_next_to_the_server_costs(tmp_path, monkeypatch, capsys):
    _export(tmp_path / "device", "scnet", fp16_snr=69.1)
    monkeypatch.setenv("FREESTEMS_EGRESS_PRICE", "0.05")
    results = ROOT / "bench" / "results" / "separate.json"
    assert main(["cost", "--bench", str(results), "--device-dir", str(tmp_path / "device")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    device = lines.index(next(line for line in lines if line.startswith("on the visitor's device")))
    assert device > lines.index(next(line for line in lines if line.startswith("web tier")))
    assert "bandwidth at $0.05/GB" in lines[device]
    scnet = lines[device + 1]
    manifest = (tmp_path / "device" / "scnet" / "manifest.json").stat().st_size
    vendor = ROOT / "src" / "freestems" / "web" / "vendor" / "onnxruntime-web"
    from freestems.cost import MEASURED_RUNTIME_BYTES, RUNTIME_FILES

    runtime = sum((vendor / name).stat().st_size for name in RUNTIME_FILES if (vendor / name).is_file())

    whole = 20_000_000 + manifest + (runtime or MEASURED_RUNTIME_BYTES)
    assert f"scnet: a browser's first separation ${whole / 1e9 * 0.05:.5f}" in scnet
    assert "network.fp16.onnx 20.0 MB +" in scnet
    assert "egress price: an assumption" in out and "aws.amazon.com/cloudfront/pricing" in out

    monkeypatch.setenv("FREESTEMS_EGRESS_PRICE", "-1")
    assert main(["cost", "--bench", str(results)]) == 1
    assert "FREESTEMS_EGRESS_PRICE" in capsys.readouterr().err
