"""How soon can a listener hear the stems? First sound and whole result, through the service's API.

Starts ``freestems serve`` on 127.0.0.1 (a free port, a fresh data folder), then for a 30 s clip and a
10-minute song (synthetic, encoded as MP3) does what a client does: earns a session key (proof of work, via
:class:`freestems.client.Client`), uploads the file with ``POST /jobs``, polls ``GET /jobs/{id}/partial``
and downloads segment 0 of every stem as soon as it is listed, then waits for the job and downloads the zip.

- ``first_sound_s``: from the last byte of the upload to segment 0 of every stem downloaded;
- ``whole_s``: from the last byte of the upload to the result zip downloaded (null with ``--first-only``,
  which cancels each job once it has first sound).

Speed does not depend on weight values, so by default the model is the release configuration of ``scnet``
(the default model) with seeded random weights, written to a checkpoint the server loads; ``--model-file``
and ``--model-config`` take a real one, as ``freestems serve`` does.

    python bench/bench_listen.py                  # clip and long, first sound and whole
    python bench/bench_listen.py --first-only     # first sound only (minutes quicker)

The last line printed is one JSON object: ``{"clip": {"first_sound_s", "whole_s"}, "long": {...}}``; the
details (the server's CPU seconds, its ``first_pass`` and ``first_block`` timings) go to
``bench/results/listen.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_separate import synthetic_track  # noqa: E402

from freestems.client import Client  # noqa: E402
from freestems.client.progress import Reporter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
POLL_SECONDS = 0.05
LOG = str(Path(tempfile.gettempdir()) / "freestems-bench-listen.log")
SERVE = "import sys; from freestems.cli import main; sys.exit(main(sys.argv[1:]))"
"""``freestems serve`` with this interpreter and whatever ``freestems`` it imports (PYTHONPATH too)."""


class UploadClock(Reporter):
    """Notes when the last byte of the upload went out."""

    def __init__(self) -> None:
        self.sent_at: float | None = None

    def uploaded(self, sent: int, total: int) -> None:
        if sent >= total and self.sent_at is None:
            self.sent_at = time.perf_counter()


def random_release_checkpoint(path: Path, model: str) -> Path:
    """The catalog model's release configuration with seeded random weights, as a freestems checkpoint."""
    import torch

    from freestems.models import CATALOG, build_model, save_checkpoint
    from freestems.models.loading import catalog_spec

    info = CATALOG[model]
    torch.manual_seed(0)
    spec = catalog_spec(info)
    return save_checkpoint(path, build_model(spec), spec)


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far (Linux), else None. Unlike wall
    time, this hardly depends on what else the machine runs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(args: argparse.Namespace, data: Path, model_file: Path | None) -> tuple[Any, str]:
    """``freestems serve`` on a free port of 127.0.0.1 with its data in ``data``; waits until it answers."""
    port = free_port()
    command = [sys.executable, "-c", SERVE, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model_file is not None:
        command += ["--model-file", str(model_file)]
    if args.model_config:
        command += ["--model-config", args.model_config]
    env = {**os.environ, "FREESTEMS_DATA_DIR": str(data), "FREESTEMS_RESULT_CACHE": "false"}
    log = open(args.log, "a")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {args.log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not start in 300 s")


def listen(url: str, pid: int, track: Path, first_only: bool, folder: Path) -> dict[str, Any]:
    """One run as a client: upload, first segment of every stem, then (unless ``first_only``) the zip.
    Also the server's CPU seconds over the same spans (``pid``: the server's process)."""
    clock = UploadClock()
    with Client(url, timeout=600, reporter=clock) as client, client.get_key() as session:
        job = client.submit(track, session, format="mp3")
        sent = clock.sent_at or time.perf_counter()
        cpu_at_sent = cpu_seconds(pid)
        params = {"token": job.token}
        http = client.http
        first_sound = None
        while first_sound is None:
            listing = http.get(f"/jobs/{job.id}/partial", params=params).json()
            if "error" in listing:
                raise SystemExit(f"partial: {listing['error']}")
            if listing["segments"]:
                for stem in listing["stems"]:
                    response = http.get(f"/jobs/{job.id}/partial/{stem}/0", params=params)
                    response.raise_for_status()
                first_sound = time.perf_counter() - sent
                first_cpu = _spent(cpu_at_sent, cpu_seconds(pid))
                break
            time.sleep(POLL_SECONDS)
        found: dict[str, Any] = {"first_sound_s": round(first_sound, 2), "whole_s": None}
        extra: dict[str, Any] = {"first_sound_server_cpu_s": first_cpu}
        if first_only:
            client.cancel(job)
            return {**found, **extra}
        while True:
            state = http.get(f"/jobs/{job.id}", params=params).json()
            if state["state"] == "done":
                break
            if state["state"] in ("failed", "cancelled"):
                raise SystemExit(f"the job {state['state']}: {state.get('error')}")
            time.sleep(POLL_SECONDS * 4)
        zip_path = folder / f"{track.stem}.zip"
        with (
            http.stream("GET", f"/jobs/{job.id}/result", params=params) as response,
            open(zip_path, "wb") as out,
        ):
            response.raise_for_status()
            for data in response.iter_bytes():
                out.write(data)
        found["whole_s"] = round(time.perf_counter() - sent, 2)
        extra["whole_server_cpu_s"] = _spent(cpu_at_sent, cpu_seconds(pid))
        timings = state.get("timings") or {}
        extra.update(
            {f"server_{key}_s": timings[key] for key in ("first_pass", "first_block") if key in timings}
        )
        return {**found, **extra}


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="scnet", help="catalog model whose release config is used")
    parser.add_argument("--model-file", help="a checkpoint to serve, as `freestems serve --model-file`")
    parser.add_argument("--model-config", help="its config, as `freestems serve --model-config`")
    parser.add_argument("--first-only", action="store_true", help="stop each run at first sound")
    parser.add_argument("--clip-seconds", type=int, default=30)
    parser.add_argument("--long-seconds", type=int, default=600)
    parser.add_argument("--log", default=LOG, help="where the servers write their output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-listen-") as work:
        root = Path(work)
        if args.model_file:
            model_file: Path | None = Path(args.model_file)
        else:
            model_file = random_release_checkpoint(root / f"{args.model}-release-random.pt", args.model)
        tracks = {"clip": root / "clip.mp3", "long": root / "long.mp3"}
        synthetic_track(tracks["clip"], args.clip_seconds, seed=1)
        synthetic_track(tracks["long"], args.long_seconds, seed=2)
        results: dict[str, Any] = {}
        for name, track in tracks.items():  # a server each: a cancelled run must not share the CPU
            process, url = start_server(args, root / f"data-{name}", model_file)
            try:
                results[name] = listen(url, process.pid, track, args.first_only, root)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
            print(f"{name:>5} ({track.stat().st_size / 1e6:.1f} MB mp3): {results[name]}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    report = {
        "model": args.model_file or f"{args.model} (release config, seeded random weights)",
        "first_only": args.first_only,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg()[0],
        "runs": results,
    }
    (RESULTS / "listen.json").write_text(json.dumps(report, indent=2) + "\n")
    keys = ("first_sound_s", "whole_s")
    print(json.dumps({name: {key: found[key] for key in keys} for name, found in results.items()}))


if __name__ == "__main__":
    main()
