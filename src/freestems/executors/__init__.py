"""Where a separation runs: the executor interface, the in-process worker and the Modal GPU executor.

- :mod:`.base`: the contract (:class:`Executor`, :class:`WorkItem`, :class:`JobEvent`...);
- :mod:`.local`: :class:`LocalExecutor`, the model in this process (``freestems serve``);
- :mod:`.modal`: :class:`ModalExecutor`, each job on a Modal GPU (imported on first use, with the ``modal``
  package when it is installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    EventKind,
    Executor,
    ExecutorError,
    JobEvent,
    ModelDescription,
    WorkItem,
    describe,
    report,
)
from .local import LocalExecutor

if TYPE_CHECKING:
    from .modal import ModalExecutor

__all__ = [
    "EventKind",
    "Executor",
    "ExecutorError",
    "JobEvent",
    "LocalExecutor",
    "ModalExecutor",
    "ModelDescription",
    "WorkItem",
    "describe",
    "report",
]


def __getattr__(name: str) -> Any:
    if name == "ModalExecutor":
        from .modal import ModalExecutor

        return ModalExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
