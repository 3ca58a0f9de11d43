"""One call of a separator class, seen from its container: the request checked, the events sent, the
lease watched.

It exists so that the classes' ``separate`` method (:mod:`freestems.deploy.modal_app`) reads as the job it
runs, with what surrounds every call here:

- :func:`parse_request`: the call's options, a :class:`~freestems.options.SeparationOptions` (what the web
  tier sends) or the fields of ``POST /separate`` as a dict (a direct caller), parsed by the service's own
  form parser, with the same messages;
- :class:`Outbox`: the call's ``started``, ``progress`` and ``timings`` events to the caller (the Queue
  ``<app>-progress``, read by :class:`~freestems.executors.modal.ModalExecutor`) and its usage record (the
  Dict ``<app>-usage``), sent from a thread so the model never waits for the network;
- :class:`LeaseWatch`: the call's lease (the Dict ``<app>-leases``), which the web tier renews while it
  waits; once it lapses, the job stops (:class:`~freestems.errors.Cancelled`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from freestems.cost import UsageRecord
from freestems.errors import Cancelled, FailureCode
from freestems.executors.modal import LeaseStore, ProgressChannel
from freestems.jobrun import JobFailed
from freestems.options import SeparationOptions
from freestems.service.settings import Settings

log = logging.getLogger("freestems.modal")


@dataclasses.dataclass(frozen=True)
class Request:
    """One ``Separator.separate`` call, validated: the options and what the call says about the job."""

    options: SeparationOptions
    max_duration: float
    filename: str
    progress: str | None


EXTRA_KEYS = ("seed", "max_duration", "filename", "progress")
"""Keys of a form-field dict for ``Separator.separate`` beyond the fields of ``POST /separate``."""


def parse_request(
    options: SeparationOptions | Mapping[str, Any],
    sources: tuple[str, ...],
    model: str,
    settings: Settings,
    *,
    max_duration: float | None = None,
    filename: str | None = None,
    progress: str | None = None,
) -> Request:
    """A call's options: a :class:`SeparationOptions` as it is (the web tier parsed its form), or the
    fields of ``POST /separate`` as a dict (a direct caller), parsed here once by the service's form parser,
    with the same messages; that dict may also carry ``seed``, ``max_duration``, ``filename`` and
    ``progress``, which the keyword arguments override. ``settings`` give the limits (``max_duration``
    when the call names none, ``max_shifts``).

    Raises:
        JobFailed: ``invalid_options``.
    """
    extras: dict[str, Any] = {}
    if not isinstance(options, SeparationOptions):
        options, extras = form_options(options, sources, model, settings)
    given = {"max_duration": max_duration, "filename": filename, "progress": progress}
    extras.update({name: value for name, value in given.items() if value is not None})
    try:
        limit = float(extras.get("max_duration") or settings.max_duration)
    except (TypeError, ValueError) as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"max_duration must be a number ({error})") from None
    key = extras.get("progress")
    return Request(
        options=options,
        max_duration=limit,
        filename=str(extras.get("filename") or "audio"),
        progress=str(key) if key else None,
    )


def form_options(
    fields: Mapping[str, Any], sources: tuple[str, ...], model: str, settings: Settings
) -> tuple[SeparationOptions, dict[str, Any]]:
    """The options in a form-field dict (values as Python values or as the form's strings), and its extras.

    Raises:
        JobFailed: ``invalid_options``.
    """
    from freestems.service.errors import ServiceError
    from freestems.service.options import OPTION_FIELDS, parse_options

    unknown = set(fields) - set(OPTION_FIELDS) - set(EXTRA_KEYS)
    if unknown:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"unknown option(s) {', '.join(sorted(unknown))}")
    form = {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in fields.items()
        if name in OPTION_FIELDS and value is not None
    }
    try:
        parsed = parse_options(form, sources=sources, model=model, max_shifts=settings.max_shifts)
        seed = int(fields.get("seed") or 0)
        extras = {key: fields[key] for key in EXTRA_KEYS if key in fields}
        return dataclasses.replace(parsed, seed=seed), extras
    except ServiceError as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, error.message) from None
    except (TypeError, ValueError) as error:
        raise JobFailed(FailureCode.INVALID_OPTIONS, f"seed must be an integer ({error})") from None


class Outbox:
    """Sends a call's events (and its usage record) from a thread, so the model never waits for the
    network; progress events that pile up are coalesced to the latest. :meth:`close` flushes. The events
    go to ``channel`` under ``key`` (none: they are dropped), the usage record to ``usage_log``."""

    def __init__(self, channel: ProgressChannel | None, key: str | None, usage_log: Any) -> None:
        self.channel, self.key, self.usage_log = channel, key, usage_log
        self._items: deque[tuple[str, Any]] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="freestems-outbox", daemon=True)
        self._thread.start()

    def event(self, event: dict[str, Any]) -> None:
        if self.channel is None or self.key is None:
            return
        with self._condition:
            if event.get("type") == "progress" and self._items and self._items[-1][0] == "progress":
                self._items.pop()
            self._items.append((str(event.get("type")), event))
            self._condition.notify()

    def usage(self, record: UsageRecord) -> None:
        with self._condition:
            self._items.append(("usage", record))
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._items and not self._closed:
                    self._condition.wait()
                if not self._items:
                    return
                kind, payload = self._items.popleft()
            try:
                if kind == "usage":
                    self.usage_log.record(payload)
                else:
                    assert self.channel is not None and self.key is not None
                    self.channel.put(self.key, payload)
            except Exception:
                log.warning("sending %s failed", kind, exc_info=True)

    def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        with self._condition:
            if not flush:
                self._items.clear()
            self._closed = True
            self._condition.notify()
        if flush:
            self._thread.join(timeout)


class LeaseWatch:
    """A call's lease, seen from the container: checked when the input is taken, then every few seconds
    from a thread; :meth:`check` raises :class:`~freestems.errors.Cancelled` once it has lapsed (the web
    container that waits for the job is gone, or let it go)."""

    def __init__(self, store: LeaseStore | None, key: str | None, interval: float) -> None:
        self.store, self.key, self.interval = store, key, interval
        self.lapsed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if store is None or key is None:
            return
        self._look()
        self._thread = threading.Thread(target=self._run, name="freestems-lease", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        assert self.store is not None and self.key is not None
        try:
            expires = self.store.expires(self.key)
        except Exception:  # the store is unreachable: not a reason to stop a job
            log.warning("reading lease %s failed", self.key, exc_info=True)
            return
        if expires is None or time.time() > expires:
            log.warning("the lease of %s lapsed: its web container is gone; stopping the job", self.key)
            self.lapsed = True

    def _run(self) -> None:
        while not self.lapsed and not self._stop.wait(self.interval):
            self._look()

    def check(self) -> None:
        if self.lapsed:
            raise Cancelled("the web tier that asked for this job is gone (its lease lapsed)")

    def close(self) -> None:
        self._stop.set()
