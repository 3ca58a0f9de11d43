"""The result cache: the same audio, model and options are separated once.

For a free service the popular song is the expensive case: many people upload the same file. The key is
the SHA-256 of the uploaded bytes (hashed while they stream in), the model's fingerprint (which changes with
its weights) and the normalised options, so a hit is exactly the result a new run would have given (the
engine is deterministic, ``shifts`` included: its offsets are seeded).

Entries live in the job store's ``results`` table and as files in ``<data>/cache/``. A job's result file
and its cache entry are hard links to one inode: deleting a job (``DELETE /jobs/{id}``) or expiring it never
pulls a file from under another job, and a file is gone from disk when its last name is. Each hit renews
the entry's TTL, so a song that keeps being asked for stays cached; an entry nobody asks for goes after
``result_ttl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from freestems.files import atomic_path

from .store import JobStore

log = logging.getLogger(__name__)


def cache_key(audio_sha256: str, model_fingerprint: str, options: Mapping[str, Any]) -> str:
    """The key of a separation: what was separated, by which model, how."""
    text = json.dumps(
        {"audio": audio_sha256, "model": model_fingerprint, "options": dict(options)}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def link_or_copy(source: Path, destination: Path) -> None:
    """Give ``source`` a second name (a copy where hard links are not supported), atomically."""
    with atomic_path(destination) as partial:
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)


class ResultCache:
    """Cached result zips by key. ``enabled=False`` makes every lookup a miss and every put a no-op."""

    def __init__(
        self,
        store: JobStore,
        directory: Path,
        ttl: float,
        enabled: bool = True,
        visible: Callable[[Path], bool] = Path.is_file,
    ) -> None:
        self.store = store
        self.visible = visible  # a shared folder: fetch the others' files before deciding one is gone
        self.directory = directory
        self.ttl = ttl
        self.enabled = enabled
        directory.mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> Path | None:
        """The cached zip for ``key`` (its TTL renewed), or None."""
        if not self.enabled:
            return None
        found = self.store.get_result(key)
        if found is None:
            return None
        path, _ = found
        if not self.visible(path):  # removed by hand: forget it
            self.store.delete_result(key)
            return None
        self.store.touch_result(key, time.time() + self.ttl)
        return path

    def put(self, key: str, result: Path, job_id: str) -> None:
        """Remember ``result`` (a job's zip) under ``key``."""
        if not self.enabled:
            return
        path = self.directory / f"{key}.zip"
        try:
            link_or_copy(result, path)
        except OSError as error:  # a full disk must not fail the job that produced the result
            log.warning("could not cache the result of job %s: %s", job_id, error)
            return
        self.store.put_result(key, path, job_id, time.time() + self.ttl)

    def evict(self, key: str) -> None:
        path = self.store.delete_result(key)
        if path is not None:
            path.unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete expired entries (files and rows); returns how many."""
        expired = self.store.expired_results()
        for key, path in expired:
            path.unlink(missing_ok=True)
            self.store.delete_result(key)
        return len(expired)
