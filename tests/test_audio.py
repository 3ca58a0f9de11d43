"""freestems.audio: decoding every supported input, rejecting bad ones, exact-length stem encoding."""

from __future__ import annotations

import dataclasses
import gc
import os
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from audio_samples import sine_stereo, tiny_png, write_test_file

from freestems.audio import (
    FORMATS,
    AudioDecodeError,
    AudioEncodeError,
    AudioError,
    AudioReader,
    AudioTooLong,
    StemWriter,
    decode,
    encode,
    mp3tag,
    open_writer,
)
from freestems.audio.decode import downmix_matrix, format_duration
from freestems.audio.encode import CODECS
from freestems.contract import SAMPLE_RATE

SUPPORTED_WORDS = ("mp3", "wav", "flac")


def peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Frequency of the strongest FFT bin of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def raw_decode(path: Path) -> np.ndarray:
    """Decode with PyAV alone (no resampling), (channels, n) float32: an independent reference reader."""
    with av.open(str(path)) as container:
        frames = [
            f.to_ndarray() if f.format.is_planar else f.to_ndarray().reshape(-1, f.layout.nb_channels).T
            for f in container.decode(audio=0)
        ]
    return np.concatenate(frames, axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------- decoding

# fmt, options, lossless, allowed length error in samples (lossy codecs: priming/padding of about a frame)
DECODE_CASES = [
    ("wav", {"bit_depth": 16}, 1e-4, 0),
    ("wav", {"bit_depth": 24}, 1e-6, 0),
    ("wav", {"bit_depth": 32}, 1e-7, 0),
    ("wav", {"bit_depth": 8}, 1e-2, 0),
    ("flac", {}, 1e-4, 0),
    ("mp3", {}, None, 0),  # FFmpeg's libmp3lame writes a LAME tag: exact
    ("ogg", {}, None, 1024),
    ("opus", {"rate": 48000}, None, 1024),
    ("m4a", {}, None, 2048),
    ("aac", {}, None, 2048),
    ("mp4", {"video": True}, None, 2048),
    ("mp4", {}, None, 2048),
    ("webm", {"video": True, "rate": 48000}, None, 1024),
]


@pytest.mark.parametrize(("fmt", "opts", "atol", "slack"), DECODE_CASES, ids=lambda v: str(v))
def test_decode_every_input_format(tmp_path, fmt, opts, atol, slack):
    path = tmp_path / f"song.{fmt}"
    rate = opts.get("rate", SAMPLE_RATE)
    signal = write_test_file(path, fmt, 1.0, **opts)
    audio = decode(path)
    expected_len = round(signal.shape[1] * SAMPLE_RATE / rate)
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[0] == 2
    assert abs(audio.shape[1] - expected_len) <= slack + 2
    assert audio.flags.c_contiguous
    if atol is not None:
        assert np.abs(audio - signal).max() <= atol
    else:
        assert np.isfinite(audio).all()
        body = audio[:, 4096 : 4096 + 32768]
        assert abs(peak_hz(body[0]) - 440) < 3
        if fmt != "ogg":  # FFmpeg's experimental native vorbis encoder mangles the right channel
            assert abs(peak_hz(body[1]) - 660) < 3
        rms = np.sqrt((body[0] ** 2).mean())
        assert 0.25 < rms < 0.45  # a 0.5-amplitude sine has rms 0.354


def test_reader_properties(tmp_path):
    path = tmp_path / "clip.flac"
    write_test_file(path, "flac", 1.5, rate=48000, channels=1)
    reader = AudioReader(path)
    assert reader.path == path
    assert reader.source_rate == 48000 and reader.source_channels == 1
    assert reader.codec == "flac"
    assert reader.duration == pytest.approx(1.5, abs=0.01)
    assert reader.decoded_samples is None
    n = sum(block.shape[1] for block in reader.blocks())
    assert reader.decoded_samples == n == round(1.5 * SAMPLE_RATE)
    assert "flac" in repr(reader)


def test_video_soundtrack_codec_and_duration(tmp_path):
    path = tmp_path / "clip.mp4"
    write_test_file(path, "mp4", 2.0, video=True)
    reader = AudioReader(path)
    assert reader.codec == "aac" and reader.source_channels == 2
    assert reader.duration == pytest.approx(2.0, abs=0.05)


def test_mono_is_duplicated(tmp_path):
    path = tmp_path / "mono.wav"
    signal = write_test_file(path, "wav", 0.5, channels=1)
    audio = decode(path)
    assert audio.shape == (2, signal.shape[1])
    np.testing.assert_array_equal(audio[0], audio[1])
    assert np.abs(audio[0] - signal[0]).max() < 1e-4  # full level, not -3 dB


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_six_channels_are_downmixed(tmp_path, fmt):
    path = tmp_path / f"surround.{fmt}"
    x = write_test_file(path, fmt, 0.5, channels=6)  # FL FR FC LFE BL BR
    audio = decode(path)
    c = 0.5**0.5
    norm = 1 + 2 * c
    left = (x[0] + c * x[2] + c * x[4]) / norm
    right = (x[1] + c * x[2] + c * x[5]) / norm
    assert audio.shape == (2, x.shape[1])
    assert np.abs(audio[0] - left).max() < 1e-3
    assert np.abs(audio[1] - right).max() < 1e-3


def test_downmix_matrix_never_clips():
    for names in (
        ("FL", "FR", "FC", "LFE", "BL", "BR"),
        ("FL", "FR", "BL", "BR"),
        ("NONE",) * 6,
        ("X", "Y", "Z"),
    ):
        m = downmix_matrix(names)
        assert m.shape == (len(names), 2)
        assert m.sum(axis=0).max() <= 1.0 + 1e-6
        assert (m.sum(axis=0) > 0.3).all()


@pytest.mark.parametrize("rate", [48000, 22050, 32000])
def test_other_rates_are_resampled(tmp_path, rate):
    path = tmp_path / f"r{rate}.wav"
    n = rate  # 1 s
    write_test_file(path, "wav", 1.0, rate=rate, freq=1000.0)
    audio = decode(path)
    assert abs(audio.shape[1] - round(n * SAMPLE_RATE / rate)) <= 2
    body = audio[:, 2000:-2000]
    assert abs(peak_hz(body[0]) - 1000) < 2
    assert abs(peak_hz(body[1]) - 1500) < 2
    assert np.sqrt((body[0] ** 2).mean()) == pytest.approx(0.5 / 2**0.5, rel=0.01)  # no level loss


def test_resampled_mp3_at_48k(tmp_path):
    path = tmp_path / "r48.mp3"
    write_test_file(path, "mp3", 1.0, rate=48000)
    reader = AudioReader(path)
    assert reader.source_rate == 48000
    audio = reader.read()
    assert abs(audio.shape[1] - SAMPLE_RATE) <= 2
    assert abs(peak_hz(audio[0, 2000:-2000]) - 440) < 3


def test_blocks_sizes_concatenation_and_two_passes(tmp_path):
    path = tmp_path / "two.mp3"
    write_test_file(path, "mp3", 1.0, rate=48000)  # resampled: chunks of odd sizes inside
    reader = AudioReader(path)
    whole = decode(path)
    first = list(reader.blocks(10000))
    assert [b.shape[1] for b in first[:-1]] == [10000] * (len(first) - 1)
    assert 0 < first[-1].shape[1] <= 10000
    assert all(b.dtype == np.float32 and b.shape[0] == 2 and b.flags.c_contiguous for b in first)
    np.testing.assert_array_equal(np.concatenate(first, axis=1), whole)
    second = list(reader.blocks(10000))
    np.testing.assert_array_equal(np.concatenate(second, axis=1), whole)
    odd = list(reader.blocks(777))
    np.testing.assert_array_equal(np.concatenate(odd, axis=1), whole)
    write_test_file(tmp_path / "x.wav", "wav", 1.0)
    exact = list(AudioReader(tmp_path / "x.wav").blocks(11025))
    assert [b.shape[1] for b in exact] == [11025] * 4


def test_blocks_rejects_bad_block_size(tmp_path):
    path = tmp_path / "a.wav"
    write_test_file(path, "wav", 0.1)
    with pytest.raises(ValueError):
        next(AudioReader(path).blocks(0))


def test_decode_accepts_str_paths(tmp_path):
    path = tmp_path / "a.flac"
    write_test_file(path, "flac", 0.2)
    assert decode(str(path)).shape == (2, round(0.2 * SAMPLE_RATE))


# ------------------------------------------------------------------------------------------ bad inputs


def _real_mp3(tmp_path: Path, seconds: float = 3.0) -> bytes:
    path = tmp_path / "real_source.mp3"
    write_test_file(path, "mp3", seconds)
    return path.read_bytes()


def _make_bad(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.mp3"
    if kind == "missing":
        pass
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("These are the lyrics of my song.\nNot an mp3 at all, just text.\n" * 20)
    elif kind == "png":
        path.write_bytes(tiny_png())
    elif kind == "truncated":
        path.write_bytes(_real_mp3(tmp_path)[:200])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "video_only":
        path = tmp_path / "video_only.mp4"
        write_test_file(path, "mp4", 1.0, audio=False)
    elif kind == "zero_length":
        path = tmp_path / "zero_length.wav"
        write_test_file(path, "wav", 0.0)
    elif kind == "zero_length_flac":
        path = tmp_path / "zero_length.flac"
        write_test_file(path, "flac", 0.0)
    elif kind == "folder":
        path.mkdir()
    else:
        raise ValueError(kind)
    return path


BAD_INPUTS = [
    ("missing", ["not found"]),
    ("empty", ["empty", "0 bytes"]),
    ("text", ["not an audio file", "looks like text", "Supported", *SUPPORTED_WORDS]),
    ("png", ["PNG image", "Supported"]),
    ("truncated", ["corrupt or truncated", "Supported"]),
    ("random", ["not a readable audio file", "corrupt"]),
    ("video_only", ["no audio track"]),
    ("zero_length", ["empty", "0 samples"]),
    ("zero_length_flac", ["empty", "0 samples"]),
    ("folder", ["folder"]),
]


@pytest.mark.parametrize(("kind", "words"), BAD_INPUTS, ids=[k for k, _ in BAD_INPUTS])
def test_bad_inputs_raise_helpful_errors(tmp_path, kind, words):
    path = _make_bad(kind, tmp_path)
    with pytest.raises(AudioDecodeError) as info:
        AudioReader(path)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ")
    assert "\n" not in message and "Traceback" not in message and str(tmp_path) not in message
    for word in words:
        assert word in message
    with pytest.raises(AudioDecodeError):
        decode(path)
    assert isinstance(info.value, AudioError)


def test_display_name_replaces_file_name(tmp_path):
    path = tmp_path / "upload-1234.tmp"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match=r"^My Song\.mp3: the file is empty"):
        AudioReader(path, display_name="My Song.mp3")


def test_too_long_by_container_duration(tmp_path):
    path = tmp_path / "long.wav"
    write_test_file(path, "wav", 3.0)
    with pytest.raises(AudioTooLong) as info:  # an AudioDecodeError a service can tell from "not audio"
        AudioReader(path, max_duration=2)
    assert str(info.value) == "long.wav: audio is 3 s long; the limit is 2 s"
    assert AudioReader(path, max_duration=3).read().shape[1] == 3 * SAMPLE_RATE


def test_too_long_enforced_while_decoding(tmp_path):
    """A lying header (Xing frame count of 10) cannot sneak a long file past the limit."""
    path = tmp_path / "liar.mp3"
    encode(sine_stereo(SAMPLE_RATE * 6), path, "mp3")
    data = path.read_bytes()
    lie = mp3tag.info_frame(
        bitrate_kbps=192,
        sample_rate=44100,
        channel_mode=1,
        frames=10,
        stream_bytes=len(data),
        encoder_delay=0,
        padding=0,
        music_crc=0,
        encoder=b"Other1.0 ",
    )
    path.write_bytes(lie + data[len(lie) :])
    reader = AudioReader(path, max_duration=2)
    assert reader.duration < 1
    with pytest.raises(AudioTooLong, match=r"liar\.mp3: audio is more than 2\.\d s long; the limit is 2 s"):
        for _ in reader.blocks(4096):
            pass
    assert AudioReader(path).read().shape[1] >= 6 * SAMPLE_RATE


def test_corrupt_packets_in_the_middle_are_skipped(tmp_path):
    good = _real_mp3(tmp_path, 3.0)
    noise = np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.mp3"
    path.write_bytes(good[:20000] + noise + good[23000:])
    audio = decode(path)
    assert 2 * SAMPLE_RATE < audio.shape[1] < 3 * SAMPLE_RATE + 2000
    assert np.isfinite(audio).all()


def test_truncated_file_decodes_what_is_there(tmp_path):
    path = tmp_path / "cut.mp3"
    path.write_bytes(_real_mp3(tmp_path, 3.0)[:20000])
    audio = decode(path)
    assert 0 < audio.shape[1] < 2 * SAMPLE_RATE


def test_format_duration():
    assert format_duration(2) == "2 s"
    assert format_duration(42.5) == "42.5 s"
    assert format_duration(600) == "10 min"
    assert format_duration(723) == "12 min 3 s"
    assert format_duration(3900) == "1 h 5 min"


# ------------------------------------------------------------------------------------------- encoding

LOSSLESS_CASES = [("wav", 16), ("wav", 24), ("wav", 32), ("flac", 16), ("flac", 24)]


@pytest.mark.parametrize(("fmt", "bits"), LOSSLESS_CASES, ids=[f"{f}{b}" for f, b in LOSSLESS_CASES])
def test_lossless_round_trip(tmp_path, fmt, bits):
    x = sine_stereo(123457) + np.random.default_rng(0).normal(0, 0.05, (2, 123457)).astype(np.float32)
    path = tmp_path / f"stem.{fmt}"
    with open_writer(path, fmt, bit_depth=bits) as writer:
        assert isinstance(writer, StemWriter)
        for start in range(0, x.shape[1], 30000):
            writer.write(x[:, start : start + 30000])
    y = decode(path)
    assert y.shape == x.shape
    if bits == 32:
        np.testing.assert_array_equal(y, x)
    else:
        assert np.abs(y - x).max() <= 0.5 / 2 ** (bits - 1) + 1e-7
        expected = np.rint(np.clip(x.astype(np.float64), -1, 1) * 2 ** (bits - 1)) / 2 ** (bits - 1)
        np.testing.assert_array_equal(y.astype(np.float64), expected)
    assert raw_decode(path).shape == (2, x.shape[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"stem.{fmt}"]


def test_wav_headers_are_standard(tmp_path):
    x = sine_stereo(1000)
    encode(x, tmp_path / "s16.wav", "wav")
    with wave.open(str(tmp_path / "s16.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 44100, 1000)
    encode(x, tmp_path / "f32.wav", "wav", bit_depth=32)
    data = (tmp_path / "f32.wav").read_bytes()
    assert data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") == len(data) - 8
    assert int.from_bytes(data[20:22], "little") == 3  # WAVE_FORMAT_IEEE_FLOAT
    assert b"fact" in data[:64]
    encode(x, tmp_path / "s24.wav", "wav", bit_depth=24)
    data = (tmp_path / "s24.wav").read_bytes()
    assert int.from_bytes(data[20:22], "little") == 0xFFFE and int.from_bytes(data[34:36], "little") == 24
    assert len(data) == 68 + 1000 * 6
    with av.open(str(tmp_path / "s24.wav")) as c:
        assert c.streams.audio[0].codec_context.name == "pcm_s24le"


@pytest.mark.parametrize("bitrate", [128, 320])
@pytest.mark.parametrize("n", [1000, 44100, 123457])
def test_mp3_has_exact_length(tmp_path, bitrate, n):
    x = sine_stereo(n) * 0.8 + sine_stereo(n, freqs=(1234.0, 2345.0)) * 0.2
    path = tmp_path / "stem.mp3"
    with open_writer(path, "mp3", bitrate=bitrate) as writer:
        for start in range(0, n, 4321):
            writer.write(x[:, start : start + 4321])
    y = decode(path)
    assert y.shape == (2, n)
    assert raw_decode(path).shape == (2, n)  # plain PyAV/FFmpeg agrees
    if n >= 44100:  # aligned in time: no encoder delay left over
        for ch in range(2):
            assert np.corrcoef(x[ch, 2000:-2000], y[ch, 2000:-2000])[0, 1] > 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stem.mp3"]


def test_mp3_at_48k_exact_length(tmp_path):
    path = tmp_path / "s48.mp3"
    encode(sine_stereo(48000, rate=48000), path, "mp3", sample_rate=48000, bitrate=256)
    assert raw_decode(path).shape == (2, 48000)


def test_mp3_info_tag_is_well_formed(tmp_path):
    path = tmp_path / "tag.mp3"
    n = 100000
    encode(sine_stereo(n), path, "mp3", bitrate=192)
    data = path.read_bytes()
    size = mp3tag.frame_length(data[:4])
    assert size == 144000 * 192 // 44100
    assert data[36:40] == b"Info" and data[156:165] == b"LAME3.100"
    frames = int.from_bytes(data[44:48], "big")
    assert int.from_bytes(data[48:52], "big") == len(data) == int.from_bytes(data[184:188], "big")
    delay_padding = int.from_bytes(data[177:180], "big")
    assert delay_padding >> 12 == mp3tag.ENCODER_DELAY
    assert frames * 1152 - (delay_padding >> 12) - (delay_padding & 0xFFF) == n
    assert int.from_bytes(data[190:192], "big") == mp3tag.crc16(data[:190])
    assert int.from_bytes(data[188:190], "big") == mp3tag.crc16(data[size:])
    pos, count = size, 0  # the frames after the tag are whole, and as many as the tag says
    while pos < len(data):
        length = mp3tag.frame_length(data[pos : pos + 4])
        assert length
        pos, count = pos + length, count + 1
    assert pos == len(data) and count == frames
    with av.open(str(path)) as c:
        assert c.streams.audio[0].duration * c.streams.audio[0].time_base == pytest.approx(
            n / 44100, abs=0.03
        )


def test_crc16():
    assert mp3tag.crc16(b"123456789") == 0xBB3D  # CRC-16/ARC check value
    data = np.random.default_rng(1).integers(0, 256, 70001, dtype=np.uint8).tobytes()
    assert mp3tag.crc16(data) == mp3tag._crc16_py(data)
    assert mp3tag.crc16(data[777:], mp3tag.crc16(data[:777])) == mp3tag.crc16(data)


def test_frame_counter_handles_split_feeds(tmp_path):
    path = tmp_path / "f.mp3"
    encode(sine_stereo(30000), path, "mp3")
    data = path.read_bytes()
    audio = data[mp3tag.frame_length(data[:4]) :]
    whole, pieces = mp3tag.FrameCounter(), mp3tag.FrameCounter()
    whole.feed(audio)
    for i in range(0, len(audio), 101):
        pieces.feed(audio[i : i + 101])
    assert whole.frames == pieces.frames == int.from_bytes(data[44:48], "big")
    assert whole.crc == pieces.crc and whole.bytes == pieces.bytes == len(audio)


@pytest.mark.parametrize(("fmt", "bits"), [("wav", 16), ("wav", 24), ("flac", 16), ("flac", 24)])
def test_clipping_and_nan(tmp_path, fmt, bits):
    x = np.array([[2.0, -2.0, 1.0, -1.0, np.nan, 0.5], [np.inf, -np.inf, 0.0, 0.25, -0.5, 1e-9]], np.float32)
    path = tmp_path / f"clip.{fmt}"
    encode(x, path, fmt, bit_depth=bits)
    y = decode(path)
    top = 1 - 1 / 2 ** (bits - 1)
    np.testing.assert_array_equal(
        y, np.array([[top, -1, top, -1, 0, 0.5], [top, -1, 0, 0.25, -0.5, 0]], np.float32)
    )


def test_float_wav_keeps_overs_but_not_nan(tmp_path):
    x = np.array([[1.5, -1.25, np.nan], [0.5, np.inf, -np.inf]], np.float32)
    path = tmp_path / "f.wav"
    encode(x, path, "wav", bit_depth=32)
    np.testing.assert_array_equal(decode(path), [[1.5, -1.25, 0.0], [0.5, 1.0, -1.0]])


def test_mp3_clips_loud_input(tmp_path):
    path = tmp_path / "loud.mp3"
    encode(sine_stereo(44100, amp=3.0), path, "mp3")
    y = decode(path)
    assert y.shape == (2, 44100) and np.isfinite(y).all() and np.abs(y).max() < 1.3


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_temp_file_lifecycle(tmp_path, fmt):
    dest = tmp_path / f"vocals.{fmt}"
    dest.write_bytes(b"old result")
    writer = open_writer(dest, fmt)
    writer.write(sine_stereo(5000))
    part = writer.temp_path
    assert part.parent == tmp_path and part.match(f".vocals.{fmt}.*.part") and part.exists()
    assert dest.read_bytes() == b"old result"  # nothing half-written at the destination
    assert writer.close() == dest
    assert not part.exists() and writer.closed
    assert decode(dest).shape == (2, 5000)
    writer.close()  # idempotent

    other = tmp_path / f"drums.{fmt}"
    writer = open_writer(other, fmt)
    writer.write(sine_stereo(5000))
    writer.abort()
    assert not other.exists() and not list(tmp_path.glob(f".drums.{fmt}.*.part"))
    with pytest.raises(AudioEncodeError, match="closed"):
        writer.write(sine_stereo(10))

    with pytest.raises(RuntimeError, match="boom"), open_writer(tmp_path / f"bass.{fmt}", fmt) as w:
        w.write(sine_stereo(5000))
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"vocals.{fmt}"]


def test_wav_refuses_to_pass_its_4gb_limit(tmp_path, monkeypatch):
    """RIFF sizes are 32-bit: the writer stops with an actionable error instead of writing a broken file."""
    row = CODECS["wav", 24]
    monkeypatch.setitem(CODECS, ("wav", 24), dataclasses.replace(row, max_bytes=6 * 1000))
    writer = open_writer(tmp_path / "long.wav", "wav", bit_depth=24)
    writer.write(sine_stereo(1000))  # exactly at the limit
    with pytest.raises(AudioEncodeError, match="4 GB limit.*flac"):
        writer.write(sine_stereo(1))
    assert writer.closed and list(tmp_path.iterdir()) == []


def test_zero_samples(tmp_path):
    path = encode(np.zeros((2, 0), np.float32), tmp_path / "empty.wav", "wav")
    with wave.open(str(path)) as w:
        assert w.getnframes() == 0 and w.getnchannels() == 2
    path = encode(np.zeros((2, 0), np.float32), tmp_path / "empty.flac", "flac")
    with pytest.raises(AudioDecodeError, match="0 samples"):
        AudioReader(path)
    path = encode(np.zeros((2, 0), np.float32), tmp_path / "empty.mp3", "mp3")
    assert path.stat().st_size == 0  # no MP3 frame can hold "nothing"


def test_dropped_writer_leaves_no_temp_file(tmp_path):
    writer = open_writer(tmp_path / "x.mp3", "mp3")
    writer.write(sine_stereo(3000))
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fmt", "kw", "words"),
    [
        ("ogg", {}, ["unsupported output format", "mp3, wav, flac"]),
        ("mp3", {"bitrate": 100}, ["bitrate", "128, 160, 192, 224, 256, 320"]),
        ("mp3", {"bitrate": 193}, ["bitrate"]),
        ("mp3", {"sample_rate": 22050}, ["22050 Hz"]),
        ("wav", {"bit_depth": 8}, ["bit depth", "16, 24, 32"]),
        ("flac", {"bit_depth": 32}, ["bit depth", "16, 24"]),
        ("wav", {"sample_rate": 0}, ["sample rate"]),
    ],
)
def test_invalid_options_raise(tmp_path, fmt, kw, words):
    with pytest.raises(AudioEncodeError) as info:
        open_writer(tmp_path / "out.x", fmt, **kw)
    for word in words:
        assert word in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_blocks_and_missing_folder(tmp_path):
    with pytest.raises(AudioEncodeError, match="does not exist"):
        open_writer(tmp_path / "nope" / "a.wav", "wav")
    with open_writer(tmp_path / "a.wav", "wav") as writer:
        for bad in (np.zeros((1, 10), np.float32), np.zeros((10, 2), np.float32), np.zeros(10, np.float32)):
            with pytest.raises(AudioEncodeError, match=r"\(2, samples\)"):
                writer.write(bad)
        with pytest.raises(AudioEncodeError, match="float"):
            writer.write(np.zeros((2, 10), np.int16))
        writer.write(np.full((2, 10), 0.5, np.float64))  # converted
    assert decode(tmp_path / "a.wav").shape == (2, 10)
    with pytest.raises(AudioEncodeError):
        encode(np.zeros((3, 10), np.float32), tmp_path / "b.wav", "wav")
    assert not (tmp_path / "b.wav").exists() and not list(tmp_path.glob(".b.wav.*.part"))


def test_formats_table():
    assert set(FORMATS) == {"wav", "flac", "mp3"}
    assert FORMATS["mp3"].bitrates == (128, 160, 192, 224, 256, 320)
    assert FORMATS["wav"].bit_depths == (16, 24, 32) and FORMATS["flac"].bit_depths == (16, 24)
    assert all(info.extension == f".{name}" for name, info in FORMATS.items())  # Path.suffix convention


def test_encode_then_decode_every_format_keeps_length(tmp_path):
    x = sine_stereo(77777)
    for fmt in FORMATS:
        path = encode(x, tmp_path / f"t.{fmt}", fmt)
        assert path == tmp_path / f"t.{fmt}"
        assert decode(path).shape == x.shape
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())
    assert os.listdir(tmp_path)
