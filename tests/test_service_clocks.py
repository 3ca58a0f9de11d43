"""The service's timers, driven by a fake clock: key expiry and tombstones, challenge expiry, rate windows.

``SessionRegistry``, ``ChallengeBook`` and ``SlidingWindow`` take a ``clock``; here it is a number the test
moves, so each deadline is checked on both sides of its edge without waiting (the end-to-end tests check
the same rules through a real server, in real time, only where a few seconds suffice).
"""

from __future__ import annotations

import asyncio
import time

import altcha
import pytest

from freestems.service.challenges import ChallengeBook
from freestems.service.errors import ServiceError
from freestems.service.limits import SlidingWindow
from freestems.service.sessions import SessionRegistry


class FakeClock:
    """A clock that only moves when told; it starts at the real time (ALTCHA's own expiry check reads it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def refused(call, *args) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call(*args)
    return caught.value


# ---------------------------------------------------------------------------------------------- sessions


def test_an_unused_key_lives_exactly_its_ttl():
    clock = FakeClock()
    registry = SessionRegistry(ttl=30.0, clock=clock)
    key, _ = registry.issue("1.2.3.4", "conn")
    clock.advance(30.0)  # at the edge: still alive
    assert registry.sweep() == [] and registry.has_live_key("conn")
    clock.advance(0.5)
    error = refused(registry.claim, key, "1.2.3.4")
    assert (error.status, error.code) == (401, "key_expired")
    assert not registry.has_live_key("conn")


def test_sweep_expires_keys_tells_their_socket_and_forgets_tombstones_later():
    clock = FakeClock()
    registry = SessionRegistry(ttl=30.0, clock=clock)
    mailbox = registry.connect("conn")
    key, _ = registry.issue("1.2.3.4", "conn")
    assert registry.sweep() == [] and len(registry) == 1
    clock.advance(31.0)
    assert [session.connection for session in registry.sweep()] == ["conn"]
    assert len(registry) == 0 and asyncio.run(mailbox.get())["code"] == "session_expired"
    assert refused(registry.claim, key, "1.2.3.4").code == "key_expired"  # the tombstone says why
    clock.advance(599.0)  # tombstones last max(ttl, 600 s)
    registry.sweep()
    assert refused(registry.claim, key, "1.2.3.4").code == "key_expired"
    clock.advance(1.5)
    registry.sweep()
    assert refused(registry.claim, key, "1.2.3.4").code == "key_invalid"


def test_a_claimed_key_does_not_expire_and_an_unclaimed_one_gets_a_second():
    clock = FakeClock()
    registry = SessionRegistry(ttl=30.0, clock=clock)
    key, _ = registry.issue("1.2.3.4", "conn")
    session = registry.claim(key, "1.2.3.4")
    clock.advance(100.0)  # an upload under way: the timer has stopped
    assert registry.sweep() == []
    registry.unclaim(session)  # refused before a job existed: usable again, for at least a second
    assert registry.claim(key, "1.2.3.4") is session
    registry.unclaim(session)
    clock.advance(1.5)
    assert refused(registry.claim, key, "1.2.3.4").code == "key_expired"


# ---------------------------------------------------------------------------------------------- challenges


def answer(challenge: dict) -> str:
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed, timeout=30)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


def small_book(clock: FakeClock) -> ChallengeBook:
    return ChallengeBook("secret", algorithm="SHA-256", cost=1, counter=8, ttl=120.0, clock=clock)


def test_a_challenge_answered_after_its_ttl_is_refused():
    clock = FakeClock()
    book = small_book(clock)
    payload = answer(book.issue("conn"))
    assert book.pending_expiry("conn") == clock.now + 120.0
    clock.advance(120.5)
    error = refused(book.verify, "conn", payload)
    assert (error.status, error.code) == (403, "challenge_expired")


def test_a_used_challenge_is_remembered_until_it_expires_then_pruned():
    clock = FakeClock()
    book = small_book(clock)
    payload = answer(book.issue("conn"))
    clock.advance(119.0)
    book.verify("conn", payload)
    assert refused(book.verify, "conn", payload).code == "replayed_solution"
    assert book.prune() == 0 and len(book) == 1
    book.issue("other")
    clock.advance(2.0)  # the used one has expired, the new pending one has not
    assert book.prune() == 1 and len(book) == 1
    clock.advance(120.0)
    assert book.prune() == 1 and len(book) == 0 and book.pending_expiry("other") is None


# ---------------------------------------------------------------------------------------------- windows


def test_the_window_refuses_the_event_over_the_limit_and_says_when_to_retry():
    clock = FakeClock()
    window = SlidingWindow(limit=2, window=60.0, clock=clock)
    window.hit("a")
    clock.advance(10.0)
    window.hit("a")
    window.hit("b")  # another address is counted apart
    clock.advance(20.0)
    error = refused(window.hit, "a")
    assert (error.status, error.code, error.retry_after) == (429, "rate_limited", 30)
    assert window.retry_after("a") == pytest.approx(30.0)
    clock.advance(30.0)  # the first event leaves the window
    assert window.retry_after("a") == 0.0
    window.hit("a")


def test_recorded_refusals_count_and_idle_addresses_are_forgotten():
    clock = FakeClock()
    window = SlidingWindow(limit=2, window=60.0, clock=clock)
    for _ in range(5):
        window.record("a")  # never raises; only the newest two are kept
    assert window.retry_after("a") == pytest.approx(60.0)
    window.hit("b")
    clock.advance(60.0)
    window.prune()
    assert len(window) == 0
