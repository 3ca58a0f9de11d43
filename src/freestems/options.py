"""The separation options: one type from the edge (a form, the CLI, a Modal call) to the engine.

A request's options are parsed once where they arrive (the service's form by
:func:`freestems.service.options.parse_options`, the CLI's arguments by ``freestems separate``) into a
:class:`SeparationOptions`, and travel as that: into the job store and the result cache key
(:meth:`~SeparationOptions.as_dict`), to the executors, across the Modal boundary (pickled as it is), and into
:func:`freestems.jobrun.run_job`, which splits it into the engine's keyword arguments and the encoding of the
stems. Nothing downstream parses strings again.

The type checks what it can check without a model (the engine's rules for ``shifts`` and ``overlap``, the
formats of :data:`freestems.audio.formats.FORMATS` and their bitrates and bit depths);
:meth:`~SeparationOptions.check_model` checks the rest against the model that runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from freestems.audio.formats import FORMATS, OutputFormat
from freestems.rules import SeparationError, check_overlap, check_shifts, output_names


@dataclass(frozen=True)
class SeparationOptions:
    """What to separate and how to encode it. Equal options give equal :meth:`as_dict` (a cache key part).

    Raises:
        SeparationError: on construction, for a value the engine or the encoders refuse.
    """

    two_stems: str | None = None
    """Yield only this stem and its complement (see :func:`freestems.engine.complement`)."""
    shifts: int = 1
    overlap: float = 0.25
    seed: int = 0
    """Seed of the ``shifts`` offsets."""
    consistency: bool = False
    """Spread the residual over the stems, so that they sum exactly to the mix."""
    format: str = "mp3"
    """A name in :data:`freestems.audio.formats.FORMATS`."""
    mp3_bitrate: int = 192
    """kbit/s, one of the MP3 format's bitrates (used with ``format="mp3"``)."""
    bit_depth: int = 16
    """Bits per sample of a lossless format (32: float WAV)."""
    model: str | None = None
    """The model these options were made for; None: whichever model runs them."""

    def __post_init__(self) -> None:
        check_shifts(self.shifts)
        check_overlap(self.overlap)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SeparationError(f"seed must be an integer, got {self.seed!r}")
        info = FORMATS.get(self.format)
        if info is None:
            raise SeparationError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if info.bitrates and self.mp3_bitrate not in info.bitrates:
            rates = ", ".join(map(str, info.bitrates))
            message = f"{self.format} bitrate must be one of {rates} kbit/s, got {self.mp3_bitrate!r}"
            raise SeparationError(message)
        if info.bit_depths and self.bit_depth not in info.bit_depths:
            depths = ", ".join(map(str, info.bit_depths))
            raise SeparationError(f"{self.format.upper()} takes bit depth {depths}, got {self.bit_depth!r}")

    def check_model(self, name: str, sources: Sequence[str]) -> None:
        """Raise :class:`SeparationError` unless a model called ``name`` with ``sources`` can run these."""
        if self.model is not None and self.model != name:
            raise SeparationError(f"these options are for the model {self.model!r}, not {name!r}")
        output_names(sources, self.two_stems)

    def engine(self) -> dict[str, Any]:
        """Keyword arguments for :func:`freestems.engine.separate_blocks`."""
        return {
            "two_stems": self.two_stems,
            "shifts": self.shifts,
            "overlap": self.overlap,
            "seed": self.seed,
            "consistency": self.consistency,
        }

    def output(self) -> OutputFormat:
        """How the stems are encoded."""
        return OutputFormat(self.format, bitrate=self.mp3_bitrate, bit_depth=self.bit_depth)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (what the job store keeps; :meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SeparationOptions:
        """The options :meth:`as_dict` gave (keys it does not know are ignored; missing ones default)."""
        return cls(**{field.name: values[field.name] for field in fields(cls) if field.name in values})
