"""The data folder's layout: where the service keeps jobs, uploads, results, the cache and the sources.

Its own module because more than the job manager needs it: ``freestems serve`` and ``freestems cost`` (and
the tests) find the executor's folder and the job store here without importing the job manager and all it
brings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The data folder's layout (``work_dir``: the executor's folders, if not ``<root>/work``)."""

    root: Path
    work_dir: Path | None = None

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def work(self) -> Path:
        return self.work_dir or self.root / "work"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def sources(self) -> Path:
        """A ``POST /jobs`` job's upload as it arrived (``<job id><suffix>``), kept while the job runs and
        then as long as its result, so that the same song can be separated again with another model
        without a second upload (``from_job``); a job that fails or is cancelled keeps none."""
        return self.root / "sources"

    @property
    def partials(self) -> Path:
        return self.root / "partials"

    def create(self) -> None:
        for folder in (self.uploads, self.work, self.results, self.cache, self.sources, self.partials):
            folder.mkdir(parents=True, exist_ok=True)
