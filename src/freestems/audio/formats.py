"""The output formats, defined once: name -> extension, bit depths, bitrates and sample rates.

Every layer takes its formats from here: the writers (:mod:`freestems.audio.encode`), the pipeline's stem
file names, the CLI's choices and the service's form. Extensions follow ``Path.suffix``: with the dot
(``".wav"``), so a file name is ``stem + extension``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatInfo:
    """One output format and the options it accepts."""

    name: str
    extension: str
    """With the dot, as ``Path.suffix`` gives it: ``".mp3"``."""
    bit_depths: tuple[int, ...] = ()
    """Accepted ``bit_depth`` values (lossless formats); 32 means 32-bit float for wav."""
    bitrates: tuple[int, ...] = ()
    """Accepted constant bitrates in kbit/s (lossy formats)."""
    sample_rates: tuple[int, ...] | None = None
    """Accepted sample rates, or None for any positive rate."""


MP3_BITRATES = (128, 160, 192, 224, 256, 320)

FORMATS: dict[str, FormatInfo] = {
    "mp3": FormatInfo("mp3", ".mp3", bitrates=MP3_BITRATES, sample_rates=(32000, 44100, 48000)),  # MPEG-1's
    "wav": FormatInfo("wav", ".wav", bit_depths=(16, 24, 32)),
    "flac": FormatInfo("flac", ".flac", bit_depths=(16, 24)),
}
"""Output formats by name, the service's default first. ``"mp3" in FORMATS``;
``FORMATS["wav"].bit_depths == (16, 24, 32)``; ``FORMATS["flac"].extension == ".flac"``."""


@dataclass(frozen=True)
class OutputFormat:
    """How stems are encoded: ``wav`` (16/24/32-bit float), ``flac`` (16/24-bit) or ``mp3`` (CBR kbps)."""

    format: str = "wav"
    bitrate: int = 192
    bit_depth: int = 16

    @property
    def extension(self) -> str:
        """The stem files' extension, with the dot (``".mp3"``)."""
        return FORMATS[self.format].extension
