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
from typing import Any

from freestems.audio.formats import FORMATS as ENCODINGS
from freestems.audio.formats import MP3_BITRATES
from freestems.options import SeparationOptions
from freestems.rules import MAX_OVERLAP, MAX_SHIFTS, SeparationError, check_overlap, complement

from .errors import ServiceError, invalid_parameter
from .settings import parse_bool

FILE_FIELD = "audio_file"
OPTION_FIELDS = ("two_stems", "shifts", "overlap", "mp3", "mp3_bitrate", "model", "format")
RERUN_FIELDS = ("from_job", "from_token")
"""``POST /jobs`` only: instead of ``audio_file``, the id and token of an earlier job whose source (kept as
long as its result) is separated again."""
DEFAULTS = SeparationOptions()
FORMATS = (DEFAULTS.format, *(name for name in ENCODINGS if name != DEFAULTS.format))
"""What the service encodes (every format of :data:`freestems.audio.formats.FORMATS`, lossless ones at
16 bits), the default first."""

VIEW_FIELDS = ("two_stems", "shifts", "overlap", "format", "mp3_bitrate")
"""The options a job's JSON shows (``GET /jobs/{id}``): what the form can set, as it was normalised."""

__all__ = [
    "FILE_FIELD",
    "FORMATS",
    "OPTION_FIELDS",
    "RERUN_FIELDS",
    "SeparationOptions",
    "form_schema",
    "options_view",
    "parse_options",
]


def parse_options(
    fields: Mapping[str, str],
    *,
    sources: Sequence[str] = (),
    model: str = "",
    max_shifts: int,
    models: Mapping[str, Sequence[str]] | None = None,
) -> SeparationOptions:
    """Validate the text fields of a form (the file field is handled elsewhere).

    ``models`` maps each served model to its stems, the default first (one model: ``model`` and its
    ``sources``). The options always name the model they run on (the default when the form names none).

    Raises:
        ServiceError: 422 naming the first bad field (``model_not_served`` for a model not served).
    """
    _refuse_unknown(fields)
    served = dict(models) if models else {model: sources}
    form = {name: value for name, value in fields.items() if value not in (None, "")}
    chosen = _check_model(form.get("model"), served)
    two_stems = _parse_two_stems(form.get("two_stems"), served[chosen])
    shifts = _parse_shifts(form.get("shifts"), max_shifts)
    overlap = _parse_overlap(form.get("overlap"))
    output, bitrate = _parse_output(form)
    try:
        return SeparationOptions(
            two_stems=two_stems,
            shifts=shifts,
            overlap=overlap,
            format=output,
            mp3_bitrate=bitrate,
            model=chosen or None,
        )
    except SeparationError as error:  # the fields were checked one by one: only a new rule gets here
        raise ServiceError(422, "invalid_parameter", str(error)) from None


def options_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A job's options as its JSON shows them, from what the store keeps (``as_dict()``)."""
    return {name: stored.get(name, getattr(DEFAULTS, name)) for name in VIEW_FIELDS}


def _refuse_unknown(fields: Mapping[str, str]) -> None:
    for name in fields:
        if name not in OPTION_FIELDS:
            expected = ", ".join((FILE_FIELD, *OPTION_FIELDS))
            raise invalid_parameter(name, f"unknown field; the form takes {expected}")


def _check_model(requested: str | None, served: Mapping[str, Sequence[str]]) -> str:
    """The model to run: the one asked for if it is served (422 ``model_not_served`` naming the served
    ones if not), else the default (the first served)."""
    if requested is None:
        return next(iter(served))
    if requested not in served:
        names = ", ".join(served)
        raise ServiceError(
            422,
            "model_not_served",
            f"model: {requested!r} is not served here; this server runs {names} (GET /config describes them)",
            field="model",
        )
    return requested


def _parse_two_stems(raw: str | None, sources: Sequence[str]) -> str | None:
    if raw is not None and raw not in sources:
        raise invalid_parameter("two_stems", f"must be one of {', '.join(sources)}, got {raw!r}")
    return raw


def _parse_shifts(raw: str | None, max_shifts: int) -> int:
    """Demucs's leniency: ``0`` means one pass."""
    if raw is None:
        return DEFAULTS.shifts
    try:
        shifts = int(raw)
    except ValueError:
        shifts = -1
    most = min(max_shifts, MAX_SHIFTS)
    if not 0 <= shifts <= most:
        raise invalid_parameter("shifts", f"must be an integer from 0 to {most}, got {raw!r}")
    return max(shifts, 1)


def _parse_overlap(raw: str | None) -> float:
    if raw is None:
        return DEFAULTS.overlap
    try:
        overlap = round(float(raw), 4) + 0.0  # the value the engine gets is the one checked (no -0)
    except (ValueError, OverflowError):
        overlap = math.nan
    try:
        check_overlap(overlap)
    except SeparationError:
        raise invalid_parameter("overlap", f"must be a number in [0, {MAX_OVERLAP:g}), got {raw!r}") from None
    return overlap


def _parse_output(form: Mapping[str, str]) -> tuple[str, int]:
    """The format (from ``format``, else ``mp3``) and its bitrate (normalised to the default when unused)."""
    mp3 = _parse_mp3(form.get("mp3"))
    bitrate = _parse_bitrate(form.get("mp3_bitrate"))
    output = DEFAULTS.format if mp3 else "wav"
    if (raw := form.get("format")) is not None:
        if raw not in FORMATS:
            raise invalid_parameter("format", f"must be one of {', '.join(FORMATS)}, got {raw!r}")
        if form.get("mp3") is not None and mp3 != (raw == "mp3"):
            contradiction = f"format={raw} contradicts mp3={form['mp3']}; give one of them"
            raise invalid_parameter("format", contradiction)
        output = raw
    return output, bitrate if output == "mp3" else DEFAULTS.mp3_bitrate


def _parse_mp3(raw: str | None) -> bool:
    if raw is None:
        return True
    parsed = parse_bool(raw)
    if parsed is None:
        raise invalid_parameter("mp3", f"must be true or false, got {raw!r}")
    return parsed


def _parse_bitrate(raw: str | None) -> int:
    """A bitrate between the standard MP3 rates is rounded down to one (200 gives 192)."""
    if raw is None:
        return DEFAULTS.mp3_bitrate
    try:
        bitrate = int(raw)
    except ValueError:
        bitrate = 0
    low, high = MP3_BITRATES[0], MP3_BITRATES[-1]
    if not low <= bitrate <= high:
        raise invalid_parameter("mp3_bitrate", f"must be an integer from {low} to {high}, got {raw!r}")
    return max(rate for rate in MP3_BITRATES if rate <= bitrate)


def form_schema(
    sources: Sequence[str], model: str, max_shifts: int, models: Sequence[str] = (), rerun: bool = False
) -> dict[str, Any]:
    """The OpenAPI ``multipart/form-data`` schema of the form :func:`parse_options` reads, for a server
    that runs ``models`` (default ``model``, whose stems are ``sources``): the one description of the
    form's fields. ``rerun``: the form of ``POST /jobs``, which also takes a finished job's source."""
    served = list(models) or [model]
    low, high = MP3_BITRATES[0], MP3_BITRATES[-1]
    example = sources[-1] if sources else "vocals"
    pair = f"{example} and {complement(example)}"
    properties: dict[str, Any] = {
        FILE_FIELD: {"type": "string", "format": "binary", "description": "the song (any common format)"},
        "two_stems": {
            "type": "string",
            "enum": list(sources),
            "description": f"only this stem and the rest of the mix (e.g. {pair})",
        },
        "shifts": {
            "type": "integer",
            "default": DEFAULTS.shifts,
            "minimum": 0,
            "maximum": min(max_shifts, MAX_SHIFTS),
            "description": "passes with random offsets, averaged (0 means 1)",
        },
        "overlap": {
            "type": "number",
            "default": DEFAULTS.overlap,
            "minimum": 0,
            "exclusiveMaximum": MAX_OVERLAP,
        },
        "mp3": {"type": "boolean", "default": DEFAULTS.format == "mp3", "description": "false: 16-bit WAV"},
        "mp3_bitrate": {
            "type": "integer",
            "default": DEFAULTS.mp3_bitrate,
            "minimum": low,
            "maximum": high,
            "description": f"kbit/s, rounded down to one of {', '.join(map(str, MP3_BITRATES))}",
        },
        "model": {
            "type": "string",
            "enum": served,
            "default": served[0],
            "description": "a served model (GET /config describes each); default the first",
        },
        "format": {
            "type": "string",
            "enum": list(FORMATS),
            "default": DEFAULTS.format,
            "description": "lossless formats are 16-bit",
        },
    }
    if not rerun:
        return {"type": "object", "required": [FILE_FIELD], "properties": properties}
    properties[FILE_FIELD]["description"] += f"; or, instead, {RERUN_FIELDS[0]} and {RERUN_FIELDS[1]}"
    properties[RERUN_FIELDS[0]] = {
        "type": "string",
        "description": "separate the song of this earlier job again (another model, other options), "
        "without uploading it again",
    }
    properties[RERUN_FIELDS[1]] = {"type": "string", "description": "that job's token"}
    return {"type": "object", "properties": properties}
