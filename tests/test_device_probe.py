"""The faithfulness probe of an export, both sides: what ``freestems export`` writes (:mod:`freestems.export`)
and what the page's worker computes from it (``web/static/device/probe.js``, run here in Node.js).

The input must be the same bits in Python and JavaScript (it is made from a seed on both sides, never sent);
the comparison must pass an output that matches the fingerprint and fail one that does not, by the dB it
says; and the server's reader of a manifest (:func:`freestems.service.device.read_probe`) and the page's
(``readProbe``) must accept and refuse the same probes.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import shutil
import subprocess
from typing import Any

import numpy as np
import pytest

from freestems import export
from freestems.service import device

PROBE_JS = device.SERVICE_WORKER.parent / "probe.js"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
pytestmark = needs_node


def run_probe_js(body: str, given: Any) -> Any:
    """Run ``body`` (an async function body of ``probe`` (the module) and ``given``) in Node.js; its
    return value, through JSON."""
    script = f"""
      const probe = await import({json.dumps(PROBE_JS.as_uri())});
      const given = JSON.parse(require("fs").readFileSync(0, "utf8"));
      const fromBase64 = (text) => new Float32Array(new Uint8Array(Buffer.from(text, "base64")).buffer);
      const toBase64 = (array) =>
        Buffer.from(array.buffer, array.byteOffset, array.byteLength).toString("base64");
      const result = await (async () => {{ {body} }})();
      // NaN and the infinities as strings: JSON has none of them
      const named = (key, value) =>
        typeof value === "number" && !Number.isFinite(value) ? String(value) : value;
      process.stdout.write(JSON.stringify(result, named));
    """
    done = subprocess.run(
        ["node", "--input-type=commonjs", "-e", f"(async () => {{ {script} }})()"],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, np.float32).tobytes()).decode()


def a_manifest(output: np.ndarray, stems: int = 4) -> dict[str, Any]:
    """A manifest with a probe whose fingerprint is that of ``output`` (the input's facts as the export's)."""
    return {
        "model": {"stems": [f"stem{s}" for s in range(stems)]},
        "probe": {
            "input": {
                "shape": [1, 4, 33, 17],
                "dtype": "float32",
                "generator": "mulberry32",
                "seed": export.PROBE_SEED,
                "scale": export.PROBE_SCALE,
            },
            "output": export.probe_fingerprint(output, stems),
        },
    }


def test_the_probe_input_is_the_same_bits_in_python_and_javascript():
    cases = [
        (export.PROBE_SEED, export.PROBE_SCALE, [1, 4, 33, 17]),
        (0xFFFFFFFF, 0.3, [2, 1000]),
        (0, 7.5, [5]),
    ]
    made = "probe.probeInput({input: {seed, scale, shape}})"
    got = run_probe_js(f"return given.map(([seed, scale, shape]) => toBase64({made}));", cases)
    for (seed, scale, shape), text in zip(cases, got, strict=True):
        expected = export.probe_input(seed, scale, shape)
        assert expected.dtype == np.float32 and list(expected.shape) == shape
        assert np.frombuffer(base64.b64decode(text), np.float32).tobytes() == expected.tobytes()
    values = export.probe_input(export.PROBE_SEED, 1.0, [100_000])
    assert -0.5 <= values.min() < -0.49 and 0.49 < values.max() < 0.5 and abs(values.mean()) < 0.01


COMPARE = """
  const manifest = given.manifest;
  const read = probe.readProbe(manifest);
  return given.outputs.map((text) => probe.compareProbe(read, fromBase64(text)));
"""


def python_snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


def test_the_comparison_passes_the_fingerprinted_output_and_measures_a_different_one():
    rng = np.random.default_rng(5)
    output = (rng.standard_normal((1, 4, 4, 33, 17)) * 0.1).astype(np.float32)
    manifest = a_manifest(output)
    fingerprint = manifest["probe"]["output"]
    noisy = output + (rng.standard_normal(output.shape) * 0.1 * 10 ** (-50 / 20)).astype(np.float32)
    broken = output.copy()
    broken[0, 2] *= 1.01  # one stem 1 % louder: 40 dB, everywhere
    not_finite = output.copy()
    not_finite[0, 1, 0, 0, 0] = np.nan
    results = run_probe_js(
        COMPARE, {"manifest": manifest, "outputs": [encode(x) for x in (output, noisy, broken, not_finite)]}
    )
    same, measured, louder, nan = results
    assert same["db"] >= 120  # only the fingerprint's 7 digits differ
    places = [fingerprint["offset"] + k * fingerprint["step"] for k in range(fingerprint["count"])]
    for s, stem in enumerate(measured["stems"]):
        expected = python_snr(output[0, s].ravel()[places], noisy[0, s].ravel()[places])
        assert stem["values_db"] == pytest.approx(expected, abs=0.1)
        assert 45 < stem["values_db"] < 55 and stem["energy_db"] >= stem["values_db"] - 10
    assert measured["db"] == min(stem["db"] for stem in measured["stems"])
    assert louder["stems"][2]["values_db"] == pytest.approx(40, abs=0.1) and louder["db"] < 66
    assert [stem["db"] >= 120 for stem in louder["stems"]] == [True, True, False, True]
    assert nan["db"] == "NaN" and nan["stems"][1]["energy_db"] == "NaN"


def test_a_wrong_energy_alone_fails_the_comparison():
    """A stem whose fingerprinted values match but whose whole energy does not (the output wrong where the
    values were not taken) is refused: the energy bounds the SNR over every value."""
    rng = np.random.default_rng(6)
    output = (rng.standard_normal((1, 2, 2, 40, 50)) * 0.1).astype(np.float32)
    manifest = a_manifest(output, stems=2)
    manifest["probe"]["output"]["energy"][1] *= 1.001
    (result,) = run_probe_js(COMPARE, {"manifest": manifest, "outputs": [encode(output)]})
    first, second = result["stems"]
    assert first["db"] >= 120 and second["values_db"] >= 120
    # The fingerprint says 1.001 E, the output has E: |n| >= sqrt(1.002 E) - sqrt(1.001 E), about 66 dB
    bound = 10 * math.log10(1.001 / (math.sqrt(1.002) - math.sqrt(1.001)) ** 2)
    assert second["energy_db"] == pytest.approx(bound, abs=0.1) and second["db"] == second["energy_db"]


def variants(good: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The manifest ``good`` and ways to spoil its probe."""

    def changed(path: str, value: Any) -> dict[str, Any]:
        manifest = copy.deepcopy(good)
        *parents, last = path.split(".")
        target = manifest
        for part in parents:
            target = target[part]
        key: Any = int(last) if isinstance(target, list) else last
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
        return manifest

    return [
        ("good", good),
        ("no probe", changed("probe", KeyError)),
        ("probe not an object", changed("probe", [1, 2])),
        ("another generator", changed("probe.input.generator", "xorshift32")),
        ("a float16 input", changed("probe.input.dtype", "float16")),
        ("a negative seed", changed("probe.input.seed", -1)),
        ("a seed over 32 bits", changed("probe.input.seed", 2**32)),
        ("a fractional seed", changed("probe.input.seed", 2.5)),
        ("a whole float seed", changed("probe.input.seed", 21.0)),
        ("a boolean scale", changed("probe.input.scale", True)),
        ("no shape", changed("probe.input.shape", [])),
        ("a zero in the shape", changed("probe.input.shape", [1, 0, 3])),
        ("no count", changed("probe.output.count", KeyError)),
        ("a zero step", changed("probe.output.step", 0)),
        ("a string offset", changed("probe.output.offset", "3")),
        ("a stem's values missing", changed("probe.output.values", good["probe"]["output"]["values"][:-1])),
        ("a short row", changed("probe.output.values.0", good["probe"]["output"]["values"][0][:-1])),
        ("a value not a number", changed("probe.output.values.1", [None] * good["probe"]["output"]["count"])),
        ("an energy missing", changed("probe.output.energy", good["probe"]["output"]["energy"][:-1])),
        ("no stems", changed("model.stems", [])),
    ]


def test_the_server_and_the_page_read_the_same_probes(tmp_path):
    output = (np.random.default_rng(7).standard_normal((1, 4, 4, 9, 17)) * 0.1).astype(np.float32)
    cases = variants(a_manifest(output))
    page = run_probe_js(
        "return given.map((manifest) => probe.readProbe(manifest) !== null);", [m for _, m in cases]
    )
    server = [device.read_probe(manifest) is not None for _, manifest in cases]
    assert dict(zip([name for name, _ in cases], page, strict=True)) == dict(
        zip([name for name, _ in cases], server, strict=True)
    )
    assert page[0] is True and page[1:].count(True) == 1  # the whole float seed reads (as JavaScript has it)
    assert page[[name for name, _ in cases].index("a whole float seed")] is True
    # A manifest whose probe does not read is served without it (the page then uses WASM only).
    folder = tmp_path / "export"
    folder.mkdir()
    spoiled = dict(cases[3][1], onnx={"files": []})
    (folder / "manifest.json").write_text(json.dumps(spoiled))
    assert "probe" not in device.read_manifest(folder)
    (folder / "manifest.json").write_text(json.dumps(dict(cases[0][1], onnx={"files": []})))
    assert device.read_manifest(folder)["probe"] == cases[0][1]["probe"]
