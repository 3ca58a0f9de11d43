"""freestems: free, unlimited music stem separation.

The front door (:mod:`freestems.library`)::

    import freestems

    stems = freestems.separate("song.mp3", model="scnet")        # {"drums": (2, n) float32, ...}
    freestems.separate_file("song.mp3", "stems/", format="mp3")  # stems/drums.mp3, ...
    model = freestems.load_model("htdemucs_ft")                  # load once, use for many songs

The calls are imported on first use: ``import freestems`` alone loads neither torch nor the models, so the
service's web tier, which imports this package, stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestems.contract import SAMPLE_RATE
from freestems.version import __version__

if TYPE_CHECKING:
    from freestems.library import load_model, separate, separate_file

_FRONT_DOOR = ("load_model", "separate", "separate_file")


def __getattr__(name: str) -> Any:
    if name in _FRONT_DOOR:
        from freestems import library

        return getattr(library, name)
    raise AttributeError(f"module 'freestems' has no attribute {name!r}")


__all__ = ["SAMPLE_RATE", "__version__", "load_model", "separate", "separate_file"]
