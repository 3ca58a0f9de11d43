"""How long does separating on the visitor's device take? The page in headless Chromium, the release model.

Exports the release configuration of ``scnet`` with seeded random weights (speed does not depend on weight
values) with ``freestems export``'s code, starts ``freestems serve`` with it as the only model and the export
in ``FREESTEMS_DEVICE_DIR``, and has the page separate a synthetic 30 s MP3 "On this device": the page's
own decoding, the engine's Web Worker and onnxruntime-web (WASM, on as many threads as the machine has cores
when the page is cross-origin isolated), twice (the second run reads the network from Cache Storage); then a
synthetic 3-minute song the same way, and the Python engine (``freestems separate``, this interpreter, every
core) on that song. The page picks the network file as it does for anyone (fp16 weights where the export
found them faithful).

- ``clip``: ``first_sound_s``, from the click on Separate to the first block of every stem, which the page
  plays at once: the short first chunk's provisional block (``first_chunk``: true) where the export has
  one, else the first whole chunk's; ``first_block_s``, the worker's time to the first whole chunk's
  block (from the worker's start, after the decoding); ``whole_s``, from the click to the result card, the
  player ready;
  ``cached_whole_s``, the same for the second run; ``chunk_s``, the worker's seconds per chunk (its whole
  time less the network's loading, over its chunks); ``network_load_s``;
- ``song``: ``first_sound_s``, ``whole_s``, ``chunk_s`` and ``realtime``, the song's length over
  ``whole_s`` (above 1: faster than real time);
- ``python_song_s``: ``freestems separate`` on the song (MP3 out), from start to exit;
- ``threads``, ``file``, ``chunks`` (of the song): the worker's own facts.

Targets (issue 21): first sound <= 10 s, the song faster than real time, within 1.5x of the Python engine.

    python bench/bench_browser.py                       # 30 s and 180 s, the release scnet
    python bench/bench_browser.py --seconds 10 --song-seconds 0

The last line printed is one JSON object with those fields; it is also written to
``bench/results/browser.json`` with the export's time, the worker's facts and the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_listen import LOG, SERVE, random_release_checkpoint, start_server  # noqa: E402
from bench_separate import synthetic_track  # noqa: E402
from web_helpers import chromium, wait_js  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"


def export(model_file: Path, folder: Path, int8: bool = False) -> tuple[str, float]:
    """Export the checkpoint into ``folder/<its name>``; its served name and the seconds it took."""
    from freestems import export as exporter
    from freestems.models import load_model

    model = load_model(model_file=model_file)
    started = time.perf_counter()
    exporter.export_model(model, folder / model.name, int8=int8)
    return model.name, time.perf_counter() - started


def run_once(page: Any, track: Path, precision: str) -> dict[str, Any]:
    """One separation on the device through the page's form; the page's and the worker's timings."""
    wait_js(page, "window.freestems.device.unavailable() === ''", timeout=60)
    page.evaluate("(precision) => { window.freestems.device.precision = precision; }", precision)
    advised = "window.freestems.device.advice()"
    wait_js(page, f"{advised}.words !== undefined || {advised}.touched", timeout=60)
    advice = page.evaluate("window.freestems.device.advice()")  # what the page chose for the person
    page.check('input[name="where"][value="device"]')
    page.set_input_files("#file", str(track))
    wait_js(page, "!document.getElementById('separate').disabled", timeout=60)
    started = time.perf_counter()
    page.click("#separate")
    phase = wait_js(page, FINISHED, timeout=3600)
    whole = time.perf_counter() - started
    if phase != "result":
        raise SystemExit(f"the separation failed: {page.evaluate('window.freestems.problem')}")
    info = page.evaluate("window.freestems.device.last().info")
    return {"whole_s": round(whole, 2), "info": {**info, "advice": advice}}


def facts(run: dict[str, Any], seconds: int) -> dict[str, Any]:
    """What one run says about speed: first sound, whole time, seconds per chunk, speed against real time."""
    info = run["info"]
    work = info["timings"]["whole_s"] - info["timings"]["load_s"]
    return {
        "first_sound_s": round(info["first_block_page_s"], 2),
        "first_chunk": info["timings"]["first_sound_s"] < info["timings"]["first_block_s"],
        "first_block_s": round(info["timings"]["first_block_s"], 2),
        "whole_s": run["whole_s"],
        "chunk_s": round(work / info["chunks"], 2),
        "realtime": round(seconds / run["whole_s"], 3),
    }


def python_seconds(track: Path, model_file: Path, out: Path) -> float:
    """Wall seconds of ``freestems separate`` on ``track`` (MP3 out), a process of its own."""
    command = [sys.executable, "-c", SERVE, "separate", str(track), "--model-file", str(model_file)]
    started = time.perf_counter()
    subprocess.run([*command, "-o", str(out), "--format", "mp3"], check=True, capture_output=True)
    return round(time.perf_counter() - started, 2)


def separate_in_page(url: str, clip: Path, song: Path | None, precision: str) -> list[dict[str, Any]]:
    """The clip twice (the second with the network cached), then the song, in one page of Chromium."""
    runs = []
    with chromium() as browser:
        page = browser.new_page()
        page.goto(url + "/")
        wait_js(page, "Boolean(window.freestems && window.freestems.ready)", timeout=60)
        for track in [clip, clip, *([song] if song else [])]:
            if runs:
                page.click("#again")
            runs.append(run_once(page, track, precision))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="scnet", help="catalog model whose release config is used")
    parser.add_argument("--seconds", type=int, default=30, help="the clip's length")
    parser.add_argument("--song-seconds", type=int, default=180, help="the song's length (0: no song)")
    parser.add_argument("--log", default=LOG, help="where the server writes its output")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="the network file the page runs (int8: exported with --int8; results in browser-int8.json)",
    )
    args = parser.parse_args()
    args.model_config = None  # start_server's: the checkpoint carries its config

    with tempfile.TemporaryDirectory(prefix="bench-browser-") as work:
        root = Path(work)
        model_file = random_release_checkpoint(root / f"{args.model}.pt", args.model)
        name, export_s = export(model_file, root / "device", int8=args.precision == "int8")
        clip, song = root / "clip.mp3", root / "song.mp3"
        synthetic_track(clip, args.seconds, seed=1)
        if args.song_seconds:
            synthetic_track(song, args.song_seconds, seed=2)
        os.environ["FREESTEMS_DEVICE_DIR"] = str(root / "device")
        process, url = start_server(args, root / "data", model_file)
        try:
            runs = separate_in_page(url, clip, song if args.song_seconds else None, args.precision)
        finally:
            process.terminate()
            process.wait(timeout=60)
        python_s = python_seconds(song, model_file, root / "python") if args.song_seconds else None

    first = runs[0]["info"]
    found: dict[str, Any] = {
        "clip": {
            **facts(runs[0], args.seconds),
            "cached_whole_s": runs[1]["whole_s"],
            "network_load_s": round(first["timings"]["load_s"], 2),
        },
        "threads": first["threads"],
        "file": first["file"],
        "backend": first.get("backend"),
        "advice": first["advice"].get("words"),
    }
    if args.song_seconds:
        found["song"] = {**facts(runs[2], args.song_seconds), "chunks": runs[2]["info"]["chunks"]}
        found["python_song_s"] = python_s
    details = {
        **found,
        "model": name,
        "seconds": {"clip": args.seconds, "song": args.song_seconds},
        "export_s": round(export_s, 1),
        "cores": os.cpu_count(),
        "worker": [run["info"] for run in runs],
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.precision == "auto" else f"-{args.precision}"
    (RESULTS / f"browser{suffix}.json").write_text(json.dumps(details, indent=2) + "\n")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
