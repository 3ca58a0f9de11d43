"""What a request's options cost in worker seconds, against what the service prices them at.

The service prices every request before it runs (``freestems.service.pricing``): model-seconds =
duration x shifts x the overlap's chunk factor x the model's relative cost. This bench runs the job code
(:func:`freestems.jobrun.run_job`, the function every executor runs: decode, separate, encode MP3, zip) on
the tiny seeded SCNet of ``bench_service.py`` for a few option mixes, and prints each one's worker seconds
(wall and process CPU) beside its price, both relative to a default request (a song at the default
options). It also times cutting a finished job's segments from its zip (what ``GET /jobs/{id}/partial``
does for a result without segments), the work ``SEGMENT_CUT_COST`` prices.

A job's work is linear in the song's length (chunked inference), so the mixes are measured on a 30 s clip
and scaled: a default server's dearest request is 1200 model-seconds, 6.67 times a 180 s song at the
defaults, and here 200 model-seconds, 6.67 times the 30 s clip (200 s at the defaults, 40 s at
``shifts=5``, 26.7 s at ``overlap=0.8999``).

    python bench/bench_cost.py                    # the mixes below (several minutes, one thread)
    python bench/bench_cost.py --only default     # one of them

The tiny model's compute is small beside decoding and encoding, so the measured ratios of ``overlap`` sit
below the priced ones (the price counts chunks, which is what a real model spends its time on). Prints a
table and writes bench/results/cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def overlap_factor_of(overlap: float) -> float:
    """As ``freestems.service.pricing.overlap_factor`` (not imported here: the mixes are built before the
    source tree is on the path)."""
    return 0.75 / (1.0 - overlap)


TINY_DIMS = [4, 8, 16, 24]  # as bench_service.py: the release architecture with a few channels
SONG = 30.0
DEAREST = 1200.0 / 180.0
"""A default server's most one request may cost (1200 s at the defaults), in 180 s default songs."""

MIXES: dict[str, tuple[float, int, float]] = {
    # name: (seconds, shifts, overlap)
    "default": (SONG, 1, 0.25),
    "shifts=5": (SONG, 5, 0.25),
    "overlap=0.8999": (SONG, 1, 0.8999),
    "shifts=5, overlap=0.8999 (refused now)": (SONG, 5, 0.8999),
    "6.67x as long, defaults": (SONG * DEAREST, 1, 0.25),
    "1.33x as long, shifts=5": (SONG * DEAREST / 5, 5, 0.25),
    "0.89x as long, overlap=0.8999": (round(SONG * DEAREST / overlap_factor_of(0.8999), 1), 1, 0.8999),
}


def tiny_model():
    import torch

    from freestems.models import CATALOG, DEFAULT_MODEL, LoadedModel, ModelSpec, build_model

    torch.manual_seed(0)
    base = CATALOG[DEFAULT_MODEL]
    config = {**base.config, "dims": TINY_DIMS, "conv_depths": [2, 1, 1], "num_dplayer": 2}
    spec = ModelSpec("tiny", config, tuple(base.sources), segment=44100 * 2)
    return LoadedModel(build_model(spec), "tiny", spec.sources, spec.segment, normalize=False)


def write_song(path: Path, seconds: float) -> None:
    """A stereo MP3 of noise under a few tones (MP3: what people upload; decoding it is part of a job)."""
    import av
    import numpy as np

    rate, block = 44100, 44100
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.bit_rate = 192_000
        done = 0
        total = int(seconds * rate)
        while done < total:
            n = min(block, total - done)
            t = (np.arange(n) + done) / rate
            tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 330 * t)
            audio = np.stack([tone, tone]) + 0.05 * rng.standard_normal((2, n))
            samples = np.clip(audio * 32767, -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples.T.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
            done += n
        for packet in stream.encode(None):
            container.mux(packet)


def price(seconds: float, shifts: int, overlap: float) -> float:
    from freestems.service.pricing import request_cost

    return request_cost(seconds, shifts, overlap, 1.0)


def run(model, source: Path, folder: Path, shifts: int, overlap: float) -> tuple[float, float, Path]:
    from freestems.jobrun import run_job
    from freestems.options import SeparationOptions

    archive = folder / f"result-{shifts}-{overlap}.zip"
    wall, cpu = time.perf_counter(), time.process_time()
    run_job(
        source,
        archive,
        model,
        work_dir=folder / "work",
        options=SeparationOptions(shifts=shifts, overlap=overlap),
        device="cpu",
    )
    return time.perf_counter() - wall, time.process_time() - cpu, archive


def cut(archive: Path, folder: Path) -> tuple[float, float]:
    from freestems.segments import rebuild_segments

    wall, cpu = time.perf_counter(), time.process_time()
    rebuild_segments(archive, folder / "segments")
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(MIXES), action="append", help="run only these mixes")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    torch.set_num_threads(1)  # one worker thread: its CPU seconds are the work (no spinning threads)
    model = tiny_model()
    rows = []
    chosen = args.only or list(MIXES)
    if "default" not in chosen:
        chosen = ["default", *chosen]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        songs: dict[float, Path] = {}
        base: dict[str, float] = {}
        for name in chosen:
            seconds, shifts, overlap = MIXES[name]
            if seconds not in songs:
                songs[seconds] = folder / f"song-{seconds:g}.mp3"
                write_song(songs[seconds], seconds)
            wall, cpu, archive = run(model, songs[seconds], folder, shifts, overlap)
            row = {
                "mix": name,
                "seconds": seconds,
                "shifts": shifts,
                "overlap": overlap,
                "priced_model_seconds": round(price(seconds, shifts, overlap), 1),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
            }
            if name == "default":
                base = {"wall_s": wall, "cpu_s": cpu, "price": price(seconds, shifts, overlap)}
                cut_wall, cut_cpu = cut(archive, folder)
                row["segment_cut_wall_s"] = round(cut_wall, 2)
                row["segment_cut_cpu_s"] = round(cut_cpu, 2)
            row["priced_x_default"] = round(row["priced_model_seconds"] / base["price"], 2)
            row["wall_x_default"] = round(wall / base["wall_s"], 2)
            row["cpu_x_default"] = round(cpu / base["cpu_s"], 2)
            archive.unlink(missing_ok=True)
            rows.append(row)
            print(
                f"{name:58} priced {row['priced_x_default']:6.2f}x"
                f"  wall {wall:7.1f} s ({row['wall_x_default']:5.2f}x)"
                f"  cpu {cpu:7.1f} s ({row['cpu_x_default']:5.2f}x)",
                flush=True,
            )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        },
        "model": f"tiny SCNet (dims {TINY_DIMS})",
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'cost.json'}")


if __name__ == "__main__":
    main()
