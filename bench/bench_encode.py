"""Stem writers: our MP3 writer (lameenc + our Xing/LAME tag) against FFmpeg's libmp3lame + mp3 muxer
(through PyAV), and the lossless writers, on a synthetic stereo track written in 10 s blocks.

For each MP3 encoder: CPU seconds, size, decoded length against the input's, the lag that best aligns the
decoded audio with the input (cross-correlation; 0 = sample-aligned) and the SNR against the input. Both run
LAME at algorithm quality 3 and constant bitrate. The numbers decide whether the writers can drop lameenc.

    python bench/bench_encode.py                  # 180 s at 192 kbps, each encoder twice
    python bench/bench_encode.py --seconds 30 --bitrate 320

Prints a table and writes bench/results/encode.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from freestems.audio import decode, open_writer
from freestems.audio.encode import MP3_QUALITY, _to_int
from freestems.contract import SAMPLE_RATE

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 10 * SAMPLE_RATE


def synthetic_blocks(seconds: int, seed: int = 0) -> list[np.ndarray]:
    """Tones, a bass line and noise bursts (as bench_separate.py), as (2, n) float32 blocks."""
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, seconds * SAMPLE_RATE, BLOCK):
        n = min(BLOCK, seconds * SAMPLE_RATE - start)
        t = (start + np.arange(n)) / SAMPLE_RATE
        tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * (1 + (t % 2 > 1)) * t)
        beat = rng.standard_normal(n) * 0.2 * np.exp(-((t % 0.5) * 20))
        right = 0.8 * tone + beat + 0.02 * rng.standard_normal(n)
        blocks.append(np.stack([tone + beat, right]).astype(np.float32))
    return blocks


def ours(path: Path, blocks: list[np.ndarray], fmt: str, **kw: int) -> None:
    with open_writer(path, fmt, **kw) as writer:
        for block in blocks:
            writer.write(block)


def pyav_mp3(path: Path, blocks: list[np.ndarray], bitrate: int) -> None:
    """libmp3lame through FFmpeg's mp3 muxer, which writes the Xing/LAME tag with delay and padding."""
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="stereo")
        stream.codec_context.bit_rate = bitrate * 1000
        stream.codec_context.format = "s16p"  # the same 16-bit samples lameenc gets
        stream.codec_context.options = {"compression_level": str(MP3_QUALITY)}
        pts = 0
        for block in blocks:
            data = np.ascontiguousarray(_to_int(block, 16).T)
            frame = av.AudioFrame.from_ndarray(data, format="s16p", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, Fraction(1, SAMPLE_RATE)
            pts += block.shape[1]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def best_lag(x: np.ndarray, y: np.ndarray, span: int = 3000) -> int:
    """The shift of ``y`` against ``x`` (left channel, seconds 1-5) with the largest cross-correlation."""
    a = x[0, SAMPLE_RATE : 5 * SAMPLE_RATE].astype(np.float64)
    b = y[0, SAMPLE_RATE - span : 5 * SAMPLE_RATE + span].astype(np.float64)
    corr = np.correlate(b, a, mode="valid")  # corr[k] = sum a[i] * b[i + k], k = lag + span
    return int(corr.argmax()) - span


def measure(name: str, write: Callable[[Path], None], x: np.ndarray, work: Path, suffix: str) -> dict:
    path = work / f"{name}{suffix}"
    cpu, wall = time.process_time(), time.perf_counter()
    write(path)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    y = decode(path)
    row = {"encoder": name, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "bytes": path.stat().st_size}
    row["decoded_samples"] = y.shape[1]
    row["length_error"] = y.shape[1] - x.shape[1]
    if suffix == ".mp3":
        inner = (slice(None), slice(2000, min(x.shape[1], y.shape[1]) - 2000))
        err = y[inner] - x[inner]
        row["lag"] = best_lag(x, y)
        row["snr_db"] = round(float(10 * np.log10((x[inner] ** 2).sum() / (err**2).sum())), 2)
    else:  # lossless: the decoded samples are the input rounded to the bit depth (float: the input)
        bits = int(name[-2:])
        full = 2.0 ** (bits - 1)
        expected = x if bits == 32 else np.clip(np.rint(x.astype(np.float64) * full), -full, full - 1) / full
        row["round_trip_exact"] = bool(y.shape == x.shape and np.array_equal(y.astype(np.float64), expected))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--bitrate", type=int, default=192)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    blocks = synthetic_blocks(args.seconds)
    x = np.concatenate(blocks, axis=1)
    cases: list[tuple[str, str, Callable[[Path], None]]] = [
        ("lameenc", ".mp3", lambda p: ours(p, blocks, "mp3", bitrate=args.bitrate)),
        ("pyav-libmp3lame", ".mp3", lambda p: pyav_mp3(p, blocks, args.bitrate)),
    ]
    for fmt, depths in (("wav", (16, 24, 32)), ("flac", (16, 24))):
        for bits in depths:
            write = lambda p, f=fmt, b=bits: ours(p, blocks, f, bit_depth=b)  # noqa: E731
            cases.append((f"{fmt}{bits}", f".{fmt}", write))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeat):  # alternating, so that a busy machine slows every encoder alike
            for name, suffix, write in cases:
                row = measure(name, write, x, Path(work), suffix)
                rows.append(row)
                extra = f"  lag {row['lag']}  SNR {row['snr_db']} dB" if "lag" in row else ""
                extra = extra or f"  round trip exact: {row['round_trip_exact']}"
                print(
                    f"{name:16s} cpu {row['cpu_s']:6.2f} s  wall {row['wall_s']:6.2f} s  {row['bytes']:>10} B"
                    f"  decoded {row['decoded_samples']} (error {row['length_error']}){extra}",
                    flush=True,
                )
    RESULTS.mkdir(exist_ok=True)
    report = {"seconds": args.seconds, "bitrate": args.bitrate, "pyav": av.__version__, "runs": rows}
    (RESULTS / "encode.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'encode.json'}")


if __name__ == "__main__":
    main()
