"""Proof-of-work solving speed: the altcha library's solver against freestems.client.pow, on one core and
on all of them.

Challenges come from the server's own ``ChallengeBook`` at the given settings (default: the server's
defaults, PBKDF2/SHA-256, cost 5000, counter 1000: the answer is a counter between 500 and 1000). Every
solver gets the *same* challenges, so their times compare directly; each answer is checked with the
server's verification. Also measured: the iterated SHA-256 variant at the same cost (the library loops in
Python with ``hashlib.new``; ours binds ``hashlib.sha256`` and spreads over processes).

    python bench/bench_pow.py                       # 6 challenges per solver
    python bench/bench_pow.py --challenges 20 --workers 4

Prints a table and writes bench/results/pow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import altcha

from freestems.client import pow
from freestems.service.challenges import ChallengeBook

RESULTS = Path(__file__).resolve().parent / "results"


def solvers(workers: int) -> dict[str, Callable[[dict], altcha.Solution]]:
    return {
        "altcha library, 1 core": lambda c: altcha.solve_challenge(altcha.Challenge.from_dict(c), timeout=0),
        "freestems, 1 core": lambda c: pow.solve(c, workers=1),
        f"freestems, {workers} cores (threads)": lambda c: pow.solve(c, workers=workers, processes=False),
        f"freestems, {workers} cores (processes)": lambda c: pow.solve(c, workers=workers, processes=True),
    }


def measure(algorithm: str, cost: int, counter: int, count: int, workers: int) -> list[dict]:
    book = ChallengeBook("bench secret", algorithm=algorithm, cost=cost, counter=counter, ttl=3600)
    challenges = [book.issue(f"c{i}") for i in range(count)]
    chosen = {
        name: solve
        for name, solve in solvers(workers).items()
        # the iterated SHA holds the GIL: threads would not run in parallel
        if not (algorithm.startswith("SHA") and "threads" in name)
    }
    # Interleaved (each challenge by every solver in turn), so that other load on the machine falls on
    # all solvers alike.
    seconds: dict[str, list[float]] = {name: [] for name in chosen}
    answers: dict[str, list[altcha.Solution]] = {name: [] for name in chosen}
    for challenge in challenges:
        for name, solve in chosen.items():
            began = time.perf_counter()
            answers[name].append(solve(challenge))
            seconds[name].append(time.perf_counter() - began)
    rows = []
    for name in chosen:
        rows.append(
            {
                "algorithm": algorithm,
                "cost": cost,
                "counter": counter,
                "solver": name,
                "challenges": count,
                "mean_s": statistics.mean(seconds[name]),
                "min_s": min(seconds[name]),
                "max_s": max(seconds[name]),
                "mean_counter": statistics.mean(answer.counter for answer in answers[name]),
            }
        )
        print(f"{algorithm:15} {name:38} {rows[-1]['mean_s']:7.3f} s/challenge", flush=True)
    # Deterministic challenges have one answer: every solver must have found it, and the server takes it.
    for i, challenge in enumerate(challenges):
        found = {(answer[i].counter, answer[i].derived_key) for answer in answers.values()}
        assert len(found) == 1, f"solvers disagree on challenge {i}: {found}"
        first = next(iter(answers.values()))[i]
        book.verify(f"c{i}", altcha.Payload(altcha.Challenge.from_dict(challenge), first).to_base64())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenges", type=int, default=6)
    parser.add_argument("--workers", type=int, default=pow.cores())
    parser.add_argument("--cost", type=int, default=5000)
    parser.add_argument("--counter", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for algorithm in ("PBKDF2/SHA-256", "SHA-256"):
        rows += measure(algorithm, args.cost, args.counter, args.challenges, args.workers)
    baseline = {row["algorithm"]: row["mean_s"] for row in rows if row["solver"] == "altcha library, 1 core"}
    print(f"\n{'algorithm':15} {'solver':38} {'mean s':>7} {'min':>6} {'max':>6} {'speed-up':>8}")
    for row in rows:
        speedup = baseline[row["algorithm"]] / row["mean_s"]
        print(
            f"{row['algorithm']:15} {row['solver']:38} {row['mean_s']:7.3f} {row['min_s']:6.3f} "
            f"{row['max_s']:6.3f} {speedup:7.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "cores_usable": pow.cores(), "platform": platform.platform()}
    (RESULTS / "pow.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'pow.json'}")


if __name__ == "__main__":
    main()
