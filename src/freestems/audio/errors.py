"""The audio layer's exceptions. Every message is one line a user can act on, and names the file."""

from __future__ import annotations

SUPPORTED_INPUTS = "mp3, wav, flac, ogg, opus, m4a/aac, mp4/webm video"
"""Human-readable list of what :mod:`freestems.audio.decode` reads, for error messages."""


class AudioError(Exception):
    """Base class of every error raised by :mod:`freestems.audio`."""


class AudioDecodeError(AudioError):
    """An input file cannot be read as audio (missing, empty, not audio, corrupt, too long...)."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the configured ``max_duration`` (a limit, not a broken file)."""


class AudioEncodeError(AudioError):
    """An output file cannot be written (bad format or options, disk error, bad samples...)."""
