"""Write-to-temp-then-rename, defined once: a file appears whole under its name, or not at all.

Every file freestems writes for someone else to read (stems, zips, checkpoints, downloads, their
``.sha256`` pins, uploads, results copied from the cache) is written under a temporary name beside its
destination and renamed into place only when complete; on any failure (a full disk, a cancellation,
Ctrl-C) the temporary file is removed. One naming scheme, ``.<name>.<random>.part``, hidden and unique
(two writers of one destination never share a temp file), so a start-up cleanup finds what a crash left
with one pattern: :data:`TEMP_GLOB`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".part"
TEMP_GLOB = f".*{TEMP_SUFFIX}"
"""What every temporary file's name matches (``folder.glob(TEMP_GLOB)``)."""


def temp_path(dest: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``dest`` (``.<name>.<random>.part``); nothing is created."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` to write; rename it to ``dest`` when the block ends normally.

    If the block raises (anything, ``KeyboardInterrupt`` included) or the rename fails, the temporary file
    is removed and ``dest`` is left as it was. The block creates the file; the folder must exist.
    """
    temp = temp_path(dest)
    try:
        yield temp
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
