"""Speed of each model family on this machine: one row per family, seconds per minute of audio and peak RSS.

Speed does not depend on weight values, so each row is a release configuration with seeded random weights:
SCNet base (``scnet``), Kim's Mel-Band RoFormer (``mel-roformer-kim``), viperx's BS-RoFormer
(``bs-roformer-viperx``) and HT-Demucs (``htdemucs``, the ``demucs`` package's class with its release
arguments). Every row separates the same synthetic track with the engine's defaults (overlap 0.25, batch 1 on
the CPU) in a fresh process, so its peak RSS is its own. ``scnet`` runs first and last: the machine is shared
and noisy, and the two SCNet runs show how much; ``relative_cost`` is each row over the mean of the two.

    python bench/bench_models.py --seconds 20

Prints a table and writes bench/results/models.json.
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

from freestems import SAMPLE_RATE

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("scnet", "mel-roformer-kim", "bs-roformer-viperx", "htdemucs", "scnet")


def build(name: str):
    """The LoadedModel of a catalog entry's configuration, seeded random weights, no download."""
    from fractions import Fraction

    import torch

    from freestems.models import CATALOG, LoadedModel, ModelSpec, build_model

    torch.manual_seed(0)
    info = CATALOG[name]
    if info.architecture == "scnet":
        module = build_model(ModelSpec.from_info(info))
        return LoadedModel(
            module=module, name=name, sources=info.sources, segment=info.segment, normalize=info.normalize
        )
    if info.architecture == "htdemucs":
        from demucs.htdemucs import HTDemucs

        from freestems.models.htdemucs import wrap_demucs

        # The release arguments of htdemucs (955717e8): dconv_mode 3, bottom_channels 512, 5 layers, 7.8 s.
        model = HTDemucs(
            list(info.sources), dconv_mode=3, bottom_channels=512, t_layers=5, segment=Fraction(39, 5)
        )
        return wrap_demucs(model.eval(), name)
    from freestems.models.roformer import roformer_from_msst

    module, facts = roformer_from_msst(info.config, info.architecture, name=name)
    return LoadedModel(
        module=module, name=name, sources=facts.sources, segment=facts.segment, normalize=facts.normalize
    )


def one_run(name: str, seconds: int) -> dict:
    import numpy as np
    import torch

    from freestems.separate import separate

    model = build(name)
    rng = np.random.default_rng(0)
    t = np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    mix = (np.stack([tone, 0.8 * tone]) + 0.05 * rng.standard_normal((2, t.size))).astype(np.float32)
    start = time.perf_counter()
    stems = separate(mix, model, overlap=0.25, device="cpu")
    elapsed = time.perf_counter() - start
    assert all(stem.shape == mix.shape for stem in stems.values())
    return {
        "model": name,
        "audio_seconds": seconds,
        "wall_seconds": round(elapsed, 2),
        "seconds_per_audio_minute": round(elapsed / seconds * 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "parameters_m": round(sum(p.numel() for p in model.module.parameters()) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args.seconds)))
        return
    runs = []
    for name in args.rows:
        command = [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(
            f"{name:20} {run['seconds_per_audio_minute']:8.1f} s/min  {run['peak_rss_mb']:6d} MB", flush=True
        )
    base = [run["seconds_per_audio_minute"] for run in runs if run["model"] == "scnet"]
    reference = sum(base) / len(base) if base else None
    costs = {}
    for run in runs:
        if reference and run["model"] != "scnet":
            costs[run["model"]] = round(run["seconds_per_audio_minute"] / reference, 1)
    if reference:
        costs["scnet"] = 1.0
    print("relative cost:", json.dumps(costs))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "models.json").write_text(
        json.dumps(
            {
                "machine": platform.machine(),
                "note": "shared 2-core CPU, other jobs running: compare rows of one run, not across runs",
                "scnet_runs_s_per_min": base,
                "relative_cost": costs,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
