"""What ``freestems models`` prints: the catalog grouped by job in a 100-column terminal, every detail of one
entry, or the whole catalog as JSON.

Everything here reads the catalog and the weights cache only (no torch), and returns lines or data for the
command to print.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from freestems.contract import SAMPLE_RATE, SOURCES
from freestems.models.catalog import CATALOG, DEFAULT_MODEL, JOBS, ModelInfo

WIDTH = 100
"""The terminal width the listing fits in."""

HEADER = ("name", "stems", "SDR dB", "test set", "cost", "cached", "serve")
_SIX = (*SOURCES, "guitar", "piano")
_STEMS_WIDTH = 17

Cached = Callable[[ModelInfo], bool]
"""Whether an entry's files are all in the weights cache."""


def catalog_json(catalog: Mapping[str, ModelInfo] | None = None) -> dict[str, Any]:
    """The whole catalog as JSON-ready data: the default model, the jobs and every field of every entry."""
    catalog = CATALOG if catalog is None else catalog
    return {
        "default": DEFAULT_MODEL,
        "jobs": dict(JOBS),
        "models": {name: entry_json(info) for name, info in catalog.items()},
    }


def entry_json(info: ModelInfo) -> dict[str, Any]:
    """Every field of one entry, as JSON-ready data."""
    return dataclasses.asdict(info)


# ------------------------------------------------------------------------------------------- the listing


def listing(cached: Cached, cache_dir: Path, catalog: Mapping[str, ModelInfo] | None = None) -> list[str]:
    """The catalog grouped by job (entries that serve the same jobs together), one line per entry, then a
    legend; no line is longer than :data:`WIDTH`."""
    catalog = CATALOG if catalog is None else catalog
    rows = {name: _row(info, cached(info)) for name, info in catalog.items()}
    widths = [max(len(row[i]) for row in (HEADER, *rows.values())) for i in range(len(HEADER))]
    lines = [_line(HEADER, widths)]
    for jobs, names in _groups(catalog).items():
        lines.append("")
        lines += [f"{job}: {JOBS[job]}" for job in jobs]
        lines += [_line(rows[name], widths) for name in names]
    return [*lines, "", *_legend(cache_dir)]


def _groups(catalog: Mapping[str, ModelInfo]) -> dict[tuple[str, ...], list[str]]:
    """Entry names by the jobs they serve, in :data:`JOBS` order (entries without jobs last)."""
    order = {job: index for index, job in enumerate(JOBS)}
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, info in catalog.items():
        groups.setdefault(tuple(info.jobs), []).append(name)
    return dict(sorted(groups.items(), key=lambda item: [order[job] for job in item[0]] or [len(order)]))


def _line(cells: Iterable[str], widths: list[int]) -> str:
    return "  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _row(info: ModelInfo, cached: bool) -> tuple[str, ...]:
    name = info.name + (" (default)" if info.name == DEFAULT_MODEL else "")
    return (
        name,
        stems_cell(info.sources),
        sdr_cell(info.sdr, info.sources),
        set_cell(info),
        "?" if info.relative_cost is None else f"{info.relative_cost:.1f}x",
        "yes" if cached else "no",
        "yes" if info.servable else "no",
    )


def stems_cell(sources: tuple[str, ...]) -> str:
    """The stems in a few characters: ``4 stems`` (drums, bass, other, vocals), ``6 stems`` (with guitar and
    piano), ``vocals, no_vocals`` (a one-stem model's two outputs), the names when short, else a count."""
    if len(sources) == 1:
        return f"{sources[0]}, no_{sources[0]}"
    if set(sources) in (set(SOURCES), set(_SIX)):
        return f"{len(sources)} stems"
    names = ", ".join(sources)
    return names if len(names) <= _STEMS_WIDTH else f"{len(sources)} stems"


def sdr_cell(sdr: Mapping[str, float], sources: tuple[str, ...]) -> str:
    """The headline published SDR: the average when published, else the first stem's; ``-`` when none."""
    for key in ("avg", *sources):
        if key in sdr:
            return f"{key} {sdr[key]:.2f}"
    return "-"


def set_cell(info: ModelInfo) -> str:
    """The test set of the published SDR (``unnamed`` when the publisher names none)."""
    if not info.sdr:
        return "-"
    return info.sdr_set or "unnamed"


def _legend(cache_dir: Path) -> list[str]:
    text = (
        "SDR: dB as published (the average, else the first stem's), on the test set named: MUSDB18-HQ, "
        "MVSep's Multisong, the DrumSep models' own test; figures on different sets do not compare. "
        "cost: seconds per minute of audio relative to scnet, measured by bench/bench_models.py on one "
        "CPU (?: not measured). "
        f"cached: every file is in the weights cache ({cache_dir}). "
        "serve: yes when the weights' licence allows a service to offer them; no: run them yourself "
        "from the CLI or the library (a service offers one only when its operator names it). "
        "Ensembles: -m a+b. freestems models NAME shows one model; --json the whole catalog."
    )
    return textwrap.wrap(text, WIDTH)


# ------------------------------------------------------------------------------------------- one entry


def details(info: ModelInfo, cache_dir: Path, cached: Cached) -> list[str]:
    """Every detail of one entry, a label and a value a line (long values wrapped, URLs never)."""
    fields = [
        ("family", info.architecture),
        ("jobs", "; ".join(f"{job} ({JOBS[job]})" for job in info.jobs) or "-"),
        ("stems", ", ".join(info.sources) + _one_stem(info.sources)),
        ("SDR", _sdr_text(info)),
        ("cost", _cost_text(info.relative_cost)),
        ("parameters", "unknown" if info.parameters_m is None else f"{info.parameters_m:g} M"),
        ("size", "unknown" if info.size is None else f"{info.size} bytes"),
        ("sha256", info.sha256 or "not published (pinned at the first download)"),
        ("licence", info.license),
        ("servable", _servable_text(info)),
        *_running(info),
        *_files(info, cache_dir, cached),
        ("note", info.note or "-"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{info.name}: {info.title}" + (" (the default)" if info.name == DEFAULT_MODEL else "")]
    for label, value in fields:
        lines += _wrapped(label, value, width)
    return lines


def _one_stem(sources: tuple[str, ...]) -> str:
    return f", and no_{sources[0]} (the mix minus {sources[0]})" if len(sources) == 1 else ""


def _sdr_text(info: ModelInfo) -> str:
    if not info.sdr:
        return "none published"
    figures = ", ".join(f"{stem} {value:.2f}" for stem, value in info.sdr.items())
    return f"{figures} ({info.sdr_set or 'test set not named'})"


def _cost_text(cost: float | None) -> str:
    if cost is None:
        return "not measured"
    return f"{cost:.1f}x scnet's seconds per minute of audio (bench/bench_models.py)"


def _servable_text(info: ModelInfo) -> str:
    if info.servable:
        return "yes: a service may offer it"
    if info.architecture == "ensemble":
        members = [CATALOG[name] for name, _ in info.config["members"]]
        which = ", ".join(member.name for member in members if not member.servable)
        why = f"the licence of {which} does not allow serving it"
    else:
        why = "its licence does not allow serving it"
    return (
        f"no: {why}; run it from the CLI or the library (you download the weights yourself), a service "
        "offers it only when its operator names it"
    )


def _running(info: ModelInfo) -> list[tuple[str, str]]:
    """The chunk and the normalisation (an ensemble runs each member as it runs alone)."""
    if info.architecture == "ensemble":
        return []
    return [
        ("segment", f"{info.segment} samples ({info.segment / SAMPLE_RATE:.2f} s)"),
        ("normalise", "yes: the whole track, by its mean and deviation" if info.normalize else "no"),
    ]


def _files(info: ModelInfo, cache_dir: Path, cached: Cached) -> list[tuple[str, str]]:
    """The URLs and where each file lies in the cache (a preset: its members and whether they are cached)."""
    if info.architecture == "ensemble":
        members = [CATALOG[name] for name, _ in info.config["members"]]
        listed = ", ".join(f"{m.name} ({'cached' if cached(m) else 'not cached'})" for m in members)
        return [("members", listed), ("cached", "yes" if cached(info) else "no")]
    from freestems.models.download import cache_path, entry_urls

    files: list[tuple[str, str]] = [("weights", url) for url in info.urls]
    if info.config_url:
        how = "downloaded beside the weights" if info.config_filename else "embedded in the catalog"
        files.append(("config", f"{info.config_url} ({how})"))
    for url in entry_urls(info):
        path = cache_path(info, cache_dir, url)
        files.append(("cache", f"{path} ({'present' if _present(path) else 'missing'})"))
    files.append(("cached", "yes" if cached(info) else "no"))
    return files


def _present(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _wrapped(label: str, value: str, width: int) -> list[str]:
    """``label  value``, the value wrapped at :data:`WIDTH` (a URL or path is never broken)."""
    lines = textwrap.wrap(
        value, WIDTH, initial_indent=f"  {label}".ljust(width + 2), subsequent_indent=" " * (width + 2),
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    return lines or [f"  {label}"]


def cache_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The weights cache folder the listing names: ``--cache-dir``, else the default."""
    from freestems.models.download import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
