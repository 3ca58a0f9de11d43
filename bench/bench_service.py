"""Service load benchmark: session handshakes per second, idle WebSockets held, latency under that load.

Starts ``freestems serve``'s app in a fresh process on 127.0.0.1 (a tiny seeded model: no phase here runs
a real separation's worth of compute) and measures, each phase bounded in count and time:

1. the server's cost of one challenge at the *default* proof-of-work settings (issue + verify, in-process),
   and what one session costs a client at those settings (Python's PBKDF2, one core);
2. handshakes per second: connect, challenge, solution, key, close - with a trivial proof of work, so the
   number is the server's protocol overhead, not the client's work (add phase 1's issue cost per handshake
   for the default settings);
3. idle WebSockets: up to ``--sockets`` connections that each hold a key, and the server's RSS growth;
4. latency of ``GET /health`` and ``GET /jobs/{id}`` without and with those sockets open.

    python bench/bench_service.py                          # 300 handshakes, 1000 idle sockets
    python bench/bench_service.py --handshakes 1000 --sockets 5000 --seconds 120

Prints a table and writes bench/results/service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TINY_DIMS = [4, 8, 16, 24]  # the release architecture with a few channels: loads in milliseconds


# ---------------------------------------------------------------------------------------------- server


def serve(port: int, data_dir: str) -> None:
    """Internal mode: run the service in this process (a trivial proof of work, generous limits)."""
    import torch

    from freestems.executors import LocalExecutor
    from freestems.models import CATALOG, DEFAULT_MODEL, LoadedModel, ModelSpec, build_model
    from freestems.service import Settings
    from freestems.service.jobs import Paths
    from freestems.service.server import serve as run

    torch.manual_seed(0)
    base = CATALOG[DEFAULT_MODEL]
    config = {**base.config, "dims": TINY_DIMS, "conv_depths": [2, 1, 1], "num_dplayer": 2}
    spec = ModelSpec("tiny", config, tuple(base.sources), segment=44100 * 2)
    model = LoadedModel(build_model(spec), "tiny", spec.sources, spec.segment, normalize=False)
    settings = Settings(
        port=port,
        data_dir=Path(data_dir),
        hmac_secret="bench",
        pow_algorithm="SHA-256",
        pow_cost=1,
        pow_counter=1,
        challenge_ttl=600,
        session_ttl=3600,
        sessions_per_minute=10**9,
        sweep_interval=3600,
    )
    executor = LocalExecutor(lambda: model, Paths(settings.data_dir).work, threads=1)
    run(settings, executor, access_log=False, log_level="warning", backlog=4096)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- phases


def challenge_costs(samples: int, solves: int) -> dict:
    """Phase 1: server cost per challenge at the default settings, and a client's solve time."""
    import altcha

    from freestems.service import Settings
    from freestems.service.challenges import ChallengeBook

    defaults = Settings(data_dir=Path(tempfile.gettempdir()))
    book = ChallengeBook(
        "bench", algorithm=defaults.pow_algorithm, cost=defaults.pow_cost, counter=defaults.pow_counter
    )
    started = time.perf_counter()
    issued = [book.issue(f"c{i}") for i in range(samples)]
    issue_ms = (time.perf_counter() - started) / samples * 1000

    # Verification does not depend on the counter (the HMAC fast path): time it on cheap-to-solve ones.
    cheap = ChallengeBook("bench", algorithm=defaults.pow_algorithm, cost=defaults.pow_cost, counter=1)
    verify_ms = []
    for i in range(samples):
        challenge = altcha.Challenge.from_dict(cheap.issue(f"v{i}"))
        payload = altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()
        clock = time.perf_counter()
        cheap.verify(f"v{i}", payload)
        verify_ms.append((time.perf_counter() - clock) * 1000)
    solve_s = []
    for message in issued[:solves]:
        clock = time.perf_counter()
        solution = altcha.solve_challenge(altcha.Challenge.from_dict(message))
        solve_s.append(time.perf_counter() - clock)
        assert solution is not None
    return {
        "algorithm": defaults.pow_algorithm,
        "cost": defaults.pow_cost,
        "counter_max": defaults.pow_counter,
        "issue_ms": round(issue_ms, 3),
        "verify_ms": round(statistics.median(verify_ms), 4),
        "client_solve_s_median": round(statistics.median(solve_s), 2),
        "client_solves": len(solve_s),
    }


async def handshake(url: str, origin: str, keep: bool = False):
    import altcha
    from websockets.asyncio.client import connect

    ws = await connect(url, origin=origin, open_timeout=60, ping_interval=None, close_timeout=5)
    message = json.loads(await ws.recv())
    challenge = altcha.Challenge.from_dict(message["challenge"])
    solution = altcha.solve_challenge(challenge)
    payload = altcha.Payload(challenge, solution).to_base64()
    await ws.send(json.dumps({"type": "solution", "payload": payload}))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "session", reply
    if keep:
        return ws, reply["key"]
    await ws.close()
    return None


async def handshakes(url: str, origin: str, total: int, concurrency: int, seconds: float) -> dict:
    """Phase 2: complete handshakes per second."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for _ in counter:
            if time.monotonic() > deadline:
                return
            clock = time.perf_counter()
            try:
                await handshake(url, origin)
                latencies.append(time.perf_counter() - clock)
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "completed": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
        "per_second": round(len(latencies) / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "latency_ms_p95": round(_percentile(latencies, 95) * 1000, 1) if latencies else None,
    }


async def idle_sockets(url: str, origin: str, count: int, seconds: float, pid: int) -> tuple[dict, list]:
    """Phase 3: open ``count`` keyed, idle sockets (in batches) and measure the server's RSS growth."""
    before = rss_mb(pid)
    held: list = []
    errors = 0
    deadline = time.monotonic() + seconds
    batch = 50
    while len(held) < count and time.monotonic() < deadline:
        results = await asyncio.gather(
            *(handshake(url, origin, keep=True) for _ in range(min(batch, count - len(held)))),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
            else:
                held.append(result)
        if errors > count // 10 + 10:
            break
    await asyncio.sleep(1.0)
    after = rss_mb(pid)
    per_socket_kb = (after - before) * 1024 / len(held) if held else None
    return {
        "requested": count,
        "held": len(held),
        "errors": errors,
        "server_rss_mb_before": round(before, 1),
        "server_rss_mb_after": round(after, 1),
        "kb_per_socket": round(per_socket_kb, 1) if per_socket_kb is not None else None,
    }, held


def latencies(base: str, job: dict, requests: int) -> dict:
    """Phase 4: sequential GET /health and GET /jobs/{id} round trips (keep-alive), from a thread of their
    own so that the load generator's event loop does not delay them."""
    import httpx

    out = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, path in [("health", "/health"), ("job_status", f"/jobs/{job['id']}?token={job['token']}")]:
            samples = []
            for _ in range(requests):
                clock = time.perf_counter()
                response = client.get(path)
                samples.append(time.perf_counter() - clock)
                assert response.status_code == 200, response.text
            out[name] = {
                "p50_ms": round(statistics.median(samples) * 1000, 2),
                "p95_ms": round(_percentile(samples, 95) * 1000, 2),
                "p99_ms": round(_percentile(samples, 99) * 1000, 2),
            }
    return out


def make_job(base: str, ws_url: str, origin: str, work: Path) -> dict:
    """A finished job to ask the status of (a 1 s tone through the tiny model)."""
    import httpx

    from freestems.audio import open_writer

    tone = work / "tone.wav"
    with open_writer(tone, "wav") as writer:
        import numpy as np

        t = np.arange(44100) / 44100
        writer.write(np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.3)

    async def run() -> dict:
        ws, key = await handshake(ws_url, origin, keep=True)
        files = {"audio_file": ("tone.wav", tone.read_bytes())}
        response = httpx.post(base + "/jobs", headers={"X-Session-Key": key}, files=files, timeout=120)
        job = response.json()
        while json.loads(await ws.recv())["type"] != "done":
            pass
        await ws.close()
        return job

    return asyncio.run(run())


def _percentile(values: list[float], percent: int) -> float:
    """The ``percent``-th percentile (``statistics.quantiles``; a single sample is its own percentile)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--handshakes", type=int, default=300, help="handshakes to time (300)")
    parser.add_argument("--concurrency", type=int, default=10, help="handshakes at once (10)")
    parser.add_argument("--sockets", type=int, default=1000, help="idle sockets to open (1000)")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency sample (200)")
    parser.add_argument("--seconds", type=float, default=60, help="time bound of each phase (60)")
    parser.add_argument("--solves", type=int, default=3, help="default-cost challenges to solve (3)")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * args.sockets + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the server process

    print("phase 1: challenge cost at the default settings...", flush=True)
    costs = challenge_costs(samples=100, solves=args.solves)

    port = free_port()
    base, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/session"
    with tempfile.TemporaryDirectory() as work:
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(Path(work) / "data")])
        try:
            _wait_for(base, server)
            job = make_job(base, ws_url, base, Path(work))
            print("phase 4a: latency, no load...", flush=True)
            quiet = latencies(base, job, args.requests)

            async def under_load() -> tuple[dict, dict, dict, dict]:
                print("phase 2: handshakes (and latency meanwhile)...", flush=True)
                shakes, during = await asyncio.gather(
                    handshakes(ws_url, base, args.handshakes, args.concurrency, args.seconds),
                    asyncio.to_thread(latencies, base, job, args.requests // 4),
                )
                print("phase 3: idle sockets...", flush=True)
                idle, held = await idle_sockets(ws_url, base, args.sockets, args.seconds, server.pid)
                print("phase 4b: latency with the sockets open...", flush=True)
                try:
                    return shakes, during, idle, await asyncio.to_thread(latencies, base, job, args.requests)
                finally:
                    await asyncio.gather(*(ws.close() for ws, _ in held), return_exceptions=True)

            shakes, during, idle, busy = asyncio.run(under_load())
        finally:
            server.terminate()
            server.wait(timeout=60)

    report = {
        "caption": "2-core VM shared with a running CPU benchmark; client and server on the same machine",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "challenge": costs,
        "handshakes": shakes,
        "idle_sockets": idle,
        "latency_no_load": quiet,
        "latency_during_handshakes": during,
        "latency_with_idle_sockets": busy,
    }
    _print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "service.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'service.json'}")


def _wait_for(base: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if httpx.get(base + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the server did not start")


def _print(report: dict) -> None:
    c, h, i = report["challenge"], report["handshakes"], report["idle_sockets"]
    rows = [
        ("challenge issue (server, default PoW)", f"{c['issue_ms']} ms"),
        ("solution verify (server)", f"{c['verify_ms']} ms"),
        ("client solve (default PoW, Python, 1 core)", f"{c['client_solve_s_median']} s"),
        (f"handshakes/s (trivial PoW, {h['concurrency']} at once)", f"{h['per_second']}"),
        ("handshake latency p50 / p95", f"{h['latency_ms_p50']} / {h['latency_ms_p95']} ms"),
        ("idle keyed sockets held", f"{i['held']} of {i['requested']} ({i['errors']} errors)"),
        ("server RSS per idle socket", f"{i['kb_per_socket']} KB"),
    ]
    for name in ("health", "job_status"):
        q, d, b = (
            report[key][name]
            for key in ("latency_no_load", "latency_during_handshakes", "latency_with_idle_sockets")
        )
        rows.append((f"GET {name} p50/p99, no load", f"{q['p50_ms']} / {q['p99_ms']} ms"))
        rows.append((f"GET {name} p50/p99, during handshakes", f"{d['p50_ms']} / {d['p99_ms']} ms"))
        rows.append((f"GET {name} p50/p99, {i['held']} sockets open", f"{b['p50_ms']} / {b['p99_ms']} ms"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
