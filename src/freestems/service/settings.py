"""Every knob of the service in one frozen object, read from ``FREESTEMS_*`` environment variables.

Nothing in the service reads the environment itself: :meth:`Settings.from_env` does, once, and everything
else gets the object. A bad value fails at startup with a message naming the variable, instead of surfacing
later as a strange request error.

``FREESTEMS_CACHE`` already names the model weights cache (see :mod:`freestems.models.download`), so the
result cache is switched with ``FREESTEMS_RESULT_CACHE``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freestems.cost import DEFAULT_GPU_PRICES, parse_prices

from .errors import ServiceError

PREFIX = "FREESTEMS_"
AUTH_MODES = ("pow", "none")
POW_ALGORITHMS = ("PBKDF2/SHA-256", "PBKDF2/SHA-384", "PBKDF2/SHA-512", "SHA-256", "SHA-384", "SHA-512")


class SettingsError(ServiceError, ValueError):
    """A setting has an invalid value; the message names the environment variable (or option) and why.

    Raised at startup only; a ``ServiceError`` like every error of this layer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(500, "invalid_settings", message)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/freestems``, or ``~/.local/share/freestems``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "freestems"


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field ``x`` is read from ``FREESTEMS_X`` (upper case)."""

    # -- network --
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback exposes the service."""
    port: int = 8000
    trust_proxy: bool = False
    """Take the client address from ``X-Forwarded-For`` (its last entry, added by the proxy). Only behind a
    reverse proxy that sets it: otherwise clients could pick their own address and dodge per-IP limits."""
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to open the session WebSocket (``https://example.org``). Empty: same origin only (the
    Origin's host:port must equal the Host header). ``*`` allows any site: unsafe."""

    # -- storage --
    data_dir: Path = field(default_factory=default_data_dir)
    """Job database, uploads being processed, results."""
    result_ttl: float = 3600.0
    """Seconds a result (and its job record) is kept after the job ends."""
    result_cache: bool = True
    """Serve a stored result for the same audio, model and options instead of separating again."""
    sweep_interval: float = 30.0
    """Seconds between sweeps of expired results, sessions and challenges."""
    reattach_grace: float = 30.0
    """Seconds an unfinished job is kept once nothing follows it (its WebSocket closed, no poll): a reloaded
    page or a reconnecting client can follow it again by id and token; after that it is cancelled."""

    # -- protection --
    auth: str = "pow"
    """``pow``: a session key earned by proof of work is required; ``none``: no keys (private installs)."""
    allow_public_noauth: bool = False
    """Allow ``auth=none`` on a non-loopback address. Anyone who can reach it can then use the compute."""
    hmac_secret: str = ""
    """Signs challenges. Empty: a random secret per process (challenges do not survive a restart)."""
    pow_algorithm: str = "PBKDF2/SHA-256"
    """ALTCHA v2 key derivation; PBKDF2 runs natively in browsers (WebCrypto)."""
    pow_cost: int = 5000
    """Cost of one derivation (PBKDF2 iterations). The server pays one derivation per challenge."""
    pow_counter: int = 1000
    """Work per challenge: the client must find a counter drawn between half this and this, trying each one
    (one derivation each). 5000 iterations x ~750 tries is ~1 s of one browser core."""
    challenge_ttl: float = 120.0
    """Seconds a challenge can be solved in."""
    session_ttl: float = 900.0
    """Seconds a session key can be used in (from issue to the start of its upload)."""

    # -- limits --
    max_upload_mb: float = 100.0
    """Largest upload, in MB (10^6 bytes). Checked while streaming."""
    max_duration: float = 1200.0
    """Longest audio, in seconds (decoded length)."""
    max_shifts: int = 5
    """Largest ``shifts`` a request may ask for (each shift is one more full pass of the model)."""
    upload_timeout: float = 600.0
    """Seconds an upload may take, so that a trickling client cannot hold a slot forever."""
    sessions_per_minute: int = 10
    """New sessions (challenges) per client address per minute."""
    jobs_per_ip: int = 2
    """Queued plus running jobs per client address."""
    queue_capacity: int = 32
    """Queued plus running jobs in total; beyond it new jobs get 429 and are not stored."""

    # -- model and compute --
    model: str | None = None
    """Catalog model name (default: the catalog's default)."""
    model_file: Path | None = None
    model_config: Path | None = None
    workers: int = 1
    """Jobs run at once by the in-process executor (each one keeps a CPU or GPU busy)."""
    threads: int = 0
    """Torch threads for the in-process executor; 0 keeps torch's default (one per core)."""
    device: str = "auto"

    # -- the Modal deployment (read where ``modal deploy`` runs; see freestems.deploy.modal_app) --
    modal_app_name: str = "freestems"
    """Name of the deployed Modal app (its usage log is the Dict ``<name>-usage``)."""
    modal_gpu: str = "L4"
    """GPU type of the separation class, as Modal names it (``T4``, ``L4``, ``A10G``, ``L40S``, ``H100``...).
    L4: a light model on a cheap, modern GPU (bf16, fp16 tensor cores, 24 GB); compare with
    ``freestems cost`` after a few songs on another type."""
    modal_region: tuple[str, ...] = ()
    """Regions the GPU class may run in (comma list); empty: anywhere (the fastest to find a GPU)."""
    modal_scaledown_window: int = 15
    """Seconds an idle GPU container stays up. Idle seconds are billed: short, since a restore from the
    memory snapshot is quick."""
    modal_max_containers: int = 10
    """Most GPU containers at once (bounds the spend); also how many jobs the web tier runs at once."""
    modal_timeout: int = 900
    """Seconds one separation may take on the GPU before Modal stops it."""
    modal_cpu: float = 4.0
    """CPU cores of a GPU container: decoding and the MP3 encoders (one per stem) run there."""
    modal_gpu_snapshot: bool = False
    """Also snapshot GPU memory (Modal's experimental GPU snapshots): the model is on the GPU and warm
    right after a restore. Off: the snapshot holds the model on the CPU and it moves to the GPU after."""
    modal_precision: str = "auto"
    """Precision on the GPU: ``auto`` (fp16, else bf16, if a probe shows the output stays faithful; else
    fp32), ``fp32``, ``fp16`` or ``bf16``."""
    modal_secret_name: str = "freestems"
    """The ``modal.Secret`` holding ``FREESTEMS_HMAC_SECRET`` for the web tier."""
    modal_web_max_inputs: int = 500
    """Requests and WebSockets one web container holds at once (``@modal.concurrent``)."""
    modal_torch: str = "torch==2.13.0"
    """The torch requirement of the image (PyPI's Linux wheels are CUDA builds)."""
    modal_torch_index: str = ""
    """A package index for torch (e.g. ``https://download.pytorch.org/whl/cu128``); empty: PyPI."""
    gpu_prices: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GPU_PRICES))
    """Dollars per GPU-second by GPU type. ``FREESTEMS_GPU_PRICES="L4=0.000222,T4=0.000164"`` replaces
    those entries and keeps the other defaults."""

    def __post_init__(self) -> None:
        self._check()

    # ----------------------------------------------------------------------------------------- reading

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``FREESTEMS_*`` variables; ``overrides`` (already typed) win over the environment.

        Raises:
            SettingsError: a value does not parse or is out of range; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            name = PREFIX + item.name.upper()
            if item.name == "result_cache":
                name = PREFIX + "RESULT_CACHE"
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[item.name] = _parse(name, raw.strip(), item.type)
        unknown = set(overrides) - {item.name for item in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------- derived

    @property
    def auth_required(self) -> bool:
        return self.auth == "pow"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    # ----------------------------------------------------------------------------------------- checks

    def _check(self) -> None:
        def need(condition: bool, name: str, message: str) -> None:
            if not condition:
                raise SettingsError(f"{PREFIX}{name.upper()}: {message}")

        need(self.auth in AUTH_MODES, "auth", f"must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        need(1 <= self.port <= 65535 or self.port == 0, "port", f"must be a TCP port, got {self.port}")
        need(
            self.pow_algorithm in POW_ALGORITHMS,
            "pow_algorithm",
            f"must be one of {', '.join(POW_ALGORITHMS)}, got {self.pow_algorithm!r}",
        )
        for name in ("pow_cost", "pow_counter", "workers", "max_shifts", "queue_capacity", "jobs_per_ip"):
            need(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        need(self.sessions_per_minute >= 1, "sessions_per_minute", "must be at least 1")
        need(self.threads >= 0, "threads", f"must be 0 (torch's default) or more, got {self.threads}")
        for name in (
            "challenge_ttl",
            "session_ttl",
            "result_ttl",
            "sweep_interval",
            "reattach_grace",
            "max_upload_mb",
            "max_duration",
            "upload_timeout",
        ):
            need(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        need(self.device in ("auto", "cpu", "cuda", "mps"), "device", "must be auto, cpu, cuda or mps")
        need(
            not (self.model and self.model_file),
            "model",
            "give either FREESTEMS_MODEL or FREESTEMS_MODEL_FILE (with FREESTEMS_MODEL_CONFIG), not both",
        )
        need(
            self.model_config is None or self.model_file is not None,
            "model_config",
            "needs FREESTEMS_MODEL_FILE",
        )
        for origin in self.allowed_origins:
            need(
                origin == "*" or "://" in origin,
                "allowed_origins",
                f"{origin!r} is not an origin; write it as scheme://host[:port], e.g. https://example.org",
            )
        need(
            2 <= self.modal_scaledown_window <= 3600,
            "modal_scaledown_window",
            f"must be between 2 and 3600 seconds (Modal's range), got {self.modal_scaledown_window}",
        )
        for name in ("modal_max_containers", "modal_web_max_inputs"):
            need(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        need(
            10 <= self.modal_timeout <= 86400,
            "modal_timeout",
            f"must be between 10 and 86400 seconds, got {self.modal_timeout}",
        )
        need(self.modal_cpu > 0, "modal_cpu", f"must be positive, got {self.modal_cpu}")
        need(bool(self.modal_gpu.strip()), "modal_gpu", "must name a GPU type, e.g. L4")
        need(
            self.modal_precision in ("auto", "fp32", "fp16", "bf16"),
            "modal_precision",
            f"must be auto, fp32, fp16 or bf16, got {self.modal_precision!r}",
        )
        for name in ("modal_app_name", "modal_secret_name"):
            need(bool(getattr(self, name).strip()), name, "must not be empty")
        for gpu, price in self.gpu_prices.items():
            need(price >= 0, "gpu_prices", f"the price of {gpu} must not be negative, got {price}")
        if self.auth == "none" and not self.is_loopback and not self.allow_public_noauth:
            raise SettingsError(
                f"refusing to serve without session keys (FREESTEMS_AUTH=none) on {self.host}, which is not "
                "a loopback address: anyone who reaches it could use the compute. Listen on 127.0.0.1, or "
                "set FREESTEMS_ALLOW_PUBLIC_NOAUTH=1 (--allow-public-noauth) if that is really what you want"
            )


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
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (any case), anything else -> None."""
    lowered = raw.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _parse(name: str, raw: str, kind: Any) -> Any:
    """Convert a variable's text to the field's type (annotations are strings: ``from __future__``)."""
    kind = str(kind)
    try:
        if kind == "bool":
            value = parse_bool(raw)
            if value is None:
                raise ValueError("expected on/off, true/false, yes/no or 1/0")
            return value
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
        if kind.startswith("dict"):
            return parse_prices(raw, DEFAULT_GPU_PRICES)
        if kind.startswith("Path"):
            return Path(raw).expanduser()
        return raw
    except ValueError as error:  # PriceError is one
        raise SettingsError(f"{name}={raw!r}: {error}") from None
