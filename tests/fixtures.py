"""Where the shared reference fixtures live: ``shared/`` sits beside the checkout (here and in CI)."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCNET_FIXTURES = SHARED / "fixtures" / "scnet"
ROFORMER_FIXTURES = SHARED / "fixtures" / "roformer"
