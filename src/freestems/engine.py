"""The separation engine: chunked overlap-add inference in bounded memory.

A track is cut into chunks of the model's training segment. Consecutive chunks overlap by ``overlap`` of
their length; each chunk's output is weighted by a window that ramps up over the overlap, stays flat in
between and ramps down again, and every output sample is divided by the sum of the weights that reached it.
The weights are normalised, so a model that returns its input gives back the input exactly, whatever the
overlap.

The end of the track follows the model's ``chunk_tail`` (a field of the model contract, like its segment):

- ``"zeros"`` (the default): chunks step on until one reaches the end; what lies past the end is silence.
- ``"centred"``: a chunk starts at every step before the end, and a chunk that runs past the end is moved back
  by half the part past the end, so the model hears real audio there instead of silence; its output is read
  back at the same shift and weighted as at its own place. This is what Demucs's ``apply_model`` does, and
  models trained with it (the HT-Demucs family) give its results only so.

``shifts`` adds passes whose chunk grid starts a random fraction of a second earlier; all passes feed the same
output buffer, so they are averaged with the same normalised weights.

Everything works on a stream of blocks: input is consumed as it arrives, and stems are yielded as soon as no
later chunk can change them. Memory is a few chunks, whatever the track length.

Two entry points:

- :func:`separate` takes a whole waveform and returns whole stems (the simple library call);
- :func:`separate_blocks` takes an iterable of blocks and yields finished stem blocks (the pipeline's call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from freestems.contract import CHUNK_TAILS, SAMPLE_RATE, LoadedModel, MixStats
from freestems.rules import (  # the engine's rules, importable without torch; re-exported here
    COMPLEMENT_PREFIX,  # noqa: F401
    DEVICES,  # noqa: F401
    MAX_OVERLAP,  # noqa: F401
    MAX_SHIFTS,  # noqa: F401
    PRECISIONS,  # noqa: F401
    Device,  # noqa: F401
    Precision,  # noqa: F401
    SeparationError,  # noqa: F401
    check_overlap,  # noqa: F401
    check_shifts,  # noqa: F401
    complement,  # noqa: F401
    output_names,  # noqa: F401
    pair_stem,  # noqa: F401
)
from freestems.runtime import tune_allocator

Progress = Callable[[float], None]
"""Called with the fraction of the work done, from 0 to 1."""

MAX_SHIFT_SECONDS = 0.5


def resolve_device(name: str = "auto") -> torch.device:
    """Pick ``cuda``, then ``mps``, then ``cpu`` for ``auto``; check that an explicit choice exists here."""
    if name not in DEVICES:
        raise SeparationError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise SeparationError(f"device {name!r} is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def window(length: int, overlap_length: int) -> torch.Tensor:
    """Trapezoid weights: linear ramps over ``overlap_length`` at both ends, flat between, never 0."""
    positions = torch.arange(length, dtype=torch.float32)
    ramp = float(overlap_length + 1)
    return torch.minimum((positions + 1) / ramp, (length - positions) / ramp).clamp(max=1.0)


def separate(
    mix: np.ndarray | torch.Tensor,
    model: LoadedModel,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Separate a whole waveform.

    Args:
        mix: float32 ``(channels, samples)`` at 44.1 kHz (stereo; mono is duplicated).
        model: a loaded model (:func:`freestems.models.load_model`).
        progress: optional callback receiving the fraction done.
        **options: as for :func:`separate_blocks` (``overlap``, ``shifts``, ``two_stems``, ``consistency``,
            ``segment``, ``batch_size``, ``device``, ``precision``, ``seed``).

    Returns:
        ``{stem name: float32 (2, samples)}``, each exactly as long as ``mix``; with ``two_stems="vocals"``
        the keys are ``vocals`` and ``no_vocals``.
    """
    mix = _as_stereo(mix)
    stats = MixStats.of([mix]) if model.normalize else None
    parts: dict[str, list[np.ndarray]] = {}
    blocks = separate_blocks([mix], model, length=mix.shape[1], stats=stats, progress=progress, **options)
    for block in blocks:
        for name, audio in block.items():
            parts.setdefault(name, []).append(audio)
    return {name: np.concatenate(chunks, axis=1) for name, chunks in parts.items()}


def two_stem_pair(stem: str, audio: np.ndarray, mix: np.ndarray) -> dict[str, np.ndarray]:
    """``{stem: audio, no_<stem>: mix - audio}``: the two stems of two-stem mode, which sum to ``mix``."""
    return {stem: audio, complement(stem): mix - audio}


def check_segment(model: LoadedModel, segment: int | None) -> None:
    """Refuse a chunk length the model cannot take (HT-Demucs: longer than its training segment)."""
    limit = model.max_segment
    if segment is not None and limit is not None and segment > limit:
        raise SeparationError(
            f"model {model.name} takes chunks of at most {limit} samples ({limit / SAMPLE_RATE:.2f} s, its "
            f"training segment); the segment asked for is {segment / SAMPLE_RATE:.2f} s: give less"
        )


def separate_blocks(
    blocks: Iterable[np.ndarray],
    model: LoadedModel,
    *,
    length: int | None = None,
    stats: MixStats | None = None,
    overlap: float = 0.25,
    shifts: int = 1,
    two_stems: str | None = None,
    consistency: bool = False,
    segment: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Separate a stream of blocks, yielding finished stem blocks in order.

    Args:
        blocks: float32 ``(2, n)`` arrays at 44.1 kHz, any sizes, in order.
        model: a loaded model; ``model.segment`` is the default chunk length.
        length: total samples, if known (only used for progress).
        progress: called after every batch of chunks with the fraction done (0.0 while ``length`` is
            unknown) and with 1.0 at the end; whatever it raises (a cancellation) stops the separation.
        stats: whole-track statistics; required for models with ``normalize`` (compute them in a first pass
            with :meth:`MixStats.of`). Without it such a model falls back to no normalisation.
        overlap: fraction of a chunk shared with the next one, in [0, 0.9).
        shifts: number of passes with random sub-second offsets (seeded by ``seed``), averaged.
        two_stems: yield only this stem and its :func:`complement` (the mix minus the stem).
        consistency: spread the residual ``mix - sum(stems)`` evenly, so the stems sum to the mix.
        segment: chunk length in samples (default: the model's training segment).
        batch_size: chunks per forward pass (default: 1 on the CPU, where larger batches only cost memory;
            4 on a GPU).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        precision: ``auto`` (fp16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16``.

    Yields:
        ``{stem name: float32 (2, n)}`` blocks whose lengths add up to the input's length.
    """
    asked_segment = segment
    segment = int(segment or model.segment)
    check_segment(model, segment)
    check_overlap(overlap)
    check_shifts(shifts)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 4
    if batch_size < 1:
        raise SeparationError(f"batch_size must be at least 1, got {batch_size}")
    if segment < 4096:
        raise SeparationError(f"segment must be at least 4096 samples, got {segment}")
    if precision not in PRECISIONS:
        raise SeparationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    output_names(model.sources, two_stems)  # validates two_stems
    two_stems = pair_stem(model.sources, two_stems)
    stats = stats if model.normalize else None
    if model.stream is not None:  # a model made of models (an ensemble) runs each one through this engine
        members = model.stream(
            separate_blocks,
            blocks,
            length=length,
            stats=stats,
            progress=progress,
            overlap=overlap,
            shifts=shifts,
            segment=asked_segment,
            batch_size=batch_size,
            device=device,
            precision=precision,
            seed=seed,
        )
        for stems, mix in members:
            yield _arrange(stems, mix, model.sources, two_stems, consistency)
        return
    tail = model.chunk_tail
    if tail not in CHUNK_TAILS:
        raise SeparationError(f"model {model.name}: unknown chunk_tail {tail!r} ({', '.join(CHUNK_TAILS)})")
    centred = tail == "centred"
    keep = segment // 2 if centred else 0  # input a centred last chunk may reach back to

    stride = max(1, round(segment * (1 - overlap)))
    rng = np.random.default_rng(seed)
    max_shift = min(int(MAX_SHIFT_SECONDS * SAMPLE_RATE), segment // 2)  # chunk 0 must still cover sample 0
    offsets = [0] if shifts == 1 else [int(o) for o in rng.integers(0, max_shift, size=shifts)]
    runner = _ChunkRunner(model, device, precision)
    mixer = _OverlapAdd(len(model.sources), window(segment, segment - stride))
    source = _InputBuffer()
    plan = _ChunkPlan(offsets, stride, segment, every_step=centred)
    chunks_total = plan.total(length) if length else None
    chunks_done = 0

    def emit(upto: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield the finished output before ``upto``, then forget the input nobody needs any more."""
        stems = mixer.pop(upto)
        if stems is not None:
            mix = source.take(mixer.start - stems.shape[-1], mixer.start)
            if stats is not None:
                stems = stems * stats.std + stats.mean
            yield _arrange(stems, mix, model.sources, two_stems, consistency)
        source.forget_before(mixer.start - keep)

    block_iter = iter(blocks)
    exhausted = False
    pending: list[int] = []
    while True:
        exhausted = exhausted or _read_until_chunk(block_iter, source, plan, segment, stats)
        if plan.peek() is not None:
            pending.append(plan.pop())
            if len(pending) < batch_size and plan.peek() is not None:
                continue
        if not pending:
            break
        _run_batch(pending, source, runner, mixer, segment, centred=centred, exhausted=exhausted)
        chunks_done += len(pending)
        pending = []
        if progress is not None:  # after every batch, known total or not: a callback may stop the work
            progress(min(chunks_done / chunks_total, 1.0) if chunks_total else 0.0)
        yield from emit(min(plan.final_position(), source.end))
    yield from emit(source.end)
    if progress is not None:
        progress(1.0)


def _read_until_chunk(
    blocks: Iterator[np.ndarray], source: _InputBuffer, plan: _ChunkPlan, segment: int, stats: MixStats | None
) -> bool:
    """Read input until the next chunk of ``plan`` is complete or the stream ends; True once it ended."""
    start = plan.peek()
    while start is None or source.end < start + segment:
        block = next(blocks, None)
        if block is None:
            if source.end == 0:
                raise SeparationError("the input has no samples")
            plan.close(source.end)
            return True
        source.append(_as_stereo(block), stats)
        start = plan.peek()
    return False


def _run_batch(
    starts: list[int],
    source: _InputBuffer,
    runner: _ChunkRunner,
    mixer: _OverlapAdd,
    segment: int,
    *,
    centred: bool,
    exhausted: bool,
) -> None:
    """Run the chunks at ``starts`` through the model as one batch and add their outputs to the mix.

    A centred chunk that runs past the end of the input is read back by half of what it has past the end
    (0 otherwise), and its output is taken at the same shift.
    """
    backs = [max(0, start + segment - source.end) // 2 if centred else 0 for start in starts]
    chunks = [source.chunk(start - back, segment) for start, back in zip(starts, backs, strict=True)]
    outputs = runner(chunks)
    for start, back, output in zip(starts, backs, outputs, strict=True):
        mixer.add(start, output[..., back:], limit=source.end if exhausted else None)


def _as_stereo(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    audio = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise SeparationError(f"expected (channels, samples) audio with 1 or 2 channels, got {audio.shape}")
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return audio.astype(np.float32, copy=False)


def _arrange(
    stems: np.ndarray, mix: np.ndarray, sources: Sequence[str], two_stems: str | None, consistency: bool
) -> dict[str, np.ndarray]:
    """Turn a (sources, 2, n) block into named stems: consistency, two-stem pairing."""
    if consistency:
        stems = stems + (mix - stems.sum(axis=0)) / len(sources)
    if two_stems is None:
        return {name: stems[i] for i, name in enumerate(sources)}
    return two_stem_pair(two_stems, stems[list(sources).index(two_stems)], mix)


class _ChunkPlan:
    """Chunk start positions of every pass, in order of chunk index, then pass.

    Pass ``p`` starts its grid at ``-offsets[p]`` and steps by ``stride``. Its chunk ``k > 0`` is needed while
    chunk ``k - 1`` ended before the end of the input (with ``every_step``: while chunk ``k`` starts before
    the end, as Demucs plans), which is unknown until :meth:`close`.
    """

    def __init__(self, offsets: list[int], stride: int, segment: int, every_step: bool = False):
        self.offsets, self.stride, self.segment = offsets, stride, segment
        self.every_step = every_step
        self.length: int | None = None
        self.index = 0
        self.queue = list(range(len(offsets)))  # passes whose chunk `index` is still to come

    def close(self, length: int) -> None:
        self.length = length

    def _start(self, index: int, p: int) -> int:
        return index * self.stride - self.offsets[p]

    def _needed(self, index: int, p: int) -> bool:
        if index == 0 or self.length is None:
            return True
        if self.every_step:
            return self._start(index, p) < self.length
        return self._start(index - 1, p) + self.segment < self.length

    def peek(self) -> int | None:
        """Start of the next chunk, or None once the input has ended and every pass covers it."""
        while True:
            self.queue = [p for p in self.queue if self._needed(self.index, p)]
            if self.queue:
                return self._start(self.index, self.queue[0])
            if not any(self._needed(self.index + 1, p) for p in range(len(self.offsets))):
                return None
            self.index += 1
            self.queue = list(range(len(self.offsets)))

    def pop(self) -> int:
        start = self.peek()
        assert start is not None, "pop() after the plan ended"
        self.queue.pop(0)
        return start

    def final_position(self) -> int:
        """Output before this position can no longer change: no chunk still to come starts earlier."""
        if self.peek() is None:
            assert self.length is not None
            return self.length
        upcoming = [self._start(self.index, p) for p in self.queue]
        upcoming += [self._start(self.index + 1, p) for p in range(len(self.offsets))]
        return max(0, min(upcoming))

    def total(self, length: int) -> int:
        """How many chunks a track of ``length`` samples takes, over all passes."""
        count = 0
        for offset in self.offsets:
            start = -offset
            count += 1
            while (start + self.stride if self.every_step else start + self.segment) < length:
                start += self.stride
                count += 1
        return count


class _InputBuffer:
    """The input samples still needed, as absolute positions ``[start, end)`` of the (normalised) mix.

    Keeps the raw mix too, for ``no_<stem>`` and consistency.
    """

    def __init__(self) -> None:
        self.start = 0
        self.end = 0
        self.normalised = np.zeros((2, 0), np.float32)
        self.raw = np.zeros((2, 0), np.float32)

    def append(self, block: np.ndarray, stats: MixStats | None) -> None:
        self.raw = np.concatenate([self.raw, block], axis=1)
        scaled = block if stats is None else (block - stats.mean) / stats.std
        self.normalised = np.concatenate([self.normalised, scaled.astype(np.float32)], axis=1)
        self.end += block.shape[1]

    def chunk(self, start: int, size: int) -> torch.Tensor:
        """Samples ``[start, start + size)``, zero (in the normalised domain) outside the input."""
        out = np.zeros((2, size), np.float32)
        lo, hi = max(start, self.start), min(start + size, self.end)
        if hi > lo:
            out[:, lo - start : hi - start] = self.normalised[:, lo - self.start : hi - self.start]
        return torch.from_numpy(out)

    def take(self, lo: int, hi: int) -> np.ndarray:
        return self.raw[:, lo - self.start : hi - self.start]

    def forget_before(self, position: int) -> None:
        drop = max(0, position - self.start)
        if drop:
            self.raw = self.raw[:, drop:].copy()
            self.normalised = self.normalised[:, drop:].copy()
            self.start += drop


class _OverlapAdd:
    """Weighted sums of chunk outputs and of their weights, from ``start`` (everything before is emitted)."""

    def __init__(self, sources: int, weights: torch.Tensor):
        self.weights = weights.numpy()
        self.start = 0
        self.sums = np.zeros((sources, 2, 0), np.float32)
        self.total = np.zeros(0, np.float32)

    def add(self, start: int, output: np.ndarray, limit: int | None) -> None:
        size = output.shape[-1]
        lo, hi = max(start, self.start), start + size
        if limit is not None:
            hi = min(hi, limit)
        if hi <= lo:
            return
        grow = hi - self.start - self.total.shape[0]
        if grow > 0:
            zeros = np.zeros((*self.sums.shape[:2], grow), np.float32)
            self.sums = np.concatenate([self.sums, zeros], axis=2)
            self.total = np.concatenate([self.total, np.zeros(grow, np.float32)])
        w = self.weights[lo - start : hi - start]
        self.sums[..., lo - self.start : hi - self.start] += output[..., lo - start : hi - start] * w
        self.total[lo - self.start : hi - self.start] += w

    def pop(self, upto: int) -> np.ndarray | None:
        count = min(upto - self.start, self.total.shape[0])
        if count <= 0:
            return None
        out = self.sums[..., :count] / self.total[:count]
        self.sums = self.sums[..., count:].copy()
        self.total = self.total[count:].copy()
        self.start += count
        return out


class _ChunkRunner:
    """Runs batches of chunks through the model on the chosen device and precision."""

    def __init__(self, model: LoadedModel, device: torch.device, precision: str):
        self.module = model.module
        self.device = device
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if next(self.module.parameters()).device != device:
            self.module.to(device)
        if device.type == "cpu":
            tune_allocator()

    def __call__(self, chunks: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(chunks).to(self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out: torch.Tensor = self.module(batch)
        return out.float().cpu().numpy()
