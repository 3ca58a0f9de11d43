"""Decode any common audio (or video soundtrack) file to float32 stereo at 44.1 kHz, in bounded memory.

PyAV (FFmpeg's libraries, no ffmpeg binary) demuxes, decodes and converts samples to float (its
``AudioResampler``); mono is duplicated to both channels, more than two channels are down-mixed to stereo
(centre and surrounds at -3 dB, LFE dropped, normalised so that a full-scale input cannot clip); other
sample rates are resampled with soxr (high quality, streaming).

    reader = AudioReader("song.mp3", max_duration=600)   # validates; raises AudioDecodeError
    for block in reader.blocks():                       # (2, n) float32 blocks, re-decodes each time
        ...
    audio = decode("song.mp3")                          # the whole track, (2, n) float32
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import soxr

from freestems.contract import SAMPLE_RATE

from ..errors import one_line
from .errors import SUPPORTED_INPUTS, AudioDecodeError, AudioTooLong

log = logging.getLogger(__name__)

DEFAULT_BLOCK = SAMPLE_RATE * 10
DURATION_TOLERANCE = 0.5
"""Seconds by which the decoded audio may exceed ``max_duration`` (codec padding) before it is refused."""
MAX_BAD_PACKETS = 50
"""Undecodable packets skipped (as ffmpeg does) before a file is declared corrupt."""
RESAMPLE_QUALITY = "HQ"

# Demuxer to force when FFmpeg's content probe misidentifies a (tiny) file, by extension.
_FORMAT_BY_EXT = {
    ".mp3": "mp3",
    ".wav": "wav",
    ".flac": "flac",
    ".ogg": "ogg",
    ".oga": "ogg",
    ".opus": "ogg",
    ".m4a": "mov,mp4,m4a,3gp,3g2,mj2",
    ".mp4": "mov,mp4,m4a,3gp,3g2,mj2",
    ".aac": "aac",
    ".webm": "matroska,webm",
    ".mkv": "matroska,webm",
}
_SQRT1_2 = 0.7071067811865476


# ---------------------------------------------------------------------------------------------- helpers


def _sniff(head: bytes) -> str | None:
    """What a non-audio file looks like, from its first bytes ("a PNG image", "text"...), or None."""
    signatures = [
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF87a", "a GIF image"),
        (b"GIF89a", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"BM", None),  # too short to be sure
    ]
    for magic, what in signatures:
        if what and head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "an AVIF/HEIC image"
    stripped = head.lstrip()
    if stripped[:5].lower() in (b"<!doc", b"<html"):
        return "an HTML page"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of the sample is fine
            if exc.start < len(head) - 4:
                return None
        text = head.decode("utf-8", errors="ignore")
        if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text):
            return "text"
    return None


def format_duration(seconds: float) -> str:
    """'42.5 s', '3 min 20 s', '1 h 5 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


class _FloatFrames:
    """Decoded frames of any sample format as (samples, channels) float32 arrays (full scale = 1.0).

    ``av.AudioResampler`` (libswresample) converts the sample format, scaling integers by 1/2**(bits-1)
    exactly as a division would, and keeps the frame's channels and rate: the down-mix below and soxr do
    those. (libswresample's own rematrixing would put mono at -3 dB on each side and leave a 5.1 down-mix
    unnormalised, up to 2.4x over full scale; its default resampler is below soxr's HQ.) Planar float,
    what MP3, AAC, Vorbis and Opus decode to, needs no conversion and skips the filter graph.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._setup: tuple[str, str, int] | None = None

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        if frame.format.name == "fltp":
            return frame.to_ndarray().T
        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is None or setup != self._setup:  # a new stream setup (rare): a new graph
            self._resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
            self._setup = setup
        channels = frame.layout.nb_channels
        parts = [out.to_ndarray().reshape(-1, channels) for out in self._resampler.resample(frame)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


_LEFT = {"FL", "FLC", "BL", "SL", "TFL", "TBL", "TSL", "WL", "SDL", "BFL", "LFE2"}
_RIGHT = {"FR", "FRC", "BR", "SR", "TFR", "TBR", "TSR", "WR", "SDR", "BFR"}
_FRONT = {"FL", "FR", "FLC", "FRC"}
_DEFAULT_LAYOUTS = {3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@functools.lru_cache(maxsize=32)
def downmix_matrix(channel_names: tuple[str, ...]) -> np.ndarray:
    """(channels, 2) stereo down-mix matrix for a channel layout given by FFmpeg channel names.

    Front L/R at 1, centre and surrounds at -3 dB, LFE dropped, unnamed channels split alternately; columns
    scaled so that their sum is at most 1 (a full-scale input cannot clip), like libswresample.
    """
    n = len(channel_names)
    if not all(
        name in _LEFT | _RIGHT | {"FC", "BC", "TC", "TFC", "TBC", "BFC", "LFE"} for name in channel_names
    ):
        default = _DEFAULT_LAYOUTS.get(n)
        if default is not None:
            channel_names = tuple(ch.name for ch in av.AudioLayout(default).channels)
    matrix = np.zeros((n, 2), dtype=np.float64)
    for i, name in enumerate(channel_names):
        if name in _LEFT:
            matrix[i, 0] = 1.0 if name in _FRONT else _SQRT1_2
        elif name in _RIGHT:
            matrix[i, 1] = 1.0 if name in _FRONT else _SQRT1_2
        elif name == "LFE":
            continue
        elif name in ("FC", "BC", "TC", "TFC", "TBC", "BFC"):
            matrix[i, :] = _SQRT1_2
        else:  # unknown: alternate left / right
            matrix[i, i % 2] = 1.0
    norm = matrix.sum(axis=0).max()
    if norm > 1.0:
        matrix /= norm
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # cached: shared between calls
    return matrix


def _to_stereo(samples: np.ndarray, frame: av.AudioFrame) -> np.ndarray:
    channels = samples.shape[1]
    if channels == 2:
        return samples
    if channels == 1:
        return np.repeat(samples, 2, axis=1)
    stereo: np.ndarray = samples @ downmix_matrix(tuple(ch.name for ch in frame.layout.channels))
    return stereo


# ---------------------------------------------------------------------------------------------- reader


class AudioReader:
    """An audio file (or the audio track of a video), validated on construction, decoded on demand.

    Raises AudioDecodeError for a missing, empty or non-audio file, a file with no audio track, corrupt or
    truncated data, no audio samples, or a duration above ``max_duration`` seconds.
    ``display_name`` replaces the file name in error messages (e.g. an upload's original name).
    """

    def __init__(
        self, path: str | Path, max_duration: float | None = None, *, display_name: str | None = None
    ) -> None:
        self._path = Path(path)
        self._name = display_name or self._path.name or str(self._path)
        self.max_duration = max_duration
        self._decoded_samples: int | None = None
        self._format: str | None = None  # forced demuxer, when probing by content picked the wrong one
        self._check_file()
        container, stream = self._open_audio()
        try:
            if stream.codec_context is None:  # FFmpeg found the track but has no decoder for it
                raise self._error(
                    "the audio track cannot be decoded (unsupported codec, or a corrupt header)"
                )
            self._source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            self._source_channels = int(stream.codec_context.channels or 0)
            codec = stream.codec_context.codec
            self._codec = codec.canonical_name or codec.name
            self._duration = self._container_duration(container, stream)
            if self._source_rate <= 0 or self._source_channels <= 0:
                raise self._error("audio track has no sample rate or channels; the file is corrupt")
            if self._duration is not None and max_duration is not None and self._duration > max_duration:
                raise self._too_long(self._duration)
            self._probe(container, stream)
        finally:
            container.close()
        if self._duration is None and max_duration is not None:
            self._duration = self._measure(max_duration + DURATION_TOLERANCE)

    # -- properties --

    @property
    def path(self) -> Path:
        return self._path

    @property
    def duration(self) -> float | None:
        """Duration in seconds as the container states it (may be None, or slightly off)."""
        return self._duration

    @property
    def source_rate(self) -> int:
        return self._source_rate

    @property
    def source_channels(self) -> int:
        return self._source_channels

    @property
    def codec(self) -> str:
        """Codec name, e.g. 'mp3', 'aac', 'flac', 'pcm_s16le', 'opus', 'vorbis'."""
        return self._codec

    @property
    def decoded_samples(self) -> int | None:
        """Exact length at 44.1 kHz, known once a pass over :meth:`blocks` has finished (else None)."""
        return self._decoded_samples

    def __repr__(self) -> str:
        dur = "?" if self._duration is None else f"{self._duration:.2f}s"
        return (
            f"<AudioReader {str(self._path)!r} {self._codec} {self._source_rate} Hz "
            f"{self._source_channels} ch {dur}>"
        )

    # -- decoding --

    def blocks(self, block_size: int = DEFAULT_BLOCK) -> Iterator[np.ndarray]:
        """Yield float32 (2, block_size) blocks at 44.1 kHz; the last one may be shorter (never empty).

        Each call re-opens and re-decodes the file, so several passes cost no memory. Raises
        AudioDecodeError if the file cannot be decoded or decodes to more than ``max_duration``.
        """
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        pending: list[np.ndarray] = []
        pending_len = 0
        total = 0
        for chunk in self._chunks():
            pending.append(chunk)
            pending_len += chunk.shape[0]
            if pending_len < block_size:
                continue
            data = np.concatenate(pending) if len(pending) > 1 else pending[0]
            start = 0
            while pending_len - start >= block_size:
                yield np.ascontiguousarray(data[start : start + block_size].T)
                start += block_size
            pending = [data[start:]] if start < pending_len else []
            pending_len -= start
            total += start
        if pending_len:
            data = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(data.T)
            total += pending_len
        if total == 0:
            raise self._error("no audio could be decoded (the audio track is empty)")
        self._decoded_samples = total
        expected = self._duration
        if expected is not None and abs(total / SAMPLE_RATE - expected) > max(1.0, 0.05 * expected):
            log.warning(
                "%s: decoded %.1f s of audio but the file says %.1f s (truncated or mislabelled?)",
                self._name,
                total / SAMPLE_RATE,
                expected,
            )

    def read(self) -> np.ndarray:
        """The whole track, (2, n) float32."""
        parts = list(self.blocks())
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _chunks(self) -> Iterator[np.ndarray]:
        """Decoded audio as (n, 2) float32 chunks at SAMPLE_RATE."""
        container, stream = self._open_audio()
        try:
            resampler: soxr.ResampleStream | None = None
            resampler_rate = 0
            decoded_seconds = 0.0
            limit = None if self.max_duration is None else self.max_duration + DURATION_TOLERANCE
            to_float = _FloatFrames()
            for frame in self._frames(container, stream):
                rate = frame.sample_rate
                decoded_seconds += frame.samples / rate
                if limit is not None and decoded_seconds > limit:
                    raise self._too_long(decoded_seconds, decoding=True)
                samples = _to_stereo(to_float(frame), frame)
                if rate == SAMPLE_RATE and resampler is None:
                    yield samples
                    continue
                if resampler is None or rate != resampler_rate:
                    if resampler is not None:  # the rate changed mid-stream: drain the old resampler
                        tail = resampler.resample_chunk(np.zeros((0, 2), np.float32), last=True)
                        if len(tail):
                            yield tail
                    resampler = soxr.ResampleStream(
                        rate, SAMPLE_RATE, 2, dtype="float32", quality=RESAMPLE_QUALITY
                    )
                    resampler_rate = rate
                out = resampler.resample_chunk(np.ascontiguousarray(samples), last=False)
                if len(out):
                    yield out
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros((0, 2), np.float32), last=True)
                if len(tail):
                    yield tail
        finally:
            container.close()

    def _frames(
        self, container: av.container.InputContainer, stream: av.AudioStream
    ) -> Iterator[av.AudioFrame]:
        """Decoded, non-empty audio frames; bad packets are skipped like ffmpeg does, up to a limit."""
        codec = stream.codec_context
        bad = 0
        good = 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:  # the container itself is broken from here on: treat as its end
                if good == 0:
                    reason = one_line(exc).rstrip(".")
                    raise self._error(f"audio data is corrupt or truncated ({reason})") from exc
                log.warning("%s: stopped reading at a damaged part of the file: %s", self._name, exc)
                break
            try:
                frames = codec.decode(packet)
            except av.FFmpegError as exc:
                bad += 1
                log.debug("%s: skipped an undecodable packet: %s", self._name, exc)
                if bad > MAX_BAD_PACKETS and bad > good:
                    reason = one_line(exc).rstrip(".")
                    raise self._error(f"audio data is corrupt ({bad} undecodable packets, {reason})") from exc
                continue
            for frame in frames:
                if frame.samples:
                    good += 1
                    yield frame
        if bad:
            log.warning("%s: skipped %d undecodable audio packets", self._name, bad)

    # -- opening and validation --

    def _check_file(self) -> None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            raise self._error("file not found") from None
        except OSError as exc:
            raise self._error(f"cannot read the file ({one_line(exc)})") from None
        if self._path.is_dir():
            raise self._error("is a folder, not an audio file")
        if st.st_size == 0:
            raise self._error("the file is empty (0 bytes)")
        try:
            with open(self._path, "rb") as fh:
                self._head = fh.read(4096)
        except OSError as exc:
            raise self._error(f"cannot read the file ({one_line(exc)})") from None

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self._path), format=self._format, metadata_errors="replace")
        except av.FFmpegError as exc:
            forced = _FORMAT_BY_EXT.get(self._path.suffix.lower())
            if self._format is None and forced is not None and _sniff(self._head) is None:
                try:
                    container = av.open(str(self._path), format=forced, metadata_errors="replace")
                except av.FFmpegError:
                    pass
                else:
                    self._format = forced
                    return container
            raise self._not_audio(exc) from exc
        except OSError as exc:
            raise self._error(f"cannot read the file ({one_line(exc)})") from exc

    def _open_audio(self) -> tuple[av.container.InputContainer, av.AudioStream]:
        """Open the file and pick its audio stream (the caller closes the container)."""
        container = self._open()
        try:
            if not container.streams.audio and self._format is None:
                # A small file can be misidentified by content probing: retry with its extension's demuxer.
                forced = _FORMAT_BY_EXT.get(self._path.suffix.lower())
                if forced is not None and forced != container.format.name:
                    try:
                        retry = av.open(str(self._path), format=forced, metadata_errors="replace")
                    except av.FFmpegError:
                        retry = None
                    if retry is not None and retry.streams.audio:
                        container.close()
                        container, self._format = retry, forced
                    elif retry is not None:
                        retry.close()
            return container, self._audio_stream(container)
        except BaseException:
            container.close()
            raise

    def _audio_stream(self, container: av.container.InputContainer) -> av.AudioStream:
        if container.streams.audio:
            best = container.streams.best("audio")  # typed as any Stream; for "audio" it is an AudioStream
            return best if isinstance(best, av.AudioStream) else container.streams.audio[0]
        what = _sniff(self._head)
        if what is not None and what != "text":
            raise self._error(f"not an audio file (looks like {what}). Supported: {SUPPORTED_INPUTS}")
        if container.streams.video:
            raise self._error("the video has no audio track; nothing to separate")
        raise self._not_audio(None)

    def _container_duration(
        self, container: av.container.InputContainer, stream: av.AudioStream
    ) -> float | None:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
        if container.duration is not None and container.duration > 0:
            return container.duration / av.time_base
        return None

    def _measure(self, limit: float) -> float | None:
        """The length of a file whose header states none (a FLAC streamed without its total, a raw stream),
        from its packets' durations, so that a long one is refused before any work is done on it.

        Demuxing only reads the packets' headers (milliseconds per minute of audio); a packet without a
        duration is decoded to count its samples. Raises AudioTooLong as soon as the count passes ``limit``.
        Returns the length, or None if the container ended in a damaged part (the decoder decides then).
        """
        container, stream = self._open_audio()
        try:
            codec = stream.codec_context
            time_base = stream.time_base
            seconds = 0.0
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.FFmpegError:
                    return None
                if packet.size == 0:
                    continue
                if packet.duration and time_base is not None:
                    seconds += float(packet.duration * time_base)
                else:
                    try:
                        seconds += sum(frame.samples / frame.sample_rate for frame in codec.decode(packet))
                    except (av.FFmpegError, ZeroDivisionError):
                        continue
                if seconds > limit:
                    raise self._too_long(seconds, decoding=True)
            return seconds or None
        finally:
            container.close()

    def _probe(self, container: av.container.InputContainer, stream: av.AudioStream) -> None:
        """Decode the first audio frame, to catch corrupt or empty audio at open time."""
        for _frame in self._frames(container, stream):
            return
        if self._duration is not None and self._duration > 0:
            raise self._error("audio data is corrupt or truncated; no audio could be decoded")
        raise self._error("the audio track is empty (0 samples)")

    # -- errors --

    def _error(self, message: str) -> AudioDecodeError:
        return AudioDecodeError(f"{self._name}: {message}")

    def _not_audio(self, exc: BaseException | None) -> AudioDecodeError:
        what = _sniff(self._head)
        if what is not None:
            return self._error(f"not an audio file (looks like {what}). Supported: {SUPPORTED_INPUTS}")
        reason = f" ({one_line(exc).rstrip('.')})" if exc is not None else ""
        return self._error(
            f"not a readable audio file: unrecognised format, or the data is corrupt or truncated{reason}. "
            f"Supported: {SUPPORTED_INPUTS}"
        )

    def _too_long(self, seconds: float, decoding: bool = False) -> AudioTooLong:
        assert self.max_duration is not None
        longer = "more than " if decoding else ""
        limit = format_duration(self.max_duration)
        length = format_duration(seconds)
        return AudioTooLong(f"{self._name}: audio is {longer}{length} long; the limit is {limit}")


def decode(path: str | Path, max_duration: float | None = None) -> np.ndarray:
    """Decode a whole file to a (2, n) float32 array at 44.1 kHz (see :class:`AudioReader`)."""
    return AudioReader(path, max_duration).read()
