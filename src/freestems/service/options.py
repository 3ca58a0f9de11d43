"""The separation options of the form, as the Demucs-on-Modal API names them, validated.

``two_stems`` (a stem name), ``shifts`` (int, default 1), ``overlap`` (float, default 0.25), ``mp3`` (bool,
default true), ``mp3_bitrate`` (128-320, default 192) and ``model``; one field of our own, ``format``
(``mp3``, ``wav`` or ``flac``), says the same as ``mp3`` and also offers FLAC. Every error is a 422 naming
the field.

Two leniencies keep existing clients working: ``shifts=0`` means one pass (as in Demucs), and a bitrate
between the standard MP3 rates is rounded down to one (MP3 frames only come in 128, 160, 192, 224, 256 and
320 kbps here), so ``mp3_bitrate=200`` gives 192 kbps instead of an error. Unknown fields are refused: a
typo such as ``two_stem`` would otherwise silently give four stems.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from freestems.audio.formats import FORMATS, MP3_BITRATES
from freestems.pipeline import OutputFormat
from freestems.separate import MAX_OVERLAP, MAX_SHIFTS, SeparationError, check_overlap, check_shifts

from .errors import invalid_parameter
from .settings import parse_bool

FILE_FIELD = "audio_file"
OPTION_FIELDS = ("two_stems", "shifts", "overlap", "mp3", "mp3_bitrate", "model", "format")


@dataclass(frozen=True)
class SeparationOptions:
    """Validated, normalised options: equal options give equal :meth:`as_dict` (a result cache key part)."""

    two_stems: str | None = None
    shifts: int = 1
    overlap: float = 0.25
    format: str = "mp3"
    """``mp3``, or 16-bit ``wav`` or ``flac``."""
    mp3_bitrate: int = 192

    def engine(self) -> dict[str, Any]:
        """Keyword arguments for :func:`freestems.pipeline.separate_file`."""
        return {"two_stems": self.two_stems, "shifts": self.shifts, "overlap": self.overlap, "seed": 0}

    def output(self) -> OutputFormat:
        if self.format == "mp3":
            return OutputFormat("mp3", self.mp3_bitrate)
        return OutputFormat(self.format, bit_depth=16)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SeparationOptions:
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


def parse_options(
    fields: Mapping[str, str], *, sources: Sequence[str], model: str, max_shifts: int
) -> SeparationOptions:
    """Validate the text fields of a form (the file field is handled elsewhere).

    Raises:
        ServiceError: 422 naming the first bad field.
    """
    for name in fields:
        if name not in OPTION_FIELDS:
            expected = ", ".join((FILE_FIELD, *OPTION_FIELDS))
            raise invalid_parameter(name, f"unknown field; the form takes {expected}")

    def given(name: str) -> str | None:
        value = fields.get(name)
        return value if value not in (None, "") else None

    requested_model = given("model")
    if requested_model is not None and requested_model != model:
        raise invalid_parameter(
            "model", f"this server runs the model {model!r} only, got {requested_model!r}"
        )

    two_stems = given("two_stems")
    if two_stems is not None and two_stems not in sources:
        raise invalid_parameter("two_stems", f"must be one of {', '.join(sources)}, got {two_stems!r}")

    shifts = 1
    if (raw := given("shifts")) is not None:
        try:
            shifts = int(raw)
        except ValueError:
            shifts = -1
        most = min(max_shifts, MAX_SHIFTS)
        if not 0 <= shifts <= most:
            raise invalid_parameter("shifts", f"must be an integer from 0 to {most}, got {raw!r}")
        shifts = max(shifts, 1)
        check_shifts(shifts)  # the engine's own rule: what passes here, the engine runs

    overlap = 0.25
    if (raw := given("overlap")) is not None:
        try:
            overlap = round(float(raw), 4) + 0.0  # the value the engine gets is the one checked (no -0)
        except (ValueError, OverflowError):
            overlap = math.nan
        try:
            check_overlap(overlap)
        except SeparationError:
            raise invalid_parameter(
                "overlap", f"must be a number in [0, {MAX_OVERLAP:g}), got {raw!r}"
            ) from None

    mp3 = True
    if (raw := given("mp3")) is not None:
        parsed = parse_bool(raw)
        if parsed is None:
            raise invalid_parameter("mp3", f"must be true or false, got {raw!r}")
        mp3 = parsed

    bitrate = 192
    if (raw := given("mp3_bitrate")) is not None:
        try:
            bitrate = int(raw)
        except ValueError:
            bitrate = 0
        low, high = MP3_BITRATES[0], MP3_BITRATES[-1]
        if not low <= bitrate <= high:
            raise invalid_parameter("mp3_bitrate", f"must be an integer from {low} to {high}, got {raw!r}")
        bitrate = max(rate for rate in MP3_BITRATES if rate <= bitrate)

    output = "mp3" if mp3 else "wav"
    if (raw := given("format")) is not None:
        if raw not in FORMATS:
            raise invalid_parameter("format", f"must be one of {', '.join(FORMATS)}, got {raw!r}")
        if given("mp3") is not None and mp3 != (raw == "mp3"):
            contradiction = f"format={raw} contradicts mp3={given('mp3')}; give one of them"
            raise invalid_parameter("format", contradiction)
        output = raw

    return SeparationOptions(
        two_stems=two_stems,
        shifts=shifts,
        overlap=overlap,
        format=output,
        mp3_bitrate=bitrate if output == "mp3" else 192,
    )
