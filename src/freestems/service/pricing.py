"""What a request costs before it runs, and what one session key buys: the one home of the price.

The unit is the **model-second**: one second of audio through ``scnet`` at the default options. A request
costs::

    cost = duration x shifts x overlap factor x model factor

- ``duration``: the audio's seconds, as the upload's probe found them (at most ``max_duration``);
- ``shifts``: each shift is one more full pass of the model;
- the **overlap factor**: chunks per second of audio relative to the default overlap, ``(1 - 0.25) /
  (1 - overlap)`` (the engine steps by ``segment x (1 - overlap)``): 0.75 at ``overlap=0``, 7.5 at 0.9;
- the **model factor**: the catalog's measured ``relative_cost`` (seconds per minute of audio relative to
  ``scnet``); an ensemble (a preset or ``a+b``) costs its members' sum; a model with no measured cost (a
  checkpoint file, an unmeasured catalog entry) costs ``unmeasured_cost``, by default the dearest measured
  family's.

``two_stems``, the format and the bitrate cost nothing extra (the model runs every stem whatever is kept;
encoding is a small share of a job).

What the price decides (each is a :class:`Pricing` method, used by the job manager, the session socket and
``GET /config``, so every place counts the same way):

- **the ceiling** (:attr:`Pricing.ceiling`): one request may cost at most ``max_request_cost``; by default
  the longest allowed song at the default options on the dearest served model, so every allowed song runs
  at the defaults and dearer options fit only shorter songs. Over it: 413 ``too_costly``;
- **the key's budget**: a key is earned for a stated budget (``WS /session?budget=...``), and the proof of
  work grows linearly with it (:meth:`Pricing.counter`); the default budget is the longest allowed song at
  the default options on the default model, at today's difficulty (``pow_counter``). A request dearer than
  its key's budget: 403 ``key_budget``;
- **admission**: work in flight (queued and running jobs, and segment cuts) is counted in model-seconds,
  per address (``cost_per_ip``) and in all (``queue_cost``);
- **segment cuts** (progressive results cut from a result zip, :mod:`.partials`) cost
  :data:`SEGMENT_CUT_COST` per second of audio and are bounded by :class:`CutGate`.

Every refusal says which option to lower and by how much (:meth:`Pricing.refusal`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from freestems.models.catalog import CATALOG, member_names
from freestems.models.spelling import SEPARATOR, is_chain, parse_chain, parse_members
from freestems.options import SeparationOptions

from .errors import ServiceError, invalid_parameter, too_many_requests

DEFAULTS = SeparationOptions()
UNIT = "model-seconds"
SEGMENT_CUT_COST = 0.05
"""Model-seconds per second of audio of cutting a finished job's segments from its zip (decode every stem,
encode 30 s FLAC segments). Measured (``bench/bench_cost.py``): 0.56 CPU seconds for 30 s, 0.16 of a
default job of the same length through the tiny seeded SCNet, and a smaller share of a real ``scnet``'s
(the unit); cuts are bounded by their own caps first (:class:`CutGate`), this is what they add to the work
in flight."""
MIN_BUDGET_SHARE = 1 / 40
"""The smallest budget a key is earned for, as a share of the default budget (a 30 s clip at the defaults
on a default server): a smaller one is raised to it, so a key never costs less than this share of today's
proof of work."""
CUT_SECONDS = 2.0
"""Seconds a segment cut is assumed to take (its Retry-After) until one has been measured."""
EPSILON = 1e-6


def dearest_measured() -> float:
    """The largest measured ``relative_cost`` of a single model in the catalog (the default price of a
    model with none)."""
    return max(
        info.relative_cost
        for info in CATALOG.values()
        if info.relative_cost is not None and info.architecture != "ensemble"
    )


def overlap_factor(overlap: float) -> float:
    """Chunks per second of audio at ``overlap``, relative to the default overlap."""
    return (1.0 - DEFAULTS.overlap) / (1.0 - overlap)


def model_factor(name: str, unmeasured: float) -> float:
    """The relative cost of the served model ``name``: the catalog's; the sum of its models' for an ensemble
    (``a+b`` with optional ``:weights``), a chain (``a>stem:b``: each model runs over the whole length) or a
    preset of either; ``unmeasured`` for each model the catalog does not measure."""
    if is_chain(name):
        spec = parse_chain(name)
        return sum(model_factor(model, unmeasured) for model in (spec.first, *(m for _, m in spec.links)))
    if SEPARATOR in name:
        return sum(model_factor(member, unmeasured) for member, _ in parse_members(name))
    info = CATALOG.get(name)
    if info is None:
        return unmeasured
    members = member_names(info)
    if members:
        return sum(model_factor(member, unmeasured) for member in members)
    return info.relative_cost if info.relative_cost is not None else unmeasured


def request_cost(duration: float, shifts: int, overlap: float, factor: float) -> float:
    """The formula: model-seconds of ``duration`` seconds at ``shifts`` and ``overlap`` on a model whose
    relative cost is ``factor``."""
    return duration * shifts * overlap_factor(overlap) * factor


@dataclass(frozen=True)
class Quote:
    """A request's price and what it is made of."""

    duration: float
    shifts: int
    overlap: float
    model: str
    factor: float
    cost: float

    def fits(self, limit: float) -> bool:
        return self.cost <= limit + EPSILON


class Pricing:
    """The prices of one server: its settings and its served models (``models``, the default first).

    Attributes:
        factors: each served model's relative cost.
        default_budget: the budget of a key whose client states none (``key_budget``, or its derived
            default); earned at ``pow_counter``.
        ceiling: the most one request may cost (``max_request_cost``, or its derived default).
        per_address: model-seconds in flight per address (``cost_per_ip``, or ``jobs_per_ip x ceiling``).
        queue: model-seconds in flight in all (``queue_cost``, or ``queue_capacity x ceiling``).
    """

    def __init__(self, settings: Any, models: Sequence[str]) -> None:
        if not models:
            raise ValueError("a server prices the models it serves; it serves none")
        self.settings = settings
        self.unmeasured = float(settings.unmeasured_cost)
        self.factors = {name: model_factor(name, self.unmeasured) for name in models}
        self.default_model = models[0]
        self.max_duration = float(settings.max_duration)
        self.default_budget = (
            float(settings.key_budget) or self.max_duration * self.factors[self.default_model]
        )
        self.ceiling = float(settings.max_request_cost) or self.max_duration * max(self.factors.values())
        self.per_address = float(settings.cost_per_ip) or settings.jobs_per_ip * self.ceiling
        self.queue = float(settings.queue_cost) or settings.queue_capacity * self.ceiling
        self.min_budget = self.default_budget * MIN_BUDGET_SHARE
        self.pow_counter = int(settings.pow_counter)

    # ------------------------------------------------------------------------------------------ the price

    def factor(self, model: str | None) -> float:
        """A served model's relative cost (None: the default model's); an unknown one is unmeasured."""
        name = model or self.default_model
        return self.factors.get(name) or model_factor(name, self.unmeasured)

    def quote(self, duration: float | None, options: SeparationOptions) -> Quote:
        """The price of ``options`` on ``duration`` seconds (None: unknown, priced as the longest)."""
        seconds = self.max_duration if duration is None else min(max(duration, 0.0), self.max_duration)
        model = options.model or self.default_model
        factor = self.factor(model)
        cost = request_cost(seconds, options.shifts, options.overlap, factor)
        return Quote(seconds, options.shifts, options.overlap, model, factor, cost)

    def cut_cost(self, duration: float | None) -> float:
        """Model-seconds of cutting the segments of ``duration`` seconds of stems."""
        seconds = self.max_duration if duration is None else min(duration, self.max_duration)
        return SEGMENT_CUT_COST * seconds

    # ------------------------------------------------------------------------------------------ refusals

    def check(self, quote: Quote, budget: float | None) -> None:
        """Refuse a request over the ceiling (413 ``too_costly``) or over its key's ``budget`` (403
        ``key_budget``; None: no key, on a server without keys)."""
        if not quote.fits(self.ceiling):
            raise self.refusal(quote, self.ceiling, key=False)
        if budget is not None and not quote.fits(budget):
            raise self.refusal(quote, budget, key=True)

    def refusal(self, quote: Quote, limit: float, *, key: bool) -> ServiceError:
        """The error of a request over ``limit``: what it costs, and which option to lower by how much."""
        fits = self.fitting(quote, limit)
        advice = self._advice(quote, fits)
        what = f"this request costs {_amount(quote.cost)} {UNIT} ({self._made_of(quote)})"
        if key:
            needed = math.ceil(quote.cost)
            message = (
                f"{what}, and this session key was earned for {_amount(limit)}: earn a key for a budget of "
                f"at least {needed} (WS /session?budget={needed})"
            )
            if advice:
                message += f", or lower the options: {advice}"
            status, code = 403, "key_budget"
        else:
            message = f"{what}; one request may cost at most {_amount(limit)} on this server: {advice}"
            status, code = 413, "too_costly"
        field_name = fits.pop("field")
        extra = {"cost": round(quote.cost, 3), "limit": round(limit, 3), "fits": fits}
        if key:
            extra["budget"] = round(limit, 3)
        return ServiceError(status, code, message, field=field_name, extra=extra)

    def fitting(self, quote: Quote, limit: float) -> dict[str, Any]:
        """What fits ``limit``, changing one thing of ``quote`` at a time: the most ``shifts``, the most
        ``overlap``, the served models, the longest song; and ``field``, the first of them to lower."""
        per_shift = quote.duration * overlap_factor(quote.overlap) * quote.factor
        shifts = math.floor(limit / per_shift + EPSILON) if per_shift > 0 else quote.shifts
        ratio = limit / (quote.duration * quote.shifts * quote.factor) if quote.duration > 0 else math.inf
        overlap = math.floor((1.0 - (1.0 - DEFAULTS.overlap) / ratio) * 100 + EPSILON) / 100
        models = sorted(
            (name for name, factor in self.factors.items() if factor < quote.factor - EPSILON),
            key=lambda name: self.factors[name],
        )
        models = [
            name
            for name in models
            if request_cost(quote.duration, quote.shifts, quote.overlap, self.factors[name])
            <= limit + EPSILON
        ]
        per_second = quote.shifts * overlap_factor(quote.overlap) * quote.factor
        duration = math.floor(limit / per_second + EPSILON) if per_second > 0 else quote.duration
        fits: dict[str, Any] = {
            "shifts": min(shifts, quote.shifts) if shifts >= 1 else None,
            "overlap": min(overlap, quote.overlap) if overlap >= 0 else None,
            "models": models,
            "duration": duration,
        }
        if quote.shifts > 1 and fits["shifts"] is not None:
            fits["field"] = "shifts"
        elif quote.overlap > DEFAULTS.overlap and fits["overlap"] is not None:
            fits["field"] = "overlap"
        elif models:
            fits["field"] = "model"
        else:
            fits["field"] = "audio_file"
        return fits

    def _made_of(self, quote: Quote) -> str:
        parts = [f"{_amount(quote.duration)} s of audio"]
        if quote.shifts > 1:
            parts.append(f"shifts={quote.shifts}")
        if quote.overlap != DEFAULTS.overlap:
            parts.append(f"overlap={quote.overlap:g} ({overlap_factor(quote.overlap):.2g}x)")
        if quote.factor != 1.0:
            parts.append(f"{quote.model} ({quote.factor:g}x)")
        return " x ".join(parts)

    def _advice(self, quote: Quote, fits: dict[str, Any]) -> str:
        song = f"this {_amount(quote.duration)} s song"
        parts = []
        if quote.shifts > 1 and fits["shifts"] is not None:
            most = fits["shifts"]
            parts.append(f"shifts={quote.shifts} costs {quote.shifts}x: at most shifts={most} fits {song}")
        if quote.overlap > DEFAULTS.overlap and fits["overlap"] is not None:
            factor = overlap_factor(quote.overlap)
            most = fits["overlap"]
            parts.append(f"overlap={quote.overlap:g} costs {factor:.2g}x: at most overlap={most:g} fits")
        if fits["models"]:
            parts.append(f"model={fits['models'][-1]} fits")
        parts.append(f"{'or ' if parts else ''}shorten it to {fits['duration']} s")
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------------ keys

    def budget(self, asked: object) -> float:
        """The budget a key is earned for: ``asked`` (model-seconds; None or empty: the default budget),
        raised to the smallest budget.

        Raises:
            ServiceError: 422 (field ``budget``) for a budget that is not a positive number or is over the
                ceiling (no request could use it).
        """
        if asked is None or asked == "":
            return self.default_budget
        try:
            value = float(asked)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        most = max(self.ceiling, self.default_budget)
        if isinstance(asked, bool) or not 0 < value <= most + EPSILON:
            raise invalid_parameter(
                "budget",
                f"must be a number of {UNIT} above 0 and at most {_amount(most)} (one request may cost at "
                f"most {_amount(self.ceiling)}), got {asked!r}",
            )
        return max(value, self.min_budget)

    def counter(self, budget: float) -> int:
        """The proof of work of a key for ``budget``: the challenge's largest counter, linear in the budget
        (``pow_counter`` at the default budget; the client derives between half of it and all of it)."""
        return max(1, math.ceil(self.pow_counter * budget / self.default_budget - EPSILON))

    # ------------------------------------------------------------------------------------------ clients

    def describe(self) -> dict[str, Any]:
        """``GET /config``'s ``pricing``: enough for a client to price its request and ask for its budget."""
        return {
            "unit": UNIT,
            "formula": "duration x shifts x (1 - 0.25) / (1 - overlap) x model",
            "default_overlap": DEFAULTS.overlap,
            "models": {name: round(factor, 4) for name, factor in self.factors.items()},
            "max_request_cost": round(self.ceiling, 3),
            "default_budget": round(self.default_budget, 3),
            "min_budget": round(self.min_budget, 3),
            "cost_per_ip": round(self.per_address, 3),
            "queue_cost": round(self.queue, 3),
            "segment_cut_cost": SEGMENT_CUT_COST,
        }


def _amount(value: float) -> str:
    """A price or a length as people read it: whole above 10, else one decimal."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------- cuts


@dataclass
class _Cut:
    client: str
    cost: float
    started: float = field(default_factory=time.monotonic)


class CutGate:
    """Segment cuts in flight: at most ``per_address`` per client address and ``most`` in all (of this web
    container); over either, 429 ``too_many_cuts`` with Retry-After. Their cost counts as work in flight
    (:meth:`cost`) for the admission of jobs. Used from the event loop only."""

    def __init__(self, per_address: int, most: int) -> None:
        self.per_address = per_address
        self.most = most
        self._cuts: dict[int, _Cut] = {}
        self._next = 0
        self.seconds = CUT_SECONDS
        """A cut's usual duration (moving average): the Retry-After of a refused one."""

    def cost(self, client: str | None = None) -> float:
        """Model-seconds of cuts in flight (of ``client``, or of everyone)."""
        return sum(cut.cost for cut in self._cuts.values() if client is None or cut.client == client)

    def __len__(self) -> int:
        return len(self._cuts)

    @contextmanager
    def cut(self, client: str, cost: float) -> Iterator[None]:
        """Hold a place for one cut of ``cost`` model-seconds, or raise 429 ``too_many_cuts``."""
        mine = sum(1 for cut in self._cuts.values() if cut.client == client)
        if mine >= self.per_address or len(self._cuts) >= self.most:
            oldest = min((cut.started for cut in self._cuts.values()), default=time.monotonic())
            wait = max(1.0, self.seconds - (time.monotonic() - oldest))
            whose = "from your address" if mine >= self.per_address else "on this server"
            limit = self.per_address if mine >= self.per_address else self.most
            raise too_many_requests(
                "too_many_cuts",
                f"{limit} cut(s) of progressive results are already being made {whose} (results whose "
                f"segments must be cut from the zip); try again in {math.ceil(wait)} s",
                wait,
            )
        self._next += 1
        ticket = self._next
        self._cuts[ticket] = _Cut(client, cost)
        try:
            yield
        finally:
            cut = self._cuts.pop(ticket)
            self.seconds = 0.7 * self.seconds + 0.3 * (time.monotonic() - cut.started)
