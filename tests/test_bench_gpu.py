"""``bench/bench_gpu.py`` on the CPU path: tiny configurations of every family, a second of audio, two batch
sizes; the JSON and the markdown table it writes. (Its numbers on a GPU come from a run there.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_torch_thread

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_gpu"]


def test_snr_of_identical_and_of_noisy_stems(bench):
    rng = np.random.default_rng(1)
    reference = {"a": rng.standard_normal((2, 1000)).astype(np.float32)}
    assert bench.snr_db(reference, dict(reference)) is None
    noisy = {"a": reference["a"] * np.float32(1.01)}  # error 1% of the signal: 40 dB
    assert bench.snr_db(reference, noisy) == pytest.approx(40.0, abs=0.1)


def test_the_cpu_path_runs_every_family_and_writes_json_and_a_table(bench, tmp_path):
    out = tmp_path / "gpu_cpu.json"
    printed: list[str] = []
    argv = ["--device", "cpu", "--quick", "--seconds", "1", "--batch-sizes", "1", "2"]
    argv += ["--precisions", "fp32", "bf16", "--out", str(out)]
    with one_torch_thread():
        results = bench.main(argv, report=printed.append)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["quick"] and results["device"] == "cpu" and results["batch_sizes"] == [1, 2]
    families = [row["family"] for row in results["rows"]]
    assert families == bench.available_families() and {"scnet", "mdx23c", "bs-roformer"} <= set(families)
    for row in results["rows"]:
        assert list(row["precisions"]) == ["fp32", "bf16"], row["family"]
        for precision, result in row["precisions"].items():
            assert "error" not in result, (row["family"], precision, result)
            assert result["fastest_batch"] in (1, 2) and set(result["by_batch"]) == {"1", "2"}
            times = [run["seconds_per_song"] for run in result["by_batch"].values()]
            assert result["seconds_per_song"] == min(times)
            assert result["seconds_per_song"] > 0 and result["peak_gpu_mb"] is None  # no GPU memory on a CPU
        assert row["precisions"]["fp32"]["snr_db"] is None
        bf16 = row["precisions"]["bf16"]["snr_db"]
        if row["family"] == "htdemucs":
            assert bf16 is None  # Demucs computes in fp32 whatever the engine's precision
        else:
            assert 20 < bf16 < 150, row["family"]  # bf16 keeps about 8 bits: close, not equal
    table = printed[-1].splitlines()
    assert table[0].startswith("| family | precision | SNR vs fp32 (dB)")
    assert len(table) == 2 + 2 * len(families)
