"""MP3 frame headers and the Xing "Info" + LAME tag that makes a CBR MP3 decode to its exact length.

LAME (and so ``lameenc``) prepends ``ENCODER_DELAY`` samples of delay and pads the end up to a whole frame.
``lameenc`` does not write the tag frame that records this, so a decoder would return
``frames * 1152`` samples, shifted by delay + 529. We write the tag ourselves: a silent first frame holding
the Xing/Info header (frame and byte counts, TOC) and the LAME extension with the encoder delay and padding
(12 bits each) and the two CRC-16s. FFmpeg, LAME/mpg123, foobar2000, Apple and browsers honour it and trim
the output to the exact original length.

Layout of the tag (offsets from the frame start, MPEG-1 stereo; MPEG-1 mono has 17 bytes of side info):
  0 header | 4 side info (zeros) | 36 "Info" | 40 flags | 44 frames | 48 bytes | 52 TOC[100] | 152 quality |
  156 "LAME3.100" | 165 revision/VBR method | 166 lowpass | 167 peak | 171 radio gain | 173 audiophile gain |
  175 flags/ATH | 176 bitrate | 177 delay(12) padding(12) | 180 misc | 181 mp3 gain | 182 preset/surround |
  184 music length | 188 music CRC | 190 tag CRC (CRC-16 of bytes 0..189).
"""

from __future__ import annotations

import struct

import numpy as np

SAMPLES_PER_FRAME = 1152  # MPEG-1 Layer III
ENCODER_DELAY = 576  # LAME 3.100's encoder delay (measured: lameenc output is late by 576 + 529 samples)
DECODER_DELAY = 529  # the MP3 decoder's own delay, which readers add to the tag's encoder delay
ENCODER_VERSION = b"LAME3.100"

BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # MPEG-1 Layer III
SAMPLE_RATES = (44100, 48000, 32000)  # MPEG-1, by header index

_XING_FLAGS = 0x0F  # frames, bytes, TOC, quality present
_TAG_SIZE = 192  # bytes used by the tag from the frame start (stereo); the CRC covers the first 190


def frame_length(header: bytes | memoryview) -> int:
    """Length in bytes of the MPEG-1 Layer III frame whose 4-byte header is given; 0 if not a valid header."""
    if len(header) < 4 or header[0] != 0xFF or (header[1] & 0xFE) != 0xFA:
        return 0
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if not 0 < bitrate_index < 15 or rate_index == 3:
        return 0
    return 144000 * BITRATES_KBPS[bitrate_index] // SAMPLE_RATES[rate_index] + padding


# ---- CRC-16 (ARC: reflected polynomial 0xA001, init 0, no final xor), as used by the LAME tag ----


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint16)
_ROW = 512  # bytes per row in the vectorised CRC
_shift_table: list[int] | None = None


def _crc16_py(data: bytes | memoryview, crc: int = 0) -> int:
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _row_shift_table() -> list[int]:
    """shift[c] = the CRC state after feeding _ROW zero bytes from state c (a linear map, tabulated)."""
    global _shift_table
    if _shift_table is None:
        basis = np.array([1 << k for k in range(16)], dtype=np.uint16)
        for _ in range(_ROW):
            basis = _TABLE_NP[basis & 0xFF] ^ (basis >> 8)
        states = np.arange(65536, dtype=np.uint32)
        out = np.zeros(65536, dtype=np.uint16)
        for k in range(16):
            out ^= np.where((states >> k) & 1, basis[k], 0).astype(np.uint16)
        _shift_table = out.tolist()
    return _shift_table


def crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/ARC of ``data``, continuing from ``crc`` (so ``crc16(b, crc16(a)) == crc16(a + b)``).

    Large inputs are split into rows of 512 bytes whose CRCs are computed in parallel with numpy, then
    chained with a tabulated "append 512 zero bytes" map (the CRC is linear): ~100x faster than a byte loop.
    """
    n = len(data)
    head = n % _ROW
    crc = _crc16_py(memoryview(data)[:head], crc)
    if n == head:
        return crc
    rows = np.frombuffer(data, dtype=np.uint8, offset=head).reshape(-1, _ROW)
    cols = np.ascontiguousarray(rows.T)
    row_crc = np.zeros(rows.shape[0], dtype=np.uint16)
    table = _TABLE_NP
    for j in range(_ROW):
        row_crc = table[(row_crc ^ cols[j]) & 0xFF] ^ (row_crc >> 8)
    shift = _row_shift_table()
    for value in row_crc.tolist():
        crc = shift[crc] ^ value
    return crc


# ---- the tag frame ----


def info_frame(
    *,
    bitrate_kbps: int,
    sample_rate: int,
    channel_mode: int,
    frames: int,
    stream_bytes: int,
    encoder_delay: int,
    padding: int,
    music_crc: int,
    encoder: bytes = ENCODER_VERSION,
) -> bytes:
    """A silent MPEG-1 Layer III frame carrying a Xing "Info" (CBR) header and a LAME extension.

    frames: audio frames after this one; stream_bytes: size of the whole stream including this frame;
    channel_mode: the 2-bit mode of the audio frames (0 stereo, 1 joint, 2 dual, 3 mono);
    music_crc: CRC-16 of the audio frames' bytes. ``encoder`` must start with b"LAME" for readers to
    honour delay and padding.
    """
    if bitrate_kbps not in BITRATES_KBPS[1:] or sample_rate not in SAMPLE_RATES:
        raise ValueError(
            f"not an MPEG-1 Layer III bitrate/sample rate: {bitrate_kbps} kbps, {sample_rate} Hz"
        )
    if not (0 <= encoder_delay < 4096 and 0 <= padding < 4096):
        raise ValueError(f"encoder delay {encoder_delay} / padding {padding} do not fit in 12 bits")
    size = 144000 * bitrate_kbps // sample_rate
    header = bytes(
        (
            0xFF,
            0xFB,  # MPEG-1, Layer III, no CRC protection
            (BITRATES_KBPS.index(bitrate_kbps) << 4) | (SAMPLE_RATES.index(sample_rate) << 2),
            (channel_mode << 6) | 0x04,  # mode, no mode extension, not copyrighted, original
        )
    )
    side_info = 17 if channel_mode == 3 else 32
    toc = bytes(min(255, i * 256 // 100) for i in range(100))
    xing = b"Info" + struct.pack(">III", _XING_FLAGS, frames, stream_bytes) + toc + struct.pack(">I", 0)
    source_freq = {32000: 0, 44100: 1, 48000: 2}[sample_rate]
    stereo_mode = {0: 1, 1: 3, 2: 2, 3: 0}[channel_mode]
    lame = (
        encoder[:9].ljust(9, b" ")
        + bytes((0x01, 0))  # tag revision 0, VBR method 1 (CBR); lowpass unknown
        + struct.pack(">IHH", 0, 0, 0)  # peak, radio and audiophile replay gain: not computed
        + bytes((0, min(bitrate_kbps, 255)))  # encoding flags/ATH type, bitrate
        + (encoder_delay << 12 | padding).to_bytes(3, "big")
        + bytes(((source_freq << 6) | (stereo_mode << 2), 0))  # misc, mp3 gain
        + struct.pack(">HIH", 0, stream_bytes, music_crc)  # preset/surround, music length, music CRC
    )
    frame = bytearray(size)
    frame[:4] = header
    body = xing + lame
    start = 4 + side_info
    frame[start : start + len(body)] = body
    crc_end = start + len(body)  # == 190 for stereo
    frame[crc_end : crc_end + 2] = struct.pack(">H", crc16(bytes(frame[:crc_end])))
    return bytes(frame)


class FrameCounter:
    """Follows a stream of MP3 bytes: counts whole frames, the CRC-16 of all bytes, the first header."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.crc = 0
        self.first_header: bytes | None = None
        self._skip = 0  # bytes of the current frame still to come
        self._pending = b""  # a header split across two feeds

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.crc = crc16(data, self.crc)
        self.bytes += len(data)
        buf = self._pending + data
        pos = self._skip  # 0 whenever a partial header is pending
        self._pending = b""
        while pos < len(buf):
            if len(buf) - pos < 4:
                self._pending = buf[pos:]
                self._skip = 0
                return
            length = frame_length(buf[pos : pos + 4])
            if not length:
                raise ValueError(
                    f"unexpected bytes in the MP3 stream at offset {self.bytes - len(buf) + pos}"
                )
            if self.first_header is None:
                self.first_header = bytes(buf[pos : pos + 4])
            self.frames += 1
            pos += length
        self._skip = pos - len(buf)
