"""Streaming writers for stems: wav (16/24-bit PCM, 32-bit float), flac (16/24-bit), mp3 (CBR, lameenc).

WAV and FLAC go through FFmpeg's own muxers and encoders (PyAV), one writer driven by the :data:`CODECS`
table. MP3 goes through ``lameenc`` plus our own Xing/LAME tag: FFmpeg's libmp3lame + mp3 muxer also
decodes to the exact length, sample-aligned, but took about 2.7x the CPU time of lameenc at the same LAME
quality and bitrate (180 s of stereo at 192 kbps: ~4.9 s against ~1.8 s; ``bench/bench_encode.py``).

Every writer writes to a hidden temp file next to the destination (``.<name>.<random>.part``, the one
scheme of :mod:`freestems.files`) and renames it into
place on :meth:`StemWriter.close`, so a half-written file never sits at the destination; :meth:`abort` (or
an exception inside ``with``) removes the temp file.

Sample conversion: float samples are clipped to [-1, 1] and rounded to the nearest integer at full scale
2**(bits-1) (the inverse of the decoder's division, so integer samples survive a round trip exactly);
NaN becomes 0. 32-bit float WAV keeps the samples unclipped (only NaN/inf are cleaned).

Exact length: a decoded stem has exactly as many samples as were written, for every format. For MP3 the
writer adds a Xing "Info" + LAME tag with the encoder delay and padding (see :mod:`.mp3tag`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from freestems.contract import SAMPLE_RATE
from freestems.errors import one_line
from freestems.files import temp_path

from . import mp3tag
from .errors import AudioEncodeError
from .formats import FORMATS, MP3_BITRATES

log = logging.getLogger(__name__)

MP3_QUALITY = 3
"""LAME's algorithm quality (0 best .. 9 fastest); 3 is LAME's default. 2 costs ~1.8x the time."""

_ENCODE_BLOCK = SAMPLE_RATE * 10  # block size used by the one-shot :func:`encode`
_WAV_MAX_DATA = 0xFFFFFFFF - 100  # RIFF sizes are 32-bit


class StemWriter:
    """Writes one stereo float32 track incrementally. Use :func:`open_writer` to create one.

    ``write(block)`` takes (2, n) float arrays; ``close()`` finalises and moves the file into place;
    ``abort()`` removes everything. As a context manager it closes on success and aborts on exception.
    """

    fmt: str = ""

    def __init__(self, path: str | Path, sample_rate: int) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.samples_written = 0
        self.temp_path = temp_path(self.path)
        self._closed = False

    # -- public API --

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` ((2, n) float32 at the writer's sample rate; other float dtypes are converted)."""
        if self._closed:
            raise AudioEncodeError(f"{self.path.name}: cannot write, the writer is already closed")
        block = self._check_block(block)
        if block.shape[1] == 0:
            return
        try:
            self._write(block)
        except Exception as exc:
            self.abort()
            raise self._error("cannot write", exc) from exc
        self.samples_written += block.shape[1]

    def close(self) -> Path:
        """Finalise the file and move it to :attr:`path`; returns the path. Closing twice is a no-op."""
        if self._closed:
            return self.path
        try:
            self._finish()
            os.replace(self.temp_path, self.path)
        except Exception as exc:
            self.abort()
            raise self._error("cannot finish writing", exc) from exc
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the temp file; the destination is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._discard()
        except Exception:  # best effort: the encoder state is being thrown away anyway
            log.debug("error while discarding %s", self.temp_path, exc_info=True)
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temp file behind
        if not getattr(self, "_closed", True):
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.fmt} {str(self.path)!r} {self.samples_written} samples {state}>"

    # -- for subclasses --

    def _write(self, block: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    # -- helpers --

    def _check_block(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != 2:
            raise AudioEncodeError(
                f"{self.path.name}: expected a (2, samples) stereo array, got shape {tuple(block.shape)}"
            )
        if not np.issubdtype(block.dtype, np.floating):
            raise AudioEncodeError(f"{self.path.name}: expected float samples in [-1, 1], got {block.dtype}")
        return block.astype(np.float32, copy=False)

    def _error(self, what: str, exc: BaseException) -> AudioEncodeError:
        if isinstance(exc, AudioEncodeError):
            return exc
        return AudioEncodeError(f"{self.path.name}: {what} ({one_line(exc)})")


def _to_int(block: np.ndarray, bits: int) -> np.ndarray:
    """(2, n) float -> (n, 2) int, clipped to [-1, 1] and rounded at full scale 2**(bits-1); NaN -> 0.

    float32 arithmetic is exact here: scaling by a power of two and rounding lose nothing up to 24 bits.
    """
    scale = float(1 << (bits - 1))
    x = np.empty((block.shape[1], 2), np.float32)
    np.multiply(block.T, np.float32(scale), out=x)  # transpose to interleaved and scale in one pass
    np.nan_to_num(x, copy=False, nan=0.0)
    np.clip(x, -scale, scale - 1, out=x)
    np.rint(x, out=x)
    return x.astype(np.int16 if bits == 16 else np.int32)


@dataclass(frozen=True)
class Codec:
    """How FFmpeg writes one lossless format at one bit depth: the row of :data:`CODECS` a writer follows."""

    container: str
    """FFmpeg muxer."""
    codec: Literal["pcm_s16le", "pcm_s24le", "pcm_f32le", "flac"]
    """FFmpeg encoder (a literal, so PyAV's typing knows ``add_stream`` gives an audio stream)."""
    sample_format: str
    """Packed sample format handed to the encoder."""
    bits: int
    """16 or 24: integer PCM at that depth (24-bit samples sit in the top bits of s32); 32: float."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Encoder options."""
    max_bytes: int | None = None
    """Most sample bytes the container can hold (RIFF sizes are 32-bit), or None."""


CODECS: dict[tuple[str, int], Codec] = {
    ("wav", 16): Codec("wav", "pcm_s16le", "s16", 16, max_bytes=_WAV_MAX_DATA),
    ("wav", 24): Codec("wav", "pcm_s24le", "s32", 24, max_bytes=_WAV_MAX_DATA),
    ("wav", 32): Codec("wav", "pcm_f32le", "flt", 32, max_bytes=_WAV_MAX_DATA),
    ("flac", 16): Codec("flac", "flac", "s16", 16),
    ("flac", 24): Codec("flac", "flac", "s32", 24, {"bits_per_raw_sample": "24"}),
}
"""(format, bit depth) -> codec. 24-bit WAV is WAVE_FORMAT_EXTENSIBLE and float WAV has a fact chunk, as
FFmpeg writes them; ``fflags=+bitexact`` keeps FFmpeg's version string out of the files."""


class _AvWriter(StemWriter):
    """A lossless stem through PyAV/FFmpeg's own muxer and encoder, as one row of :data:`CODECS` says."""

    def __init__(self, path: Path, sample_rate: int, fmt: str, bit_depth: int) -> None:
        import av

        super().__init__(path, sample_rate)
        self.fmt = fmt
        self.bit_depth = bit_depth
        self._codec = codec = CODECS[fmt, bit_depth]
        self._container = av.open(
            str(self.temp_path), "w", format=codec.container, options={"fflags": "+bitexact"}
        )
        try:
            self._stream = self._container.add_stream(codec.codec, rate=sample_rate, layout="stereo")
            self._stream.codec_context.format = codec.sample_format
            self._stream.codec_context.options = dict(codec.options)
            self._container.start_encoding()  # the header now: a track of no samples is still a file
        except Exception:
            self._container.close()
            self.temp_path.unlink(missing_ok=True)
            raise
        self._bytes = 0

    def _samples(self, block: np.ndarray) -> np.ndarray:
        """(2, n) float -> (1, 2n) interleaved samples in the codec's sample format."""
        if self._codec.bits == 32:  # float keeps overs; only NaN and infinities are cleaned
            x = np.ascontiguousarray(block.T)
            cleaned: np.ndarray = np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            return cleaned.reshape(1, -1)
        if self._codec.bits == 24:  # FFmpeg takes 24-bit samples in the top bits of s32
            return (_to_int(block, 24) << 8).reshape(1, -1)
        return _to_int(block, 16).reshape(1, -1)

    def _write(self, block: np.ndarray) -> None:
        import av

        codec = self._codec
        self._bytes += block.size * (codec.bits // 8)
        if codec.max_bytes is not None and self._bytes > codec.max_bytes:
            raise AudioEncodeError(
                f"{self.path.name}: too long for a WAV file (4 GB limit); use flac or a lower bit depth"
            )
        frame = av.AudioFrame.from_ndarray(self._samples(block), format=codec.sample_format, layout="stereo")
        frame.sample_rate = self.sample_rate
        frame.pts, frame.time_base = self.samples_written, Fraction(1, self.sample_rate)
        self._container.mux(self._stream.encode(frame))

    def _finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def _discard(self) -> None:
        self._container.close()


class _Mp3Writer(StemWriter):
    """Constant-bitrate MP3 with lameenc, plus a Xing/Info + LAME tag frame for gapless, exact-length
    decoding. The tag frame's space is reserved at the start and filled in on close."""

    fmt = "mp3"

    def __init__(self, path: Path, sample_rate: int, bitrate: int) -> None:
        import lameenc

        super().__init__(path, sample_rate)
        self.bitrate = bitrate
        encoder = lameenc.Encoder()
        encoder.set_bit_rate(bitrate)
        encoder.set_in_sample_rate(sample_rate)
        encoder.set_out_sample_rate(sample_rate)
        encoder.set_channels(2)
        encoder.set_quality(MP3_QUALITY)
        encoder.silence()
        self._encoder = encoder
        self._frames = mp3tag.FrameCounter()
        self._tag_size = 144000 * bitrate // sample_rate
        self._file: BinaryIO | None = open(self.temp_path, "wb")  # noqa: SIM115 - closed in _finish/_discard
        try:
            self._file.write(bytes(self._tag_size))
        except BaseException:
            self._file.close()
            self.temp_path.unlink(missing_ok=True)
            raise

    def _put(self, data: bytes) -> None:
        if data:
            self._frames.feed(data)
            assert self._file is not None
            self._file.write(data)

    def _write(self, block: np.ndarray) -> None:
        pcm = _to_int(block, 16).astype("<i2", copy=False)
        self._put(bytes(self._encoder.encode(pcm.tobytes())))  # lameenc releases the GIL while encoding

    def _finish(self) -> None:
        assert self._file is not None
        if self.samples_written:  # lameenc refuses to flush an encoder that never encoded
            self._put(bytes(self._encoder.flush()))
        frames = self._frames
        if frames.frames and frames.first_header is not None:
            padding = frames.frames * mp3tag.SAMPLES_PER_FRAME - mp3tag.ENCODER_DELAY - self.samples_written
            if not 0 <= padding < 4096:  # cannot happen with LAME 3.100; keep a playable file if it does
                log.warning(
                    "%s: unexpected MP3 padding %d; length will not be exact", self.path.name, padding
                )
                padding = min(max(padding, 0), 4095)
            tag = mp3tag.info_frame(
                bitrate_kbps=self.bitrate,
                sample_rate=self.sample_rate,
                channel_mode=frames.first_header[3] >> 6,
                frames=frames.frames,
                stream_bytes=self._tag_size + frames.bytes,
                encoder_delay=mp3tag.ENCODER_DELAY,
                padding=padding,
                music_crc=frames.crc,
            )
            self._file.seek(0)
            self._file.write(tag)
        else:  # no samples: an empty file (there is no MP3 frame for "nothing")
            self._file.truncate(0)
        self._file.close()
        self._file = None

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _check_options(path: Path, fmt: str, bitrate: int, bit_depth: int, sample_rate: int) -> str:
    name = path.name or str(path)
    key = fmt.lower().lstrip(".") if isinstance(fmt, str) else fmt
    info = FORMATS.get(key) if isinstance(key, str) else None
    if info is None:
        raise AudioEncodeError(
            f"{name}: unsupported output format {fmt!r}; choose one of: {', '.join(FORMATS)}"
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AudioEncodeError(f"{name}: invalid sample rate {sample_rate!r}")
    if info.sample_rates is not None and sample_rate not in info.sample_rates:
        rates = ", ".join(str(r) for r in info.sample_rates)
        raise AudioEncodeError(f"{name}: {key} cannot be written at {sample_rate} Hz; use one of: {rates}")
    if info.bitrates and bitrate not in info.bitrates:
        rates = ", ".join(str(b) for b in MP3_BITRATES)
        raise AudioEncodeError(f"{name}: invalid {key} bitrate {bitrate!r} kbps; choose one of: {rates}")
    if info.bit_depths and bit_depth not in info.bit_depths:
        depths = ", ".join(str(b) for b in info.bit_depths)
        extra = " (32 = float)" if key == "wav" else ""
        raise AudioEncodeError(
            f"{name}: invalid {key} bit depth {bit_depth!r}; choose one of: {depths}{extra}"
        )
    if not path.parent.is_dir():
        raise AudioEncodeError(f"{name}: output folder {str(path.parent)!r} does not exist")
    return key


def open_writer(
    path: str | Path,
    fmt: str,
    *,
    bitrate: int = 192,
    bit_depth: int = 16,
    sample_rate: int = SAMPLE_RATE,
) -> StemWriter:
    """Open a streaming writer for a stereo track.

    fmt: "wav" (bit_depth 16, 24 or 32 = float), "flac" (bit_depth 16 or 24) or "mp3" (constant
    ``bitrate`` in kbit/s: 128, 160, 192, 224, 256 or 320; other values are rejected, not rounded;
    sample_rate 32000, 44100 or 48000). Options that do not apply to ``fmt`` are ignored.
    Raises AudioEncodeError for an unknown format, invalid option, missing folder or unwritable file.
    """
    path = Path(path)
    key = _check_options(path, fmt, bitrate, bit_depth, sample_rate)
    try:
        if key == "mp3":
            return _Mp3Writer(path, sample_rate, bitrate)
        return _AvWriter(path, sample_rate, key, bit_depth)
    except AudioEncodeError:
        raise
    except Exception as exc:  # each writer removes its own temp file when it cannot start
        raise AudioEncodeError(f"{path.name}: cannot create the file ({one_line(exc)})") from exc


def encode(audio: np.ndarray, path: str | Path, fmt: str, **kw: int) -> Path:
    """Write a whole (2, n) float32 track to ``path`` in ``fmt`` (options as :func:`open_writer`)."""
    audio = np.asarray(audio)
    with open_writer(path, fmt, **kw) as writer:
        if audio.ndim != 2 or audio.shape[0] != 2:
            writer.write(audio)  # raises the shape error
        for start in range(0, audio.shape[1], _ENCODE_BLOCK):
            writer.write(audio[:, start : start + _ENCODE_BLOCK])
    return writer.path
