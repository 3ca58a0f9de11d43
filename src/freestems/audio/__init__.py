"""Audio in and out: decode common formats to float32 stereo 44.1 kHz, encode stems to wav, flac, mp3.

Knows nothing about models or HTTP. See :mod:`.decode` and :mod:`.encode`.
"""

from .decode import AudioReader, decode
from .encode import StemWriter, encode, open_writer
from .errors import AudioDecodeError, AudioEncodeError, AudioError, AudioTooLong
from .formats import FORMATS, FormatInfo

__all__ = [
    "FORMATS",
    "AudioDecodeError",
    "AudioEncodeError",
    "AudioError",
    "AudioReader",
    "AudioTooLong",
    "FormatInfo",
    "StemWriter",
    "decode",
    "encode",
    "open_writer",
]
