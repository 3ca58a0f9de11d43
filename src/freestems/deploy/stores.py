"""The deployment's named Modal objects, and what the code uses them as: the ways out to Modal's cloud.

It exists so that the app (:mod:`freestems.deploy.modal_app`) and its web tier
(:mod:`freestems.deploy.web_tier`) reach Modal's Dicts, Queues and Volume through one object,
:class:`Stores`, which a test replaces method by method to run everything in-process:

- the Queue ``<app>-progress``: the separator containers' events to the web tier
  (:meth:`~Stores.progress_channel`);
- the Dict ``<app>-usage``: what each call and each container's wake-up used (:meth:`~Stores.usage_log`,
  read by ``freestems cost --modal``). Modal drops a Dict entry after 7 days without a read or a write, so
  the web tier rolls the entries up, every :data:`ROLL_UP_SECONDS` while a web container is up, into JSON
  lines on the data Volume (``usage/``, :func:`roll_up_usage`), which ``freestems cost --modal`` reads too;
- the Dict ``<app>-leases``: the leases the web tier renews and the containers read
  (:meth:`~Stores.lease_store`);
- the Dict ``<app>-precision``: the precision chosen per model, GPU type and torch
  (:meth:`~Stores.precision_cache`);
- the Dicts ``<app>-state-*``, the Queue ``<app>-inbox`` and the Volume ``<app>-data``: what the web
  containers share (:meth:`~Stores.shared_state`).

Looking the objects up by name needs neither credentials nor the network; using them does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import modal

from freestems.cost import UsageRecord, WakeRecord, usage_dict_name
from freestems.executors.modal import DictLeases, LeaseStore, ModalQueueChannel, ProgressChannel
from freestems.service.shared_state import SharedState

log = logging.getLogger("freestems.modal")

USAGE_FOLDER = "usage"
"""Where on the data Volume the usage log is rolled up (``<year>-<month>-<container>.jsonl``)."""
ROLL_UP_SECONDS = 120.0
"""How often a web container rolls the usage log up: below its 300 s idle window, so the records of the
last jobs (and the separators' wake-ups, 10 s after them) are rolled up before it scales down."""


def roll_up_usage(usage: Any, folder: Path, commit: Callable[[], None], container: str) -> int:
    """Move every entry of the usage log ``usage`` (the Dict) into a JSON-lines file in ``folder`` (on the
    data Volume), committed before the entries leave the Dict; returns how many moved. Two containers doing
    it at once write an entry twice: readers keep one per key (:func:`freestems.cost.modal_records`)."""
    entries = [(str(key), value) for key, value in list(usage.items()) if isinstance(value, Mapping)]
    if not entries:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m', time.gmtime())}-{container}.jsonl"
    with path.open("a") as out:
        for key, value in entries:
            out.write(json.dumps({"key": key, **value}, default=str) + "\n")
    commit()
    for key, _ in entries:
        usage.pop(key, None)
    return len(entries)


def roll_up_forever(usage: Any, folder: Path, commit: Callable[[], None], container: str) -> None:
    """:func:`roll_up_usage` every :data:`ROLL_UP_SECONDS` (a web container's daemon thread)."""
    while True:
        time.sleep(ROLL_UP_SECONDS)
        try:
            roll_up_usage(usage, folder, commit, container)
        except Exception:
            log.warning("rolling the usage log up failed; trying again later", exc_info=True)


class DictUsageLog:
    """Usage records in a ``modal.Dict`` (kept by Modal across deploys; ``freestems cost --modal``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def record(self, record: UsageRecord) -> None:
        self.store.put(f"{record.finished_at:.3f}-{record.job_id}", record.as_dict())

    def record_wake(self, record: WakeRecord) -> None:
        self.store.put(f"wake-{record.ended_at:.3f}-{record.task}", record.as_dict())


class Stores:
    """The Modal objects of the app named ``app_name`` (created on first use, kept across deploys)."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.progress_queue = modal.Queue.from_name(f"{app_name}-progress", create_if_missing=True)
        self.usage_dict = modal.Dict.from_name(usage_dict_name(app_name), create_if_missing=True)
        self.lease_dict = modal.Dict.from_name(f"{app_name}-leases", create_if_missing=True)
        self.precision_dict = modal.Dict.from_name(f"{app_name}-precision", create_if_missing=True)
        self.data_volume = modal.Volume.from_name(f"{app_name}-data", create_if_missing=True)
        self.inbox_queue = modal.Queue.from_name(f"{app_name}-inbox", create_if_missing=True)

    def progress_channel(self) -> ProgressChannel:
        """Where GPU containers send their events and the web tier reads them."""
        return ModalQueueChannel(self.progress_queue)

    def usage_log(self) -> Any:
        """Where GPU containers record what each call used (an object with ``record(UsageRecord)`` and
        ``record_wake(WakeRecord)``)."""
        return DictUsageLog(self.usage_dict)

    def state_dict(self, name: str) -> Any:
        """The web tier's shared Dict ``name`` (``<app>-state-<name>``)."""
        return modal.Dict.from_name(f"{self.app_name}-state-{name}", create_if_missing=True)

    def shared_state(self) -> SharedState:
        """What the web containers share: Dicts, their inboxes' Queue, the data Volume."""
        return SharedState(self.state_dict, self.inbox_queue, self.data_volume)

    def lease_store(self) -> LeaseStore:
        """Where the web tier renews its calls' leases and the containers read them."""
        return DictLeases(self.lease_dict)

    def precision_cache(self) -> Any:
        """Where the precision chosen for a model on a GPU type is kept (an object with ``get`` and
        ``put``), so that the probe runs once per model, GPU type and torch, not at every cold start."""
        return self.precision_dict
