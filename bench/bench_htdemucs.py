"""HT-Demucs speed on this machine: our engine, and Demucs's own ``apply_model`` for comparison.

Speed does not depend on weight values, so the network is the release configuration of ``htdemucs``
(HTDemucs, 4 sources, ``dconv_mode=3``, ``bottom_channels=512``, 5 transformer layers, 7.8 s segment; about
42 M parameters) with seeded random weights: the real files cannot be downloaded here. ``htdemucs_ft`` is
four such models (4x the time), ``htdemucs_6s`` one with 6 sources. Each run is a fresh process, so its
peak RSS is its own.

    python bench/bench_htdemucs.py --seconds 30
    python bench/bench_htdemucs.py --seconds 30 --sources 6 --runner demucs

Prints a table and writes bench/results/htdemucs.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from freestems.contract import SAMPLE_RATE

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(seconds: int, sources: int, runner: str, threads: int | None) -> dict:
    """Separate ``seconds`` of synthetic audio once; returns the timing and this process's peak RSS."""
    from fractions import Fraction

    import numpy as np
    import torch
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    from freestems.engine import separate
    from freestems.models.htdemucs import wrap_demucs

    if threads:
        torch.set_num_threads(threads)
    names = ["drums", "bass", "other", "vocals", "guitar", "piano"][:sources]
    torch.manual_seed(0)
    model = HTDemucs(names, dconv_mode=3, bottom_channels=512, t_layers=5, segment=Fraction(39, 5)).eval()
    rng = np.random.default_rng(0)
    t = np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    mix = np.stack([tone, tone]) + 0.05 * rng.standard_normal((2, t.size))
    mix = mix.astype(np.float32)
    start = time.perf_counter()
    if runner == "freestems":
        separate(mix, wrap_demucs(model, "htdemucs"), overlap=0.25, device="cpu")
    else:
        wav = torch.from_numpy(mix)
        ref = wav.mean(0)
        with torch.no_grad():
            apply_model(model, ((wav - ref.mean()) / ref.std())[None], shifts=0, split=True, overlap=0.25)
    elapsed = time.perf_counter() - start
    return {
        "runner": runner,
        "sources": sources,
        "audio_seconds": seconds,
        "wall_seconds": round(elapsed, 2),
        "seconds_per_audio_minute": round(elapsed / seconds * 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--sources", type=int, choices=(4, 6), default=4)
    parser.add_argument("--runner", choices=("freestems", "demucs", "both"), default="both")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.seconds, args.sources, args.runner, args.threads)))
        return
    runners = ("freestems", "demucs") if args.runner == "both" else (args.runner,)
    rows = []
    for runner in runners:
        command = [sys.executable, __file__, "--child", "--runner", runner]
        command += ["--seconds", str(args.seconds), "--sources", str(args.sources)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    header = ("runner", "sources", "audio s", "wall s", "s/min", "RSS MB", "threads")
    print(f"{header[0]:<10} " + " ".join(f"{name:>8}" for name in header[1:]))
    for row in rows:
        print(
            f"{row['runner']:<10} {row['sources']:>8} {row['audio_seconds']:>8} {row['wall_seconds']:>8} "
            f"{row['seconds_per_audio_minute']:>8} {row['peak_rss_mb']:>8} {row['threads']:>8}"
        )
    RESULTS.mkdir(exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "runs": rows}
    (RESULTS / "htdemucs.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
