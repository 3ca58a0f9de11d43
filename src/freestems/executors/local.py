"""The in-process executor: the served models loaded on first use, worker threads taking items in order.

torch releases the GIL during inference, so threads are enough, and they share one copy of the weights.
Each item runs on the model its options name (the default when none); :class:`~freestems.models.served.
LoadedModels` loads it if needed, pins it for the job and keeps the loaded ones under the memory budget.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from freestems.errors import Cancelled
from freestems.jobrun import JobFailed, run_job

from .base import JobEvent, ModelDescription, report
from .pool import Running, WorkerPool

if TYPE_CHECKING:
    from freestems.contract import LoadedModel
    from freestems.models.served import LoadedModels

log = logging.getLogger(__name__)


class LocalExecutor(WorkerPool):
    """Runs separations in this process: ``workers`` threads taking items in order.

    Args:
        load_model: returns the model; called once, by :meth:`start` (so a server can load it off its event
            loop, or hand over a model it already loaded). Or several models: a callable returning
            :class:`~freestems.models.served.LoadedModels` (described, loaded on first use).
        work_dir: where each job's stems are written before they are zipped (one folder per job, removed
            after the job on every path).
        workers: jobs at once. On a CPU one job already uses every core; more help on a big GPU.
        threads: torch intra-op threads (0: torch's default). Process-wide.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        warm_up: run one chunk through the model in :meth:`start`, so the first job is as quick as the next.
    """

    def __init__(
        self,
        load_model: Callable[[], LoadedModel | LoadedModels],
        work_dir: str | Path,
        *,
        workers: int = 1,
        threads: int = 0,
        device: str = "auto",
        warm_up: bool = True,
    ) -> None:
        super().__init__(workers)
        self.warm_up = warm_up
        self._load_model = load_model
        self.work_dir = Path(work_dir)
        self.threads = threads
        self.device = device
        self.loaded: LoadedModels | None = None
        """The served models (valid once started): what is loaded, in use, evicted."""

    def _prepare(self) -> list[ModelDescription]:
        from freestems.engine import resolve_device
        from freestems.models.served import LoadedModels, serve_loaded

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._device = resolve_device(self.device)
        given = self._load_model()
        if isinstance(given, LoadedModels):
            self.loaded = given
        else:  # one model, loaded already
            self.loaded = LoadedModels([serve_loaded(given)])
            self.loaded.preload(given.name, given)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.warm_up:  # the default model, loaded now, so the first job's listener does not wait for it
            with self.loaded.use(None) as model:
                self._warm_up(model)
        return [
            ModelDescription(served.name, served.sources, served.fingerprint, served.title)
            for served in self.loaded.served.values()
        ]

    def _warm_up(self, model: LoadedModel) -> None:
        """One chunk of silence through the model before the first job. A process's first forward pass
        is several times slower than the next ones (kernels chosen and memory mapped on first use; on a
        2-core CPU shared with other work the release SCNet took 17.8 CPU-s, the third 3.3), and the
        first job's listener would wait for it before the first sound."""
        import numpy as np

        from freestems.engine import separate

        clock = time.perf_counter()
        separate(np.zeros((2, model.segment), np.float32), model, device=self._device)
        log.info("model %s warmed up in %.1f s", model.name, time.perf_counter() - clock)

    def _run(self, running: Running) -> dict[str, float]:
        item = running.item
        if running.stop.is_set():
            raise Cancelled
        report(item, JobEvent(item.job_id, "started"))
        assert self.loaded is not None
        started = time.perf_counter()
        with self._model(item.options.model, running) as model:
            result = run_job(
                item.source,
                item.result,
                model,
                work_dir=self.work_dir / item.job_id,
                options=item.options,
                max_duration=item.max_duration,
                progress=lambda fraction: report(item, JobEvent(item.job_id, "progress", progress=fraction)),
                cancel=running.stop,
                device=self._device,
                display_name=item.display_name,
                segments=item.partials,
                on_segment=lambda segment: report(item, JobEvent(item.job_id, "segment", segment=segment)),
            )
        timings = dict(result.timings)
        if self._device.type == "cuda":  # the job held this GPU from start to end
            timings["gpu_seconds"] = round(time.perf_counter() - started, 3)
        return timings

    @contextlib.contextmanager
    def _model(self, name: str | None, running: Running) -> Iterator[LoadedModel]:
        """The item's model, loaded and pinned while it runs; a name not served is a failed job (the service
        checks names first, so only a job stored before a restart with other models gets here)."""
        from freestems.errors import FailureCode
        from freestems.models import ModelChoiceError

        assert self.loaded is not None
        try:
            with self.loaded.use(name, running.stop) as model:
                yield model
        except ModelChoiceError as error:
            raise JobFailed(FailureCode.INVALID_OPTIONS, str(error)) from None
