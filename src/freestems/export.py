"""Export a model's network as ONNX, with a manifest that says how to run it, for separation in a browser.

A browser (onnxruntime-web) can run the network, but not torch's STFT or our engine. So the export writes the
part between the STFT and the inverse STFT (:meth:`freestems.models.scnet.SCNet.network`) as ONNX, and
beside it ``manifest.json``: everything else the page must redo to give what :func:`freestems.engine.separate`
gives (stems, STFT settings and the tensors' layout, the chunk length, the overlap window, the whole-track
normalisation), read from the model and the engine wherever they say it, plus each file's sha256 and size.

Every file is checked before it is written: the fp32 network must give torch's output on a probe chunk, and
the fp16 one (weights stored as fp16, cast back to fp32 when loaded: half the download) is written only
where its output stays within :data:`FP16_MIN_SNR_DB` of the fp32 one; the manifest says which and why.
Asked for (``int8=True``), an int8 file is written too: its LSTMs (most of a chunk's time in a browser's
WASM) and linear layers in 8 bits (ONNX Runtime's dynamic quantisation), with how far its output is from the
fp32 one's; how faithful it is with trained weights is not known, so a page runs it only when asked for.
The manifest also carries a faithfulness probe for another runtime (``probe``: an input any language makes
bit for bit from a seed, and a fingerprint of the fp32 network's output for it, :func:`_probe_facts`): the
page runs it before it trusts a backend such as WebGPU with the network.
SCNet only, so far; other families get an :class:`ExportError` saying so.

Nothing in freestems imports this module but the CLI (``freestems export``); it needs the ``export`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from freestems import engine
from freestems.contract import LoadedModel
from freestems.errors import one_line
from freestems.files import atomic_path, temp_path
from freestems.models import get_model_info
from freestems.models.catalog import EXPORTABLE_FAMILIES
from freestems.models.scnet import FeatureConversion, SCNet
from freestems.models.spelling import SEPARATOR
from freestems.rules import MAX_OVERLAP
from freestems.version import __version__

if TYPE_CHECKING:
    import onnx

OPSET = 20
"""The ONNX opset of the files (the exporter's DFT, LSTM and Gelu need 20)."""

FP16_MIN_SNR_DB = 60.0
"""The fp16 file is written only if its output is at least this close to the fp32 file's (dB, every stem)."""

INT8_MIN_SNR_DB = 40.0
"""The int8 file is written only if its output is at least this close to the fp32 file's (dB, every stem): a
sanity floor, not faithfulness (the release model's seeded weights give about 56 dB on the probe chunk)."""

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
FP32_FILE = "network.fp32.onnx"
FP16_FILE = "network.fp16.onnx"
INT8_FILE = "network.int8.onnx"
INPUT_NAME = "spectrogram"
OUTPUT_NAME = "stems"
EXPORTABLE = EXPORTABLE_FAMILIES
"""The model families that can be exported (catalog ``architecture`` values)."""

FRAMES_AXIS = "frames"
"""The name of the network's one dynamic axis: the spectrogram's frame count (even)."""

FIRST_CHUNK_SECONDS = 3.0
"""The length of the short first chunk that the page may run for a first sound sooner (see the manifest)."""

_MAX_FRAMES = 1 << 14  # the dynamic frame axis's upper bound (a 6-minute chunk): the exporter needs one

PROBE_SEED = 21
"""The seed of the faithfulness probe's input (:func:`probe_input`)."""
PROBE_SCALE = 1.0
"""The probe's input values are uniform in [-scale / 2, scale / 2): a normalised spectrogram's order."""
PROBE_VALUES_PER_STEM = 512
"""How many output values per stem the probe's fingerprint keeps (with every stem's total energy)."""
_MULBERRY32_STEP = 0x6D2B79F5

_MAX_RELATIVE_ERROR = 1e-4  # of the fp32 file against torch, relative to the output's peak
_PROBE_SEED = 0
_MIN_CONSTANT_SIZE = 16  # smaller constants are never rewritten


class ExportError(Exception):
    """The model cannot be exported (its family, a missing package, an unwritable folder, a failed check)."""


def require_exporter() -> None:
    """Raise :class:`ExportError` unless the packages of the ``export`` extra are installed."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise ExportError(f"{package} is missing: pip install 'freestems[export]'") from None


def check_exportable(name: str) -> None:
    """Refuse a catalog name (or ensemble) of a family that cannot be exported yet, before any download."""
    if SEPARATOR in name:
        raise ExportError(f"{name} is an ensemble: export its members one by one")
    family = get_model_info(name).architecture
    if family not in EXPORTABLE:
        raise ExportError(
            f"model {name} is a {family} model: not exportable yet (only {', '.join(EXPORTABLE)})"
        )


def prepare_folder(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and check that files can be written in it."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / MANIFEST_FILE)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ExportError(f"cannot write to {folder}: {one_line(error)}") from None
    return folder


def export_model(
    model: LoadedModel, out_dir: str | os.PathLike[str], *, fp16: bool = True, int8: bool = False
) -> dict[str, Any]:
    """Write ``model``'s network as ONNX (fp32, fp16 where faithful, int8 LSTMs if ``int8``) and
    ``manifest.json`` in ``out_dir``.

    The model must be on the CPU. ONNX Runtime uses as many threads as torch (``torch.get_num_threads()``).
    Returns the manifest.
    """
    require_exporter()
    scnet = _scnet_of(model)
    folder = prepare_folder(out_dir)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # an earlier manifest must not vouch for new files
    probe = _probe(scnet, model.segment)
    short = _probe(scnet, _first_chunk(model))  # the graph must give torch's output for it too
    with torch.inference_mode():
        expected = [_Network(scnet)(given).numpy() for given in (probe, short)]
    proto = _export_network(scnet, probe)
    fp32, reference = _write_fp32(proto, folder / FP32_FILE, [probe.numpy(), short.numpy()], expected)
    files = [fp32]
    fp16_facts: dict[str, Any] = {"written": False, "min_snr_db": FP16_MIN_SNR_DB, "reason": "not asked for"}
    (folder / FP16_FILE).unlink(missing_ok=True)  # a file of an earlier export must not outlive its check
    if fp16:
        entry, fp16_facts = _write_fp16(proto, folder / FP16_FILE, probe.numpy(), reference)
        files += [entry] if entry else []
    int8_facts: dict[str, Any] = {"written": False, "min_snr_db": INT8_MIN_SNR_DB, "reason": "not asked for"}
    (folder / INT8_FILE).unlink(missing_ok=True)
    if int8:
        entry, int8_facts = _write_int8(folder / FP32_FILE, folder / INT8_FILE, probe.numpy(), reference)
        files += [entry] if entry else []
    manifest = _manifest(model, scnet, proto, files, {"fp16": fp16_facts, "int8": int8_facts})
    # A first chunk's shape: a quarter of a whole chunk's work for the page that checks a backend with it.
    manifest["probe"] = _probe_facts(folder / FP32_FILE, list(short.shape), len(model.sources))
    with atomic_path(folder / MANIFEST_FILE) as temp:
        temp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------------------- the network


class _Network(nn.Module):
    """What the ONNX file holds: :meth:`SCNet.network`, its output split by stem, (B, S, 2C, F, T)."""

    def __init__(self, scnet: SCNet):
        super().__init__()
        self.scnet = scnet

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.scnet.network(spectrogram)
        return out.view(out.shape[0], len(self.scnet.sources), *spectrogram.shape[1:])


class _MatrixRFFT(FeatureConversion):
    """:class:`~freestems.models.scnet.FeatureConversion` as products with cos and sin matrices, for export.

    The separation net's rFFT over time (and its inverse) has the chunk's frame count as its length, not a
    power of two: ONNX Runtime's DFT kernel spent a quarter to a third of the network's time on it. A matrix
    product over those few hundred frames gives the same numbers (within float32 rounding) in a fraction of
    that (torch's own FFT stays faster in torch, so only the export uses this). The matrices are made from
    the input's frame count, so the file stores nothing more, they are never fp16, and the graph takes any
    (even) frame count: the page runs a short first chunk with the same file (:data:`FIRST_CHUNK_SECONDS`).
    Only :meth:`forward` differs: it is made as FeatureConversion is, with its ``inverse``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.inverse:
            real, imag = x.chunk(2, dim=1)
            cos, sin = _dft_matrices(2 * (x.shape[3] - 1), inverse=True)
            return real @ cos + imag @ sin
        cos, sin = _dft_matrices(x.shape[3], inverse=False)
        return torch.cat([x @ cos, x @ sin], dim=1)


def _dft_matrices(frames: int, *, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The real and imaginary parts of the orthonormal real DFT of ``frames`` (even) points as matrices.

    Forward: (frames, bins), ``x @ cos`` and ``x @ sin`` are the spectrum's real and imaginary parts.
    Inverse: (bins, frames), ``re @ cos + im @ sin`` is the signal, every bin but the first and the last
    counted twice (its mirror image), the imaginary parts of those two ignored, as torch's irfft does.
    ``n * k mod frames`` is taken in integers first, so that every angle is in [0, 2 pi) before it is a
    float32. Written with tensor arithmetic only, so that an export with a dynamic frame count keeps it
    symbolic (``float(frames)`` would fix the frame count, ``% frames`` does not export).
    """
    count: torch.Tensor = torch.ones((), dtype=torch.int64) * frames  # frames: a SymInt when exported
    n = torch.arange(frames, dtype=torch.int64)
    k = torch.arange(frames // 2 + 1, dtype=torch.int64)
    turns = (k[:, None] * n[None, :]) % count if inverse else (n[:, None] * k[None, :]) % count
    angle = turns.to(torch.float32) * (2 * math.pi) / count.to(torch.float32)
    scale = torch.rsqrt(count.to(torch.float32))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * -scale
    if not inverse:
        return cos, sin
    twice = torch.ones_like(k, dtype=torch.float32) * 2
    twice[0] = 1.0
    twice[-1] = 1.0
    return cos * twice[:, None], sin * twice[:, None]


@contextlib.contextmanager
def _matrix_dft(scnet: SCNet) -> Iterator[None]:
    """``scnet``'s time-axis rFFTs are :class:`_MatrixRFFT` while the block runs."""
    conversions = scnet.separation_net.feature_conversion
    originals = list(conversions)
    try:
        for index, module in enumerate(originals):
            conversions[index] = _MatrixRFFT(cast(FeatureConversion, module).inverse)
        yield
    finally:
        for index, module in enumerate(originals):
            conversions[index] = module


def _scnet_of(model: LoadedModel) -> SCNet:
    """The SCNet inside ``model``, or an :class:`ExportError` naming what the model is instead."""
    if model.stream is not None:
        raise ExportError(f"{model.name} is an ensemble: export its members one by one")
    module = model.module
    if not isinstance(module, SCNet):
        raise ExportError(f"model {model.name} is a {type(module).__name__}: not exportable yet (only SCNet)")
    if model.chunk_tail != "zeros":
        raise ExportError(
            f"model {model.name} chunks the end of a track {model.chunk_tail!r}: not exportable"
        )
    if not bool(torch.all(module.window == 1)):
        raise ExportError(
            f"model {model.name} has an STFT window other than a rectangular one: not exportable"
        )
    return module


def _probe(scnet: SCNet, segment: int) -> torch.Tensor:
    """The spectrogram of a segment of seeded noise (std 0.1): the example the export and its checks run."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    noise = torch.randn(1, scnet.audio_channels, segment, generator=generator) * 0.1
    with torch.inference_mode():
        return scnet.spectrogram(noise)


def _first_chunk(model: LoadedModel) -> int:
    """The short first chunk's length in samples: :data:`FIRST_CHUNK_SECONDS`, at most half a segment."""
    return min(round(FIRST_CHUNK_SECONDS * model.sample_rate), model.segment // 2)


def _export_network(scnet: SCNet, probe: torch.Tensor) -> onnx.ModelProto:
    """The network as an ONNX model (dynamo exporter), torch's node notes dropped.

    The frame axis is dynamic (any even count: the rFFT over time needs it), so that the page can run a
    short first chunk with the same file; every other shape is fixed, the batch at 1 (the page runs one chunk
    at a time, and a dynamic batch axis triples the export time).
    """
    frames = 2 * torch.export.Dim("half_frames", min=2, max=_MAX_FRAMES // 2)
    try:
        with _quiet_torch(), _matrix_dft(scnet):
            program = torch.onnx.export(
                _Network(scnet).eval(),
                (probe,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"spectrogram": {3: frames}},
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # the exporter fails in many ways, all of them "cannot export this"
        raise ExportError(f"torch cannot export the network: {one_line(error)}") from None
    assert program is not None
    proto: onnx.ModelProto = program.model_proto
    for item in [*proto.graph.node, *proto.graph.value_info]:
        del item.metadata_props[:]  # stack traces with this machine's paths: bulk, and nobody's business
    # The exporter notes some intermediate shapes (the LSTMs' outputs) at the probe's frame count, and ONNX
    # Runtime's Gemm fusion trusts the notes: any other frame count then fails. It infers them itself.
    del proto.graph.value_info[:]
    for dim in [
        *proto.graph.input[0].type.tensor_type.shape.dim,
        *proto.graph.output[0].type.tensor_type.shape.dim,
    ]:
        if dim.dim_param:
            dim.dim_param = FRAMES_AXIS  # the exporter's name for it is its own (s0, ...)
    return _rewrite_constants(proto, _zeros_made)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """No warnings or log lines from torch's exporter: notes about its own internals (torchvision is not
    installed, deprecated helpers) are no news to the user."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


# --------------------------------------------------------------------------------------------- the files


def _write_fp32(
    proto: onnx.ModelProto, path: Path, probes: list[np.ndarray], expected: list[np.ndarray]
) -> tuple[dict[str, Any], np.ndarray]:
    """Write the fp32 file if ONNX Runtime gives torch's output with it for every probe (a whole chunk's
    spectrogram first, then a first chunk's); its entry and its output for the first probe."""
    with atomic_path(path) as temp:
        _save(proto, temp)
        outputs = [_run(temp, probe) for probe in probes]
        error = max(
            float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
            for got, want in zip(outputs, expected, strict=True)
        )
        peak = max(float(np.abs(want).max()) for want in expected)
        if not error <= _MAX_RELATIVE_ERROR * max(peak, 1.0):  # NaN included
            raise ExportError(f"the ONNX network differs from torch by {error:.3g} (output peak {peak:.3g})")
        entry = _file_entry(temp, path.name, "fp32")
    entry["max_abs_error_vs_torch"] = error
    return entry, outputs[0]


def _write_fp16(
    proto: onnx.ModelProto, path: Path, probe: np.ndarray, reference: np.ndarray
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Write the fp16-weights file if its output is faithful; its entry (or None) and what was measured."""
    temp = temp_path(path)
    try:
        _save(_rewrite_constants(proto, _fp16_stored), temp)
        return _keep_if_close(temp, path, "fp16 weights, fp32 arithmetic", probe, reference, FP16_MIN_SNR_DB)
    finally:
        temp.unlink(missing_ok=True)


def _write_int8(
    fp32: Path, path: Path, probe: np.ndarray, reference: np.ndarray
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Write the file whose LSTMs and linear layers run in 8 bits if its output is within
    :data:`INT8_MIN_SNR_DB` of the fp32 file's; its entry (or None) and what was measured.

    ONNX Runtime's dynamic quantisation: the weights stored as int8, the inputs quantised at each run
    (``DynamicQuantizeLSTM`` and ``MatMulInteger``, which onnxruntime-web's WASM backend runs; WebGPU does
    not). The time axis's DFT matrices are made from the frame count, so they stay fp32. The quantiser needs
    the weights as constants, and the export makes the LSTMs' with nodes (the gates reordered), so ONNX
    Runtime's basic optimisations fold them first."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded, temp = temp_path(path.with_suffix(".folded")), temp_path(path)
    try:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process first, for static quantisation
        try:
            kinds = ["LSTM", "MatMul"]
            quantize_dynamic(folded, temp, weight_type=QuantType.QInt8, op_types_to_quantize=kinds)
        finally:
            root.setLevel(level)
        precision = "int8 LSTMs and linear layers, fp32 elsewhere"
        return _keep_if_close(temp, path, precision, probe, reference, INT8_MIN_SNR_DB)
    finally:
        folded.unlink(missing_ok=True)
        temp.unlink(missing_ok=True)


def _keep_if_close(
    temp: Path, path: Path, precision: str, probe: np.ndarray, reference: np.ndarray, minimum: float
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Move ``temp`` to ``path`` if its output for ``probe`` is within ``minimum`` dB of the fp32 file's
    (``reference``) for every stem; its entry (or None) and what was measured."""
    facts: dict[str, Any] = {"written": False, "min_snr_db": minimum}
    output = _run(temp, probe)
    snr = min(_snr_db(reference[:, s], output[:, s]) for s in range(reference.shape[1]))
    facts["snr_db"] = round(snr, 2) if math.isfinite(snr) else None  # JSON has no NaN or infinity
    if math.isnan(snr):
        facts["reason"] = "its output is not finite"
        return None, facts
    if snr < minimum:
        facts["reason"] = f"its output is {snr:.1f} dB from the fp32 file's, under {minimum:g} dB"
        return None, facts
    entry = _file_entry(temp, path.name, precision)
    os.replace(temp, path)
    facts["written"] = True
    entry["snr_db_vs_fp32"] = facts["snr_db"]
    return entry, facts


Replacement = tuple[list["onnx.TensorProto"], list["onnx.NodeProto"]]
"""A constant's stand-in: new initializers and the nodes that make the old one's name from them."""


def _rewrite_constants(
    proto: onnx.ModelProto, rewrite: Callable[[onnx.TensorProto, np.ndarray], Replacement | None]
) -> onnx.ModelProto:
    """A copy of ``proto`` in which ``rewrite`` may replace each initializer of at least
    :data:`_MIN_CONSTANT_SIZE` values; the replacing nodes run first. Scalars are left alone."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    kept, first = [], []
    for tensor in graph.initializer:
        values = numpy_helper.to_array(tensor)
        replacement = rewrite(tensor, values) if values.size >= _MIN_CONSTANT_SIZE else None
        if replacement is None:
            kept.append(tensor)
        else:
            kept.extend(replacement[0])
            first.extend(replacement[1])
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(first + nodes)
    return copy


def _zeros_made(tensor: onnx.TensorProto, values: np.ndarray) -> Replacement | None:
    """An all-zero float constant made at load time (ConstantOfShape) instead of stored: the exporter
    stores the LSTMs' initial states, megabytes of zeros in a release SCNet."""
    from onnx import TensorProto, helper, numpy_helper

    if tensor.data_type != TensorProto.FLOAT or values.any():
        return None
    shape = numpy_helper.from_array(np.array(values.shape, np.int64), tensor.name + ".shape")
    zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
    return [shape], [helper.make_node("ConstantOfShape", [shape.name], [tensor.name], value=zero)]


def _fp16_stored(tensor: onnx.TensorProto, values: np.ndarray) -> Replacement | None:
    """A weight stored as fp16 and cast back to fp32 when the file loads (if it fits fp16's range).

    The arithmetic stays fp32 (ONNX Runtime's CPU kernels of LSTM and DFT have no fp16): what halves is the
    download, what is lost is the weights' precision. Scalars stay fp32: some do not fit fp16 (the ``n - 1``
    of a deviation over a whole spectrogram).
    """
    from onnx import TensorProto, helper, numpy_helper

    if tensor.data_type != TensorProto.FLOAT or np.abs(values).max() > np.finfo(np.float16).max:
        return None
    stored = numpy_helper.from_array(values.astype(np.float16), tensor.name + ".fp16")
    return [stored], [helper.make_node("Cast", [stored.name], [tensor.name], to=TensorProto.FLOAT)]


def _save(proto: onnx.ModelProto, path: Path) -> None:
    import onnx

    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def _run(path: Path, spectrogram: np.ndarray) -> np.ndarray:
    """The output of the ONNX file at ``path`` for ``spectrogram`` (ONNX Runtime on the CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: spectrogram})[0]
    return output


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def _file_entry(path: Path, name: str, precision: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"file": name, "precision": precision, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ------------------------------------------------------------------------------- the faithfulness probe


def mulberry32(seed: int, count: int) -> np.ndarray:
    """The first ``count`` outputs of the mulberry32 generator seeded with ``seed``, as uint32.

    mulberry32 is counter-based: output i depends only on ``a = seed + (i + 1) * 0x6D2B79F5`` (mod 2^32),
    so numpy computes all of them at once, and JavaScript (``Math.imul``, ``>>>``) gives the same bits.
    """
    steps = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_MULBERRY32_STEP) + np.uint64(seed)
    a = (steps & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    t = (a ^ (a >> np.uint32(15))) * (a | np.uint32(1))
    t = (t + (t ^ (t >> np.uint32(7))) * (t | np.uint32(61))) ^ t
    result: np.ndarray = t ^ (t >> np.uint32(14))
    return result


def probe_input(seed: int, scale: float, shape: list[int]) -> np.ndarray:
    """The probe's input: ``(u - 0.5) * scale`` as float32, u the mulberry32 outputs over 2^32."""
    count = math.prod(shape)
    uniform = mulberry32(seed, count).astype(np.float64) / 2.0**32
    return ((uniform - 0.5) * scale).astype(np.float32).reshape(shape)


def _probe_facts(path: Path, shape: list[int], stems: int) -> dict[str, Any]:
    """The manifest's ``probe``: how to make its input, and a fingerprint of the output ONNX Runtime (CPU)
    gives for it with the fp32 file at ``path``: per stem, :data:`PROBE_VALUES_PER_STEM` values at fixed
    strided places and the energy of all its values. Another runtime that runs the file on that input and
    compares (SNR over the values, and the energies) learns how faithful it is, for one network run."""
    import onnxruntime

    output = _run(path, probe_input(PROBE_SEED, PROBE_SCALE, shape))
    return {
        "input": {
            "shape": shape,
            "dtype": "float32",
            "generator": "mulberry32",
            "seed": PROBE_SEED,
            "scale": PROBE_SCALE,
            "how": "value i of the input (row-major, 0 <= i < its size) is float32((u - 0.5) * scale), u the "
            "i-th output of mulberry32 over 2^32: in uint32 arithmetic (mod 2^32), a = seed + (i + 1) * "
            "0x6D2B79F5, t = (a ^ a >> 15) * (a | 1), t = (t + (t ^ t >> 7) * (t | 61)) ^ t, "
            "output t ^ t >> 14",
        },
        "output": {
            "file": path.name,
            "runtime": f"onnxruntime {onnxruntime.__version__}, CPU",
            **probe_fingerprint(output, stems),
        },
    }


def probe_fingerprint(output: np.ndarray, stems: int) -> dict[str, Any]:
    """The fingerprint of a network's ``output`` (batch 1) of ``stems`` stems, as the manifest's probe keeps
    it: per stem, :data:`PROBE_VALUES_PER_STEM` values (7 significant digits) at evenly strided places, and
    the energy (float64 sum of squares) of all its values."""
    per_stem = output.reshape(stems, -1)
    step = max(1, per_stem.shape[1] // PROBE_VALUES_PER_STEM)
    count = min(PROBE_VALUES_PER_STEM, per_stem.shape[1])
    offset = (per_stem.shape[1] - step * (count - 1) - 1) // 2  # the places centred in the stem
    picked = per_stem[:, offset : offset + step * count : step]
    return {
        "count": count,
        "step": step,
        "offset": offset,
        "places": "stem s's values are those of the output at s * (output size / stems) + offset + "
        "k * step, k = 0 .. count - 1 (row-major, the batch being 1); energy: the sum of the squares "
        "of all of stem s's output values",
        "values": [[float(f"{value:.7g}") for value in row] for row in picked.tolist()],
        "energy": [float(value) for value in np.sum(per_stem.astype(np.float64) ** 2, axis=1)],
    }


# ------------------------------------------------------------------------------------------ the manifest


def _manifest(
    model: LoadedModel,
    scnet: SCNet,
    proto: onnx.ModelProto,
    files: list[dict[str, Any]],
    checks: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    import onnx
    import onnxscript

    input_shape, output_shape = _shape(proto.graph.input[0]), _shape(proto.graph.output[0])
    return {
        "format": "freestems-onnx",
        "format_version": FORMAT_VERSION,
        "model": {
            "name": model.name,
            "family": "scnet",
            "stems": list(model.sources),
            "sample_rate": model.sample_rate,
            "audio_channels": input_shape[1] // 2,
        },
        "normalization": _normalisation_facts(model, scnet),
        "chunking": _chunking_facts(model, scnet),
        "stft": _stft_facts(scnet, model.segment),
        "tensors": _tensor_facts(input_shape, output_shape),
        "onnx": {"opset": OPSET, "files": files, **checks},
        "exported_by": {
            "freestems": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
        },
    }


def _shape(value: onnx.ValueInfoProto) -> list[Any]:
    """A graph input's or output's shape: numbers, and names for the dynamic axes."""
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def _normalisation_facts(model: LoadedModel, scnet: SCNet) -> dict[str, Any]:
    return {
        "whole_track": {
            "enabled": model.normalize,
            "how": "mean and standard deviation (n - 1 denominator) of the mono mix (the channels' mean) "
            "over the whole track, a deviation <= 1e-8 counting as 1; the chunks are cut from "
            "(mix - mean) / std, and every stem is multiplied by std and given mean back after the "
            "overlap-add",
        },
        "spectrogram": {
            "enabled": scnet.spec_norm,
            "inside_onnx": True,
            "how": "per item, (x - mean) / (1e-5 + std) over all planes, bins and frames (std with n - 1), "
            "undone on the output; the ONNX file does it, the page does nothing",
        },
    }


def _frames(scnet: SCNet, length: int) -> int:
    """The STFT frame count of a chunk of ``length`` samples (padded on the right, then centred)."""
    return (length + scnet._padding(length)) // scnet.hop_size + 1


def _chunking_facts(model: LoadedModel, scnet: SCNet) -> dict[str, Any]:
    """The engine's overlap-add (:func:`freestems.engine.separate_blocks` and its :func:`~engine.window`),
    and the short first chunk the page may run before it."""
    first = _first_chunk(model)
    overlap = inspect.signature(engine.separate_blocks).parameters["overlap"].default
    stride = max(1, round(model.segment * (1 - overlap)))
    return {
        "segment": model.segment,
        "overlap": overlap,
        "max_overlap": MAX_OVERLAP,
        "stride": "max(1, round(segment * (1 - overlap))), rounding halves to even",
        "stride_at_default_overlap": stride,
        "plan": "chunk k starts at k * stride, k = 0, 1, ...; another chunk follows while the last one ends "
        "before the end of the track; input past the end is zeros (after the whole-track normalisation)",
        "window": {
            "kind": "trapezoid",
            "formula": "w[i] = min((i + 1) / (ramp + 1), (segment - i) / (ramp + 1), 1), 0 <= i < segment",
            "ramp": "segment - stride",
            "ramp_at_default_overlap": model.segment - stride,
        },
        "mix": "each chunk's stems are multiplied by w and added at the chunk's place, and w to a weight "
        "sum; each output sample is the sum divided by its weight sum; the output is as long as the track",
        "chunk_tail": model.chunk_tail,
        "first_chunk": {
            "segment": first,
            "right_padding": scnet._padding(first),
            "frames": _frames(scnet, first),
            "use": "optional, for a first sound sooner: the network (its frame axis is dynamic) run on the "
            "track's first `segment` samples (zeros past the end), after the whole-track normalisation and "
            "the STFT of that length, with no overlap window; its output is provisional: heard until the "
            "first chunk's output for the same samples is there, and never part of the stems",
        },
    }


def _stft_facts(scnet: SCNet, segment: int) -> dict[str, Any]:
    """The STFT of :meth:`SCNet.spectrogram` and the inverse of :meth:`SCNet.waveform`, for one chunk."""
    n_fft, hop, win = scnet.nfft, scnet.hop_size, scnet.win_size
    frames = _frames(scnet, segment)
    scale = "1 / sqrt(n_fft)" if scnet.normalized else "1"
    return {
        "n_fft": n_fft,
        "hop_length": hop,
        "win_length": win,
        "window": "rectangular",
        "center": True,
        "pad_mode": "reflect",
        "normalized": scnet.normalized,
        "onesided": True,
        "right_padding": scnet._padding(segment),
        "right_padding_rule": "for a chunk of L samples: hop_length - L % hop_length, plus hop_length if "
        "(L + that) / hop_length is even: the frame count, (L + right_padding) / hop_length + 1, is even",
        "bins": n_fft // 2 + 1,
        "frames": frames,
        "forward": f"pad each channel of the chunk on the right with right_padding zeros, then by n_fft / 2 "
        f"samples at both ends, mirrored without repeating the edge (reflect); frame t is samples "
        f"[t * hop_length, t * hop_length + n_fft) of that, times the window (win_length ones in the middle "
        f"of n_fft, zeros around), through a real DFT (bins 0 .. n_fft / 2), times {scale}",
        "inverse": f"each frame's inverse real DFT (the imaginary parts of bins 0 and n_fft / 2 ignored) "
        f"times {'sqrt(n_fft)' if scnet.normalized else '1'} times the window, added at t * hop_length; "
        f"divided by the same sum of the squared window; the first n_fft / 2 samples dropped, the next "
        f"segment kept",
    }


def _tensor_facts(input_shape: list[Any], output_shape: list[Any]) -> dict[str, Any]:
    channels = input_shape[1] // 2
    planes = [f"{channel}.{part}" for channel in range(channels) for part in ("re", "im")]
    dynamic = sorted({dim for dim in [*input_shape, *output_shape] if isinstance(dim, str)})
    return {
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": input_shape,
            "axes": ["batch", "plane", "bin", "frame"],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": output_shape,
            "axes": ["batch", "stem", "plane", "bin", "frame"],
        },
        "planes": planes,
        "plane_order": "audio channel c, part p (0: real, 1: imaginary) at plane 2 * c + p",
        "dynamic_axes": dynamic,
    }
