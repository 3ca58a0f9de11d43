"""The SDRs of ``freestems.metrics``: MSST's whole-track formula to the letter, and museval's BSSEval v4
frames, checked against museval's own ``bss_eval`` where museval is installed (``pip install museval``)."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from freestems.metrics import EPS, FRAME, frame_sdrs, median_sdr, sdr


def msst_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """MSST's ``utils/metrics.py`` ``sdr()`` for one stem, as written there (float64 here)."""
    reference, estimate = reference.astype(np.float64), estimate.astype(np.float64)
    num = np.sum(np.square(reference)) + 1e-8
    den = np.sum(np.square(reference - estimate)) + 1e-8
    return float(10 * np.log10(num / den))


def noise(*shape: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------- sdr


def test_sdr_is_msst_formula():
    reference, estimate = noise(2, 30_000), noise(2, 30_000, seed=1)
    assert EPS == 1e-8
    assert sdr(reference, estimate) == pytest.approx(msst_sdr(reference, estimate), abs=1e-9)
    estimate = reference + 0.01 * estimate
    assert sdr(reference, estimate) == pytest.approx(msst_sdr(reference, estimate), abs=1e-9)


def test_sdr_sums_a_long_track_in_blocks_as_one():
    reference, estimate = noise(2, 2_500_000), noise(2, 2_500_000, seed=1)
    assert sdr(reference, estimate) == pytest.approx(msst_sdr(reference, estimate), abs=1e-9)


def test_sdr_of_silences_is_finite_and_exact():
    reference, silence = noise(2, 10_000), np.zeros((2, 10_000), np.float32)
    assert sdr(reference, silence) == 0.0  # (E + eps) / (E + eps)
    assert sdr(silence, silence) == 0.0  # eps / eps
    energy = float(np.sum(reference.astype(np.float64) ** 2))
    assert sdr(silence, reference) == pytest.approx(10 * math.log10(EPS / (energy + EPS)), abs=1e-9)
    assert sdr(reference, reference) == pytest.approx(10 * math.log10((energy + EPS) / EPS), abs=1e-9)


def test_sdr_cuts_to_the_shorter_and_refuses_other_shapes():
    reference, estimate = noise(2, 10_000), noise(2, 12_000, seed=1)
    assert sdr(reference, estimate) == pytest.approx(msst_sdr(reference, estimate[:, :10_000]), abs=1e-9)
    with pytest.raises(ValueError, match="same channels"):
        sdr(reference, estimate[:1])
    with pytest.raises(ValueError, match="channels, samples"):
        sdr(reference[0], estimate[0])


# ---------------------------------------------------------------------------------------------- frames


def plain_frame(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference, estimate = reference.astype(np.float64), estimate.astype(np.float64)
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


def test_frames_are_whole_seconds_and_the_shorter_last_one_is_dropped():
    references, estimates = noise(2, 2, 2 * FRAME + 1000), noise(2, 2, 2 * FRAME + 1000, seed=1)
    scores = frame_sdrs(references, estimates)
    assert scores.shape == (2, 2)
    for source in range(2):
        for index in range(2):
            window = slice(index * FRAME, (index + 1) * FRAME)
            expected = plain_frame(references[source, :, window], estimates[source, :, window])
            assert scores[source, index] == pytest.approx(expected, abs=1e-9)
    short = frame_sdrs(references[:, :, :1000], estimates[:, :, :1000])  # shorter than a frame: one frame
    assert short.shape == (2, 1)
    assert short[0, 0] == pytest.approx(plain_frame(references[0, :, :1000], estimates[0, :, :1000]))


def test_a_frame_silent_in_any_reference_or_estimate_is_skipped_for_all():
    references, estimates = noise(2, 2, 4 * FRAME), noise(2, 2, 4 * FRAME, seed=1)
    references[1, :, :FRAME] = 0  # frame 0: a silent reference
    estimates[0, :, FRAME : 2 * FRAME] = 0  # frame 1: a silent estimate
    references[0, 1, 2 * FRAME : 3 * FRAME] = -references[0, 0, 2 * FRAME : 3 * FRAME]  # frame 2: L = -R
    scores = frame_sdrs(references, estimates)
    assert np.isnan(scores[:, :3]).all()  # museval's test is that the channels sum to zero
    assert np.isfinite(scores[:, 3]).all()
    assert median_sdr(scores[0]) == pytest.approx(scores[0, 3])


def test_an_exact_frame_is_infinite_and_a_short_estimate_is_padded_with_silence():
    references = noise(1, 2, 3 * FRAME)
    estimates = references[:, :, : 2 * FRAME].copy()
    estimates[:, :, FRAME:] += noise(1, 2, FRAME, seed=2)
    scores = frame_sdrs(references, estimates)
    assert scores[0, 0] == math.inf
    assert np.isfinite(scores[0, 1])
    assert np.isnan(scores[0, 2])  # padded: a silent estimate
    assert median_sdr(scores[0]) == math.inf  # the median of {inf, finite}: their mean


def test_median_of_no_frame_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(median_sdr(np.array([math.nan, math.nan])))
        assert median_sdr(np.array([1.0, math.nan, 3.0, 10.0])) == 3.0


def test_frames_refuse_other_shapes_and_empty_tracks():
    with pytest.raises(ValueError, match="sources, channels, samples"):
        frame_sdrs(noise(2, 100), noise(2, 100))
    with pytest.raises(ValueError, match="same sources"):
        frame_sdrs(noise(2, 2, 100), noise(1, 2, 100))
    with pytest.raises(ValueError, match="at least one sample"):
        frame_sdrs(np.zeros((1, 2, 0)), np.zeros((1, 2, 0)))


# ---------------------------------------------------------------------------------------------- museval


def museval_metrics():
    """museval's ``metrics`` module (BSSEval v4), loaded alone: it needs numpy and scipy only, where the
    package's ``__init__`` needs musdb, stempeg and an ffmpeg binary."""
    spec = importlib.util.find_spec("museval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("museval is not installed (pip install museval)")
    pytest.importorskip("scipy")
    path = Path(next(iter(spec.submodule_search_locations))) / "metrics.py"
    loader = importlib.util.spec_from_file_location("museval_metrics", path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def test_frames_agree_with_museval_bss_eval_v4():
    metrics = museval_metrics()
    references = noise(2, 2, int(3.5 * FRAME))
    references[1, :, FRAME : 2 * FRAME] = 0  # a silent reference frame: NaN for both stems
    estimates = references + noise(2, 2, references.shape[2], seed=1, scale=0.05)
    estimates[0] += 0.3 * references[1]  # some interference, which the projections separate out
    ours = frame_sdrs(references, estimates)
    # museval's layout is (sources, samples, channels); the call museval.evaluate makes for a MUSDB track
    theirs, *_ = metrics.bss_eval(
        references.transpose(0, 2, 1).astype(np.float64),
        estimates.transpose(0, 2, 1).astype(np.float64),
        window=FRAME,
        hop=FRAME,
        compute_permutation=False,
        framewise_filters=False,
        bsseval_sources_version=False,
    )
    assert theirs.shape == ours.shape == (2, 3)
    assert np.array_equal(np.isnan(theirs), np.isnan(ours))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, equal_nan=True)
