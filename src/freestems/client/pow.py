"""Solving the server's proof of work (ALTCHA v2) at native speed on every core.

The server sends an ALTCHA v2 challenge: find the ``counter`` whose derived key, ``KDF(salt, nonce +
uint32be(counter))``, starts with ``keyPrefix``. In the server's deterministic mode the prefix is half of
one specific key, so exactly one counter (between half of ``FREESTEMS_POW_COUNTER`` and all of it)
answers, and the work is a fixed number of key derivations (~750 PBKDF2 derivations of 5000 iterations
at the defaults).

What this module adds to ``altcha.solve_challenge``:

- **native derivations.** PBKDF2 runs in ``hashlib.pbkdf2_hmac`` (OpenSSL), as in the library; scrypt in
  ``hashlib.scrypt``; the iterated SHA variant (``SHA-256``..., ``cost`` rounds of a hash of the previous
  digest) calls the bound ``hashlib.sha256`` constructor per round instead of the library's
  ``hashlib.new(name, ...)``, which looks the name up on every round (about 1.5x faster; the rounds
  themselves are OpenSSL);
- **every core.** Worker *k* of *n* tries counters ``k, k + n, k + 2n, ...``, so the low counters, where the
  answer is, are covered first and *n* workers find it about *n* times sooner. PBKDF2, scrypt and Argon2
  release the GIL inside their C code, so their workers are threads (nothing to start); the iterated SHA
  rounds hold the GIL between calls, so its workers are processes. A challenge that is solved within
  :data:`INLINE_SECONDS` on the calling thread (the trivial ones of tests and private servers) never
  starts a worker.

:func:`solve` returns an ``altcha.Solution``; :func:`payload` the base64 answer the server's ``solution``
message carries. The answer is checked by the server's own ``altcha.verify_solution``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import altcha

from .errors import RemoteError

INLINE_SECONDS = 0.05
"""How long the calling thread tries counters alone before it hands the rest to all cores."""
MAX_COUNTER = 0xFFFFFFFF
CHECK_EVERY = 16
"""A worker looks at the stop flag and the clock after this many tries (~16 ms at the default cost)."""
_SHA = {"SHA-384": "sha384", "SHA-512": "sha512"}
_PBKDF2 = {"PBKDF2/SHA-384": "sha384", "PBKDF2/SHA-512": "sha512"}

Derive = Callable[[bytes], bytes]
"""password (nonce + counter) -> derived key"""


def cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def challenge_of(challenge: Mapping[str, Any] | altcha.Challenge) -> altcha.Challenge:
    """The challenge of a ``challenge`` message (its ``challenge`` field), or one already parsed."""
    if isinstance(challenge, altcha.Challenge):
        return challenge
    try:
        return altcha.Challenge.from_dict(dict(challenge))
    except (KeyError, TypeError, AttributeError) as error:
        raise RemoteError(
            None, "bad_challenge", f"the server sent a challenge this client cannot read: {error}"
        ) from None


def deriver(parameters: altcha.ChallengeParameters) -> tuple[Derive, bool]:
    """The native key derivation of ``parameters.algorithm``, and whether it releases the GIL (threads
    then run it in parallel).

    The choice mirrors the altcha library's (what the server verifies with): a name starting with PBKDF2
    (any case) is PBKDF2, with SHA-384/512 only for exactly ``PBKDF2/SHA-384``/``-512``, else SHA-256;
    ``ARGON2ID`` and ``SCRYPT`` are those; anything else is the iterated SHA, SHA-384/512 for exactly
    ``SHA-384``/``SHA-512``, else SHA-256. Argon2id (and anything new) runs the library's own function.
    """
    algorithm = parameters.algorithm.upper()
    salt = bytes.fromhex(parameters.salt)
    length = parameters.key_length
    cost = int(parameters.cost)
    if algorithm.startswith("PBKDF2"):
        digest = _PBKDF2.get(parameters.algorithm, "sha256")
        pbkdf2 = functools.partial(hashlib.pbkdf2_hmac, digest, salt=salt, iterations=max(1, cost))
        return lambda password: pbkdf2(password, dklen=length), True
    if algorithm not in ("ARGON2ID", "SCRYPT"):
        constructor = getattr(hashlib, _SHA.get(parameters.algorithm, "sha256"))
        return functools.partial(_iterated_sha, constructor, salt, max(1, cost), length), False
    if algorithm == "SCRYPT":
        n, r, p = cost, parameters.memory_cost or 8, parameters.parallelism or 1
        return (
            lambda password: hashlib.scrypt(
                password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * n * r
            )
        ), True
    return (lambda password: altcha.derive_key_argon2id(parameters, salt, password)), True


class _Hash(Protocol):
    """What ``_iterated_sha`` needs of a ``hashlib`` hash object."""

    def digest(self) -> bytes: ...


def _iterated_sha(
    hash_constructor: Callable[[bytes], _Hash], salt: bytes, cost: int, length: int, password: bytes
) -> bytes:
    """ALTCHA's SHA derivation: hash(salt + password), then ``cost - 1`` more hashes of the digest."""
    digest = hash_constructor(salt + password).digest()
    for _ in range(cost - 1):
        digest = hash_constructor(digest).digest()
    return digest[:length]


def _matcher(parameters: altcha.ChallengeParameters) -> Callable[[bytes], bool]:
    prefix = parameters.key_prefix.lower()
    if len(prefix) % 2 == 0:
        raw = bytes.fromhex(prefix)
        return lambda key: key.startswith(raw)
    return lambda key: key.hex().startswith(prefix)


def search(
    parameters: altcha.ChallengeParameters,
    start: int,
    step: int,
    stop: Callable[[], bool],
    deadline: float,
    *,
    limit: int = MAX_COUNTER,
) -> tuple[int, bytes] | None:
    """Try counters ``start, start + step, ...`` up to ``limit``; the first match, or None when ``stop()``
    says so, the deadline (``time.monotonic()``) passes or the range ends."""
    derive, _ = deriver(parameters)
    matches = _matcher(parameters)
    nonce = bytes.fromhex(parameters.nonce)
    pack = struct.Struct(">I").pack
    for tries, counter in enumerate(range(start, limit + 1, step), start=1):
        key = derive(nonce + pack(counter))
        if matches(key):
            return counter, key
        if tries % CHECK_EVERY == 0 and (stop() or time.monotonic() > deadline):
            return None
    return None


def solve(
    challenge: Mapping[str, Any] | altcha.Challenge,
    *,
    workers: int | None = None,
    timeout: float = 300.0,
    inline_seconds: float = INLINE_SECONDS,
    processes: bool | None = None,
) -> altcha.Solution:
    """Find the counter that answers ``challenge``, on ``workers`` cores (default: all of them).

    ``timeout`` bounds the search (the challenge's own expiry bounds it too). ``processes`` forces workers
    to be processes (True) or threads (False); by default threads for the GIL-free derivations, processes
    for the iterated SHA. ``inline_seconds=0`` goes straight to the workers.

    Raises:
        RemoteError: code ``pow_timeout`` when no answer was found in time.
    """
    parsed = challenge_of(challenge)
    parameters = parsed.parameters
    began = time.monotonic()
    deadline = began + timeout
    if isinstance(parameters.expires_at, int | float) and parameters.expires_at:
        deadline = min(deadline, began + parameters.expires_at - time.time())
    count = workers or cores()
    found: tuple[int, bytes] | None = None
    first = 0
    if inline_seconds > 0 or count == 1:
        # Cheap challenges are over before a worker could start; also the one-core path.
        inline_deadline = deadline if count == 1 else min(deadline, began + inline_seconds)
        found, first = _inline(parameters, inline_deadline)
    if found is None and count > 1 and time.monotonic() < deadline:
        _, gil_free = deriver(parameters)
        use_processes = (not gil_free) if processes is None else processes
        run = _in_processes if use_processes else _in_threads
        found = run(parameters, first, count, deadline)
    if found is None:
        raise RemoteError(
            None,
            "pow_timeout",
            f"the proof of work ({parameters.algorithm}, cost {parameters.cost}) was not solved in "
            f"{time.monotonic() - began:.0f} s (the challenge's expiry or the timeout came first)",
        )
    counter, key = found
    return altcha.Solution(
        counter=counter, derived_key=key.hex(), time=round((time.monotonic() - began) * 1000)
    )


def payload(challenge: Mapping[str, Any] | altcha.Challenge, **options: Any) -> str:
    """The base64 ``altcha.Payload`` answering ``challenge``: what the ``solution`` message carries."""
    parsed = challenge_of(challenge)
    return altcha.Payload(parsed, solve(parsed, **options)).to_base64()


def _inline(parameters: altcha.ChallengeParameters, deadline: float) -> tuple[tuple[int, bytes] | None, int]:
    """Search on this thread until the deadline; the match, or None and the first counter not yet tried."""
    derive, _ = deriver(parameters)
    matches = _matcher(parameters)
    nonce = bytes.fromhex(parameters.nonce)
    pack = struct.Struct(">I").pack
    counter = 0
    while counter <= MAX_COUNTER:
        key = derive(nonce + pack(counter))
        if matches(key):
            return (counter, key), counter
        counter += 1
        if time.monotonic() > deadline:
            break
    return None, counter


def _in_threads(
    parameters: altcha.ChallengeParameters, first: int, count: int, deadline: float
) -> tuple[int, bytes] | None:
    stop = threading.Event()
    results: list[tuple[int, bytes]] = []

    def work(offset: int) -> None:
        found = search(parameters, first + offset, count, stop.is_set, deadline)
        if found is not None:
            results.append(found)
            stop.set()

    threads = [threading.Thread(target=work, args=(k,), name=f"pow-{k}", daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return min(results) if results else None


def _in_processes(
    parameters: altcha.ChallengeParameters, first: int, count: int, deadline: float
) -> tuple[int, bytes] | None:
    """Workers as ``python -m freestems.client.pow`` child processes, each told its share on stdin and
    answering one JSON line. Children of their own (not multiprocessing) so that nothing of the calling
    program is imported again in them, whatever its main module does; the first answer ends the others."""
    package_root = str(Path(__file__).resolve().parents[2])  # the same freestems as this one
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
    seconds = max(0.0, deadline - time.monotonic())
    procs: list[subprocess.Popen[bytes]] = []
    found: tuple[int, bytes] | None = None
    with selectors.DefaultSelector() as selector:
        try:
            for k in range(count):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "freestems.client.pow"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
                procs.append(proc)
                share = {
                    "parameters": parameters.to_dict(),
                    "start": first + k,
                    "step": count,
                    "seconds": seconds,
                }
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(share).encode())
                proc.stdin.close()
                selector.register(proc.stdout, selectors.EVENT_READ)
            waiting = count
            while waiting and found is None and time.monotonic() < deadline + 5:
                for ready, _ in selector.select(timeout=0.5):
                    line = ready.fileobj.readline()  # type: ignore[union-attr]
                    selector.unregister(ready.fileobj)
                    waiting -= 1
                    answer = json.loads(line) if line.strip() else None
                    if answer is not None:
                        found = int(answer["counter"]), bytes.fromhex(answer["key"])
                        break
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
    return found


def _worker_main() -> None:
    """One worker process: read its share from stdin, search, print the match (or null)."""
    share = json.loads(sys.stdin.read())
    deadline = time.monotonic() + float(share["seconds"])
    parameters = altcha.ChallengeParameters.from_dict(share["parameters"])
    found = search(parameters, int(share["start"]), int(share["step"]), lambda: False, deadline)
    answer = None if found is None else {"counter": found[0], "key": found[1].hex()}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _worker_main()
