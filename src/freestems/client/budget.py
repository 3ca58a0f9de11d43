"""The budget a session key needs: what a request will cost, priced as the server prices it.

A server prices every request in model-seconds before it runs (``freestems.service.pricing``: duration x
shifts x the overlap's chunk factor x the model's relative cost) and refuses a request dearer than the
budget its key was earned for (403 ``key_budget``); the proof of work grows linearly with that budget. So
the client asks for the budget its request needs: the formula below, with the prices the server publishes
in ``GET /config`` (``pricing``) and the song's length read from its header here (PyAV). A server without
prices, or a song whose length the header does not state, gets no stated budget (the server's default);
the refusal then says what the request costs, and the client earns a key for that.

The formula is the server's, written again because the client imports nothing of the service; a test
checks that both give the same price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARGIN = 1.02
"""The length read here may differ from the server's decoded count by codec padding: ask for a bit more."""
MARGIN_SECONDS = 1.0


def price(pricing: Mapping[str, Any], duration: float, options: Mapping[str, Any]) -> float | None:
    """Model-seconds of ``duration`` seconds with the form ``options`` (``shifts``, ``overlap``,
    ``model``; None or missing: the server's defaults) at the server's ``pricing``; None when it does not
    say the price of the model."""
    models = pricing.get("models") or {}
    model = options.get("model") or next(iter(models), None)
    factor = models.get(model) if model is not None else None
    if not isinstance(factor, (int, float)):
        return None
    default = float(pricing.get("default_overlap", 0.25))
    shifts = max(1, int(options.get("shifts") or 1))
    overlap = options.get("overlap")
    overlap = default if overlap is None else float(overlap)
    return duration * shifts * (1.0 - default) / (1.0 - overlap) * float(factor)


def needed(
    pricing: Mapping[str, Any] | None, duration: float | None, options: Mapping[str, Any]
) -> int | None:
    """The budget to ask for: the request's price with a margin, at most what one request may cost (the
    server refuses a dearer request anyway, and says why); None: the server's default budget."""
    if not pricing or duration is None:
        return None
    cost = price(pricing, duration + MARGIN_SECONDS, options)
    if cost is None:
        return None
    most = pricing.get("max_request_cost")
    budget = math.ceil(cost * MARGIN)
    return min(budget, math.floor(float(most))) if isinstance(most, (int, float)) else budget


def seconds(path: Path) -> float | None:
    """The song's length as its header states it (None: not stated, or not readable here)."""
    try:
        import av  # freestems' own dependency; imported only when a budget is asked for

        with av.open(str(path)) as container:
            if container.duration:
                return float(container.duration) / 1_000_000
            for stream in container.streams.audio:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except Exception:  # any decoding problem is the server's to report
        return None
    return None
