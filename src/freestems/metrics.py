"""Signal-to-distortion ratios of separated stems, in the two definitions that published results use.

A model's quality is quoted as an SDR in dB, but two different SDRs go by that name, and their values differ
by a fraction of a dB to several dB on the same stems. Both are here, each named for where it comes from, so
that a figure can always be compared with the right kind:

- :func:`sdr`: the whole-track SDR of Music-Source-Separation-Training (``utils/metrics.py``, ``sdr()``) and
  of the MVSEP leaderboard. One number per stem and song, over all channels and samples::

      10 * log10((sum(ref**2) + 1e-8) / (sum((ref - est)**2) + 1e-8))

  The epsilons keep it finite: a silent estimate of any reference gives exactly 0 dB, a silent estimate of a
  silent reference too. Results are averaged over songs (a mean).
- :func:`frame_sdrs` and :func:`median_sdr`: museval's BSSEval v4 SDR (SiSEC 2018), the figure of MUSDB18
  papers: the SDR of every 1-second frame, the median over a song's frames, then the median over songs.

BSSEval v4 projects each estimate on the references through 512-tap distortion filters, but its SDR does
not depend on them: ``bss_eval_images`` splits ``est`` into ``ref + e_spat + e_interf + e_artif``, where the
three errors are differences of the projections (``e_spat = P_j - ref``, ``e_interf = P_all - P_j``,
``e_artif = est - P_all``), and the SDR is ``sum(ref**2) / sum((e_spat + e_interf + e_artif)**2)``: the sum
of the errors is ``est - ref`` whatever the filters. So each frame's SDR is computed here directly, without
epsilons, as museval's arithmetic gives it (to rounding; ``tests/test_evaluate_metrics.py`` checks it
against museval's own ``bss_eval``), with museval's framing and its rule for silence (:func:`frame_sdrs`).
"""

from __future__ import annotations

import numpy as np

from freestems.contract import SAMPLE_RATE

EPS = 1e-8
"""The epsilon MSST's ``sdr()`` adds to both energies."""

FRAME = SAMPLE_RATE
"""museval's window and hop at 44.1 kHz: one second."""

_BLOCK = 1 << 20
"""Samples summed at a time in float64, so a whole song needs no float64 copy."""


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """The whole-track SDR in dB (MSST, MVSEP): see the module's docstring. Never NaN nor infinite.

    Args:
        reference, estimate: ``(channels, samples)``; as MSST does, both are cut to the shorter length.
    """
    reference, estimate = _pair(reference, estimate)
    length = min(reference.shape[1], estimate.shape[1])
    signal = noise = 0.0
    for start in range(0, length, _BLOCK):
        ref = reference[:, start : min(start + _BLOCK, length)].astype(np.float64)
        signal += float(np.sum(ref * ref))
        ref -= estimate[:, start : min(start + _BLOCK, length)]
        noise += float(np.sum(ref * ref))
    return float(10 * np.log10((signal + EPS) / (noise + EPS)))


def frame_sdrs(references: np.ndarray, estimates: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """museval's BSSEval v4 SDR of every frame, in dB: ``(sources, frames)``, NaN where a frame is skipped.

    As museval evaluates a song: the stems are evaluated together, and a frame is skipped (NaN) for all of
    them when any reference or any estimate is silent in it, silent meaning that the channels sum to zero
    at every sample (museval's test, taken as it is). Frames are ``frame`` samples, one after the other; the
    last, shorter one is dropped, unless the track is shorter than a frame (then it is one frame). An
    estimate equal to its reference in a frame gives +inf there, as in museval.

    Args:
        references, estimates: ``(sources, channels, samples)``; the estimates are cut or padded with
            silence to the references' length, as museval's ``pad_or_truncate`` does.
    """
    references, estimates = np.asarray(references), np.asarray(estimates)
    if references.ndim != 3 or estimates.shape[:2] != references.shape[:2]:
        raise ValueError(
            f"frame_sdrs takes (sources, channels, samples) of the same sources and channels, got "
            f"{references.shape} and {estimates.shape}"
        )
    length = references.shape[2]
    if length == 0:
        raise ValueError("frame_sdrs needs at least one sample")
    count = length // frame if frame < length else 1
    scores = np.full((references.shape[0], count), np.nan)
    for index in range(count):
        window = slice(index * frame, min((index + 1) * frame, length))
        ref = references[:, :, window].astype(np.float64)
        est = _padded(estimates[:, :, window].astype(np.float64), ref.shape[2])
        if _any_silent(ref) or _any_silent(est):
            continue
        signal = np.sum(ref * ref, axis=(1, 2))
        noise = np.sum((est - ref) ** 2, axis=(1, 2))
        with np.errstate(divide="ignore"):
            scores[:, index] = 10 * np.log10(signal / noise)
    return scores


def median_sdr(frames: np.ndarray) -> float:
    """The median of a stem's frame SDRs (:func:`frame_sdrs`) over the frames not skipped; NaN when every
    frame was skipped (museval's ``nanmedian``, without its warning)."""
    counted = np.asarray(frames, dtype=np.float64)
    counted = counted[~np.isnan(counted)]
    return float(np.median(counted)) if counted.size else float("nan")


def _pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, estimate = np.asarray(reference), np.asarray(estimate)
    if reference.ndim != 2 or estimate.ndim != 2 or reference.shape[0] != estimate.shape[0]:
        raise ValueError(
            f"sdr takes two (channels, samples) arrays of the same channels, got {reference.shape} and "
            f"{estimate.shape}"
        )
    return reference, estimate


def _padded(block: np.ndarray, length: int) -> np.ndarray:
    """``block`` (sources, channels, n <= length) with silence after it up to ``length`` samples."""
    missing = length - block.shape[2]
    return np.pad(block, ((0, 0), (0, 0), (0, missing))) if missing > 0 else block


def _any_silent(sources: np.ndarray) -> bool:
    """museval's ``_any_source_silent``: some source's channels sum to zero at every sample."""
    return bool(np.any(np.all(sources.sum(axis=1) == 0, axis=1)))


__all__ = ["EPS", "FRAME", "frame_sdrs", "median_sdr", "sdr"]
