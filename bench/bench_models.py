"""Speed of each model family on this machine: one row per family, seconds per minute of audio and peak RSS.

Speed does not depend on weight values, so each row is a release configuration with seeded random weights:
SCNet base (``scnet``), Kim's Mel-Band RoFormer (``mel-roformer-kim``), viperx's BS-RoFormer
(``bs-roformer-viperx``) and HT-Demucs (``htdemucs``, the ``demucs`` package's class with its release
arguments). Every row separates the same synthetic track with the engine's defaults (overlap 0.25, batch 1 on
the CPU) in a fresh process, so its peak RSS is its own. ``scnet`` runs first and last: the machine is shared
and noisy, and the two SCNet runs show how much; ``relative_cost`` is each row over the mean of the two.
Each row also records the process's CPU seconds. On a machine others are using, wall time swells and so does
the CPU time of several torch threads (they spin while waiting for each other); with ``--threads 1`` the CPU
seconds of a row barely depend on the load, so that run's ``relative_cpu_cost`` is the ratio to trust.

    python bench/bench_models.py --seconds 20
    python bench/bench_models.py --seconds 20 --rows scnet htdemucs_6s htdemucs_ft bs-roformer-4stem scnet \
        --results models_more.json

The entries added for the jobs (issue 22) whose geometry is known here (MDX23C vocals, the karaoke and
de-reverb RoFormers, Demucs DrumSep as MSST's ``config_drumsep.yaml`` builds it) have rows too; one whose YAML
is published only beside its weights (DrumSep MDX23C, PolarFormer, denoise, crowd) stops with a line saying
so, and has no cost::

    python bench/bench_models.py --seconds 10 --threads 1 --results models_jobs.json \
        --rows scnet mdx23c-vocals bs-roformer-dereverb mel-roformer-karaoke scnet

Prints a table and writes bench/results/models.json (or ``--results``). ``bs-roformer-4stem`` runs the
geometry of its published YAML written down in :data:`BS_4STEM_MODEL`; ``mel-roformer-4stem`` has no row: its
YAML is published only beside the weights and its geometry is not known here.
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
ROWS = ("scnet", "mel-roformer-kim", "bs-roformer-viperx", "htdemucs", "scnet")
MORE_ROWS = ("scnet", "htdemucs_6s", "htdemucs_ft", "bs-roformer-4stem", "scnet")
"""``--rows`` for the second run: the families whose cost the first run did not measure."""

BS_4STEM_MODEL = {
    "dim": 384,
    "depth": 8,
    "stereo": True,
    "num_stems": 4,
    "time_transformer_depth": 1,
    "freq_transformer_depth": 1,
    "linear_transformer_depth": 0,
    "freqs_per_bands": [2] * 24 + [4] * 12 + [12] * 8 + [24] * 8 + [48] * 8 + [128, 129],
    "dim_head": 64,
    "heads": 8,
    "mlp_expansion_factor": 2,
    "flash_attn": True,
}
"""The geometry of ``config_bs_roformer_384_8_2_485100.yaml`` (the YAML is published only beside the
weights): dim 384, depth 8, 8 heads of 64, viperx's 62 bands, four stems, 11 s chunks. Written down from
what ports of that checkpoint state; speed depends on these numbers, not on the weights."""


DRUMSEP_HDEMUCS = {
    "channels": 48, "channels_time": None, "growth": 2, "nfft": 4096, "wiener_iters": 0,
    "end_iters": 0, "wiener_residual": False, "cac": True, "depth": 6, "rewrite": True, "hybrid": True,
    "hybrid_old": False, "multi_freqs": [], "multi_freqs_depth": 3, "freq_emb": 0.2, "emb_scale": 10,
    "emb_smooth": True, "kernel_size": 8, "stride": 4, "time_stride": 2, "context": 1, "context_enc": 0,
    "norm_starts": 4, "norm_groups": 4, "dconv_mode": 1, "dconv_depth": 2, "dconv_comp": 4,
    "dconv_attn": 4, "dconv_lstm": 4, "dconv_init": 0.001, "rescale": 0.1,
}  # fmt: skip
"""The ``hdemucs`` section of MSST's ``configs/config_drumsep.yaml`` (``demucs-drumsep``: HDemucs, 40 s
segment), as tests/test_models_catalog.py counts its parameters."""


def build(name: str):
    """The LoadedModel of a catalog entry's configuration, seeded random weights, no download."""
    from fractions import Fraction

    import torch

    from freestems.models import CATALOG, LoadedModel, build_model
    from freestems.models.loading import catalog_spec

    torch.manual_seed(0)
    info = CATALOG[name]
    if info.architecture == "scnet":
        module = build_model(catalog_spec(info))
        return LoadedModel(
            module=module, name=name, sources=info.sources, segment=info.segment, normalize=info.normalize
        )
    if name == "demucs-drumsep":
        from demucs.hdemucs import HDemucs

        from freestems.models.htdemucs import wrap_demucs

        network = HDemucs(
            list(info.sources), audio_channels=2, samplerate=SAMPLE_RATE, segment=40, **DRUMSEP_HDEMUCS
        )
        return wrap_demucs(network.eval(), name)
    if info.architecture == "htdemucs":
        from demucs.apply import BagOfModels
        from demucs.htdemucs import HTDemucs

        from freestems.models.htdemucs import wrap_demucs

        # The release arguments of htdemucs (955717e8): dconv_mode 3, bottom_channels 512, 5 layers, 7.8 s;
        # htdemucs_6s has the same with six sources, htdemucs_ft is a bag of four such models.
        def one() -> HTDemucs:
            return HTDemucs(
                list(info.sources), dconv_mode=3, bottom_channels=512, t_layers=5, segment=Fraction(39, 5)
            ).eval()

        weights = info.config["weights"]
        if len(weights) == 1:
            return wrap_demucs(one(), name)
        return wrap_demucs(BagOfModels([one() for _ in weights], weights, None).eval(), name)
    from freestems.models.loading import msst_model

    config = info.config
    if name == "bs-roformer-4stem":
        config = {
            "audio": {"chunk_size": 485100, "num_channels": 2, "sample_rate": SAMPLE_RATE},
            "model": BS_4STEM_MODEL,
            "training": {"instruments": list(info.sources), "target_instrument": None},
            "inference": {"num_overlap": 2},
        }
    if not config:
        raise SystemExit(f"{name}: its geometry is published only in the YAML beside its weights; no row")
    module, facts = msst_model(config, info.architecture, name)
    return LoadedModel(
        module=module, name=name, sources=facts.sources, segment=facts.segment, normalize=facts.normalize
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(name: str, seconds: int) -> dict:
    import numpy as np
    import torch

    from freestems.engine import separate

    model = build(name)
    rng = np.random.default_rng(0)
    t = np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    mix = (np.stack([tone, 0.8 * tone]) + 0.05 * rng.standard_normal((2, t.size))).astype(np.float32)
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    stems = separate(mix, model, overlap=0.25, device="cpu")
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    assert all(stem.shape == mix.shape for stem in stems.values())
    return {
        "model": name,
        "audio_seconds": seconds,
        "wall_seconds": round(elapsed, 2),
        "seconds_per_audio_minute": round(elapsed / seconds * 60, 1),
        "cpu_seconds_per_audio_minute": round(cpu / seconds * 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "parameters_m": round(sum(p.numel() for p in model.module.parameters()) / 1e6, 1),
    }


def _relative(runs: list[dict], key: str) -> dict[str, float]:
    """Each row's ``key`` over the mean of the ``scnet`` rows (empty without a ``scnet`` row)."""
    base = [run[key] for run in runs if run["model"] == "scnet"]
    if not base:
        return {}
    reference = sum(base) / len(base)
    costs = {run["model"]: round(run[key] / reference, 1) for run in runs if run["model"] != "scnet"}
    return {"scnet": 1.0, **costs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--results", default="models.json", help="file name under bench/results/")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per row (0: default; 1: CPU-time ratios)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(one_run(args.child, args.seconds)))
        return
    runs = []
    for name in args.rows:
        command = [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(
            f"{name:20} {run['seconds_per_audio_minute']:8.1f} s/min  "
            f"{run['cpu_seconds_per_audio_minute']:8.1f} cpu-s/min  {run['peak_rss_mb']:6d} MB",
            flush=True,
        )
    costs = _relative(runs, "seconds_per_audio_minute")
    cpu_costs = _relative(runs, "cpu_seconds_per_audio_minute")
    print("relative cost (wall):", json.dumps(costs))
    print("relative cost (cpu): ", json.dumps(cpu_costs))
    base = [run["seconds_per_audio_minute"] for run in runs if run["model"] == "scnet"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.results).write_text(
        json.dumps(
            {
                "machine": platform.machine(),
                "note": "shared 2-core CPU, other jobs running: compare rows of one run, not across runs",
                "scnet_runs_s_per_min": base,
                "relative_cost": costs,
                "relative_cpu_cost": cpu_costs,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
