"""How hard the reliability suite pushes: a fast subset in CI, the full set by hand.

    python3 -m pytest tests/reliability                           # the CI subset (seconds)
    FREESTEMS_RELIABILITY=full python3 -m pytest tests/reliability # the full set (minutes)

Every loop in the suite is bounded by a count from here and by a time limit, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os

FULL = os.environ.get("FREESTEMS_RELIABILITY", "").lower() == "full"


def scaled(ci: int, full: int) -> int:
    """``ci`` in the CI subset, ``full`` in the full run."""
    return full if FULL else ci
