"""Stand-in exports for the device routes' tests: a manifest naming one file with its real sha256 and size,
written as ``freestems export`` writes (a temporary file renamed over the old one). What they check is
which bytes are served under which URL and headers, not what a network computes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def replace_file(path: Path, content: bytes) -> None:
    """Write ``path`` anew: a temporary file renamed over it."""
    temp = path.with_name(path.name + ".part")
    temp.write_bytes(content)
    temp.replace(path)


def hashed_export(
    folder: Path, content: bytes = b"the network, version 1", name: str = "small"
) -> dict[str, Any]:
    """``<folder>/<name>/``: ``network.fp32.onnx`` holding ``content``, and a manifest listing it.
    Returns the manifest's entry of the file."""
    model = folder / name
    model.mkdir(parents=True, exist_ok=True)
    replace_file(model / "network.fp32.onnx", content)
    digest = hashlib.sha256(content).hexdigest()
    entry = {"file": "network.fp32.onnx", "bytes": len(content), "sha256": digest}
    replace_file(model / "manifest.json", json.dumps({"onnx": {"files": [entry]}}).encode())
    return entry
