"""How much memory does the page hold while it separates a long song on the visitor's device?

Exports the tests' small seeded SCNet (a 2 s segment: its compute is light, so a long song takes minutes,
not hours) with ``freestems export``'s code, serves it from a device-only server on 127.0.0.1 (the
server's maximum length raised to the song's), and has the page in headless Chromium separate a synthetic
song (default 10 minutes, MP3, ``bench_separate.synthetic_track``) "On this device": the page's own
decoding, the engine's Web Worker, the live player, the WAV files and the zip, and the result player's
hand-over. Memory does not depend on the weights or the compute's speed; what the page keeps of the song
does.

Meanwhile a thread reads every 0.2 s the resident memory (RSS, ``/proc/<pid>/status``) of this Chromium's
processes (the descendants of this process): the renderer processes (the page and its workers: the
number that matters) and all of them (the browser process holds Blobs too). Reported, in MB (10^6 bytes):

- ``idle_mb``: the renderers before the click (the page loaded, nothing separated yet);
- ``separating_peak_mb``: the renderers' peak until the worker's last block (the ``device_done`` event);
- ``peak_mb``: the renderers' peak over the whole run (the files and the hand-over included), and
  ``peak_hwm_mb``, the renderers' own high-water marks (``VmHWM``) at the end, the peak between samples;
- ``after_mb``: the renderers once the result card shows, after a garbage collection (DevTools'
  ``HeapProfiler.collectGarbage``) and 3 s: what the page keeps (the player's float copy of the stems and
  the WAV files of the downloads);
- ``all_peak_mb``, ``all_after_mb``: the same over every Chromium process;
- ``stems_f32_mb``: one float copy of the stems (frames x 2 channels x 4 bytes x stems), ``wav_mb`` their
  16-bit WAV files: the floor of what the page must hold;
- ``whole_s``: from the click to the result card (load-sensitive on a shared machine; memory is not).

    python bench/bench_device_memory.py                    # 10 minutes, four stems
    python bench/bench_device_memory.py --seconds 120 --two-stems vocals
    python bench/bench_device_memory.py --label before      # the JSON's key in the results file

The last line printed is one JSON object; it is also merged into ``bench/results/device_memory.json``
under ``--label``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_separate import synthetic_track  # noqa: E402
from web_helpers import chromium, wait_js  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FINISHED = "['result', 'problem'].includes(window.freestems.phase) && window.freestems.phase"
DONE = "window.freestems.events.some((event) => event.kind === 'device_done')"
MB = 1e6


def descendants(root: int) -> list[int]:
    """The processes under ``root`` (Linux /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB; zeros when it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: line.split()[1] for line in lines if line.startswith(("VmRSS", "VmHWM"))}
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def chromium_processes() -> dict[int, bool]:
    """This process's Chromium processes: pid -> whether it is a renderer (the page and its workers)."""
    found = {}
    for pid in descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()  # a zygote's children: one spaced string
        except OSError:
            continue
        if b"chrom" in command.split(b"\0")[0].split(b" ")[0].rsplit(b"/", 1)[-1]:
            found[pid] = b"--type=renderer" in command
    return found


class Sampler:
    """Samples the RSS of Chromium's renderers (and of all its processes) every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, renderers kB, all kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        renderers = total = 0
        for pid, renderer in chromium_processes().items():
            rss, _ = memory_kb(pid)
            total += rss
            renderers += rss if renderer else 0
        return renderers, total

    def hwm_kb(self) -> int:
        return sum(memory_kb(pid)[1] for pid, renderer in chromium_processes().items() if renderer)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.monotonic(), *self.now()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, since: float, until: float = float("inf"), column: int = 1) -> float:
        values = [sample[column] for sample in self.samples if since <= sample[0] <= until]
        return round(max(values, default=0) * 1024 / MB, 1)


def export_small(folder: Path) -> str:
    """The tests' small seeded SCNet exported into ``folder/<its name>``; its name."""
    from model_helpers import make_small_checkpoint

    from freestems import export as exporter
    from freestems.models import load_model

    checkpoint = make_small_checkpoint(folder / "small.pt", seed=3, normalize=True)
    model = load_model(model_file=checkpoint, spec_norm=True)
    exporter.export_model(model, folder / "exports" / model.name)
    return model.name


def separate(url: str, song: Path, two_stems: str | None) -> dict[str, Any]:
    """The page separates ``song`` on the device while the sampler runs; the memory and the time."""
    with chromium() as browser, Sampler() as sampler:
        page = browser.new_page()
        cdp = page.context.new_cdp_session(page)
        page.goto(url + "/")
        wait_js(page, "Boolean(window.freestems && window.freestems.ready)", timeout=60)
        wait_js(page, "window.freestems.device.unavailable() === ''", timeout=60)
        if two_stems:
            page.check('input[name="stems"][value="two"]')
            page.select_option("#two-stems", two_stems)
        page.set_input_files("#file", str(song))
        wait_js(page, "!document.getElementById('separate').disabled", timeout=60)
        cdp.send("HeapProfiler.collectGarbage")
        time.sleep(1)
        idle = sampler.now()[0]
        started = time.monotonic()
        page.click("#separate")
        wait_js(page, DONE, timeout=7200, interval=0.5)
        separated = time.monotonic()
        phase = wait_js(page, FINISHED, timeout=600, interval=0.2)
        whole = time.monotonic() - started
        if phase != "result":
            raise SystemExit(f"the separation failed: {page.evaluate('window.freestems.problem')}")
        shown = time.monotonic()
        time.sleep(2)  # the hand-over lets go of the live player's buffers after its own timers
        cdp.send("HeapProfiler.collectGarbage")
        time.sleep(3)
        after = sampler.now()
        hwm = sampler.hwm_kb()
        stems = page.eval_on_selector_all("#stems li", "rows => rows.map(row => row.dataset.stem)")
        info = page.evaluate("window.freestems.device.last().info")
    return {
        "idle_mb": round(idle * 1024 / MB, 1),
        "separating_peak_mb": sampler.peak(started, separated),
        "peak_mb": sampler.peak(started, shown + 5),
        "peak_hwm_mb": round(hwm * 1024 / MB, 1),
        "after_mb": round(after[0] * 1024 / MB, 1),
        "all_peak_mb": sampler.peak(started, shown + 5, column=2),
        "all_after_mb": round(after[1] * 1024 / MB, 1),
        "whole_s": round(whole, 1),
        "stems": stems,
        "frames": None,
        "worker": info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=600, help="the song's length")
    parser.add_argument("--two-stems", default=None, help="karaoke mode: this stem and the rest")
    parser.add_argument("--label", default="run", help="the key of this run in the results file")
    args = parser.parse_args()

    from service_helpers import running_server, small_settings

    with tempfile.TemporaryDirectory(prefix="bench-device-memory-") as work:
        root = Path(work)
        name = export_small(root)
        song = root / "song.mp3"
        synthetic_track(song, args.seconds, seed=2)
        settings = small_settings(
            root / "data",
            device_dir=root / "exports",
            device_only=True,
            models=(name,),
            max_duration=float(args.seconds + 60),
        )
        with running_server(settings, None) as server:
            found = separate(server.url, song, args.two_stems)
    frames = found["worker"]["length"]
    count = len(found["stems"])
    found["frames"] = frames
    found["stems_f32_mb"] = round(frames * 2 * 4 * count / MB, 1)
    found["wav_mb"] = round((44 + frames * 2 * 2) * count / MB, 1)
    found["seconds"] = args.seconds
    found["two_stems"] = args.two_stems
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "device_memory.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.label] = {**found, "cores": os.cpu_count()}
    path.write_text(json.dumps(results, indent=2) + "\n")
    found.pop("worker")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
