"""Real encoded audio files for tests, written with PyAV encoders.

Other test modules import these helpers (``from audio_samples import write_test_file, sine_stereo``);
``pythonpath = ["tests"]`` in pyproject.toml makes this directory importable.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# fmt -> (container format, audio codec, sample format); "wav" picks its codec from bit_depth.
_AUDIO_SPECS: dict[str, tuple[str, str, str]] = {
    "mp3": ("mp3", "libmp3lame", "s16p"),
    "flac": ("flac", "flac", "s16"),
    "ogg": ("ogg", "vorbis", "fltp"),
    "opus": ("ogg", "libopus", "s16"),
    "m4a": ("ipod", "aac", "fltp"),
    "aac": ("adts", "aac", "fltp"),
    "mp4": ("mp4", "aac", "fltp"),
    "webm": ("webm", "libopus", "s16"),
}
_WAV_CODECS = {
    8: ("pcm_u8", "u8"),
    16: ("pcm_s16le", "s16"),
    24: ("pcm_s24le", "s32"),
    32: ("pcm_f32le", "flt"),
}
_LAYOUTS = {1: "mono", 2: "stereo", 4: "quad", 6: "5.1", 8: "7.1"}


def sine_stereo(
    n: int, rate: int = 44100, freqs: tuple[float, float] = (440.0, 660.0), amp: float = 0.5
) -> np.ndarray:
    """(2, n) float32: a different sine on each channel (left ``freqs[0]``, right ``freqs[1]``)."""
    t = np.arange(n, dtype=np.float64) / rate
    return np.stack([amp * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def sine(n: int, channels: int, rate: int = 44100, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """(channels, n) float32: channel c carries a sine at ``freq * (1 + c / 2)``."""
    t = np.arange(n, dtype=np.float64) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (1 + c / 2) * t) for c in range(channels)]).astype(
        np.float32
    )


def _to_format(x: np.ndarray, sample_fmt: str) -> np.ndarray:
    """(channels, n) float -> the array ``av.AudioFrame.from_ndarray`` wants for ``sample_fmt``."""
    planar = sample_fmt.endswith("p")
    base = sample_fmt.rstrip("p")
    if base == "u8":
        y = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8)
    elif base == "s16":
        y = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    elif base == "s32":
        y = np.clip(np.round(x * 8388607), -8388608, 8388607).astype(np.int32) << 8
    elif base == "flt":
        y = x.astype(np.float32)
    else:
        raise ValueError(sample_fmt)
    return np.ascontiguousarray(y) if planar else np.ascontiguousarray(y.T.reshape(1, -1))


def write_test_file(
    path: str | Path,
    fmt: str,
    seconds: float = 1.0,
    rate: int | None = None,
    channels: int = 2,
    *,
    bit_depth: int = 16,
    video: bool = False,
    audio: bool = True,
    signal: np.ndarray | None = None,
    freq: float = 440.0,
    bitrate: int | None = None,
) -> np.ndarray:
    """Encode a test signal to ``path`` and return it ((channels, n) float32, what was fed to the encoder).

    fmt: mp3, wav (bit_depth 8/16/24/32=float), flac, ogg (vorbis), opus (ogg/opus), m4a (aac), aac (adts),
    mp4 (aac, plus a tiny h264 video track if ``video``), webm (opus, plus a vp8 video track if ``video``).
    ``audio=False`` writes a video-only mp4/webm. ``signal`` overrides the generated sine.
    ``rate`` defaults to 44100 (48000 for opus and webm: Opus has no 44.1 kHz mode).
    """
    path = Path(path)
    if rate is None:
        rate = 48000 if fmt in ("opus", "webm") else 44100
    n = int(round(seconds * rate))
    x = sine(n, channels, rate, freq) if signal is None else np.asarray(signal, dtype=np.float32)
    channels = x.shape[0]
    if fmt == "wav" and x.shape[1] == 0:  # PyAV writes no header when no packet is muxed
        import wave

        with wave.open(str(path), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(bit_depth // 8)
            w.setframerate(rate)
        return x
    if fmt == "wav":
        container_fmt, (codec, sample_fmt) = "wav", _WAV_CODECS[bit_depth]
    else:
        container_fmt, codec, sample_fmt = _AUDIO_SPECS[fmt]
    out = av.open(str(path), "w", format=container_fmt)
    try:
        vstream = None
        if video or not audio:
            vcodec = "libvpx" if fmt == "webm" else "libx264"
            vstream = out.add_stream(vcodec, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 64, "yuv420p"
        astream = None
        if audio:
            astream = out.add_stream(codec, rate=rate, layout=_LAYOUTS[channels])
            astream.codec_context.format = sample_fmt
            if codec == "vorbis":
                astream.codec_context.options = {"strict": "experimental"}
            if bitrate:
                astream.codec_context.bit_rate = bitrate * 1000
        if vstream is not None:
            frames = max(1, int(seconds * 10))
            for i in range(frames):
                img = np.full((64, 64, 3), (i * 20) % 256, dtype=np.uint8)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, 10)
                out.mux(vstream.encode(vf))
            out.mux(vstream.encode(None))
        if astream is not None:
            step = 4096
            for pos in range(0, n, step):
                chunk = x[:, pos : pos + step]
                frame = av.AudioFrame.from_ndarray(
                    _to_format(chunk, sample_fmt), format=sample_fmt, layout=_LAYOUTS[channels]
                )
                frame.sample_rate = rate
                frame.pts, frame.time_base = pos, Fraction(1, rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    finally:
        out.close()
    return x


def tiny_png() -> bytes:
    """A valid 1x1 PNG image, built by hand."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
