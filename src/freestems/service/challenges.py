"""Proof-of-work challenges (ALTCHA v2): issued per WebSocket connection, accepted once.

A client earns a session key by spending about a second of CPU on a challenge; the server spends one key
derivation to issue it and one HMAC to check the answer. That asymmetry is the whole protection: scripting
the service costs the scripter real compute per separation, and the per-address session rate limit caps
how fast anyone can earn keys.

We use ALTCHA's *deterministic* mode: the server picks the counter the client must reach (between half of
the challenge's largest counter and all of it), so the work is predictable, and signs the expected derived
key, so verifying an answer is an HMAC instead of a derivation.

**Work that scales with the budget.** A key is earned for a budget of compute (model-seconds,
:mod:`.pricing`), and its challenge's largest counter is linear in that budget: ``pow_counter`` for the
default budget, twice that for twice the budget (:meth:`~.pricing.Pricing.counter`). The budget is in the
challenge's signed ``data`` and in the server's record of the pending challenge; the verified answer yields
it (:meth:`ChallengeBook.verify`), and the key is issued for it. A challenge with more work than the
default gets as many times ``ttl`` to be solved in.

What the altcha library does not do, this module does:

- **binding**: a challenge is issued to one connection (its id is in the signed ``data``, and the connection
  keeps the signature of its pending challenge); an answer on another connection is refused;
- **single use**: the library accepts a valid payload any number of times. Used challenge signatures are
  remembered until the challenge expires (after which the library refuses it anyway), so memory is bounded
  by the challenges issued in one TTL, which the session rate limit bounds in turn;
- **expiry to the sub-second**: the library's ``expiresAt`` has whole seconds; we also keep the exact time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altcha

from .errors import ServiceError, forbidden

MAX_PAYLOAD_CHARS = 8192
"""A real payload is ~600 characters; anything much larger is not one."""


@dataclass(frozen=True)
class _Pending:
    signature: str
    expires_at: float
    budget: float | None = None


class ChallengeBook:
    """Issues challenges to connections and checks answers. Used from the event loop only (not locked)."""

    def __init__(
        self,
        secret: str,
        *,
        algorithm: str = "PBKDF2/SHA-256",
        cost: int = 5000,
        counter: int = 1000,
        ttl: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret.encode()
        # A separate secret signs the expected derived key (as ALTCHA recommends), derived from the main one.
        self._key_secret = hmac.new(self._secret, b"freestems altcha key signature", hashlib.sha256).digest()
        self.algorithm = algorithm
        self.cost = cost
        self.counter = counter
        self.ttl = ttl
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._used: dict[str, float] = {}  # challenge signature -> its expiry

    def issue(
        self, connection: str, *, counter: int | None = None, budget: float | None = None
    ) -> dict[str, Any]:
        """A new challenge (as JSON-ready dict) for ``connection``; it replaces any pending one.

        ``counter``: its largest counter (default ``counter``, the work of a default key); ``budget``: the
        budget the key it earns will have (None: the default), kept with it and signed in its data."""
        challenge, pending = self._create(connection, counter, budget)
        self._pending[connection] = pending
        return challenge

    async def issue_async(
        self, connection: str, *, counter: int | None = None, budget: float | None = None
    ) -> dict[str, Any]:
        """:meth:`issue`, with the key derivation (~1.5 ms at the default cost) in a worker thread, so that
        a burst of new connections does not stall the event loop (hashlib releases the GIL)."""
        challenge, pending = await asyncio.to_thread(self._create, connection, counter, budget)
        self._pending[connection] = pending
        return challenge

    def _create(
        self, connection: str, counter: int | None = None, budget: float | None = None
    ) -> tuple[dict[str, Any], _Pending]:
        """Make and sign a challenge (the server's one derivation); touches no shared state."""
        most = counter or self.counter
        expires_at = self._clock() + self.ttl * max(1.0, most / self.counter)
        data: dict[str, Any] = {"conn": connection}
        if budget is not None:
            data["budget"] = round(budget, 3)
        challenge = altcha.create_challenge(
            algorithm=self.algorithm,
            cost=self.cost,
            counter=secrets.randbelow(most - most // 2 + 1) + most // 2,
            expires_at=math.ceil(expires_at),
            data=data,
            hmac_secret=self._secret,
            hmac_key_secret=self._key_secret,
        )
        assert challenge.signature is not None
        return challenge.to_dict(), _Pending(challenge.signature, expires_at, budget)

    def verify(self, connection: str, payload: object) -> float | None:
        """Accept ``payload`` (base64 ALTCHA payload) as the answer of ``connection``'s challenge, once;
        returns the budget the challenge was issued for (None: the default).

        Raises:
            ServiceError: 403 with code ``invalid_payload``, ``replayed_solution``, ``challenge_expired``,
                ``invalid_signature``, ``foreign_challenge``, ``no_challenge`` or ``invalid_solution``.
        """
        parsed = _parse(payload)
        signature = parsed.challenge.signature or ""
        now = self._clock()
        if signature in self._used:
            raise forbidden(
                "replayed_solution", "this challenge was already solved and used; ask for a new challenge"
            )
        try:
            result = altcha.verify_solution(parsed, self._secret, hmac_key_secret=self._key_secret)
        except (ValueError, TypeError):  # odd field types that got past parsing
            raise _malformed() from None
        if result.expired:
            raise forbidden("challenge_expired", "the challenge expired; ask for a new challenge")
        if result.invalid_signature:
            raise forbidden("invalid_signature", "this challenge was not issued by this server")
        pending = self._pending.get(connection)
        data = parsed.challenge.parameters.data or {}
        if (
            pending is None
            or not hmac.compare_digest(pending.signature, signature)
            or data.get("conn") != connection
        ):
            if pending is None and data.get("conn") == connection:
                raise forbidden("no_challenge", "no challenge is pending on this connection; ask for one")
            raise forbidden(
                "foreign_challenge", "this challenge was issued to another connection; solve your own"
            )
        if pending.expires_at < now:
            raise forbidden("challenge_expired", "the challenge expired; ask for a new challenge")
        if not result.verified:
            raise forbidden("invalid_solution", "the solution is wrong; solve the challenge again")
        del self._pending[connection]
        self._used[signature] = pending.expires_at
        return pending.budget

    def pending_expiry(self, connection: str) -> float | None:
        """When ``connection``'s pending challenge expires (clock time), or None."""
        pending = self._pending.get(connection)
        return None if pending is None else pending.expires_at

    def forget(self, connection: str) -> None:
        """Drop a closed connection's pending challenge."""
        self._pending.pop(connection, None)

    def prune(self) -> int:
        """Forget used and pending challenges that have expired; returns how many were dropped."""
        now = self._clock()
        used = [signature for signature, expiry in self._used.items() if expiry < now]
        for signature in used:
            del self._used[signature]
        pending = [connection for connection, item in self._pending.items() if item.expires_at < now]
        for connection in pending:
            del self._pending[connection]
        return len(used) + len(pending)

    def __len__(self) -> int:
        return len(self._used) + len(self._pending)


def _parse(payload: object) -> altcha.Payload:
    if not isinstance(payload, str) or not payload or len(payload) > MAX_PAYLOAD_CHARS:
        raise _malformed()
    try:
        data = json.loads(base64.b64decode(payload, validate=True))
        parsed = altcha.Payload.from_dict(data)
        if not isinstance(parsed.challenge.signature, str) or not isinstance(
            parsed.challenge.parameters.data or {}, dict
        ):
            raise ValueError("bad types")
        return parsed
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise _malformed() from None


def _malformed() -> ServiceError:
    return forbidden(
        "invalid_payload",
        "the solution is not an ALTCHA payload: send base64 of altcha.Payload(challenge, solution)",
    )
