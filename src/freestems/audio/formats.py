"""What :mod:`freestems.audio.encode` can write: formats, their options and defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatInfo:
    """One output format and the options it accepts."""

    name: str
    extension: str
    mime_type: str
    lossless: bool
    bit_depths: tuple[int, ...] = ()
    """Accepted ``bit_depth`` values (lossless formats); 32 means 32-bit float for wav."""
    default_bit_depth: int | None = None
    bitrates: tuple[int, ...] = ()
    """Accepted constant bitrates in kbit/s (lossy formats)."""
    default_bitrate: int | None = None
    sample_rates: tuple[int, ...] | None = None
    """Accepted sample rates, or None for any positive rate."""


MP3_BITRATES = (128, 160, 192, 224, 256, 320)

FORMATS: dict[str, FormatInfo] = {
    "wav": FormatInfo("wav", ".wav", "audio/wav", True, bit_depths=(16, 24, 32), default_bit_depth=16),
    "flac": FormatInfo("flac", ".flac", "audio/flac", True, bit_depths=(16, 24), default_bit_depth=16),
    "mp3": FormatInfo(
        "mp3",
        ".mp3",
        "audio/mpeg",
        False,
        bitrates=MP3_BITRATES,
        default_bitrate=192,
        sample_rates=(32000, 44100, 48000),
    ),
}
"""Output formats by name. ``"mp3" in FORMATS``; ``FORMATS["wav"].bit_depths == (16, 24, 32)``."""
