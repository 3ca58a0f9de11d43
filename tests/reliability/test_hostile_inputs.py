"""Hostile and odd inputs: every one gets a clear error (a JSON 4xx from the service, one line from the CLI,
an AudioDecodeError from the library), never a 500 or a traceback, and leaves no temporary file behind.

Fixed cases first (each one a bug found on a loopback server), then property-based fuzzers (hypothesis)
over the decoder and the upload path; their example counts come from ``scaled`` (CI: seconds; full:
thousands, ``FREESTEMS_RELIABILITY=full``).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from audio_samples import tiny_png, write_test_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import (
    client_from,
    connect_session,
    error_of,
    leftover_files,
    open_session,
    receive,
    wait_until,
)
from websockets.exceptions import ConnectionClosed

from freestems.audio import AudioDecodeError, AudioReader, AudioTooLong, decode
from freestems.cli import main
from freestems.engine import SeparationError, check_overlap
from freestems.files import TEMP_GLOB
from freestems.jobrun import JobFailed, run_job

from .bounds import FULL, scaled

FUZZ = dict(deadline=None, database=None, derandomize=not FULL, print_blob=True)


# ---------------------------------------------------------------------------------------------- files


def wav_bytes(
    *, bits: int = 16, channels: int = 2, rate: int = 44100, data: bytes = b"\x01\x02" * 200,
    declared: int | None = None, tag: int = 1,
) -> bytes:  # fmt: skip
    """A WAV file built by hand, header fields as given (however absurd)."""
    align = channels * max(bits, 8) // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def unknown_length_flac(path: Path, seconds: float) -> Path:
    """A real FLAC whose STREAMINFO says 'total samples: unknown' (0), as an encoder writing to a pipe
    leaves it: the container states no duration at all."""
    write_test_file(path, "flac", seconds=seconds)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    # STREAMINFO starts at byte 8; its bytes 10..17 are rate (20 bits), channels, depth, total (36 bits).
    data[21] &= 0xF0
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


def s64_wav(signal: np.ndarray) -> bytes:
    """64-bit integer PCM (FFmpeg's pcm_s64le), which PyAV cannot turn into an array by itself."""
    pcm = np.round(signal.T.astype(np.float64) * 2**63).clip(-(2**63), 2**63 - 1024).astype(np.int64)
    return wav_bytes(bits=64, channels=signal.shape[0], data=pcm.tobytes())


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    """Short real files of each common format: the seeds the fuzzers mutate."""
    folder = tmp_path_factory.mktemp("seeds")
    out = {}
    for fmt in ("wav", "flac", "mp3", "ogg"):
        path = folder / f"seed.{fmt}"
        write_test_file(path, fmt, seconds=0.3)
        out[fmt] = path.read_bytes()
    return out


# ---------------------------------------------------------------------------------------------- decoder


def test_wav_with_zero_bits_per_sample_is_not_audio(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(wav_bytes(bits=0, data=b"\0" * 100))
    assert path.stat().st_size == 144  # as reported
    with pytest.raises(AudioDecodeError, match="zero.wav: the audio track cannot be decoded"):
        AudioReader(path)


def test_64_bit_integer_wav_decodes(tmp_path):
    t = np.arange(4410) / 44100
    signal = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)])
    path = tmp_path / "s64.wav"
    path.write_bytes(s64_wav(signal))
    audio = decode(path)
    assert audio.dtype == np.float32 and audio.shape == (2, 4410)
    assert np.abs(audio - signal).max() < 1e-6


def test_flac_without_a_length_is_refused_before_any_work(tmp_path, small_model):
    source = unknown_length_flac(tmp_path / "endless.flac", seconds=30.0)
    with contextlib.closing(__import__("av").open(str(source))) as container:
        assert container.duration is None and container.streams.audio[0].duration is None
    with pytest.raises(AudioTooLong, match="endless.flac: audio is more than 5.*; the limit is 5 s"):
        AudioReader(source, max_duration=5.0)

    progress: list[float] = []
    with pytest.raises(JobFailed) as failure:
        run_job(
            source, tmp_path / "out.zip", small_model, work_dir=tmp_path / "work", max_duration=5.0,
            progress=progress.append, device="cpu",
        )  # fmt: skip
    assert failure.value.code == "too_long"
    assert progress == []  # the model never ran: refused as soon as the length was known
    assert not (tmp_path / "work").exists() and not (tmp_path / "out.zip").exists()

    reader = AudioReader(source, max_duration=60.0)  # under the limit: measured, then decoded whole
    assert reader.duration == pytest.approx(30.0)
    assert reader.read().shape == (2, 30 * 44100)


def test_post_jobs_refuses_a_flac_without_a_length_with_413(start_server, tmp_path):
    source = unknown_length_flac(tmp_path / "endless.flac", seconds=30.0)
    server = start_server(auth="none", max_duration=5.0)
    response = httpx.post(
        server.url + "/jobs", files={"audio_file": ("endless.flac", source.read_bytes())}, timeout=60
    )
    assert assert_json_error(response, 413)["code"] == "too_long"  # not a 202 and a failed job later
    assert server.service.store.counts()["queued"] == 0
    assert leftover_files(server.data_dir) == []


# ---------------------------------------------------------------------------------------------- options


def test_overlap_rounding_to_the_bound_is_refused_like_the_engine_refuses_it(start_server, songs):
    server = start_server(auth="none")
    for overlap in ("0.89999", "0.89996", "0.9", "nan", "inf", "-0.1", "1e400"):
        response = httpx.post(
            server.url + "/jobs",
            files={"audio_file": ("tone.wav", songs["wav"].read_bytes())},
            data={"overlap": overlap},
            timeout=60,
        )
        assert response.status_code == 422, (overlap, response.text)
        assert error_of(response)["field"] == "overlap"
    assert server.service.store.counts()["queued"] == 0


@settings(max_examples=scaled(200, 5000), **FUZZ)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12)))
def test_every_overlap_the_form_accepts_the_engine_accepts(raw):
    from freestems.service.errors import ServiceError
    from freestems.service.options import parse_options

    try:
        options = parse_options({"overlap": raw}, sources=["vocals", "other"], model="m", max_shifts=50)
    except ServiceError as error:
        assert error.status == 422 and error.field == "overlap"
        return
    try:
        check_overlap(options.overlap)
    except SeparationError as error:
        pytest.fail(f"the form accepted overlap={raw!r} but the engine refuses it: {error}")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_batch_reports_a_bad_file_in_one_line_and_goes_on(tmp_path, small_checkpoint, capsys):
    write_test_file(tmp_path / "a.wav", "wav", seconds=1.0)
    (tmp_path / "bad.wav").write_bytes(wav_bytes(bits=0))
    write_test_file(tmp_path / "c.wav", "wav", seconds=1.0)
    write_test_file(tmp_path / "d.wav", "wav", seconds=1.0)
    out = tmp_path / "out"
    (out / "small").mkdir(parents=True)
    (out / "small" / "d").write_text("a file where the stems' folder should go")  # an OSError for d.wav
    files = [str(tmp_path / name) for name in ("a.wav", "bad.wav", "d.wav", "c.wav")]
    code = main(["separate", *files, "-o", str(out), "--model-file", str(small_checkpoint)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert "freestems: bad.wav: the audio track cannot be decoded" in err
    assert [line for line in err.splitlines() if line.startswith("freestems: d.wav: ")], err
    assert "2 separated, 2 failed" in err
    assert sorted(p.name for p in (out / "small").iterdir()) == ["a", "c", "d"]
    assert len(list((out / "small" / "c").iterdir())) == 4
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    from model_helpers import make_small_checkpoint

    return make_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


# ---------------------------------------------------------------------------------------------- service


def raw_post(url: str, body: bytes, content_type: str, path: str = "/separate", **headers: str):
    return httpx.post(
        url + path, content=body, headers={"Content-Type": content_type, **headers}, timeout=120
    )


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes, *, close: bool = True) -> bytes:
    """A multipart body from (part headers, part data); ``close=False`` leaves out the final boundary."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def file_part(data: bytes, filename: bytes = b"song.wav", name: bytes = b"audio_file") -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"', data


def assert_json_error(response: httpx.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return error_of(response)


def test_boundary_longer_than_256_characters_is_refused(start_server):
    server = start_server(auth="none")
    boundary = b"b" * 300
    body = multipart([file_part(wav_bytes())], boundary)
    response = raw_post(server.url, body, "multipart/form-data; boundary=" + boundary.decode())
    error = assert_json_error(response, 415)
    assert error["code"] == "not_multipart" and "boundary" in error["message"]
    assert leftover_files(server.data_dir) == []


def test_huge_part_headers_are_refused(start_server):
    server = start_server(auth="none")
    head = b'Content-Disposition: form-data; name="audio_file"; filename="' + b"x" * 200_000 + b'"'
    body = multipart([(head, wav_bytes())], b"frontier")
    error = assert_json_error(raw_post(server.url, body, "multipart/form-data; boundary=frontier"), 422)
    assert error["code"] == "invalid_form"
    assert leftover_files(server.data_dir) == []


def test_deeply_nested_json_on_the_socket_is_a_bad_message(start_server):
    server = start_server()
    with connect_session(server) as ws:
        assert receive(ws)["type"] == "challenge"
        ws.send("[" * 15_000)
        message = receive(ws)
        assert message["type"] == "error" and message["code"] == "bad_message", message
        with pytest.raises(ConnectionClosed):
            receive(ws)
        assert ws.close_code == 1008


def test_refused_uploads_count_against_the_address_before_the_body_is_read(start_server):
    server = start_server(refused_uploads_per_minute=3)
    png = {"files": {"audio_file": ("cover.mp3", tiny_png())}}
    with open_session(server) as (_ws, key):
        for _ in range(3):  # the same key each time: a refusal does not spend it
            response = httpx.post(server.url + "/jobs", headers={"X-Session-Key": key}, timeout=60, **png)
            assert assert_json_error(response, 415)["code"] == "not_audio"
        # The fourth gets 429 from its headers alone: a 4 MB body is announced and never sent.
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(
                b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Key: " + key.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 4000000\r\n\r\n"
            )
            head = read_response(conn)
        assert head.startswith("HTTP/1.1 429"), head
        assert "retry-after:" in head.lower() and "too_many_refused" in head
        # Other addresses are not affected.
        with client_from("127.0.0.2", timeout=60) as other:
            response = other.post(server.url + "/jobs", **png)
        assert assert_json_error(response, 401, 415)["code"] != "too_many_refused"
    assert leftover_files(server.data_dir) == []


def read_response(conn: socket.socket) -> str:
    """A whole small HTTP response from a raw socket: the head, then as many body bytes as it announces."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    sizes = [line.split(b":", 1)[1] for line in lines if line.lower().startswith(b"content-length:")]
    length = int(sizes[0]) if sizes else 0
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def can_mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, timeout=30
    )
    return result.returncode == 0


def test_disk_full_while_encoding_is_a_503_and_leaves_nothing(start_server, songs, tmp_path):
    work = tmp_path / "data" / "work"
    if os.geteuid() != 0 or not can_mount_tmpfs(work):
        pytest.skip("needs root to mount a 1 MB tmpfs as the work folder")
    try:
        server = start_server(auth="none")
        response = httpx.post(
            server.url + "/separate",
            files={"audio_file": ("medium.mp3", songs["medium"].read_bytes())},
            data={"format": "wav"},  # 20 s x 4 stems of 16-bit stereo: ~14 MB, the disk has 1 MB
            timeout=300,
        )
        error = assert_json_error(response, 503)
        assert error["code"] == "disk_full" and "disk is full" in error["message"]
        assert int(response.headers["retry-after"]) > 0
        assert list(work.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(work)], timeout=30)


# ---------------------------------------------------------------------------------------------- the table

VIDEO_ONLY = "video.mp4"


def hostile_files(folder: Path, samples: dict[str, bytes]) -> dict[str, tuple[bytes, set[int], str | None]]:
    """name -> (bytes, acceptable statuses, expected error code)."""
    write_test_file(folder / VIDEO_ONLY, "mp4", seconds=1.0, audio=False)
    write_test_file(folder / "eight.wav", "wav", seconds=0.2, channels=8)
    long_flac = unknown_length_flac(folder / "endless.flac", seconds=8.0)
    return {
        "empty.wav": (b"", {415}, "not_audio"),
        "notes.mp3": (b"these are my lyrics, not a song\n" * 20, {415}, "not_audio"),
        "cover.mp3": (tiny_png(), {415}, "not_audio"),
        "truncated.mp3": (samples["mp3"][:200], {415}, "not_audio"),
        "no-audio.mp4": ((folder / VIDEO_ONLY).read_bytes(), {415}, "not_audio"),
        "zero-channels.wav": (wav_bytes(channels=0), {415}, "not_audio"),
        "zero-bits.wav": (wav_bytes(bits=0), {415}, "not_audio"),
        "one-hertz.wav": (wav_bytes(rate=1, data=b"\0\0" * 600), {413}, "too_long"),
        "zero-hertz.wav": (wav_bytes(rate=0), {415}, "not_audio"),
        "endless.flac": (long_flac.read_bytes(), {413}, "too_long"),
        "random.ogg": (random.Random(0).randbytes(5000), {415}, "not_audio"),
        "header-only.flac": (samples["flac"][:42], {415}, "not_audio"),
        # Odd but real audio: separated, not refused (FFmpeg reads what a lying WAV header's data size has).
        "huge-declared.wav": (wav_bytes(declared=0xFFFFFFF0), {200}, None),
        "eight-channels.wav": ((folder / "eight.wav").read_bytes(), {200}, None),
        "one-megahertz.wav": (wav_bytes(rate=1_000_000, data=b"\x10\x00" * 20_000), {200}, None),
        "s64.wav": (s64_wav(np.full((2, 4410), 0.25)), {200}, None),
    }


def test_hostile_files_get_a_json_4xx_and_leave_nothing(start_server, samples, tmp_path):
    server = start_server(auth="none", max_duration=5.0)
    for name, (data, statuses, code) in hostile_files(tmp_path, samples).items():
        response = httpx.post(
            server.url + "/separate", files={"audio_file": (name, data)}, data={"format": "wav"}, timeout=300
        )
        assert response.status_code in statuses, (name, response.status_code, response.text[:300])
        if code is None:
            with zipfile.ZipFile(__import__("io").BytesIO(response.content)) as bundle:
                assert len(bundle.namelist()) == 4, name
        else:
            assert assert_json_error(response, *statuses)["code"] == code, name
        assert leftover_files(server.data_dir) == [], name


def test_hostile_forms_get_a_json_4xx_and_leave_nothing(start_server):
    server = start_server(auth="none")
    wav = wav_bytes()
    ok_file = file_part(wav)
    form = "multipart/form-data; boundary=x"

    def field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
        return b'Content-Disposition: form-data; name="' + name + b'"', value

    many = [field(f"f{i}".encode(), b"1") for i in range(40)]
    cases: list[tuple[str, bytes, str, int | tuple[int, ...]]] = [
        ("not multipart", b"audio=1", "application/x-www-form-urlencoded", 415),
        ("no boundary", multipart([ok_file], b"x"), "multipart/form-data", 415),
        ("garbled content type", b"x", 'multipart/form-data; boundary="; ;;==\x7f', (415, 422)),
        ("empty body", b"", form, 422),
        ("no closing boundary", multipart([ok_file], b"x", close=False), form, 422),
        ("junk", b"\0\xff" * 500, form, 422),
        ("no file", multipart([field(b"shifts", b"1")], b"x"), form, 422),
        ("two files", multipart([ok_file, ok_file], b"x"), form, 422),
        ("nameless part", multipart([(b"Content-Disposition: form-data", b"1"), ok_file], b"x"), form, 422),
        ("unknown field", multipart([field(b"\xff\xfe", b"1"), ok_file], b"x"), form, 422),
        ("huge field", multipart([field(b"model", b"m" * 5000), ok_file], b"x"), form, 422),
        ("many fields", multipart([*many, ok_file], b"x"), form, 422),
        ("header without colon", b"--x\r\nnonsense\r\n\r\ndata\r\n--x--\r\n", form, 422),
        ("too large", multipart([file_part(b"\0" * 4_200_000)], b"x"), form, 413),
    ]
    for what, body, content_type, status in cases:
        response = raw_post(server.url, body, content_type)
        assert_json_error(response, *(status if isinstance(status, tuple) else (status,)))
        assert leftover_files(server.data_dir) == [], what


def test_a_body_cut_short_leaves_nothing(start_server):
    server = start_server(auth="none")
    port = int(server.url.rsplit(":", 1)[1])
    body = multipart([file_part(wav_bytes(data=b"\0" * 200_000))], b"x")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(
            b"POST /separate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2]
        )
        wait_until(lambda: list((server.data_dir / "uploads").glob(TEMP_GLOB)), timeout=20)
    wait_until(lambda: leftover_files(server.data_dir) == [], timeout=20)


# ---------------------------------------------------------------------------------------------- fuzzers


def _decodes_or_refuses(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            audio = AudioReader(path, max_duration=30.0).read()
        except AudioDecodeError:
            return
        assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[0] == 2 and audio.shape[1] > 0


SUFFIXES = st.sampled_from([".wav", ".flac", ".mp3", ".ogg", ".m4a", ".bin", ""])


@settings(max_examples=scaled(60, 3000), **FUZZ)
@given(data=st.binary(max_size=4096), suffix=SUFFIXES)
def test_decoder_on_random_bytes(data, suffix):
    _decodes_or_refuses(data, suffix)


@settings(max_examples=scaled(120, 5000), suppress_health_check=[HealthCheck.function_scoped_fixture], **FUZZ)
@given(
    fmt=st.sampled_from(["wav", "flac", "mp3", "ogg"]),
    edits=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 8000)),
    suffix=SUFFIXES,
)
def test_decoder_on_mutated_headers(samples, fmt, edits, cut, suffix):
    data = bytearray(samples[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    _decodes_or_refuses(bytes(data if cut is None else data[:cut]), suffix)


FIELD_NAMES = ["audio_file", "two_stems", "shifts", "overlap", "mp3", "mp3_bitrate", "model", "format"]
NAMES = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=20))
VALUES = st.one_of(st.sampled_from(["vocals", "1", "0.25", "true", "320", "flac", ""]), st.text(max_size=40))
BOUNDARIES = st.text(alphabet="abcXYZ0123456789'()+_,-./:=? ", min_size=1, max_size=300).filter(
    lambda b: not b.endswith(" ")
)


@settings(max_examples=scaled(40, 2000), suppress_health_check=[HealthCheck.function_scoped_fixture], **FUZZ)
@given(
    boundary=BOUNDARIES,
    fields=st.lists(st.tuples(NAMES, VALUES), max_size=6),
    with_file=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
    header_pad=st.sampled_from([0, 0, 100, 10_000]),
    quote=st.booleans(),
)
def test_upload_path_on_fuzzed_forms(fuzz_server, boundary, fields, with_file, cut, header_pad, quote):
    server = fuzz_server
    parts = [
        (b'Content-Disposition: form-data; name="' + name.encode("utf-8", "surrogatepass") + b'"',
         value.encode("utf-8", "surrogatepass"))
        for name, value in fields
    ]  # fmt: skip
    if with_file:
        head, data = file_part(wav_bytes(data=b"\0\1" * 300))
        parts.append((head + b"\r\nX-Pad: " + b"p" * header_pad, data))
    body = multipart(parts, boundary.encode())
    if cut is not None:
        body = body[:cut]
    shown = f'"{boundary}"' if quote else boundary
    response = raw_post(server.url, body, f"multipart/form-data; boundary={shown}")
    if response.status_code != 200:
        assert_json_error(response, 400, 408, 413, 415, 422, 429)
    assert leftover_files(server.data_dir) == []


@pytest.fixture
def fuzz_server(start_server):
    return start_server(auth="none", jobs_per_ip=64, queue_capacity=64)
