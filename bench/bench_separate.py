"""End-to-end separation benchmark: MP3 in, four 192 kbps MP3 stems out.

Speed does not depend on weight values, so the model is the release configuration of the chosen catalog
model with seeded random weights. Each track length runs in a fresh process, so its peak RSS is its own.

    python bench/bench_separate.py                     # 180 s, 600 s and 3600 s tracks
    python bench/bench_separate.py --seconds 180 --model scnet --batch-size 2

Prints a table and writes bench/results/separate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from freestems.contract import SAMPLE_RATE

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_track(path: Path, seconds: int, seed: int = 0) -> None:
    """A stereo test track with tones, a bass line and noise bursts, written block by block as MP3."""
    from freestems.audio import open_writer

    rng = np.random.default_rng(seed)
    block = 10 * SAMPLE_RATE
    with open_writer(path, "mp3", bitrate=192) as writer:
        for start in range(0, seconds * SAMPLE_RATE, block):
            n = min(block, seconds * SAMPLE_RATE - start)
            t = (start + np.arange(n)) / SAMPLE_RATE
            tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * (1 + (t % 2 > 1)) * t)
            beat = rng.standard_normal(n) * 0.2 * np.exp(-((t % 0.5) * 20))
            left = tone + beat
            right = 0.8 * tone + beat + 0.02 * rng.standard_normal(n)
            writer.write(np.stack([left, right]).astype(np.float32))


def run_one(args: argparse.Namespace) -> dict:
    """Separate one track in this process and report timings and peak RSS."""
    import torch

    from freestems.models import CATALOG, LoadedModel, build_model
    from freestems.models.loading import catalog_spec
    from freestems.pipeline import OutputFormat, separate_file

    info = CATALOG[args.model]
    torch.manual_seed(0)
    spec = catalog_spec(info)
    model = LoadedModel(
        module=build_model(spec),
        name=info.name,
        sources=spec.sources,
        segment=spec.segment,
        normalize=spec.normalize,
    )
    with tempfile.TemporaryDirectory() as work:
        source = Path(args.input)
        started = time.perf_counter()
        result = separate_file(
            source,
            Path(work) / "out",
            model,
            output=OutputFormat("mp3", 192),
            overlap=args.overlap,
            batch_size=args.batch_size or None,
            device="cpu",
        )
        wall = time.perf_counter() - started
        sizes = {name: path.stat().st_size for name, path in result.stems.items()}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": result.duration,
        "wall": round(wall, 2),
        "rtf": round(wall / result.duration, 4),
        "peak_rss_mb": round(peak_kb / 1024),
        "timings": result.timings.as_dict(),
        "stem_bytes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, nargs="+", default=[180, 600, 3600])
    parser.add_argument("--model", default="scnet")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--input", help=argparse.SUPPRESS)  # internal: run one track in this process
    args = parser.parse_args()
    if args.input:
        print(json.dumps(run_one(args)))
        return

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seconds in args.seconds:
            track = Path(work) / f"track_{seconds}s.mp3"
            synthetic_track(track, seconds)
            command = [
                sys.executable,
                __file__,
                "--input",
                str(track),
                "--model",
                args.model,
                "--overlap",
                str(args.overlap),
                "--batch-size",
                str(args.batch_size),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            t = row["timings"]
            print(
                f"{seconds:>5} s  wall {row['wall']:>7.1f} s  RTF {row['rtf']:.3f}"
                f"  peak RSS {row['peak_rss_mb']:>5} MB  decode {t['decode']:.1f} s"
                f"  model {t['separate']:.1f} s  encode {t['encode']:.1f} s",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    report = {
        "model": args.model,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": __import__("os").cpu_count(),
        "runs": rows,
    }
    (RESULTS / "separate.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'separate.json'}")


if __name__ == "__main__":
    main()
