"""What a separator container's hardware can do, and readying it: the GPU probe and the warm-ups.

It exists so that :mod:`freestems.deploy.modal_app`'s classes say *when* each step runs (before the
snapshot, after the restore) while what each step does is here:

- a GPU-class container whose torch sees no GPU refuses to start (:class:`NoAccelerator`, naming the
  driver, :func:`driver_version`, and the wheel's CUDA: :func:`gpu_refusal`) rather than separate on its
  CPU at GPU prices;
- the precision on a GPU (fp16, else bf16, if a probe shows the output stays faithful) is probed once per
  model, GPU type and torch and kept in a cache (:func:`cached_precision`; on Modal the Dict
  ``<app>-precision``), not at every cold start;
- before the snapshot, one small job runs end to end (:func:`warm_up`: decode, model, MP3 encoders, zip),
  so imports and lazy initialisation are in the snapshot, and the memory that freed is given back
  (:func:`trim_memory`); a device the probe did not warm gets one chunk (:func:`warm_up_device`).

torch is imported inside the functions only: the web tier never needs it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestems.options import SeparationOptions

if TYPE_CHECKING:
    import torch

    from freestems.contract import LoadedModel

log = logging.getLogger("freestems.modal")

WARM_UP_SECONDS = 1.0
"""Length of the job run before the snapshot."""


class NoAccelerator(RuntimeError):
    """A container that declares a GPU has none torch can use: it refuses to start rather than serve
    every song on its CPU at GPU prices."""


def driver_version() -> str | None:
    """The NVIDIA driver of this machine (``nvidia-smi``, else ``/proc/driver/nvidia/version``), if any."""
    import subprocess

    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+(?:\.[0-9]+)+)", text)
    return match.group(1) if match else None


def gpu_refusal(gpu: str, driver: str | None, torch_version: str, wheel_cuda: str | None) -> str:
    """Why a container that declares ``gpu`` cannot use it, for the log and the failed start."""
    if wheel_cuda is None:
        wheel = f"torch {torch_version} is a CPU-only build"
    else:
        wheel = f"torch {torch_version} is built for CUDA {wheel_cuda}"
    seen = f"NVIDIA driver {driver}" if driver else "no NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia)"
    return (
        f"this container declares GPU {gpu} but torch sees no CUDA device: {seen}; {wheel}. Refusing to "
        "start rather than separate on the CPU at GPU prices. Build the image with a torch whose CUDA "
        "the driver runs (a CUDA 13 wheel needs driver 580+; FREESTEMS_MODAL_TORCH_INDEX="
        "https://download.pytorch.org/whl/cu126 for drivers of the 525-575 series) and redeploy."
    )


def trim_memory() -> bool:
    """Give freed memory back before the snapshot: Python's garbage, torch's cached CUDA blocks, and the
    C allocator's free pages (``malloc_trim``, glibc), so they are not saved and restored with every
    container. Returns whether ``malloc_trim`` ran.

    It never asks CUDA anything unless CUDA is in use already (``torch.cuda.is_initialized()`` reads a flag):
    before a CPU memory snapshot no GPU is attached, and torch keeps the device count of its first query,
    so one ``torch.cuda.is_available()`` here would leave every restored container without its GPU."""
    import torch

    gc.collect()
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # only with GPU snapshots
        torch.cuda.empty_cache()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    return bool(libc.malloc_trim(0) or True)


def precision_key(fingerprint: str, device_name: str, requested: str) -> str:
    """The cache key of a precision choice: the model's weights, the GPU, torch, and what was asked."""
    import torch

    return f"{fingerprint}|{device_name}|torch {torch.__version__}|{requested}"


def cached_precision(
    model: LoadedModel,
    device: torch.device,
    requested: str,
    cache: Any,
    *,
    fingerprint: str | None = None,
    candidates: tuple[str, ...] | None = None,
) -> tuple[str, dict[str, float], bool]:
    """:func:`freestems.jobrun.choose_precision`, remembered in ``cache`` (``get``/``put``) by model, GPU
    and torch: the probe runs once, not at every cold start. ``fingerprint``: the model's (from
    :func:`freestems.executors.describe`, computed before the snapshot; default: computed here). Returns the
    precision, its fidelity, and whether it came from the cache. A cache that fails is only a slower start."""
    import torch

    from freestems.executors import describe
    from freestems.jobrun import choose_precision

    if requested != "auto":
        return requested, {}, False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = precision_key(fingerprint or describe(model).fingerprint, name, requested)
    try:
        found = cache.get(key)
    except Exception:
        log.warning("reading the precision cache failed", exc_info=True)
        found = None
    if isinstance(found, Mapping) and isinstance(found.get("precision"), str):
        return str(found["precision"]), dict(found.get("fidelity") or {}), True
    precision, fidelity = choose_precision(model, device, requested, candidates=candidates)
    try:
        cache.put(key, {"precision": precision, "fidelity": fidelity})
    except Exception:
        log.warning("writing the precision cache failed", exc_info=True)
    return precision, fidelity, False


def warm_up(model: LoadedModel, device: torch.device, precision: str) -> None:
    """One short job end to end: decoding, the model, the MP3 encoders, the zip (imports and lazy
    initialisation happen here, before the snapshot, instead of in the first request)."""
    import numpy as np

    from freestems.audio import encode
    from freestems.jobrun import run_job

    folder = Path(tempfile.mkdtemp(prefix="freestems-warm-up-"))
    try:
        rng = np.random.default_rng(0)
        noise = (0.05 * rng.standard_normal((2, int(WARM_UP_SECONDS * model.sample_rate)))).astype(np.float32)
        source = encode(noise, folder / "warm-up.mp3", "mp3", bitrate=128)
        run_job(
            source,
            folder / "warm-up.zip",
            model,
            work_dir=folder / "stems",
            options=SeparationOptions(format="mp3", mp3_bitrate=192),
            device=device,
            precision=precision,
            preload=True,
            parallel_encode=True,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warm_up_device(model: LoadedModel, device: torch.device, precision: str) -> None:
    """One chunk through the model on ``device`` (CUDA context, kernels and FFT plans)."""
    import numpy as np

    from freestems.engine import separate

    separate(np.zeros((2, model.segment), np.float32), model, device=device, precision=precision)
