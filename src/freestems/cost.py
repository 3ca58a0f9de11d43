"""What a separation costs on Modal, counted whole, and a projection per song.

Modal bills a container for every second it lives (from its start, through its inputs, to the end of its
idle ``scaledown_window``), for everything it reserves: the GPU, the CPU cores (physical cores, at least
0.125) and the memory (at least 128 MiB), all times a region multiplier when the function is pinned to a
region. So a song costs two things:

- **its job**: the seconds the container spent on it (``busy_seconds``, the wall time of the method),
  times the container's rate ``(gpu + cores x core price + GiB x GiB price) x region multiplier``;
- **its share of a wake-up**: a container that wakes for it costs its start (or restore) plus its idle
  tail after the last input, at the same rate; a song that finds a warm container pays none of it;
- **the web tier**: the CPU container that serves the page, the API and the sockets is billed the same
  way (one core and 1 GiB: about $0.0000153 a second). A visit that wakes it pays its start and its idle
  window (300 s: about $0.0046, near the whole target), a song its time on it too, and a day it is held
  awake (an open socket holds it) about $1.32 (:class:`WebProjection`).

:class:`Shape` is what a container reserves, :meth:`Shape.rate` its dollars per second. Usage records
(one per computed job, from the job store, the Modal Dict, or a bench's JSON results) give the measured
seconds per audio second of each tier; :func:`project` turns them into dollars per song for the tiers
asked (``T4``, ``L4``, ``A10G``, ``CPU``), warm and isolated, and :func:`format_projections` prints the table
``freestems cost`` shows, with its assumptions.

**The scale-down window.** An idle container costs ``rate`` per second; letting it go and waking another
later costs ``start x rate`` (plus the user's wait). Not knowing when the next song comes, the window that
is never worse than twice the best choice in hindsight is ``W = start`` (the ski-rental rule: keep paying
rent until the rent paid equals the price of buying); a longer window only wins when songs come in bursts
more than ``start`` seconds apart but less than ``W``. So the window is the measured start (restore)
seconds of the tier, rounded up; :func:`scaledown_window` computes it and ``freestems cost`` prints it.

**A separation on the visitor's device** (:class:`DeviceCost`) costs no compute at all: no GPU or CPU class
runs, and the web tier only serves files. It costs bytes: on a browser's first visit the network file the
page picks, its manifest and the in-browser runtime (onnxruntime-web's files), at :data:`EGRESS_USD_PER_GB`
(an assumption: :data:`EGRESS_SOURCE`); later separations in that browser read them from its caches.

Prices (:data:`DEFAULT_GPU_PRICES`, :data:`CPU_CORE_PRICE`, :data:`MEMORY_GIB_PRICE`,
:func:`region_multiplier`): see :data:`PRICES_SOURCE`. They change; override the GPU ones with
``FREESTEMS_GPU_PRICES`` (``L4=0.000222,T4=0.000164``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

PRICES_SOURCE = (
    "Modal's published prices (https://modal.com/pricing) as transcribed on 2026-07-01 in "
    "github.com/api-evangelist/modal-labs (plans/modal-labs-plans-pricing.yml) and read on 2026-06-27 in "
    "beam.cloud/blog/modal-pricing-explained (CPU $0.0000131/core/s); region multipliers from "
    "https://modal.com/docs/guide/region-selection (broad 1.5x, narrow 1.75x). Checked 2026-11-29."
)
"""Where the default prices come from, and when they were read (printed by ``freestems cost``)."""

DEFAULT_GPU_PRICES: dict[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,
    "A100-40GB": 0.000583,
    "A100-80GB": 0.000694,
    "L40S": 0.000542,
    "RTX-PRO-6000": 0.000842,
    "H100": 0.001097,
    "H200": 0.001261,
    "B200": 0.001736,
}
"""Dollars per GPU-second (see :data:`PRICES_SOURCE`). Modal prices an A10 and an A10G alike."""
CPU_CORE_PRICE = 0.0000131
"""Dollars per physical CPU core per second (Modal's minimum reservation: 0.125 core)."""
MEMORY_GIB_PRICE = 0.00000222
"""Dollars per GiB of memory per second (Modal's minimum reservation: 128 MiB)."""
BROAD_REGION_MULTIPLIER = 1.5
"""Price multiplier of a function pinned to a broad region (``us``, ``eu``, ``ap``...)."""
NARROW_REGION_MULTIPLIER = 1.75
"""Price multiplier of a function pinned to a narrow region (``us-east``, ``us-west-2``...)."""
MIN_CPU, MIN_MEMORY_MIB = 0.125, 128

EGRESS_USD_PER_GB = 0.085
"""Dollars per GB (10^9 bytes) sent to visitors, for a device separation's files: an assumption, see
:data:`EGRESS_SOURCE`; ``FREESTEMS_EGRESS_PRICE`` replaces it."""
EGRESS_SOURCE = (
    "an assumption: Modal's published prices have no meter for bytes a web endpoint sends (GPU, CPU, "
    "memory and Volume storage only, in the sources of the compute prices), so what Modal bills for them "
    "is not published; the default is what a CDN in front would charge, Amazon CloudFront's published "
    "$0.085/GB for the first 10 TB a month to the US, Mexico, Canada and Europe "
    "(https://aws.amazon.com/cloudfront/pricing, read 2026-12-06; 1 TB a month free there). Set "
    "FREESTEMS_EGRESS_PRICE (0 if your host does not bill it)."
)
"""Where :data:`EGRESS_USD_PER_GB` comes from (printed by ``freestems cost``)."""

SONG_SECONDS = 180.0
"""The reference song: three minutes."""
DAY_SECONDS = 86400.0
WEB_ASSUMED_START_SECONDS = 3.0
"""A web container's start (no torch: Python, the service, the shared state), until measured."""
WEB_ASSUMED_SONG_SECONDS = 60.0
"""A song's time on the web tier (upload, job, download) where no record measured it."""
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
class WakeRecord:
    """One container's life, recorded as it scales down: what a wake-up cost beyond its jobs."""

    task: str
    tier: str
    """``L4``, ``T4``... or ``CPU``."""
    ended_at: float
    start_seconds: float
    """Start or restore, until it could take an input (billed, no job's)."""
    busy_seconds: float
    idle_seconds: float
    """Alive without an input: the gaps between inputs and the scale-down window (billed, no job's)."""
    inputs: int
    cost_usd: float | None
    """The whole life (start + busy + idle) at the container's rate."""
    kind: str = "wake"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usage_dict_name(app_name: str) -> str:
    """The ``modal.Dict`` where the GPU containers of the Modal app ``app_name`` record their calls."""
    return f"{app_name}-usage"


def modal_usage_records(app_name: str) -> list[UsageRecord]:
    """Every usage record the Modal deployment ``app_name`` kept (needs the ``modal`` package and a token)."""
    records, _ = modal_records(app_name)
    return records


def modal_records(app_name: str) -> tuple[list[UsageRecord], list[WakeRecord]]:
    """Every job record and every wake-up record the Modal deployment ``app_name`` kept, oldest first: the
    Dict ``<app>-usage`` and what the web tier rolled up from it onto the data Volume (``usage/``, JSON
    lines; Modal drops a Dict entry after 7 days without a read or a write)."""
    import modal

    store = modal.Dict.from_name(usage_dict_name(app_name))
    entries: dict[str, Mapping[str, Any]] = {}
    for line in _rolled_up(modal.Volume.from_name(f"{app_name}-data")):
        entries[str(line.pop("key", len(entries)))] = line
    entries.update({str(key): value for key, value in store.items() if isinstance(value, Mapping)})
    values = list(entries.values())
    records = [UsageRecord.from_dict(value) for value in values if value.get("kind", "job") == "job"]
    fields = WakeRecord.__dataclass_fields__
    wakes = [
        WakeRecord(**{name: value[name] for name in fields if name in value})
        for value in values
        if value.get("kind") == "wake"
    ]
    return (
        sorted(records, key=lambda record: record.finished_at),
        sorted(wakes, key=lambda wake: wake.ended_at),
    )


def _rolled_up(volume: Any) -> list[dict[str, Any]]:
    """The entries rolled up onto the data Volume ``volume`` (none if it has no ``usage/`` folder yet)."""
    try:
        files = [entry.path for entry in volume.listdir("usage") if str(entry.path).endswith(".jsonl")]
    except Exception:  # no such Volume or folder yet
        return []
    lines = []
    for path in sorted(files):
        text = b"".join(volume.read_file(path)).decode("utf-8", "replace")
        for line in text.splitlines():
            try:
                value = json.loads(line)
            except ValueError:  # a line cut short by a container that stopped mid-write
                continue
            if isinstance(value, dict):
                lines.append(value)
    return lines


def format_recorded(records: Sequence[UsageRecord], wakes: Sequence[WakeRecord]) -> str:
    """What the records say was spent: the jobs' own cost and the wake-ups' start and idle seconds (a
    bench's records, :func:`bench_records`, spent nothing and are not counted)."""
    records = [record for record in records if not record.job_id.startswith(BENCH_PREFIX)]
    jobs = sum(record.cost_usd or 0.0 for record in records)
    line = f"recorded spend: {len(records)} job(s) ${jobs:.4f}"
    if wakes:
        start = sum(wake.start_seconds for wake in wakes)
        idle = sum(wake.idle_seconds for wake in wakes)
        whole = sum(wake.cost_usd or 0.0 for wake in wakes)
        line += (
            f"; {len(wakes)} wake-up(s) ${whole:.4f} in all, of which start {start:.0f} s and idle "
            f"{idle:.0f} s are no job's (compare with `modal billing report`)"
        )
    return line


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
    wanted = _gpu_key(name)
    for key, price in prices.items():
        if _gpu_key(key) == wanted:
            return price * multiple
    return None


def _gpu_key(name: str) -> str:
    """A GPU type as a price key: case-insensitive, and A10 and A10G are the same price."""
    key = name.strip().lower()
    return "a10g" if key == "a10" else key


def job_cost(gpu_seconds: float | None, gpu: str | None, prices: Mapping[str, float]) -> float | None:
    """Dollars one job cost, or None when it ran on no GPU or its type has no price."""
    price = price_of(gpu, prices)
    if price is None or gpu_seconds is None:
        return None
    return gpu_seconds * price


# ---------------------------------------------------------------------------------------- counted whole


def region_multiplier(regions: Sequence[str]) -> float:
    """Modal's price multiplier for a function pinned to ``regions`` (none: 1). A region without a dash
    (``us``, ``eu``) is broad, one with a dash (``us-east``, ``us-west-2``) narrow; with several, the
    smallest multiplier applies (Modal's rule for a list that spans both kinds)."""
    if not regions:
        return 1.0
    return min(NARROW_REGION_MULTIPLIER if "-" in region else BROAD_REGION_MULTIPLIER for region in regions)


@dataclass(frozen=True)
class Shape:
    """What a container reserves, which is what Modal bills per second for as long as it lives."""

    gpu: str | None
    """GPU type as Modal names it (``L4``, ``T4``, ``A10G``, ``H100:2``); None: a CPU-only container."""
    cpu: float
    """Physical cores reserved (Modal bills at least 0.125)."""
    memory_mib: int
    """Memory reserved, MiB (Modal bills at least 128)."""
    regions: tuple[str, ...] = ()

    @property
    def tier(self) -> str:
        return self.gpu or "CPU"

    def parts(self, gpu_prices: Mapping[str, float]) -> dict[str, float] | None:
        """Dollars per second of the GPU, the cores and the memory, region multiplier included; None when
        the GPU type has no price."""
        gpu = price_of(self.gpu, gpu_prices) if self.gpu else 0.0
        if gpu is None:
            return None
        multiplier = region_multiplier(self.regions)
        return {
            "gpu": gpu * multiplier,
            "cpu": max(self.cpu, MIN_CPU) * CPU_CORE_PRICE * multiplier,
            "memory": max(self.memory_mib, MIN_MEMORY_MIB) / 1024 * MEMORY_GIB_PRICE * multiplier,
        }

    def rate(self, gpu_prices: Mapping[str, float]) -> float | None:
        """Dollars per second this container costs while it lives (None: its GPU type has no price)."""
        parts = self.parts(gpu_prices)
        return None if parts is None else sum(parts.values())

    def cost(self, seconds: float | None, gpu_prices: Mapping[str, float]) -> float | None:
        """Dollars ``seconds`` of this container cost (None: no seconds, or no price for its GPU)."""
        rate = self.rate(gpu_prices)
        return None if rate is None or seconds is None else seconds * rate

    def describe(self) -> str:
        multiplier = region_multiplier(self.regions)
        regions = f" in {','.join(self.regions)} (x{multiplier:g})" if self.regions else ""
        gpu = f"1 {self.gpu} + " if self.gpu else ""
        return f"{gpu}{self.cpu:g} cores + {self.memory_mib / 1024:g} GiB{regions}"


def busy_seconds(record: UsageRecord) -> float | None:
    """The seconds a job held its container: ``busy_seconds`` (any tier), else its ``gpu_seconds``."""
    value = record.timings.get("busy_seconds", record.gpu_seconds)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def wake_start(record: UsageRecord) -> float | None:
    """The start a record's call paid, if it woke its container: ``wake_seconds`` (from the spawn to the
    container taking the input: the restore included), else ``container_start`` (``ready()`` only)."""
    for name in ("wake_seconds", "container_start"):
        value = record.timings.get(name)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def tier_of(record: UsageRecord) -> str:
    """The tier that ran a record's job: its GPU type as a price key, or ``CPU``."""
    return _gpu_key(record.gpu).upper() if record.gpu else "CPU"


@dataclass(frozen=True)
class WebProjection:
    """The web tier's share of the bill: the CPU container in front of the separators (the page, the API,
    the session sockets), billed per second of its life like any container."""

    shape: Shape
    rate: float
    """Dollars per second of a web container."""
    start_seconds: float
    idle_seconds: float
    """Its scale-down window: how long it stays up after its last request or socket."""
    song_seconds: float
    """A song's time on it: the upload, the job (the page's socket follows it), the download."""
    song_measured: bool = False

    @property
    def visit_usd(self) -> float:
        """A visit that wakes it and ends (the page, its configuration): its start and idle window."""
        return (self.start_seconds + self.idle_seconds) * self.rate

    @property
    def song_usd(self) -> float:
        """A song that wakes it and is the only one before it scales down."""
        return (self.start_seconds + self.song_seconds + self.idle_seconds) * self.rate

    @property
    def day_usd(self) -> float:
        """A day it is held awake: by traffic, or by one open socket (a page that keeps one open)."""
        return DAY_SECONDS * self.rate


def web_song_seconds(records: Iterable[UsageRecord], song_seconds: float = SONG_SECONDS) -> float | None:
    """The median time a recorded song of ``song_seconds`` held the web tier: its upload, its wait, its
    busy seconds and its download (as the web tier timed them), per audio second; None without records."""
    spans = []
    for record in records:
        busy = busy_seconds(record)
        if busy is None or not record.audio_seconds or record.audio_seconds <= 0:
            continue
        timings = record.timings
        extra = sum(
            float(timings[name])
            for name in ("upload", "queue_wait", "download")
            if isinstance(timings.get(name), (int, float))
        )
        spans.append((busy + extra) / record.audio_seconds * song_seconds)
    return statistics.median(spans) if spans else None


def project_web(
    records: Iterable[UsageRecord],
    shape: Shape,
    idle_seconds: float,
    gpu_prices: Mapping[str, float],
    *,
    song_seconds: float = SONG_SECONDS,
) -> WebProjection:
    """The web tier's share (:class:`WebProjection`) for a web container of ``shape`` that scales down
    after ``idle_seconds``, a song's time on it measured from ``records`` where they say."""
    measured = web_song_seconds(records, song_seconds)
    return WebProjection(
        shape=shape,
        rate=shape.rate(gpu_prices) or 0.0,
        start_seconds=WEB_ASSUMED_START_SECONDS,
        idle_seconds=float(idle_seconds),
        song_seconds=measured if measured is not None else WEB_ASSUMED_SONG_SECONDS,
        song_measured=measured is not None,
    )


def format_web(web: WebProjection) -> str:
    """The lines ``freestems cost`` prints for the web tier."""
    song = f"{web.song_seconds:.0f}{'' if web.song_measured else '*'}"
    return "\n".join(
        [
            f"web tier ({web.shape.describe()}, {web.rate:.7f} $/s): a visit that wakes it "
            f"${web.visit_usd:.5f} (start {web.start_seconds:g}* + idle {web.idle_seconds:g} s); a song that "
            f"wakes it ${web.song_usd:.5f} (+ {song} s on it); a day it is held awake ${web.day_usd:.2f}.",
            "  A page opens its session socket only to get a key or follow a job, and closes it once "
            "idle, so an open tab does not hold the web tier awake.",
        ]
    )


def scaledown_window(start_seconds: float) -> int:
    """The idle window that bounds the idle spend to twice the best in hindsight: the start seconds,
    rounded up, within Modal's range (2 to 3600). See the module docstring for the arithmetic."""
    return max(2, min(3600, math.ceil(start_seconds)))


ASSUMED_START_SECONDS = {"gpu": 10.0, "cpu": 5.0}
"""A container's start (snapshot restore, then the model to the GPU and one warm-up chunk), in seconds,
where no record measured it: an estimate, to be replaced by the measured ``container_start`` (README,
deploy checklist). The default scale-down windows (``FREESTEMS_MODAL_SCALEDOWN_WINDOW`` 10,
``FREESTEMS_MODAL_CPU_SCALEDOWN_WINDOW`` 5) are :func:`scaledown_window` of these."""


@dataclass(frozen=True)
class Projection:
    """Dollars per song on one tier, from the jobs recorded on it."""

    shape: Shape
    jobs: int
    busy_per_audio_second: float | None
    """Median over the recorded jobs of busy seconds per audio second (None: no record on this tier)."""
    start_seconds: float
    """A wake-up's start: the median recorded ``container_start``, else :data:`ASSUMED_START_SECONDS`."""
    start_measured: bool
    idle_seconds: float
    """The idle tail of a wake-up: the scale-down window deployed."""
    rate: float | None
    """Dollars per second of the container (None: no price for its GPU)."""
    parts: dict[str, float] | None
    song_seconds: float = SONG_SECONDS

    @property
    def tier(self) -> str:
        return self.shape.tier

    @property
    def busy_per_song(self) -> float | None:
        return None if self.busy_per_audio_second is None else self.busy_per_audio_second * self.song_seconds

    @property
    def warm_usd(self) -> float | None:
        """A song on a warm container: its busy seconds only."""
        busy = self.busy_per_song
        return None if busy is None or self.rate is None else busy * self.rate

    @property
    def wake_usd(self) -> float | None:
        """One wake-up: the start and the idle tail."""
        return None if self.rate is None else (self.start_seconds + self.idle_seconds) * self.rate

    @property
    def isolated_usd(self) -> float | None:
        """A song that wakes a container and is the only one before it scales down."""
        warm, wake = self.warm_usd, self.wake_usd
        return None if warm is None or wake is None else warm + wake

    @property
    def window(self) -> int:
        """The scale-down window the start time calls for (:func:`scaledown_window`)."""
        return scaledown_window(self.start_seconds)


def project(
    records: Iterable[UsageRecord],
    shapes: Sequence[Shape],
    gpu_prices: Mapping[str, float],
    *,
    idle_seconds: Mapping[str, float],
    song_seconds: float = SONG_SECONDS,
) -> list[Projection]:
    """One projection per shape (in the order given), from the records of its tier.

    ``idle_seconds`` maps a tier (``L4``, ``CPU``) to its scale-down window (a ``*`` entry for the others).
    Records without audio or without busy seconds are skipped; a tier without records still gets a row
    (its wake-up cost is known, its seconds per song are not: measuring one GPU says little about another).
    """
    groups: dict[str, list[UsageRecord]] = {}
    for record in records:
        if not record.audio_seconds or record.audio_seconds <= 0 or busy_seconds(record) is None:
            continue
        groups.setdefault(tier_of(record), []).append(record)
    projections = []
    for shape in shapes:
        group = groups.get(_gpu_key(shape.tier).upper(), [])
        ratios = [busy_seconds(r) / r.audio_seconds for r in group]  # type: ignore[operator]
        starts = [start for start in map(wake_start, group) if start is not None]
        kind = "cpu" if shape.gpu is None else "gpu"
        projections.append(
            Projection(
                shape=shape,
                jobs=len(group),
                busy_per_audio_second=statistics.median(ratios) if ratios else None,
                start_seconds=statistics.median(starts) if starts else ASSUMED_START_SECONDS[kind],
                start_measured=bool(starts),
                idle_seconds=float(idle_seconds.get(shape.tier, idle_seconds.get("*", 0.0))),
                rate=shape.rate(gpu_prices),
                parts=shape.parts(gpu_prices),
                song_seconds=song_seconds,
            )
        )
    return projections


DEFAULT_TIERS = ("T4", "L4", "A10G", "CPU")
"""The tiers ``freestems cost`` projects unless told which."""


class Deployment(Protocol):
    """What a projection reads of a deployment's settings: :class:`freestems.deploy.settings.ModalSettings`,
    named here by its fields so that this module imports nothing above it."""

    @property
    def modal_region(self) -> Sequence[str]: ...

    @property
    def modal_cpu(self) -> float: ...

    @property
    def modal_memory(self) -> int: ...

    @property
    def modal_scaledown_window(self) -> int: ...

    @property
    def modal_cpu_class_cpu(self) -> float: ...

    @property
    def modal_cpu_class_memory(self) -> int: ...

    @property
    def modal_cpu_scaledown_window(self) -> int: ...


def deployed_shape(tier: str, deployment: Deployment) -> Shape:
    """What a container of ``tier`` (a GPU type, or ``CPU``: the CPU class) reserves in ``deployment``."""
    regions = tuple(deployment.modal_region)
    if tier.upper() == "CPU":
        return Shape(None, deployment.modal_cpu_class_cpu, deployment.modal_cpu_class_memory, regions)
    return Shape(tier, deployment.modal_cpu, deployment.modal_memory, regions)


def project_deployment(
    records: Iterable[UsageRecord],
    deployment: Deployment,
    gpu_prices: Mapping[str, float],
    tiers: Sequence[str] = DEFAULT_TIERS,
    *,
    song_seconds: float = SONG_SECONDS,
) -> list[Projection]:
    """:func:`project` onto the containers ``deployment`` declares: each tier's reservation, and its
    scale-down window as a wake-up's idle tail."""
    idle = {"CPU": deployment.modal_cpu_scaledown_window, "*": deployment.modal_scaledown_window}
    shapes = [deployed_shape(tier, deployment) for tier in tiers]
    return project(records, shapes, gpu_prices, idle_seconds=idle, song_seconds=song_seconds)


def _usd(value: float | None) -> str:
    return "?" if value is None else f"{value:.5f}"


def format_projections(
    projections: Sequence[Projection],
    *,
    skipped: int = 0,
    web: WebProjection | None = None,
    device: Sequence[DeviceCost] = (),
) -> str:
    """The table ``freestems cost`` prints, then the web tier's share (``web``), a separation on the
    visitor's device (``device``), how it was computed and what it assumes."""
    if not projections:
        return "no tier to project"
    song = projections[0].song_seconds
    minutes = f"{song / 60:g}-min"
    header = (
        "tier", "jobs", f"busy s/{minutes} song", "$/s gpu+cpu+mem", "warm $/song",
        "start s", "idle s", "wake-up $", "isolated $/song", "window s",
    )  # fmt: skip
    rows = [header]
    for p in projections:
        parts = p.parts
        rate = "no price" if parts is None else f"{parts['gpu']:.7f}+{parts['cpu']:.7f}+{parts['memory']:.7f}"
        busy = p.busy_per_song
        rows.append(
            (
                p.tier,
                str(p.jobs),
                "no records" if busy is None else f"{busy:.1f}",
                rate,
                _usd(p.warm_usd),
                f"{p.start_seconds:g}{'' if p.start_measured else '*'}",
                f"{p.idle_seconds:g}",
                _usd(p.wake_usd),
                _usd(p.isolated_usd),
                str(p.window),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    lines.extend(f"{p.tier}: {p.shape.describe()}" for p in projections)
    if skipped:
        lines.append(f"({skipped} recorded job(s) without audio or busy seconds are not counted)")
    if web is not None:
        lines.extend(["", format_web(web)])
        isolated = [(p.tier, p.isolated_usd) for p in projections if p.isolated_usd is not None]
        if isolated:
            whole = ", ".join(f"{tier} ${usd + web.song_usd:.5f}" for tier, usd in isolated)
            lines.append(f"  A song that wakes both the web tier and a separator, alone: {whole}.")
    if device:
        lines.extend(["", format_device(device)])
    lines.extend(
        [
            "",
            f"busy s/song: median over the tier's recorded jobs of busy seconds (the method's wall time: "
            f"decode, model, encode, zip) per audio second, x {song:g} s.",
            "warm $/song = busy s x the container's rate: Modal bills the GPU, every reserved core and GiB, "
            "x the region multiplier, per second of the container's life.",
            "isolated $/song = warm + one wake-up: (start + idle) s x rate, the song that wakes a container "
            "and is alone before it scales down.",
            "start s: median recorded wake_seconds (spawn to the first input of a container: the restore "
            "included; else container_start); * = not measured, an "
            "estimate (ASSUMED_START_SECONDS).",
            "window s: the scale-down window that keeps idle spend within 2x the best in hindsight (= the "
            "start, rounded up); set FREESTEMS_MODAL_SCALEDOWN_WINDOW / _CPU_SCALEDOWN_WINDOW to it.",
            f"target: under ${TARGET_USD_PER_SONG} per 3-minute song. Not counted: Volume storage, the "
            "Dicts and Queues, a container cut short by preemption.",
            f"prices: {PRICES_SOURCE}",
        ]
    )
    if device:
        lines.append(
            "device: * = not found here, the release scnet's measured sizes (export, onnxruntime-web "
            f"1.31.1); bytes as sent, uncompressed. egress price: {EGRESS_SOURCE}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ a separation on the device

FP16_AUTO_MIN_SNR_DB = 66.0
"""The page takes an export's fp16-weights file when the export measured it this close to the fp32 one
(``FP16_AUTO_MIN_SNR_DB`` in ``web/static/device/worker.js``), else the fp32 file."""
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""The files of onnxruntime-web a browser loads (``web/vendor/onnxruntime-web/``) to separate with WASM:
the WASM build's, counted here. A browser with a hardware WebGPU adapter loads the WebGPU build instead
(``ort.webgpu.min.mjs`` and ``ort-wasm-simd-threaded.asyncify.*``: 28.9 MB of onnxruntime-web 1.31.1, 14 MB
more) and ``ort.wasm.min.mjs``; a browser loads one build, never both."""
MEASURED_RUNTIME_BYTES = 14_848_852 + 53_725 + 24_738
"""onnxruntime-web 1.31.1's ``ort-wasm-simd-threaded.wasm``, ``ort.wasm.min.mjs`` and
``ort-wasm-simd-threaded.mjs`` as ``scripts/fetch_web_deps.sh`` installed them here (2026-12-06): counted when
the runtime is not installed where ``freestems cost`` runs."""
MEASURED_NETWORK = ("scnet", "network.fp16.onnx", 21_393_956, 4_122)
"""The release ``scnet``'s export as measured here (2026-12-06; its fp16 file is 69 dB from the fp32 one,
so the page takes it) and its manifest's size: counted when no export is found."""


@dataclass(frozen=True)
class DeviceCost:
    """What one browser's separations on its device cost us: nothing but the bytes of its first visit."""

    model: str
    network_file: str
    network_bytes: int
    manifest_bytes: int
    runtime_bytes: int
    usd_per_gb: float
    network_measured: bool = True
    """False: no export was read; :data:`MEASURED_NETWORK` stands in."""
    runtime_measured: bool = True
    """False: the runtime is not installed here; :data:`MEASURED_RUNTIME_BYTES` stands in."""

    @property
    def first_visit_bytes(self) -> int:
        return self.network_bytes + self.manifest_bytes + self.runtime_bytes

    @property
    def first_visit_usd(self) -> float:
        """A browser's first device separation: every file once (no GPU, no CPU class: no compute)."""
        return self.first_visit_bytes / 1e9 * self.usd_per_gb


def picked_file(files: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The network file the page downloads of an export's ``files`` (its manifest's ``onnx.files``): the
    fp16-weights one where measured within :data:`FP16_AUTO_MIN_SNR_DB` of the fp32 one, else fp32."""
    fp32 = next((f for f in files if f.get("precision") == "fp32"), None)
    fp16 = next((f for f in files if str(f.get("precision", "")).startswith("fp16")), None)
    if fp16 is not None and (fp16.get("snr_db_vs_fp32") or 0) >= FP16_AUTO_MIN_SNR_DB:
        return fp16
    return fp32 or fp16


def runtime_bytes(vendor: Path) -> int | None:
    """The bytes of the in-browser runtime's files in ``vendor`` (None: not installed there)."""
    sizes = [(vendor / name).stat().st_size for name in RUNTIME_FILES if (vendor / name).is_file()]
    return sum(sizes) if sizes else None


def project_device(device_dir: Path | None, vendor: Path, usd_per_gb: float) -> list[DeviceCost]:
    """One :class:`DeviceCost` per export in ``device_dir`` (``<model>/manifest.json``), the runtime from
    ``vendor``; with no export there, the release ``scnet``'s measured sizes (:data:`MEASURED_NETWORK`)."""
    runtime = runtime_bytes(vendor)
    found: list[tuple[str, str, int, int]] = []
    for manifest in sorted(device_dir.glob("*/manifest.json")) if device_dir is not None else []:
        try:
            entry = picked_file(json.loads(manifest.read_text())["onnx"]["files"])
            if entry is not None:
                network = (str(entry["file"]), int(entry["bytes"]))
                found.append((manifest.parent.name, *network, manifest.stat().st_size))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an export: nothing of it is served
    measured = bool(found)
    return [
        DeviceCost(
            model,
            file,
            size,
            manifest_size,
            runtime or MEASURED_RUNTIME_BYTES,
            usd_per_gb,
            network_measured=measured,
            runtime_measured=runtime is not None,
        )
        for model, file, size, manifest_size in found or [MEASURED_NETWORK]
    ]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_device(costs: Sequence[DeviceCost]) -> str:
    """The lines ``freestems cost`` prints for separations on the visitor's device."""
    price = costs[0].usd_per_gb if costs else EGRESS_USD_PER_GB
    lines = [
        f"on the visitor's device: no GPU or CPU class runs (no compute but the web tier's visit above); "
        f"bandwidth at ${price:g}/GB:"
    ]
    for c in costs:
        net = f"{c.network_file} {_mb(c.network_bytes)}{'' if c.network_measured else '*'}"
        runtime = f"{_mb(c.runtime_bytes)}{'' if c.runtime_measured else '*'}"
        whole = _mb(c.first_visit_bytes)
        lines.append(
            f"  {c.model}: a browser's first separation ${c.first_visit_usd:.5f} ({whole}: {net} + manifest "
            f"{c.manifest_bytes / 1e3:.0f} kB + runtime {runtime}); its later ones $0 (kept in Cache "
            "Storage; the manifest revalidated, a 304)."
        )
    return "\n".join(lines)


BENCH_PREFIX = "bench-"
"""The job id of a bench's record starts so (:func:`bench_records`): it measured a speed, spent nothing."""


class RecordsError(Exception):
    """Usage records cannot be read (a bench's file, the Modal deployment's, the job store); the message
    says which and why."""


def bench_file_records(path: Path) -> list[UsageRecord]:
    """Usage records from a bench's JSON results file (:func:`bench_records`).

    Raises:
        RecordsError: the file cannot be read or is not a bench's results.
    """
    try:
        return bench_records(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError) as error:
        raise RecordsError(f"cannot read the bench results {path}: {error}") from None


def bench_records(data: Mapping[str, Any]) -> list[UsageRecord]:
    """Usage records from a bench's JSON results (``bench/results/separate.json``: ``runs`` of
    ``{"seconds": audio, "wall": busy}``, with ``"gpu"`` at the top for a GPU run, else a CPU one)."""
    gpu = data.get("gpu") or None
    records = []
    for index, run in enumerate(data.get("runs") or []):
        audio, wall = run.get("seconds"), run.get("wall")
        if not isinstance(audio, (int, float)) or not isinstance(wall, (int, float)):
            continue
        records.append(
            UsageRecord(
                job_id=f"{BENCH_PREFIX}{index}",
                finished_at=0.0,
                model=str(data.get("model") or ""),
                gpu=gpu,
                audio_seconds=float(audio),
                gpu_seconds=float(wall) if gpu else None,
                timings={"busy_seconds": float(wall)},
            )
        )
    return records
