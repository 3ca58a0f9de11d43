"""freestems: free, unlimited music stem separation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("freestems")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

SAMPLE_RATE = 44100
"""Every waveform inside freestems is float32 stereo at this rate."""
