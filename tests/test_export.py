"""``freestems export``: the ONNX network and its manifest give what the torch engine gives.

One small seeded SCNet (spectrogram and whole-track normalisation on, so both paths are covered) is exported
once through the CLI. The checks then redo the STFT, the inverse STFT, the chunking and the overlap window
in numpy from the manifest alone, around ONNX Runtime, as the page in a browser will: if the manifest missed
a setting, they would not match the engine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from model_helpers import make_small_checkpoint

from freestems import engine
from freestems.cli import main
from freestems.contract import LoadedModel
from freestems.models import load_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from freestems import export  # noqa: E402  (after the skips: it is only useful with the extra)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[LoadedModel, Path, dict]:
    """The small model (spec_norm and normalize on), exported with ``freestems export``; its manifest."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = make_small_checkpoint(folder / "small.pt", seed=3, normalize=True)
    with one_torch_thread():
        code = main(["export", "--model-file", str(checkpoint), "--spec-norm", "-o", str(folder / "out")])
        model = load_model(model_file=checkpoint, spec_norm=True)
    assert code == 0
    manifest = json.loads((folder / "out" / export.MANIFEST_FILE).read_text())
    return model, folder / "out", manifest


def _session(folder: Path, manifest: dict, precision: str = "fp32"):
    entry = next(f for f in manifest["onnx"]["files"] if f["precision"].startswith(precision))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(folder / entry["file"]), options, providers=["CPUExecutionProvider"]
    )


# ------------------------------------------------------------- what the page does, from the manifest alone


def _stft_window(stft: dict) -> np.ndarray:
    assert stft["window"] == "rectangular"
    window = np.zeros(stft["n_fft"])
    start = (stft["n_fft"] - stft["win_length"]) // 2
    window[start : start + stft["win_length"]] = 1.0
    return window


def sizes(manifest: dict, first: bool = False) -> tuple[int, int, int]:
    """(segment, right padding, frames) of a chunk, or of the short first chunk."""
    if first:
        chunk = manifest["chunking"]["first_chunk"]
        return chunk["segment"], chunk["right_padding"], chunk["frames"]
    stft = manifest["stft"]
    return manifest["chunking"]["segment"], stft["right_padding"], stft["frames"]


def spectrogram(chunk: np.ndarray, manifest: dict, first: bool = False) -> np.ndarray:
    """(C, segment) -> (2C, bins, frames), planes as the manifest orders them."""
    stft = manifest["stft"]
    n_fft, hop = stft["n_fft"], stft["hop_length"]
    assert stft["center"] and stft["onesided"]
    _, right_padding, count = sizes(manifest, first)
    padded = np.pad(chunk, ((0, 0), (0, right_padding)))
    padded = np.pad(padded, ((0, 0), (n_fft // 2, n_fft // 2)), mode=stft["pad_mode"])
    starts = np.arange(count) * hop
    assert starts[-1] + n_fft == padded.shape[1]  # the manifest's frame count is the one the STFT gives
    frames = padded[:, starts[:, None] + np.arange(n_fft)] * _stft_window(stft)
    spec = np.fft.rfft(frames, axis=-1) / (np.sqrt(n_fft) if stft["normalized"] else 1.0)  # (C, T, F)
    planes = np.stack([spec.real, spec.imag], axis=1)  # plane 2 * c + p
    assert manifest["tensors"]["plane_order"].endswith("at plane 2 * c + p")
    return planes.reshape(-1, *spec.shape[1:]).transpose(0, 2, 1).astype(np.float32)


def waveform(planes: np.ndarray, manifest: dict, first: bool = False) -> np.ndarray:
    """(2C, bins, frames) -> (C, segment): the inverse of :func:`spectrogram`."""
    stft = manifest["stft"]
    n_fft, hop = stft["n_fft"], stft["hop_length"]
    spec = planes[0::2].astype(np.float64) + 1j * planes[1::2]  # (C, F, T)
    window = _stft_window(stft)
    frames = np.fft.irfft(spec, n=n_fft, axis=1) * (np.sqrt(n_fft) if stft["normalized"] else 1.0)
    count = spec.shape[2]
    out = np.zeros((spec.shape[0], n_fft + hop * (count - 1)))
    envelope = np.zeros(out.shape[1])
    for t in range(count):
        out[:, t * hop : t * hop + n_fft] += frames[:, :, t] * window
        envelope[t * hop : t * hop + n_fft] += window**2
    start = n_fft // 2
    segment = sizes(manifest, first)[0]
    return (out[:, start : start + segment] / envelope[start : start + segment]).astype(np.float32)


def overlap_window(segment: int, overlap: float) -> np.ndarray:
    """The manifest's trapezoid, written from its words: stride, ramp, formula."""
    stride = max(1, round(segment * (1 - overlap)))
    ramp = segment - stride
    i = np.arange(segment)
    return np.minimum(np.minimum((i + 1) / (ramp + 1), (segment - i) / (ramp + 1)), 1.0).astype(np.float32)


def whole_track_stats(mix: np.ndarray, manifest: dict) -> tuple[float, float]:
    """Mean and deviation of the mono mix, as the manifest's whole-track normalisation says ((0, 1): off)."""
    if not manifest["normalization"]["whole_track"]["enabled"]:
        return 0.0, 1.0
    mono = mix.mean(axis=0, dtype=np.float64)
    std = float(mono.std(ddof=1))
    return float(mono.mean()), std if std > 1e-8 else 1.0


def chunk_starts(length: int, chunking: dict) -> list[int]:
    assert chunking["chunk_tail"] == "zeros"
    stride = max(1, round(chunking["segment"] * (1 - chunking["overlap"])))
    starts = [0]
    while starts[-1] + chunking["segment"] < length:
        starts.append(starts[-1] + stride)
    return starts


def separate_chunk(session, chunk: np.ndarray, manifest: dict, first: bool = False) -> np.ndarray:
    """(C, segment) -> (stems, C, segment) through ONNX Runtime, the STFT and its inverse in numpy
    (``first``: the short first chunk's sizes)."""
    tensors = manifest["tensors"]
    feed = {tensors["input"]["name"]: spectrogram(chunk, manifest, first)[None]}
    stems = session.run([tensors["output"]["name"]], feed)[0][0]
    return np.stack([waveform(planes, manifest, first) for planes in stems])


def separate_with_onnx(
    mix: np.ndarray, folder: Path, manifest: dict, precision: str = "fp32"
) -> dict[str, np.ndarray]:
    """The whole separation, chunk by chunk through ONNX Runtime, as the manifest describes it."""
    chunking, session = manifest["chunking"], _session(folder, manifest, precision)
    segment = chunking["segment"]
    mean, std = whole_track_stats(mix, manifest)
    starts = chunk_starts(mix.shape[1], chunking)
    padded = np.zeros((mix.shape[0], starts[-1] + segment), np.float32)  # zeros past the end
    padded[:, : mix.shape[1]] = (mix - mean) / std
    weights = overlap_window(segment, chunking["overlap"])
    sums = np.zeros((len(manifest["model"]["stems"]), *padded.shape))
    total = np.zeros(padded.shape[1])
    for start in starts:
        sums[..., start : start + segment] += (
            separate_chunk(session, padded[:, start : start + segment], manifest) * weights
        )
        total[start : start + segment] += weights
    result = (sums / total)[..., : mix.shape[1]] * std + mean
    return {name: result[s].astype(np.float32) for s, name in enumerate(manifest["model"]["stems"])}


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


def music(seconds: float, seed: int = 1) -> np.ndarray:
    """Stereo tones, a bass line and noise: a mix with something in every stem's range."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 44100)) / 44100
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 55 * t * (1 + 0.01 * t))
    return np.stack([tones, 0.8 * tones]) + 0.05 * rng.standard_normal((2, t.size)) + 0.02


# -------------------------------------------------------------------------------------------------- tests


def test_one_chunk_through_onnx_matches_the_torch_model(exported):
    model, folder, manifest = exported
    chunk = music(manifest["chunking"]["segment"] / 44100).astype(np.float32)
    with torch.inference_mode():
        expected = model.module(torch.from_numpy(chunk)[None])[0].numpy()
    got = separate_chunk(_session(folder, manifest), chunk, manifest)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    if manifest["onnx"]["fp16"]["written"]:
        half = separate_chunk(_session(folder, manifest, "fp16"), chunk, manifest)
        assert min(snr_db(expected[s], half[s]) for s in range(len(half))) >= 60


def test_the_whole_separation_through_onnx_matches_the_engine(exported):
    model, folder, manifest = exported
    mix = music(5.0, seed=2).astype(np.float32)
    with one_torch_thread():
        expected = engine.separate(mix, model)
    got = separate_with_onnx(mix, folder, manifest)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].shape == expected[name].shape
        assert snr_db(expected[name], got[name]) >= 60, name


def test_the_short_first_chunk_runs_through_the_same_file(exported):
    model, folder, manifest = exported
    first = manifest["chunking"]["first_chunk"]
    assert 0 < first["segment"] <= manifest["chunking"]["segment"] // 2 and first["frames"] % 2 == 0
    chunk = music(first["segment"] / 44100, seed=4).astype(np.float32)
    with torch.inference_mode():
        expected = model.module(torch.from_numpy(chunk)[None])[0].numpy()
    got = separate_chunk(_session(folder, manifest), chunk, manifest, first=True)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
    if manifest["onnx"]["fp16"]["written"]:
        half = separate_chunk(_session(folder, manifest, "fp16"), chunk, manifest, first=True)
        assert min(snr_db(expected[s], half[s]) for s in range(len(half))) >= 60


@pytest.mark.parametrize("frames", [476, 30, 2])
def test_the_matrix_rfft_gives_torchs_rfft_and_its_inverse(frames):
    from freestems.models.scnet import FeatureConversion

    generator = torch.Generator().manual_seed(frames)
    signal = torch.randn(1, 8, 5, frames, generator=generator)
    spectrum = torch.randn(1, 16, 5, frames // 2 + 1, generator=generator)
    for inverse, given in [(False, signal), (True, spectrum)]:
        expected = FeatureConversion(inverse)(given)
        got = export._MatrixRFFT(inverse)(given)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


def test_the_exported_graph_takes_no_dft_and_stores_no_index_matrices(exported):
    model, folder, manifest = exported
    proto = onnx.load(str(folder / export.FP32_FILE))
    ops = {node.op_type for node in proto.graph.node}
    assert "DFT" not in ops and {"MatMul", "Cos", "Sin", "Range"} <= ops
    frames = manifest["stft"]["frames"]
    matrix = {frames * (frames // 2 + 1)}
    assert not [t.name for t in proto.graph.initializer if int(np.prod(t.dims)) in matrix]  # made, not stored
    conversions = model.module.separation_net.feature_conversion
    assert all(type(module).__name__ == "FeatureConversion" for module in conversions)  # torch's own again


def test_the_manifest_window_is_the_engines(exported):
    *_, manifest = exported
    chunking = manifest["chunking"]
    assert chunking["overlap"] == 0.25 and chunking["window"]["kind"] == "trapezoid"
    segment = chunking["segment"]
    assert chunking["stride_at_default_overlap"] == max(1, round(segment * (1 - chunking["overlap"])))
    for length, overlap in [(segment, chunking["overlap"]), (segment, 0.5), (4096, 0.1), (10_000, 0.0)]:
        stride = max(1, round(length * (1 - overlap)))
        np.testing.assert_allclose(overlap_window(length, overlap), engine.window(length, length - stride))


def test_the_manifest_gives_every_file_its_checksum_and_size(exported):
    _, folder, manifest = exported
    files = manifest["onnx"]["files"]
    assert {entry["file"] for entry in files} | {export.MANIFEST_FILE} == {p.name for p in folder.iterdir()}
    for entry in files:
        data = (folder / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        proto = onnx.load(str(folder / entry["file"]))
        assert proto.opset_import[0].version == manifest["onnx"]["opset"]
    assert files[0]["precision"] == "fp32" and files[0]["max_abs_error_vs_torch"] < 1e-5
    assert manifest["onnx"]["fp16"]["written"] == (len(files) == 2)


def test_the_manifest_describes_the_model_and_the_tensors(exported):
    model, folder, manifest = exported
    assert manifest["model"]["stems"] == list(model.sources)
    assert manifest["model"]["sample_rate"] == 44100
    assert manifest["normalization"]["whole_track"]["enabled"] is True
    assert manifest["normalization"]["spectrogram"]["enabled"] is True
    tensors = manifest["tensors"]
    session = _session(folder, manifest)
    (given,), (taken,) = session.get_inputs(), session.get_outputs()
    assert (given.name, list(given.shape)) == (tensors["input"]["name"], tensors["input"]["shape"])
    assert (taken.name, list(taken.shape)) == (tensors["output"]["name"], tensors["output"]["shape"])
    assert tensors["dynamic_axes"] == ["frames"] and tensors["input"]["shape"][0] == 1
    assert tensors["input"]["shape"][3] == tensors["output"]["shape"][4] == "frames"
    assert manifest["stft"]["frames"] % 2 == 0


def test_the_manifest_probe_is_native_onnxruntimes_output_for_its_input(exported):
    """The faithfulness probe, redone from the manifest alone: its input from its seed, the fp32 file through
    ONNX Runtime, the values at the places it names and each stem's energy."""
    _, folder, manifest = exported
    given, output = manifest["probe"]["input"], manifest["probe"]["output"]
    stems = len(manifest["model"]["stems"])
    assert given["generator"] == "mulberry32" and given["dtype"] == "float32"
    assert given["shape"][:3] == manifest["tensors"]["input"]["shape"][:3]
    assert given["shape"][3] == manifest["chunking"]["first_chunk"]["frames"]  # a first chunk's frames
    assert output["file"] == export.FP32_FILE and output["count"] == export.PROBE_VALUES_PER_STEM
    spectrogram = export.probe_input(given["seed"], given["scale"], given["shape"])
    tensors = manifest["tensors"]
    got = _session(folder, manifest).run(
        [tensors["output"]["name"]], {tensors["input"]["name"]: spectrogram}
    )[0]
    per_stem = got.reshape(stems, -1)
    places = output["offset"] + output["step"] * np.arange(output["count"])
    assert places[-1] < per_stem.shape[1]
    np.testing.assert_allclose(per_stem[:, places], output["values"], rtol=1e-5, atol=1e-7)
    energy = np.sum(per_stem.astype(np.float64) ** 2, axis=1)
    np.testing.assert_allclose(energy, output["energy"], rtol=1e-5)
    assert len(json.dumps(manifest["probe"])) < 40_000  # small beside the network, read at every visit


def test_an_fp16_file_that_is_not_faithful_is_not_written(exported, tmp_path, monkeypatch):
    model, folder, manifest = exported
    proto = onnx.load(str(folder / export.FP32_FILE))
    probe = export._probe(model.module, model.segment).numpy()
    reference = export._run(folder / export.FP32_FILE, probe)
    monkeypatch.setattr(export, "FP16_MIN_SNR_DB", 500.0)
    entry, facts = export._write_fp16(proto, tmp_path / export.FP16_FILE, probe, reference)
    assert entry is None and facts["written"] is False and "under 500 dB" in facts["reason"]
    assert list(tmp_path.iterdir()) == []


def test_asked_for_the_int8_file_runs_its_lstms_in_8_bits_and_the_manifest_says_how_far_it_is(
    exported, tmp_path, capsys
):
    model, _, plain = exported
    checkpoint = tmp_path / "small.pt"
    make_small_checkpoint(checkpoint, seed=3, normalize=True)
    out = tmp_path / "out"
    with one_torch_thread():
        code = main(["export", "--model-file", str(checkpoint), "--spec-norm", "--int8", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().err
    assert f"{out / export.INT8_FILE}: int8 LSTMs and linear layers, fp32 elsewhere" in printed
    manifest = json.loads((out / export.MANIFEST_FILE).read_text())
    check = manifest["onnx"]["int8"]
    (entry,) = [f for f in manifest["onnx"]["files"] if f["precision"].startswith("int8")]
    assert check["written"] is True and check["min_snr_db"] == export.INT8_MIN_SNR_DB
    assert entry["file"] == export.INT8_FILE and entry["snr_db_vs_fp32"] == check["snr_db"] >= 40
    data = (out / export.INT8_FILE).read_bytes()
    assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    ops = {node.op_type for node in onnx.load(str(out / export.INT8_FILE)).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops and "LSTM" not in ops
    assert plain["onnx"]["int8"] == {"written": False, "min_snr_db": 40.0, "reason": "not asked for"}

    # The page's whole separation with it, and its short first chunk (the frame axis is still dynamic).
    mix = music(5.0, seed=2).astype(np.float32)
    with one_torch_thread():
        expected = engine.separate(mix, model)
    got = separate_with_onnx(mix, out, manifest, "int8")
    snrs = {name: snr_db(reference, got[name]) for name, reference in expected.items()}
    print(f"int8 file vs engine (dB): {snrs}; vs fp32 on the probe: {check['snr_db']}")
    assert min(snrs.values()) >= 30, snrs
    chunk = music(manifest["chunking"]["first_chunk"]["segment"] / 44100, seed=4).astype(np.float32)
    with torch.inference_mode():
        reference = model.module(torch.from_numpy(chunk)[None])[0].numpy()
    first = separate_chunk(_session(out, manifest, "int8"), chunk, manifest, first=True)
    assert first.shape == reference.shape
    assert min(snr_db(reference[s], first[s]) for s in range(len(first))) >= 30

    # Exported again without it: the int8 file of before goes, so that no manifest vouches for it.
    with one_torch_thread():
        assert main(["export", "--model-file", str(checkpoint), "--spec-norm", "-o", str(out)]) == 0
    assert not (out / export.INT8_FILE).exists()


def test_the_page_takes_the_int8_file_only_when_asked_for():
    fp32 = {"file": "network.fp32.onnx", "precision": "fp32"}
    fp16 = {"file": "network.fp16.onnx", "precision": "fp16 weights, fp32 arithmetic", "snr_db_vs_fp32": 80}
    int8 = {"file": "network.int8.onnx", "precision": "int8 LSTMs and linear layers", "snr_db_vs_fp32": 56}
    files_js = Path(export.__file__).parent / "web" / "static" / "device" / "files.js"
    script = f"""
      const files = await import({json.dumps(files_js.as_uri())});
      const manifest = (list) => ({{onnx: {{files: list}}}});
      const all = manifest({json.dumps([fp32, fp16, int8])});
      const picked = ["auto", "fp32", "fp16", "int8"].map((asked) => files.chooseFile(all, asked).file);
      let refused = "";
      try {{
        files.chooseFile(manifest({json.dumps([fp32])}), "int8");
      }} catch (error) {{
        refused = error.message;
      }}
      process.stdout.write(JSON.stringify({{picked, refused}}));
    """
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "picked": ["network.fp16.onnx", "network.fp32.onnx", "network.fp16.onnx", "network.int8.onnx"],
        "refused": "this model's export has no int8 file (freestems export --int8)",
    }


@pytest.mark.parametrize(
    ("name", "words"),
    [("htdemucs", "htdemucs model: not exportable yet"), ("scnet+scnet-large", "ensemble")],
)
def test_a_family_not_supported_yet_is_refused_before_any_download(tmp_path, capsys, name, words):
    code = main(["export", name, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    assert words in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_a_loaded_model_of_another_family_is_refused(tmp_path):
    other = LoadedModel(
        module=torch.nn.Identity(), name="other", sources=("vocals",), segment=44100, normalize=False
    )
    with pytest.raises(export.ExportError, match="other is a Identity: not exportable yet"):
        export.export_model(other, tmp_path)


def test_an_unwritable_output_folder_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    checkpoint = make_small_checkpoint(tmp_path / "small.pt")
    code = main(["export", "--model-file", str(checkpoint), "-o", str(blocker / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"freestems: cannot write to {blocker / 'out'}: ") and err.count("\n") == 1
    with pytest.raises(export.ExportError, match="cannot write to"):
        export.prepare_folder(blocker)
