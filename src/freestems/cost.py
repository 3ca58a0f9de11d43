"""What a separation costs: GPU seconds times a per-second price, and a projection per song.

Pure arithmetic over usage records, one per computed job (cache hits cost nothing and are not recorded).
A record says which GPU type ran the job (``None`` on a CPU), how long the audio was and how many seconds
the job held the GPU (``gpu_seconds``: the wall time of the GPU method, from the moment its container
took the input to the moment it returned the zip; see :mod:`freestems.deploy.modal_app`).

- cost of a job: ``gpu_seconds * price[gpu]``;
- projection per song for a GPU type: the *median* of ``gpu_seconds / audio_seconds`` over the recorded
  jobs of that type, times the song length (180 s by default), times the price. The median, because one
  cold start or one pathological upload must not move the estimate.

What this leaves out, on purpose: a container's idle tail (``scaledown_window``) and its start or restore
are billed by Modal too but belong to no job; the records keep ``container_start`` so they can be seen
(README, "Deploy on Modal").

Prices are dollars per second of one GPU. The defaults are Modal's published per-second prices as we know
them; they change, so check them against https://modal.com/pricing and override them with
``FREESTEMS_GPU_PRICES`` (``L4=0.000222,T4=0.000164``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_GPU_PRICES: dict[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,
    "A100-40GB": 0.000583,
    "A100-80GB": 0.000694,
    "L40S": 0.000542,
    "H100": 0.001097,
}
"""Dollars per GPU-second (Modal's published prices at the time of writing; check them)."""

SONG_SECONDS = 180.0
"""The reference song: three minutes."""
TARGET_USD_PER_SONG = 0.005
"""The design target: under half a cent of GPU per 3-minute song."""


@dataclass(frozen=True)
class UsageRecord:
    """One computed job, as the job store and the Modal usage log keep it."""

    job_id: str
    finished_at: float
    model: str
    gpu: str | None
    """GPU type as Modal names it (``L4``, ``A100-80GB``, ``H100:2``); None when no GPU ran the job."""
    audio_seconds: float | None
    gpu_seconds: float | None
    cost_usd: float | None = None
    """Cost at the prices of the moment it was recorded (None: no GPU, or no price for its type)."""
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UsageRecord:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        known.setdefault("job_id", "")
        known.setdefault("finished_at", 0.0)
        known.setdefault("model", "")
        known.setdefault("gpu", None)
        known.setdefault("audio_seconds", None)
        known.setdefault("gpu_seconds", None)
        if isinstance(known.get("timings"), str):
            known["timings"] = json.loads(known["timings"] or "{}")
        return cls(**known)


@dataclass(frozen=True)
class Projection:
    """Dollars per song on one GPU type, from the jobs recorded on it."""

    gpu: str
    jobs: int
    audio_seconds: float
    """Audio separated by those jobs, in total."""
    gpu_seconds: float
    """GPU seconds they used, in total."""
    gpu_seconds_per_audio_second: float
    """Median over the jobs."""
    price: float | None
    """$ per GPU-second (None: not in the price table)."""
    song_seconds: float = SONG_SECONDS

    @property
    def gpu_seconds_per_song(self) -> float:
        return self.gpu_seconds_per_audio_second * self.song_seconds

    @property
    def usd_per_song(self) -> float | None:
        return None if self.price is None else self.gpu_seconds_per_song * self.price

    @property
    def songs_per_dollar(self) -> float | None:
        usd = self.usd_per_song
        return None if not usd else 1.0 / usd


def usage_dict_name(app_name: str) -> str:
    """The ``modal.Dict`` where the GPU containers of the Modal app ``app_name`` record their calls."""
    return f"{app_name}-usage"


def modal_usage_records(app_name: str) -> list[UsageRecord]:
    """Every usage record the Modal deployment ``app_name`` kept (needs the ``modal`` package and a token;
    Modal drops Dict entries that are not touched for a while, see the README)."""
    import modal

    store = modal.Dict.from_name(usage_dict_name(app_name))
    records = [UsageRecord.from_dict(value) for value in store.values()]
    return sorted(records, key=lambda record: record.finished_at)


class PriceError(ValueError):
    """A price table entry does not parse; the message says which."""


def parse_prices(text: str, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """``"L4=0.000222,T4=0.000164"`` -> a price table: ``base`` (default: none) with these entries replaced.

    Raises:
        PriceError: an entry is not ``TYPE=dollars_per_second`` with a non-negative number.
    """
    prices = dict(base or {})
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        name = name.strip()
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not sep or not name or not price >= 0:
            raise PriceError(f"{entry!r} is not TYPE=dollars_per_second (e.g. L4=0.000222)")
        prices[name] = price
    return prices


def price_of(gpu: str | None, prices: Mapping[str, float]) -> float | None:
    """The price of ``gpu`` per second: case-insensitive, and ``TYPE:N`` (N GPUs) costs N times ``TYPE``."""
    if not gpu:
        return None
    name, _, count = gpu.partition(":")
    try:
        multiple = int(count) if count else 1
    except ValueError:
        return None
    for key, price in prices.items():
        if key.lower() == name.strip().lower():
            return price * multiple
    return None


def job_cost(gpu_seconds: float | None, gpu: str | None, prices: Mapping[str, float]) -> float | None:
    """Dollars one job cost, or None when it ran on no GPU or its type has no price."""
    price = price_of(gpu, prices)
    if price is None or gpu_seconds is None:
        return None
    return gpu_seconds * price


def project(
    records: Iterable[UsageRecord],
    prices: Mapping[str, float],
    *,
    gpus: Sequence[str] | None = None,
    song_seconds: float = SONG_SECONDS,
) -> list[Projection]:
    """One projection per GPU type found in ``records`` (only ``gpus`` if given), cheapest first.

    Records without a GPU, without GPU seconds or without audio are skipped. A type in ``gpus`` with no
    record gets no projection: measuring one GPU says little about another.
    """
    wanted = {gpu.lower() for gpu in gpus} if gpus else None
    groups: dict[str, list[UsageRecord]] = {}
    names: dict[str, str] = {}
    for record in records:
        if not record.gpu or not record.gpu_seconds or not record.audio_seconds or record.audio_seconds <= 0:
            continue
        key = record.gpu.lower()
        if wanted is not None and key not in wanted:
            continue
        groups.setdefault(key, []).append(record)
        names.setdefault(key, record.gpu)
    projections = []
    for key, group in groups.items():
        ratios = [r.gpu_seconds / r.audio_seconds for r in group]  # type: ignore[operator]
        projections.append(
            Projection(
                gpu=names[key],
                jobs=len(group),
                audio_seconds=sum(r.audio_seconds for r in group),  # type: ignore[misc]
                gpu_seconds=sum(r.gpu_seconds for r in group),  # type: ignore[misc]
                gpu_seconds_per_audio_second=statistics.median(ratios),
                price=price_of(names[key], prices),
                song_seconds=song_seconds,
            )
        )
    return sorted(projections, key=lambda p: (p.usd_per_song is None, p.usd_per_song or 0.0, p.gpu))


def format_projections(
    projections: Sequence[Projection],
    *,
    asked: Sequence[str] | None = None,
    song_seconds: float = SONG_SECONDS,
    skipped: int = 0,
) -> str:
    """The table ``freestems cost`` prints, with a line for every asked type that has no record."""
    minutes = f"{song_seconds / 60:g}-minute"
    lines: list[str] = []
    if projections:
        rows = [("gpu", "jobs", "audio", "GPU s / audio s", f"GPU s / {minutes} song", "$/GPU-s", "$ / song")]
        for p in projections:
            rows.append(
                (
                    p.gpu,
                    str(p.jobs),
                    f"{p.audio_seconds:.0f} s",
                    f"{p.gpu_seconds_per_audio_second:.4f}",
                    f"{p.gpu_seconds_per_song:.2f}",
                    "?" if p.price is None else f"{p.price:.6f}",
                    "no price" if p.usd_per_song is None else f"{p.usd_per_song:.5f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            lines.append("  ".join(cells).rstrip())
    found = {p.gpu.lower() for p in projections}
    missing = [gpu for gpu in asked or () if gpu.lower() not in found]
    if not projections and not missing:
        lines.append("no recorded jobs with GPU time yet: separate some songs on a GPU first")
    for gpu in missing:
        lines.append(f"{gpu}: no recorded jobs on this GPU type")
    if skipped:
        lines.append(f"({skipped} recorded job(s) without GPU time, e.g. on a CPU, are not counted)")
    if projections:
        lines.append(
            f"\nmedian GPU seconds per audio second x {song_seconds:g} s x price; target: under "
            f"${TARGET_USD_PER_SONG} per 3-minute song. Idle containers and cold starts are not included."
        )
    return "\n".join(lines)
