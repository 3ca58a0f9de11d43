"""Half precision and speed of each model family on a GPU: fp16 and bf16 against fp32, seconds per 3-minute
song, peak GPU memory and the fastest batch size.

Speed and memory do not depend on weight values, so each family is a release configuration with seeded
random weights (as ``bench/bench_models.py``): ``scnet`` (SCNet base), ``mel-roformer`` (Kim's Mel-Band
RoFormer), ``bs-roformer`` (viperx's BS-RoFormer), ``mdx23c`` (MSST's MDX23C vocals) and, when the ``demucs``
package is installed, ``htdemucs`` (its release arguments). Every run separates the same synthetic track (two
tones and seeded noise) through the engine with its ``precision`` option (``fp32``, or autocast to ``fp16`` or
``bf16``; HT-Demucs always computes in fp32, so its half-precision rows equal fp32) at each batch size:

* ``snr_db``: the half-precision stems against the fp32 stems of the same batch size, in dB (all stems
  together; None when they are identical). Seeded weights are not trained ones, so this measures the
  arithmetic's error on these networks, not a change in separation quality;
* ``seconds_per_song``: the run's wall time scaled to a 3-minute song (``--seconds`` of audio are separated;
  on a GPU use the default 180 so nothing is scaled), after one warm-up run of a single chunk;
* ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` during the run (None on the CPU);
* ``fastest_batch``: the batch size with the least time, per precision.

    python bench/bench_gpu.py                                  # on a GPU: bench/results/gpu.json
    python bench/bench_gpu.py --device cpu --quick --seconds 5 --batch-sizes 1 2 --threads 1  # smoke run

``--quick`` swaps every release configuration for a tiny one of the same family (the CPU path's check);
its numbers say nothing about the release models. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SONG_SECONDS = 180
PRECISIONS = ("fp32", "fp16", "bf16")
BATCH_SIZES = (1, 2, 4, 8)
FAMILIES = {
    "scnet": "scnet",
    "mel-roformer": "mel-roformer-kim",
    "bs-roformer": "bs-roformer-viperx",
    "mdx23c": "mdx23c-vocals",
    "htdemucs": "htdemucs",
}
"""Each family's catalog entry, whose release configuration the family's rows run."""

QUICK_MSST_MODELS: dict[str, dict[str, Any]] = {
    "mel-roformer": {"dim": 16, "depth": 1, "num_bands": 8, "heads": 2, "dim_head": 8},
    "bs-roformer": {"dim": 16, "depth": 1, "freqs_per_bands": [512, 513], "heads": 2, "dim_head": 8},
    "mdx23c": {"growth": 8, "num_channels": 8, "num_scales": 3, "num_subbands": 2, "num_blocks_per_scale": 1},
}
"""Tiny settings of each MSST family for ``--quick`` (everything else as released)."""
QUICK_MDX23C_AUDIO = {"chunk_size": 32256, "dim_f": 1024, "dim_t": 64, "hop_length": 512, "n_fft": 2048}
QUICK_SCNET = {"dims": [4, 8, 16, 24], "conv_depths": [2, 1, 1], "num_dplayer": 2}
QUICK_SEGMENT = 88_200
"""Two seconds: the chunk of the quick SCNet and RoFormers."""


def available_families() -> list[str]:
    """The families this machine can run (``htdemucs`` needs the ``demucs`` package)."""
    try:
        import demucs  # noqa: F401
    except ImportError:
        return [family for family in FAMILIES if family != "htdemucs"]
    return list(FAMILIES)


def build(family: str, quick: bool = False) -> Any:
    """The LoadedModel of ``family``'s release configuration (tiny with ``quick``), seeded weights."""
    import torch

    torch.manual_seed(0)
    if family == "scnet":
        return _scnet(quick)
    if family == "htdemucs":
        return _htdemucs(quick)
    return _msst(family, quick)


def _scnet(quick: bool) -> Any:
    from freestems.models import CATALOG, LoadedModel, build_model
    from freestems.models.loading import catalog_spec

    spec = catalog_spec(CATALOG[FAMILIES["scnet"]])
    if quick:
        spec.config = {**spec.config, **QUICK_SCNET}
        spec.segment = QUICK_SEGMENT
    module = build_model(spec).eval()
    return LoadedModel(
        module=module, name="scnet", sources=spec.sources, segment=spec.segment, normalize=spec.normalize
    )


def _msst(family: str, quick: bool) -> Any:
    from freestems.models import CATALOG
    from freestems.models.loading import msst_loaded, msst_model

    info = CATALOG[FAMILIES[family]]
    config = copy.deepcopy(info.config)
    if quick:
        config["model"].update(QUICK_MSST_MODELS[family])
        if family == "mdx23c":
            config["audio"].update(QUICK_MDX23C_AUDIO)
        else:
            config["audio"]["chunk_size"] = QUICK_SEGMENT
    module, facts = msst_model(config, info.architecture, family)
    return msst_loaded(module, facts, family)


def _htdemucs(quick: bool) -> Any:
    from fractions import Fraction

    from demucs.htdemucs import HTDemucs

    from freestems.models import CATALOG
    from freestems.models.htdemucs import wrap_demucs

    sources = list(CATALOG[FAMILIES["htdemucs"]].sources)
    if quick:
        network = HTDemucs(
            sources, channels=8, depth=4, t_layers=1, t_heads=2, dconv_comp=4, segment=Fraction(2)
        )
    else:  # the release arguments of htdemucs (955717e8), as bench/bench_models.py builds it
        network = HTDemucs(sources, dconv_mode=3, bottom_channels=512, t_layers=5, segment=Fraction(39, 5))
    return wrap_demucs(network.eval(), "htdemucs")


def synthetic_track(seconds: float) -> Any:
    """The fixed synthetic stereo track: two tones and seeded noise."""
    import numpy as np

    from freestems.contract import SAMPLE_RATE

    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    return (np.stack([tone, 0.8 * tone]) + 0.05 * rng.standard_normal((2, t.size))).astype(np.float32)


def snr_db(reference: dict[str, Any], other: dict[str, Any]) -> float | None:
    """The SNR of ``other``'s stems against ``reference``'s, all stems together, in dB (None: identical)."""
    import numpy as np

    signal = sum(float(np.sum(np.square(reference[stem], dtype=np.float64))) for stem in reference)
    error = sum(
        float(np.sum(np.square(reference[stem].astype(np.float64) - other[stem]))) for stem in reference
    )
    return None if error == 0 else round(10 * np.log10(signal / error), 1)


def timed(model: Any, mix: Any, device: str, precision: str, batch: int) -> tuple[dict[str, Any], float, Any]:
    """One separation: its stems, its wall seconds and its peak GPU memory in MB (None on the CPU)."""
    import torch

    from freestems.engine import separate

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stems = separate(mix, model, device=device, precision=precision, batch_size=batch, overlap=0.25)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
    return stems, elapsed, peak


def bench_family(
    family: str,
    device: str,
    seconds: float,
    batch_sizes: Sequence[int],
    quick: bool,
    precisions: Sequence[str] = PRECISIONS,
) -> dict[str, Any]:
    """Every precision at every batch size for one family, with the fastest batch of each precision."""
    model = build(family, quick)
    mix = synthetic_track(seconds)
    warm = synthetic_track(model.segment / 44_100)
    row: dict[str, Any] = {
        "family": family,
        "model": FAMILIES[family],
        "parameters_m": round(sum(p.numel() for p in model.module.parameters()) / 1e6, 1),
        "segment": model.segment,
        "precisions": {},
    }
    reference: dict[int, dict[str, Any]] = {}
    for precision in ["fp32", *(p for p in precisions if p != "fp32")]:  # fp32 first: the reference
        row["precisions"][precision] = _one_precision(
            model, mix, warm, device, precision, batch_sizes, seconds, reference
        )
    return row


def _one_precision(
    model: Any,
    mix: Any,
    warm: Any,
    device: str,
    precision: str,
    batch_sizes: Sequence[int],
    seconds: float,
    reference: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """One precision's runs; ``reference`` holds the fp32 stems by batch size (fp32 runs first)."""
    from freestems.errors import one_line

    try:
        timed(model, warm, device, precision, 1)  # warm-up: kernels, allocator, autotuning
    except Exception as error:  # an unsupported precision on this device: say so, go on
        return {"error": f"{type(error).__name__}: {one_line(error)}"[:160]}
    runs: dict[str, dict[str, Any]] = {}
    for batch in batch_sizes:
        stems, elapsed, peak = timed(model, mix, device, precision, batch)
        if precision == "fp32":
            reference[batch] = stems
        runs[str(batch)] = {
            "seconds_per_song": round(elapsed * SONG_SECONDS / seconds, 2),
            "peak_gpu_mb": peak,
            "snr_db": None if precision == "fp32" else snr_db(reference[batch], stems),
        }
    fastest = min(runs, key=lambda batch: runs[batch]["seconds_per_song"])
    return {"fastest_batch": int(fastest), **runs[fastest], "by_batch": runs}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table: one line per family and precision, at its fastest batch."""
    lines = [
        "| family | precision | SNR vs fp32 (dB) | s per 3-min song | fastest batch | peak GPU MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for precision, result in row["precisions"].items():
            if "error" in result:
                lines.append(f"| {row['family']} | {precision} | {result['error']} | | | |")
                continue
            snr = "-" if precision == "fp32" else _cell(result["snr_db"], "identical")
            lines.append(
                f"| {row['family']} | {precision} | {snr} | {result['seconds_per_song']} "
                f"| {result['fastest_batch']} | {_cell(result['peak_gpu_mb'], '-')} |"
            )
    return "\n".join(lines)


def _cell(value: Any, missing: str) -> str:
    return missing if value is None else str(value)


def machine(device: str) -> str:
    """What ran the bench: the GPU's name, else the CPU's."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"CPU {platform.machine()} ({platform.processor() or 'unknown'}), {threads} threads"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--seconds", type=float, default=SONG_SECONDS, help="audio separated per run (180)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), help="default: all available")
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS), help="fp32 always runs"
    )
    parser.add_argument("--quick", action="store_true", help="tiny configurations (a smoke run)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: default; 1 on a busy machine)"
    )
    parser.add_argument("--out", type=Path, help="JSON file (bench/results/gpu.json; gpu_cpu.json on a CPU)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the bench, print its table and write its JSON; returns what it wrote."""
    import torch

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU, or pass --device cpu (with --quick)")
    families = args.families or available_families()
    rows = []
    for family in families:
        rows.append(
            bench_family(family, args.device, args.seconds, args.batch_sizes, args.quick, args.precisions)
        )
        report(f"{family}: done")
    results = {
        "machine": machine(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "quick": args.quick,
        "audio_seconds": args.seconds,
        "song_seconds": SONG_SECONDS,
        "batch_sizes": args.batch_sizes,
        "rows": rows,
    }
    out = args.out or RESULTS / ("gpu.json" if args.device.startswith("cuda") else "gpu_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    report(markdown(rows))
    return results


if __name__ == "__main__":
    main()
