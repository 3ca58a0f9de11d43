"""Every knob of the service in one frozen object, read from ``FREESTEMS_*`` environment variables.

Nothing in the service reads the environment itself: :meth:`EnvSettings.from_env` does, once, and everything
else gets the object (``Settings(...)`` built in code is the defaults plus what it is given). A bad value
fails at startup with a :class:`SettingsError` naming the variable, instead of surfacing later as a strange
request error. The fields are declared for pydantic-settings (types, ``Field`` constraints, two validators
for rules over several fields); :class:`EnvSettings` adds comma lists, reading any mapping and the one-line
errors, and is the base of the Modal deployment's settings too (:mod:`freestems.deploy.settings`).

``FREESTEMS_CACHE`` already names the model weights cache (see :mod:`freestems.models.download`), so the
result cache is switched with ``FREESTEMS_RESULT_CACHE``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from freestems.cost import DEFAULT_GPU_PRICES, EGRESS_USD_PER_GB, parse_prices
from freestems.models.catalog import check_model_choice, default_served_model
from freestems.rules import Device

from .pricing import dearest_measured

PREFIX = "FREESTEMS_"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The Host names a server on a loopback address answers to by default (any port)."""
AuthMode = Literal["pow", "none"]
AUTH_MODES: tuple[AuthMode, ...] = get_args(AuthMode)
PowAlgorithm = Literal["PBKDF2/SHA-256", "PBKDF2/SHA-384", "PBKDF2/SHA-512", "SHA-256", "SHA-384", "SHA-512"]
POW_ALGORITHMS: tuple[PowAlgorithm, ...] = get_args(PowAlgorithm)


class SettingsError(ValueError):
    """A setting has an invalid value: one line that names the variable (``FREESTEMS_X``) and says why.

    A start-up error, never an HTTP one: ``freestems serve`` prints it and exits non-zero.
    """


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/freestems``, or ``~/.local/share/freestems``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "freestems"


# --------------------------------------------------------------------------------------------- value types


def _comma_list(raw: Any) -> Any:
    """``"a, b/"`` from the environment -> ``("a", "b")``; values given in code pass as they are."""
    if isinstance(raw, str):
        return tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    return raw


def _price_table(raw: Any) -> Any:
    """``"L4=0.0003"`` -> the default prices, that entry replaced (:func:`freestems.cost.parse_prices`)."""
    return parse_prices(raw, DEFAULT_GPU_PRICES) if isinstance(raw, str) else raw


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError(
                f"{origin!r} is not an origin; write it as scheme://host[:port], e.g. https://example.org"
            )
    return origins


def _hosts(hosts: tuple[str, ...]) -> tuple[str, ...]:
    for host in hosts:
        if not _host_pattern(host):
            raise ValueError(
                f"{host!r} is not a host name; write names without scheme or port, e.g. example.org, "
                "*.example.org, 127.0.0.1 or [::1]"
            )
    return hosts


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
"""Strings, written ``a,b`` in the environment (not JSON)."""
Prices = Annotated[dict[str, Annotated[float, Field(ge=0)]], NoDecode, BeforeValidator(_price_table)]
UserPath = Annotated[Path, AfterValidator(Path.expanduser)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Positive = Annotated[float, Field(gt=0)]
AtLeastOne = Annotated[int, Field(ge=1)]


# --------------------------------------------------------------------------------------------- the base


class EnvSettings(BaseSettings):
    """Settings read from ``FREESTEMS_*`` variables: field ``x`` from ``FREESTEMS_X``. Immutable."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, frozen=True, extra="forbid", use_attribute_docstrings=True, validate_by_name=True
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(_one_line(error, type(self))) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, *_: Any, **__: Any
    ) -> tuple[Any, ...]:
        """Only the values given: the environment is read by :meth:`from_env`, from any mapping."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Settings from ``FREESTEMS_*`` variables (of ``os.environ`` by default; a blank one counts as
        unset); ``overrides`` (already typed; None ones are ignored) win over the environment.

        Raises:
            SettingsError: a value does not parse or is out of range; the message names the variable.
        """
        values = _Variables(cls, os.environ if environ is None else environ)()
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like the original."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field ``name`` (or of the variable itself, as errors may say)."""
        field = cls.model_fields.get(name)
        if field is not None and isinstance(field.validation_alias, str):
            return field.validation_alias.upper()
        return name.upper() if name.upper().startswith(PREFIX) else PREFIX + name.upper()

    @classmethod
    def variables(cls) -> frozenset[str]:
        """Every variable these settings read."""
        return frozenset(cls.variable(name) for name in cls.model_fields)


class _Variables(EnvSettingsSource):
    """pydantic-settings' environment source over any mapping: ``FREESTEMS_*`` names only, values stripped,
    blank ones left out."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name.lower(): value.strip()
            for name, value in self.environ.items()
            if name.upper().startswith(PREFIX) and value.strip()
        }


_REASONS = {
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "expected on/off, true/false, yes/no or 1/0",
    "bool_type": "expected on/off, true/false, yes/no or 1/0",
    "string_too_short": "must not be empty",
}


def _one_line(error: ValidationError, cls: type[EnvSettings]) -> str:
    """Each problem as ``FREESTEMS_X: why, got 'value'``, joined on one line (no pydantic URLs)."""
    lines = []
    for item in error.errors(include_url=False):
        context = item.get("ctx", {})
        if item["type"] == "value_error":  # our own rules: their message says it all
            reason = str(context.get("error", item["msg"]))
        elif item["type"] == "literal_error":
            reason = "must be one of " + context["expected"].replace("'", "").replace(" or ", ", ")
        elif item["type"] == "greater_than" and context.get("gt") == 0:
            reason = "must be positive"
        elif item["type"] == "extra_forbidden":
            reason = "unknown setting"
        else:
            reason = _REASONS.get(item["type"], item["msg"]).format(**context)
        if item["type"] not in ("value_error", "extra_forbidden"):
            reason += f", got {item['input']!r}"
        where = item["loc"]
        if where:
            name = cls.variable(str(where[0])) + "".join(f"[{part}]" for part in where[1:])
            reason = f"{name}: {reason}"
        lines.append(reason)
    return "; ".join(lines)


# --------------------------------------------------------------------------------------------- the service


class Settings(EnvSettings):
    """The service's configuration. Field ``x`` is read from ``FREESTEMS_X`` (upper case)."""

    # -- network --
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback exposes the service."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port; 0: any free one."""
    trust_proxy: bool = False
    """Take the client address from ``X-Forwarded-For`` (its last entry, added by the proxy). Only behind a
    reverse proxy that sets it: otherwise clients could pick their own address and dodge per-IP limits."""
    allowed_origins: Annotated[CommaList, AfterValidator(_origins)] = ()
    """Origins allowed to open the session WebSocket (``https://example.org``). Empty: same origin only (the
    Origin's host:port must equal the Host header). ``*`` allows any site: unsafe."""
    allowed_hosts: Annotated[CommaList, AfterValidator(_hosts)] = ()
    """Host names (or IP addresses) the server answers to; ``*.example.org`` for subdomains, ``*`` for any.
    Empty: on a loopback address ``localhost``, ``127.0.0.1`` and ``[::1]`` (so that a web page cannot reach
    it by DNS rebinding), elsewhere any (set it to the public name). See :attr:`hosts`."""
    header_timeout: Positive = 15.0
    """Seconds a connection has to send a complete request head (from opening, or from its last response);
    then it is closed. The app itself (so also on Modal, whose proxy reads the heads) ends a request whose
    body falls silent this long with 408 ``upload_timeout``."""
    keep_alive_timeout: Positive = 5.0
    """Seconds an idle kept-alive connection stays open after a response."""
    max_connections: int = Field(0, ge=0)
    """Open connections (HTTP and WebSocket) at once; more are refused at once with 503. 0: derived from
    the open file limit (raised to its hard limit at start): the limit less a quarter, at most 4096. When
    set, the app also caps its open requests and WebSockets at it (on Modal, where uvicorn's layer does not
    run, the web function's concurrent inputs cap them otherwise)."""
    max_connections_per_address: AtLeastOne = 64
    """Open connections per client address (an IPv6 /64); more get 429. The app counts its open requests
    and WebSockets against it too, so it holds on Modal. Not applied with ``trust_proxy``: then every
    connection comes from the proxy."""

    # -- storage --
    data_dir: UserPath = Field(default_factory=default_data_dir)
    """Job database, uploads being processed, results."""
    result_ttl: Positive = 3600.0
    """Seconds a result (and its job record) is kept after the job ends."""
    result_cache: bool = True
    """Serve a stored result for the same audio, model and options instead of separating again."""
    sweep_interval: Positive = 30.0
    """Seconds between sweeps of expired results, sessions and challenges."""
    reattach_grace: Positive = 30.0
    """Seconds an unfinished job is kept once nothing follows it (its WebSocket closed, no poll): a reloaded
    page or a reconnecting client can follow it again by id and token; after that it is cancelled."""

    # -- protection --
    auth: AuthMode = "pow"
    """``pow``: a session key earned by proof of work is required; ``none``: no keys (private installs)."""
    allow_public_noauth: bool = False
    """Allow ``auth=none`` on a non-loopback address. Anyone who can reach it can then use the compute."""
    hmac_secret: str = ""
    """Signs challenges. Empty: a random secret per process (challenges do not survive a restart)."""
    pow_algorithm: PowAlgorithm = "PBKDF2/SHA-256"
    """ALTCHA v2 key derivation; PBKDF2 runs natively in browsers (WebCrypto)."""
    pow_cost: AtLeastOne = 5000
    """Cost of one derivation (PBKDF2 iterations). The server pays one derivation per challenge."""
    pow_counter: AtLeastOne = 1000
    """Work per challenge for a key of the default budget: the client must find a counter drawn between half
    this and this, trying each one (one derivation each). 5000 iterations x ~750 tries is ~1 s of one
    browser core. A key for another budget scales it linearly (see ``max_request_cost``)."""
    challenge_ttl: Positive = 120.0
    """Seconds a challenge can be solved in (a challenge for more than the default budget gets as many
    times more)."""
    session_ttl: Positive = 900.0
    """Seconds a session key can be used in (from issue to the start of its upload)."""
    socket_lifetime: Positive = 1800.0
    """Seconds a session WebSocket stays open at most. The server then closes it with code 4000 (reason
    ``socket_lifetime``); the page and ``freestems.client`` reconnect and follow their job by id and token,
    and the job goes on. A key never outlives its socket: it is offered for at most the socket's remaining
    life less ``upload_timeout``. Keep it below the web function's timeout on Modal (the deployment derives
    that timeout from it). Must exceed ``challenge_ttl + upload_timeout``."""
    sockets_per_ip: AtLeastOne = 8
    """Open session WebSockets per client address (counted across every web container when the state is
    shared); more are refused with 429 ``too_many_sockets``, so a few addresses cannot hold every slot."""
    # -- limits --
    max_upload_mb: Positive = 100.0
    """Largest upload, in MB (10^6 bytes). Checked while streaming."""
    max_duration: Positive = 1200.0
    """Longest audio, in seconds (decoded length)."""
    max_shifts: AtLeastOne = 5
    """Largest ``shifts`` a request may ask for (each shift is one more full pass of the model)."""
    upload_timeout: Positive = 600.0
    """Seconds an upload may take, so that a trickling client cannot hold a slot forever (also the longest
    any request body may take, and ``header_timeout`` the longest silence within one)."""
    separate_wait: float = Field(0.0, ge=0)
    """Seconds ``POST /separate`` may take in all, upload included, before it answers ``202`` with the job
    to follow (``Location``: its status URL; the zip at its ``result_url``) instead of the zip. 0: it waits
    for the zip however long the job takes. The Modal deployment sets it below Modal's 150 s limit on a web
    request (``FREESTEMS_MODAL_REQUEST_SECONDS``)."""
    sessions_per_minute: AtLeastOne = 10
    """New sessions (challenges) per client address per minute."""
    refused_uploads_per_minute: AtLeastOne = 5
    """Refused uploads (too large, not audio, bad form, too slow, interrupted) per client address per
    minute; beyond it uploads from the address get 429 before their body is read. A refused upload does not
    spend its session key, so without this one proof of work would buy any number of them."""
    jobs_per_ip: AtLeastOne = 2
    """Queued plus running jobs per client address."""
    queue_capacity: AtLeastOne = 32
    """Queued plus running jobs in total; beyond it new jobs get 429 and are not stored."""
    max_request_cost: float = Field(0.0, ge=0)
    """The most one request may cost, in model-seconds (one second of audio through ``scnet`` at the
    default options; a request costs its seconds x ``shifts`` x its overlap's chunk factor x its model's
    relative cost). Dearer requests get 413 ``too_costly`` naming the option to lower. 0: the longest
    allowed song (``max_duration``) at the default options on the dearest served model, so every allowed
    song runs at the defaults and dearer options fit only shorter songs. A session key is earned for a
    budget up to this, its proof of work ``pow_counter`` x budget / ``key_budget``."""
    key_budget: float = Field(0.0, ge=0)
    """Model-seconds a session key buys when its client asks for no budget; its proof of work is
    ``pow_counter``, and a key for another budget (``WS /session?budget=...``, at most
    ``max_request_cost``) scales that linearly. 0: the longest allowed song at the default options on the
    default model (the first served)."""
    cost_per_ip: float = Field(0.0, ge=0)
    """Model-seconds of work queued plus running per client address (jobs and segment cuts); beyond it new
    jobs get 429 ``too_much_work``. 0: ``jobs_per_ip`` x ``max_request_cost``."""
    queue_cost: float = Field(0.0, ge=0)
    """Model-seconds of work queued plus running in total; beyond it new jobs get 429 ``queue_full``. 0:
    ``queue_capacity`` x ``max_request_cost``."""
    unmeasured_cost: Positive = dearest_measured()
    """The relative cost (to ``scnet``) of a served model with none measured: a checkpoint file, or a
    catalog model not benchmarked yet. Default: the dearest measured single model's."""
    cuts_per_ip: AtLeastOne = 1
    """Segment cuts at once per client address: a finished job without segments on disk (a cache hit whose
    original job has gone, a job run on Modal) has them cut from its zip on its first ``GET
    /jobs/{id}/partial``; beyond it 429 ``too_many_cuts`` with Retry-After."""
    max_cuts: AtLeastOne = 2
    """Segment cuts at once in total (per web container)."""

    # -- model and compute --
    models: CommaList = ()
    """Catalog names or presets to serve, comma-separated (``scnet,mel-roformer-kim``); the first is the
    default of a request that names none. Each is loaded on first use. Empty: ``model`` (one model)."""
    model_memory: float = Field(0.0, ge=0)
    """MB of loaded models kept in memory (their weights, counted from parameters and buffers); loading one
    more evicts the least recently used idle one, never one a running job uses. 0: no limit."""
    model: str | None = None
    """Catalog model name (default: the catalog's default). One model; ``models`` serves several."""
    model_file: UserPath | None = None
    """A checkpoint file instead of a catalog model (as ``--model-file``)."""
    model_config_file: UserPath | None = Field(None, validation_alias="FREESTEMS_MODEL_CONFIG")
    """The config of ``model_file`` (as ``--model-config``); ``FREESTEMS_MODEL_CONFIG``, since pydantic keeps
    the attribute name ``model_config`` for itself."""
    workers: AtLeastOne = 1
    """Jobs run at once by the in-process executor (each one keeps a CPU or GPU busy)."""
    threads: int = Field(0, ge=0)
    """Torch threads for the in-process executor; 0 keeps torch's default (one per core)."""
    device: Device = "auto"
    """Where the in-process executor runs the model."""
    device_dir: UserPath | None = None
    """A folder of ``freestems export`` outputs, one sub-folder per served model named as the model
    (``<device_dir>/scnet/manifest.json``): the page offers to separate with those models in the browser,
    on the visitor's device, nothing uploaded. Unset: only on the server."""
    device_only: bool = False
    """Separate only on the visitor's device: the page offers no upload, and ``POST /separate``, ``POST
    /jobs`` and ``WS /session`` are refused (403 ``device_only``). Each served model (``models``, or
    ``model``: here the name of a folder in ``device_dir``) must have an export in ``device_dir``, and the
    in-browser runtime must be installed (``scripts/fetch_web_deps.sh``), or the server does not start. No
    model is downloaded or loaded and torch is not imported: the server sends files and nothing else. (A
    deployment that brings its own executor, Modal's, keeps it: there only the routes are closed.)"""
    gpu_prices: Prices = Field(default_factory=lambda: dict(DEFAULT_GPU_PRICES))
    """Dollars per GPU-second by GPU type, for the cost of each job (usage records, ``freestems cost``).
    ``FREESTEMS_GPU_PRICES="L4=0.000222,T4=0.000164"`` replaces those entries and keeps the other defaults."""
    egress_price: float = Field(EGRESS_USD_PER_GB, ge=0)
    """Dollars per GB (10^9 bytes) the server's answers cost to send, for what ``freestems cost`` counts a
    separation on the visitor's device (its files' bytes). An assumption: Modal publishes no such price; the
    default is Amazon CloudFront's for the first 10 TB a month (:data:`freestems.cost.EGRESS_SOURCE`)."""

    @model_validator(mode="after")
    def _one_model(self) -> Settings:
        names = (self.variable("model"), self.variable("model_file"), self.variable("model_config_file"))
        check_model_choice(self.model, self.model_file, self.model_config_file, spelled=names)
        if self.models and self.model:
            raise ValueError(
                f"give {self.variable('models')} (several models) or {self.variable('model')} (one), not both"
            )
        if len(set(self.models)) < len(self.models):
            raise ValueError(f"{self.variable('models')}: a model is named twice")
        return self

    @model_validator(mode="after")
    def _device_only_needs_exports(self) -> Settings:
        if self.device_only and self.device_dir is None:
            raise ValueError(
                f"{self.variable('device_only')} needs {self.variable('device_dir')}: the folder of the "
                "`freestems export` outputs the page runs on the visitor's device"
            )
        if self.device_only and self.model_file is not None:
            raise ValueError(
                f"{self.variable('device_only')} serves exported models, not a checkpoint file: export it "
                f"(`freestems export --model-file F -o {self.variable('device_dir')}/NAME`) and name the "
                f"export with {self.variable('models')}=NAME instead of {self.variable('model_file')}"
            )
        return self

    @model_validator(mode="after")
    def _socket_outlives_a_key(self) -> Settings:
        if self.socket_lifetime <= self.challenge_ttl + self.upload_timeout:
            raise ValueError(
                f"{self.variable('socket_lifetime')} ({self.socket_lifetime:g} s) must exceed "
                f"{self.variable('challenge_ttl')} + {self.variable('upload_timeout')} "
                f"({self.challenge_ttl + self.upload_timeout:g} s): a key must have time to be used "
                "before its socket closes"
            )
        return self

    @model_validator(mode="after")
    def _keys_in_public(self) -> Settings:
        if self.auth == "none" and not self.is_loopback and not self.allow_public_noauth:
            raise ValueError(
                f"refusing to serve without session keys (FREESTEMS_AUTH=none) on {self.host}, which is not "
                "a loopback address: anyone who reaches it could use the compute. Listen on 127.0.0.1, or "
                "set FREESTEMS_ALLOW_PUBLIC_NOAUTH=1 (--allow-public-noauth) if that is really what you want"
            )
        return self

    # ----------------------------------------------------------------------------------------- derived

    @property
    def auth_required(self) -> bool:
        return self.auth == "pow"

    @property
    def served_models(self) -> tuple[str, ...]:
        """The catalog names (or presets) served: ``models``, else ``model``; empty with a model file only
        (then the file is the one model), and without any setting the catalog's default, which must be
        servable (:func:`~freestems.models.catalog.default_served_model`)."""
        if self.models:
            return self.models
        if self.model:
            return (self.model,)
        return () if self.model_file else (default_served_model(),)

    @property
    def model_memory_bytes(self) -> int | None:
        """The model memory budget in bytes; None: no limit."""
        return int(self.model_memory * 1_000_000) if self.model_memory else None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The Host names served: ``allowed_hosts``, or its default for the address listened on."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK_HOSTS if self.is_loopback else ("*",)


# --------------------------------------------------------------------------------------------- helpers


def _host_pattern(host: str) -> bool:
    """``*``, ``example.org``, ``*.example.org``, an IPv4 or IPv6 address: no scheme, port or path."""
    if host == "*":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    return bool(name) and not any(char in name for char in "*:/@?# ")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(raw: str) -> bool | None:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case), anything else -> None (the form
    parser's rule; settings use pydantic's, which accepts these and ``t/f/y/n``)."""
    lowered = raw.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None
