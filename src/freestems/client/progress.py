"""What the client tells its user while it works: progress of the upload, the job and the download, and
notes (why it waits, why it resumes). :class:`Reporter` logs the notes and shows nothing else (the library's
default); :class:`TerminalReporter` draws tqdm bars on stderr (the ``freestems remote`` command)."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("freestems.client")


class Reporter:
    """Silent progress; notes go to the ``freestems.client`` logger. Subclass to show more."""

    def begin(self, name: str) -> None:
        """A new file starts."""

    def note(self, text: str) -> None:
        log.info("%s", text)

    def uploaded(self, sent: int, total: int) -> None:
        """``sent`` of ``total`` bytes of the upload are out."""

    def job(self, state: str, position: int, progress: float) -> None:
        """The job's state, queue position (1 = next, 0 = not queued) and progress (0..1)."""

    def downloaded(self, received: int, total: int | None) -> None:
        """``received`` bytes of the result (of ``total``, when known) are in."""

    def end(self) -> None:
        """The file is finished (or failed)."""


class TerminalReporter(Reporter):
    """tqdm bars on stderr: silent when stderr is not a terminal, or everything silent with ``quiet``
    (then notes are not printed either)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.name = ""
        self._bar: Any = None
        self._kind = ""
        self._label = ""

    def begin(self, name: str) -> None:
        self.name = name

    def note(self, text: str) -> None:
        super().note(text)
        if self.quiet:
            return
        from tqdm import tqdm

        tqdm.write(f"freestems: {self.name}: {text}", file=sys.stderr)

    def _show(self, kind: str, total: float | None, **options: Any) -> Any:
        if self._kind != kind:
            self.end()
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=f"{self.name} {kind}",
                file=sys.stderr,
                disable=True if self.quiet else None,
                leave=False,
                **options,
            )
            self._kind = kind
        return self._bar

    def uploaded(self, sent: int, total: int) -> None:
        bar = self._show("upload", total, unit="B", unit_scale=True, unit_divisor=1024)
        bar.update(sent - bar.n)

    def job(self, state: str, position: int, progress: float) -> None:
        bar = self._show("separate", 100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        label = (
            f"{self.name} queued, position {position}"
            if state == "queued" and position
            else (f"{self.name} {state}")
        )
        if self._label != label:
            self._label = label
            bar.set_description_str(label)  # shown now: a queue can sit at 0% for long
        bar.update(round(progress * 100) - bar.n)

    def downloaded(self, received: int, total: int | None) -> None:
        bar = self._show("download", total, unit="B", unit_scale=True, unit_divisor=1024)
        bar.update(received - bar.n)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._kind, self._label = None, "", ""
