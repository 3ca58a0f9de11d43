"""The ``freestems`` command: ``separate``, ``models``, ``serve``, ``cost``, ``remote``, ``eval``,
``export`` and ``--version``.

A thin shell: it parses arguments, calls :mod:`freestems.pipeline`, and turns our errors into one line on
stderr and a non-zero exit code. No traceback reaches the user for an expected failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestems.audio.formats import FORMATS, MP3_BITRATES
from freestems.contract import SAMPLE_RATE
from freestems.errors import one_line
from freestems.rules import DEVICES
from freestems.version import __version__

if TYPE_CHECKING:
    from typing import TypeAlias

    from freestems.contract import LoadedModel
    from freestems.cost import UsageRecord, WakeRecord
    from freestems.evaluate import Evaluation, SongResult
    from freestems.service import Settings

    # What ``add_subparsers`` returns: argparse names no public type for it, and it is generic only in the
    # stubs (so the alias exists for the type checker alone).
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

AUDIO_SUFFIXES = {
    ".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".aiff", ".aif",
    ".wma", ".mka", ".mkv", ".mov",
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        print("freestems: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freestems", description="Free, unlimited music stem separation.")
    parser.add_argument("--version", action="version", version=f"freestems {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    separate = commands.add_parser(
        "separate",
        help="split songs into stems",
        description="Split songs into stems: DIR/<model>/<track>/<stem>.<ext>.",
    )
    separate.add_argument("inputs", nargs="+", metavar="INPUT", help="audio/video files or folders of them")
    separate.add_argument("-o", "--out", default="separated", metavar="DIR", help="output folder (separated)")
    add_model_arguments(separate)
    separate.add_argument("--two-stems", metavar="STEM", help="only STEM and no_STEM (e.g. vocals: karaoke)")
    add_engine_arguments(separate)
    separate.add_argument("--format", choices=tuple(FORMATS), default="wav", help="stem format (wav)")
    separate.add_argument("--bitrate", type=int, default=320, choices=MP3_BITRATES, help="MP3 kbps (320)")
    separate.add_argument(
        "--bit-depth", type=int, default=16, choices=FORMATS["wav"].bit_depths, help="wav/flac bits (16)"
    )
    separate.add_argument(
        "--segment", type=float, help="chunk length in seconds (the model's training length)"
    )
    separate.add_argument("--consistency", action="store_true", help="make the stems sum exactly to the mix")
    separate.add_argument("--zip", action="store_true", help="also pack each track's stems into <track>.zip")
    separate.add_argument("--seed", type=int, default=0, help="seed of the --shifts offsets (0)")
    separate.set_defaults(run=run_separate)

    models = commands.add_parser(
        "models",
        help="list the available models by job, or show one",
        description="The catalog grouped by job, which weights are cached and which a service may offer.",
    )
    models.add_argument("name", nargs="?", metavar="NAME", help="show every detail of this model")
    models.add_argument("--json", action="store_true", help="print the catalog (or NAME) as JSON")
    models.add_argument(
        "--cache-dir", type=Path, help="weights cache (FREESTEMS_CACHE or ~/.cache/freestems)"
    )
    models.set_defaults(run=run_models)
    add_serve_parser(commands)
    add_cost_parser(commands)
    add_remote_parser(commands)
    add_eval_parser(commands)
    add_export_parser(commands)
    return parser


def add_serve_parser(commands: Subcommands) -> None:
    """``freestems serve``: its options win over the FREESTEMS_* environment (README, section Service)."""
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service (POST /separate, jobs, session WebSocket)",
        description="Run the HTTP service. Settings come from FREESTEMS_* variables; these options win.",
    )
    serve.add_argument("--host", help="address to listen on (FREESTEMS_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (FREESTEMS_PORT, 8000)")
    serve.add_argument("--data-dir", type=Path, help="jobs, uploads, results (FREESTEMS_DATA_DIR)")
    serve.add_argument("--auth", choices=("pow", "none"), help="session keys by proof of work, or none")
    serve.add_argument(
        "--allow-public-noauth",
        action="store_true",
        default=None,
        help="allow --auth none on a non-loopback address",
    )
    serve.add_argument("--workers", type=int, help="jobs run at once (FREESTEMS_WORKERS, 1)")
    serve.add_argument(
        "--device-dir",
        type=Path,
        metavar="DIR",
        help="exported models (`freestems export`), one folder per served model: the page may separate on "
        "the visitor's device (FREESTEMS_DEVICE_DIR)",
    )
    serve.add_argument(
        "--device-only",
        action="store_true",
        default=None,
        help="separate only on the visitor's device: no uploads, no model loaded (FREESTEMS_DEVICE_ONLY)",
    )
    add_served_model_arguments(serve)
    serve.set_defaults(run=run_serve)


class _ServedModel(argparse.Action):
    """``-m NAME`` and ``--model-file F`` append to one ordered list (the first is the default);
    ``--model-config C`` belongs to the ``--model-file`` just before it."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: Any = None) -> None:
        served: list[list[Any]] = list(getattr(namespace, "served", None) or [])
        if self.dest == "model_config":
            if not served or served[-1][0] != "file" or served[-1][2] is not None:
                parser.error("--model-config C must follow the --model-file F it belongs to")
            served[-1] = ["file", served[-1][1], value]
        else:
            served.append(["name", value, None] if self.dest == "model" else ["file", value, None])
        namespace.served = served


def add_served_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The models ``serve`` offers: ``-m`` and ``--model-file`` repeated, in order; the first is the
    default. Without any, FREESTEMS_MODELS (or FREESTEMS_MODEL / FREESTEMS_MODEL_FILE) decide."""
    parser.set_defaults(served=[])
    parser.add_argument(
        "-m",
        "--model",
        action=_ServedModel,
        metavar="NAME",
        help="a catalog model or preset to serve (see `freestems models`), an ensemble a+b, or a chain "
        "'a>drums:b'; repeat it to serve several (FREESTEMS_MODELS=a,b); the first is the default",
    )
    parser.add_argument(
        "--model-file",
        type=Path,
        action=_ServedModel,
        metavar="F",
        help="a checkpoint file to serve (repeatable)",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        action=_ServedModel,
        metavar="C",
        help="the config of the --model-file before it",
    )
    parser.add_argument(
        "--model-memory",
        type=float,
        metavar="MB",
        help="most MB of loaded models; the least recently used idle one is unloaded "
        "(FREESTEMS_MODEL_MEMORY, "
        "0: no limit)",
    )
    add_weights_arguments(parser)


def served_model_choice(
    args: argparse.Namespace, settings: Settings
) -> tuple[list[str], list[tuple[Path, Path | None]]]:
    """The catalog names and the checkpoint files (with their configs) ``serve`` offers: its options, else
    the settings. A file's place among the names is kept only in that the names come first."""
    if args.served:
        names = [value for kind, value, _ in args.served if kind == "name"]
        files = [(value, config) for kind, value, config in args.served if kind == "file"]
        return names, files
    files = [(settings.model_file, settings.model_config_file)] if settings.model_file else []
    return list(settings.served_models), files


def add_cost_parser(commands: Subcommands) -> None:
    """``freestems cost``: dollars per song per tier, counted whole (README, Deploy on Modal)."""
    cost = commands.add_parser(
        "cost",
        help="project the cost per song on each tier from recorded jobs",
        description="Project $ per song on T4, L4, A10G and CPU containers, counted whole (GPU, cores, "
        "memory, region multiplier; warm, and with a wake-up's start and idle tail) from recorded timings: "
        "a job store, the Modal deployment's records, or a bench's JSON results.",
    )
    cost.add_argument("--data-dir", type=Path, help="the service's data folder (FREESTEMS_DATA_DIR)")
    cost.add_argument(
        "--modal",
        action="store_true",
        help="read the records of the Modal deployment (FREESTEMS_MODAL_APP_NAME) instead",
    )
    cost.add_argument(
        "--bench",
        action="append",
        type=Path,
        metavar="JSON",
        help="also read a bench's results (bench/results/separate.json); repeatable",
    )
    cost.add_argument(
        "--tier",
        "--gpu",
        dest="tier",
        action="append",
        metavar="TYPE",
        help="only this tier: a GPU type or CPU (repeatable; default: T4, L4, A10G, CPU)",
    )
    cost.add_argument(
        "--song-seconds", type=float, default=180.0, metavar="S", help="song length to price (180)"
    )
    cost.add_argument(
        "--device-dir",
        type=Path,
        metavar="DIR",
        help="the exports a device separation downloads (FREESTEMS_DEVICE_DIR; default: the release scnet's "
        "measured sizes)",
    )
    cost.set_defaults(run=run_cost)


def add_remote_parser(commands: Subcommands) -> None:
    """``freestems remote``: separate on a freestems server (README, section Remote client)."""
    import os

    remote = commands.add_parser(
        "remote",
        help="split songs into stems on a freestems server",
        description="Separate on a freestems server: earn a key (proof of work on every core), upload, "
        "follow the job, download and unpack DIR/<model>/<track>/<stem>.<ext>.",
    )
    remote.add_argument("inputs", nargs="+", metavar="INPUT", help="audio/video files or folders of them")
    remote.add_argument(
        "--url",
        default=os.environ.get("FREESTEMS_URL"),
        help="the server, e.g. http://127.0.0.1:8000 (FREESTEMS_URL)",
    )
    remote.add_argument("-o", "--out", default="separated", metavar="DIR", help="output folder (separated)")
    remote.add_argument("-m", "--model", help="a model the server runs (default: its first)")
    remote.add_argument("--two-stems", metavar="STEM", help="only STEM and no_STEM (e.g. vocals: karaoke)")
    remote.add_argument("--shifts", type=int, help="passes with random offsets, averaged (server: 1)")
    remote.add_argument("--overlap", type=float, help="chunk overlap in [0, 0.9) (server: 0.25)")
    remote.add_argument("--format", choices=("wav", "flac", "mp3"), help="stem format (server: mp3)")
    remote.add_argument("--bitrate", type=int, choices=MP3_BITRATES, help="MP3 kbps (server: 192)")
    remote.add_argument(
        "--zip", action="store_true", help="keep DIR/<model>/<track>.zip instead of unpacking"
    )
    remote.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="network timeout and reconnect window (60)"
    )
    remote.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        metavar="S",
        help="most seconds to wait out a busy server (600)",
    )
    remote.add_argument("--workers", type=int, help="cores for the proof of work (all)")
    remote.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    remote.set_defaults(run=run_remote)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model choice, shared by every command that runs a model."""
    parser.add_argument(
        "-m", "--model", help="catalog model (see `freestems models`), an ensemble a+b or a chain 'a>drums:b'"
    )
    parser.add_argument("--model-file", type=Path, metavar="F", help="a checkpoint file instead of -m")
    parser.add_argument("--model-config", type=Path, metavar="C", help="its MSST YAML (or JSON) config")
    add_weights_arguments(parser)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Where weights are cached and the normalisation overrides: for every command that loads a model.

    Kept apart from the model choice because ``serve`` chooses its models its own way (``-m`` repeated).
    """
    parser.add_argument(
        "--cache-dir", type=Path, help="weights cache (FREESTEMS_CACHE or ~/.cache/freestems)"
    )
    parser.add_argument(
        "--spec-norm",
        action=argparse.BooleanOptionalAction,
        help="override the spectrogram normalisation flag",
    )
    parser.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, help="override whole-track normalisation"
    )


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model ``-m``/``--model-file`` name, after a note on stderr when its weights' licence is not one
    a service may offer (:func:`licence_note`)."""
    from freestems.models import check_model_choice, load_model

    check_model_choice(args.model, args.model_file, args.model_config)
    note = licence_note(args.model) if args.model_file is None else None
    if note:
        print(f"freestems: note: {note}", file=sys.stderr)
    return load_model(
        args.model,
        model_file=args.model_file,
        model_config=args.model_config,
        spec_norm=args.spec_norm,
        normalize=args.normalize,
        cache_dir=args.cache_dir,
    )


def licence_note(name: str | None) -> str | None:
    """One line for a catalog model (a preset, an ensemble, a chain) whose weights' licence does not allow
    serving them (:func:`freestems.models.served.unservable`): each licence as published, and that the user
    runs the weights under it. None when every model is servable, or the name is not the catalog's."""
    from freestems.models import DEFAULT_MODEL
    from freestems.models.served import unservable

    entries = unservable(name or DEFAULT_MODEL)
    if not entries:
        return None
    if len(entries) == 1:
        (info,) = entries
        return (
            f'the weights of {info.name} are published with the licence "{info.license}"; you run them under '
            "that licence (not one that lets a service offer them)"
        )
    licences = ", ".join(f'"{info.license}" ({info.name})' for info in entries)
    return (
        f"the weights of {', '.join(info.name for info in entries)} are published with the licences "
        f"{licences}; you run them under those licences (not ones that let a service offer them)"
    )


class UsageError(Exception):
    """Arguments that do not fit together."""


def find_inputs(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Expand folders (recursively, audio suffixes only, sorted); report paths that do not exist."""
    found, missing = [], []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            missing.append(f"{name}: no such file or folder")
    return found, missing


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """How the engine runs a model here: shared by every command that separates on this machine."""
    parser.add_argument("--shifts", type=int, default=1, help="passes with random offsets, averaged (1)")
    parser.add_argument("--overlap", type=float, default=0.25, help="chunk overlap in [0, 0.9) (0.25)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="(auto)")
    parser.add_argument("--batch-size", type=int, help="chunks per forward pass (1 on CPU, 4 on GPU)")


def run_separate(args: argparse.Namespace) -> int:
    from freestems.audio import AudioError
    from freestems.engine import check_segment, resolve_device
    from freestems.models import ModelError
    from freestems.options import SeparationOptions
    from freestems.pipeline import separate_file, zip_stems
    from freestems.rules import SeparationError, model_folder

    errors: list[str] = []
    try:
        inputs, errors = find_inputs(args.inputs)
        options = SeparationOptions(
            two_stems=args.two_stems,
            shifts=args.shifts,
            overlap=args.overlap,
            seed=args.seed,
            consistency=args.consistency,
            format=args.format,
            mp3_bitrate=args.bitrate,
            bit_depth=args.bit_depth,
        )
        device = resolve_device(args.device)
        model = load_model_from_args(args)
        options.check_model(model.name, model.sources)
        check_segment(model, round(args.segment * SAMPLE_RATE) if args.segment else None)
    except (UsageError, ModelError, SeparationError) as error:
        return fail(error)
    for line in errors:
        print(f"freestems: {line}", file=sys.stderr)
    if not inputs:
        return fail("no audio files found in " + ", ".join(args.inputs))

    running = dict(
        segment=round(args.segment * SAMPLE_RATE) if args.segment else None,
        batch_size=args.batch_size,
        device=device,
    )

    def one(path: Path) -> None:
        destination = Path(args.out) / model_folder(model.name) / path.stem
        try:
            with progress_bar(path.name) as update:
                result = separate_file(
                    path,
                    destination,
                    model,
                    output=options.output(),
                    progress=update,
                    **options.engine(),
                    **running,
                )
            if args.zip:
                zip_stems(result.stems, destination.with_suffix(".zip"))
        except Exception:
            _remove_if_empty(destination)
            raise
        print(f"{path.name}: {len(result.stems)} stems in {destination}", file=sys.stderr)

    return each_file(inputs, errors, one, (AudioError, SeparationError), named_by_error=True)


def each_file(
    inputs: Sequence[Path],
    errors: list[str],
    one: Callable[[Path], object],
    expected: tuple[type[Exception], ...],
    *,
    named_by_error: bool = False,
) -> int:
    """Run ``one`` on each input in turn; a file that fails is one line on stderr and the batch goes on.
    Then the summary of the failures (``errors`` holds those found before, such as missing inputs).

    ``expected`` errors are told in their own words, after the file's name unless ``named_by_error`` (the
    engine's errors name the file themselves); any other is a surprise (a bug, a full disk), told as
    :func:`_unexpected`. Returns the exit code: 1 if anything failed.
    """
    done = 0
    for path in inputs:
        try:
            one(path)
        except expected as error:
            line = str(error) if named_by_error else f"{path.name}: {error}"
        except Exception as error:  # one file's surprise must not stop the batch
            line = f"{path.name}: {_unexpected(error)}"
        else:
            done += 1
            continue
        errors.append(line)
        print(f"freestems: {line}", file=sys.stderr)
    if errors:
        print(f"freestems: {done} separated, {len(errors)} failed:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _unexpected(error: Exception) -> str:
    """One line for an error that is not one of ours: what failed, in the system's words."""
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"cannot read or write a file: {one_line(error)}{where}"
    detail = one_line(error) if str(error).strip() else ""
    return f"failed unexpectedly ({type(error).__name__}{': ' + detail if detail else ''})"


def run_models(args: argparse.Namespace) -> int:
    """``freestems models [NAME] [--json]``: the catalog by job, one model's details, or JSON."""
    import json

    from freestems.models import CATALOG, ModelInfo, ModelNotAvailable, get_model_info
    from freestems.models.download import is_cached
    from freestems.models.listing import cache_folder, catalog_json, details, entry_json, listing

    folder = cache_folder(args.cache_dir)

    def cached(info: ModelInfo) -> bool:
        return is_cached(info, folder)

    if args.name is not None:
        try:
            info = get_model_info(args.name)
        except ModelNotAvailable as error:
            return fail(error)
        lines = [json.dumps(entry_json(info), indent=2)] if args.json else details(info, folder, cached)
    elif args.json:
        lines = [json.dumps(catalog_json(CATALOG), indent=2)]
    else:
        lines = listing(cached, folder, CATALOG)
    print("\n".join(lines))
    return 0


def run_serve(args: argparse.Namespace) -> int:

    from freestems.executors import LocalExecutor
    from freestems.models import ModelError
    from freestems.models.served import serve_models
    from freestems.service import Settings, SettingsError
    from freestems.service.paths import Paths

    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            auth=args.auth,
            allow_public_noauth=args.allow_public_noauth,
            workers=args.workers,
            model_memory=args.model_memory,
            device_dir=args.device_dir,
            device_only=args.device_only,
        )
        names, files = served_model_choice(args, settings)
        if settings.device_only:
            return _serve_device_only(settings, names, files)
        models = serve_models(
            names,
            files,
            budget=settings.model_memory_bytes,
            cache_dir=args.cache_dir,
            progress=True,
            spec_norm=args.spec_norm,
            normalize=args.normalize,
        )
    except (SettingsError, ModelError) as error:
        return fail(error)
    executor = LocalExecutor(
        lambda: models,
        Paths(settings.data_dir).work,
        workers=settings.workers,
        threads=settings.threads,
        device=settings.device,
    )
    what = f"serving {', '.join(models.served)}"
    return _run_server(settings, executor, what, f"auth: {settings.auth}, data: {settings.data_dir}")


def _run_server(settings: Settings, executor: Any, what: str, details: str) -> int:
    """Says what is served where on stderr, then serves in the foreground until Ctrl-C (a clean shutdown)."""
    import logging

    from freestems.service.server import serve

    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"freestems: {what} on http://{host}:{settings.port} ({details})", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
    with suppress(KeyboardInterrupt):
        serve(settings, executor)
    return 0


def _serve_device_only(settings: Settings, names: list[str], files: list[tuple[Path, Path | None]]) -> int:
    """``serve --device-only``: the exports of the named models described, nothing loaded; then serve."""

    from freestems.service import SettingsError
    from freestems.service.device_only import DeviceOnlyExecutor

    if files:
        return fail(
            "--device-only serves exported models, not checkpoint files: export the file "
            "(`freestems export --model-file F -o DIR/NAME`) and serve it with -m NAME --device-dir DIR"
        )
    try:
        executor = DeviceOnlyExecutor(settings, tuple(names))
    except SettingsError as error:
        return fail(error)
    what = f"{', '.join(names)} separated on the visitors' devices only, from {settings.device_dir},"
    return _run_server(settings, executor, what, f"data: {settings.data_dir}")


def run_cost(args: argparse.Namespace) -> int:
    from freestems.cost import (
        DEFAULT_TIERS,
        RecordsError,
        Shape,
        format_projections,
        format_recorded,
        project_deployment,
        project_device,
        project_web,
    )

    try:
        from freestems.deploy.settings import WEB_CPU, WEB_SCALEDOWN_WINDOW, ModalSettings
        from freestems.service import Settings, SettingsError
    except ImportError as error:
        return fail(f"{error.name} is missing: pip install 'freestems[serve]'")
    if args.song_seconds <= 0:
        return fail("--song-seconds must be positive")
    try:
        settings = Settings.from_env(data_dir=args.data_dir)
        deployment = ModalSettings.from_env()
        records, wakes, sources = _cost_records(args, settings.data_dir, deployment.modal_app_name)
    except (SettingsError, RecordsError) as error:
        return fail(error)
    projections = project_deployment(
        records, deployment, settings.gpu_prices, args.tier or DEFAULT_TIERS, song_seconds=args.song_seconds
    )
    web_shape = Shape(None, WEB_CPU, deployment.modal_web_memory)
    web = project_web(
        records, web_shape, WEB_SCALEDOWN_WINDOW, settings.gpu_prices, song_seconds=args.song_seconds
    )
    device = project_device(args.device_dir or settings.device_dir, _vendor_runtime(), settings.egress_price)
    counted = sum(p.jobs for p in projections)
    print(f"{len(records)} recorded job(s) in {' + '.join(sources)}; {counted} on the tiers shown")
    print(format_projections(projections, web=web, device=device))
    if args.modal or args.data_dir is not None or not args.bench:
        print(format_recorded(records, wakes))
    return 0


def _vendor_runtime() -> Path:
    """Where the page's in-browser runtime is installed (``scripts/fetch_web_deps.sh``)."""
    return Path(__file__).resolve().parent / "web" / "vendor" / "onnxruntime-web"


def _cost_records(
    args: argparse.Namespace, data_dir: Path, app_name: str
) -> tuple[list[UsageRecord], list[WakeRecord], list[str]]:
    """What ``freestems cost`` projects from: the records of the benches named, then those of the Modal
    deployment (``--modal``) or of the job store; with the wake-ups recorded and where it all came from.

    Raises:
        RecordsError: a source cannot be read.
    """
    from freestems.cost import RecordsError, bench_file_records, modal_records

    records: list[UsageRecord] = []
    wakes: list[WakeRecord] = []
    sources = []
    for path in args.bench or ():
        records.extend(bench_file_records(Path(path)))
        sources.append(str(path))
    if args.modal:
        try:
            found, wakes = modal_records(app_name)
        except ImportError:
            raise RecordsError("the modal package is missing: pip install 'freestems[modal]'") from None
        except Exception as error:  # no token, no network, no such Dict
            raise RecordsError(f"cannot read the usage records of Modal app {app_name}: {error}") from None
        records.extend(found)
        sources.append(f"Modal app {app_name}")
    elif args.data_dir is not None or not args.bench:
        database, stored = _stored_records(data_dir)
        records.extend(stored)
        sources.append(str(database))
    return records, wakes, sources


def _stored_records(data_dir: Path) -> tuple[Path, list[UsageRecord]]:
    """The job store of the service's data folder ``data_dir``, and its usage records.

    Raises:
        RecordsError: there is no job store there, or it cannot be opened.
    """
    from freestems.cost import RecordsError
    from freestems.service.paths import Paths
    from freestems.service.store import JobStore, StoreError

    database = Paths(data_dir).database
    if not database.is_file():
        raise RecordsError(f"no job store at {database} (give the service's --data-dir)")
    try:
        store = JobStore(database)
    except StoreError as error:
        raise RecordsError(str(error)) from None
    try:
        return database, store.usage_records()
    finally:
        store.close()


def run_remote(args: argparse.Namespace) -> int:
    try:
        from freestems.client import Client, RemoteError
        from freestems.client.progress import TerminalReporter
    except ImportError as error:
        return fail(f"{error.name} is missing: pip install 'freestems[client]'")
    if not args.url:
        return fail("give the server with --url http://host:port (or set FREESTEMS_URL)")
    if args.timeout <= 0 or args.max_wait < 0:
        return fail("--timeout must be positive and --max-wait not negative")
    inputs, errors = find_inputs(args.inputs)
    for line in errors:
        print(f"freestems: {line}", file=sys.stderr)
    if not inputs:
        return fail("no audio files found in " + ", ".join(args.inputs))
    reporter = TerminalReporter(quiet=args.quiet)
    try:
        client = Client(
            args.url, timeout=args.timeout, max_wait=args.max_wait, workers=args.workers, reporter=reporter
        )
    except RemoteError as error:
        return fail(error)

    def one(path: Path) -> None:
        stems = client.separate(
            path,
            out_dir=args.out,
            two_stems=args.two_stems,
            shifts=args.shifts,
            overlap=args.overlap,
            format=args.format,
            bitrate=args.bitrate,
            model=args.model,
            zip=args.zip,
        )
        if not args.quiet:
            if args.zip:
                print(f"{path.name}: stems in {stems['zip']}", file=sys.stderr)
            else:
                folder = next(iter(stems.values())).parent
                print(f"{path.name}: {len(stems)} stems in {folder}", file=sys.stderr)

    with client:
        return each_file(inputs, errors, one, (RemoteError,))


def add_eval_parser(commands: Subcommands) -> None:
    """``freestems eval``: SDR per stem of a model on songs whose stems are known (freestems.evaluate)."""
    evaluate = commands.add_parser(
        "eval",
        help="measure a model's SDR per stem on a folder of multitracks (MUSDB18-HQ's layout)",
        description="Separate every song under FOLDER (each folder holding the mixture file) and score each "
        "stem the song has: sdr (whole-track, as MSST and MVSEP; mean over songs) and sdr_museval (median of "
        "1-second BSSEval v4 frames, as MUSDB papers; median over songs).",
    )
    evaluate.add_argument("folder", type=Path, metavar="FOLDER", help="one folder per song (musdb18hq/test)")
    add_model_arguments(evaluate)
    evaluate.add_argument(
        "--mixture", default="mixture.wav", metavar="FILE", help="the mixture's file in a song (mixture.wav)"
    )
    evaluate.add_argument(
        "--stem",
        action="append",
        default=[],
        metavar="STEM=FILE",
        help="a stem's file in a song (repeatable; default: <stem> and the mixture's extension, vocals.wav)",
    )
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write every score to FILE")
    add_engine_arguments(evaluate)
    evaluate.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from freestems import evaluate
    from freestems.engine import resolve_device
    from freestems.models import ModelError
    from freestems.rules import SeparationError, check_overlap, check_shifts, output_names

    try:
        layout = evaluate.Layout.parse(args.mixture, args.stem)
        songs = evaluate.find_songs(args.folder, layout)
        if args.json and not args.json.parent.is_dir():
            raise evaluate.EvaluationError(f"--json {args.json}: no such folder {args.json.parent}")
        check_shifts(args.shifts)
        check_overlap(args.overlap)
        if args.batch_size is not None and args.batch_size < 1:
            raise SeparationError(f"--batch-size must be at least 1, got {args.batch_size}")
        device = resolve_device(args.device)
        model = load_model_from_args(args)
        stems = tuple(output_names(model.sources))
        layout.check(stems)
    except (evaluate.EvaluationError, ModelError, SeparationError) as error:
        return fail(error)
    options = dict(shifts=args.shifts, overlap=args.overlap, device=device, batch_size=args.batch_size)
    evaluation = evaluate.Evaluation(model.name, stems, args.folder, layout, options)
    print(evaluate.format_header(stems))
    for song in songs:
        evaluation.songs.append(_eval_song(song, model, evaluation))
    print(evaluate.format_total(evaluation))
    if args.json:
        try:
            evaluation.write_json(args.json)
        except OSError as error:
            return fail(f"cannot write {args.json}: {one_line(error)}")
    failed = [song.error for song in evaluation.songs if song.error]
    if failed:
        print(f"freestems: {len(songs) - len(failed)} evaluated, {len(failed)} failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _eval_song(song: Path, model: LoadedModel, evaluation: Evaluation) -> SongResult:
    """One song of ``freestems eval``: its scores printed, or its error on stderr; the run goes on."""
    from freestems.evaluate import SongResult, evaluate_song, format_song, song_name

    name = song_name(evaluation.folder, song)
    try:
        with progress_bar(name) as update:
            result = evaluate_song(
                song, model, evaluation.layout, name=name, progress=update, **evaluation.options
            )
    except Exception as error:  # one song's surprise (a bug, memory) must not lose the others' scores
        result = SongResult(name, song, error=f"{name}: {_unexpected(error)}")
    for note in result.notes:
        print(f"freestems: {name}: {note}", file=sys.stderr)
    if result.error:
        print(f"freestems: {result.error}", file=sys.stderr)
    else:
        print(format_song(result, evaluation.stems), flush=True)
    return result


def add_export_parser(commands: Subcommands) -> None:
    """``freestems export``: a model's network as ONNX, and a manifest, for separating in a browser."""
    export = commands.add_parser(
        "export",
        help="write a model's network as ONNX with a manifest, to separate in a browser",
        description="Write MODEL's network, without its STFT, to DIR as ONNX: network.fp32.onnx, "
        "network.fp16.onnx (fp16 weights) where its output stays faithful, and manifest.json (stems, STFT, "
        "chunking, tensors, checksums). SCNet models only, so far.",
    )
    export.add_argument(
        "model", nargs="?", metavar="MODEL", help="a catalog model (see `freestems models`; default scnet)"
    )
    export.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output folder")
    export.add_argument("--model-file", type=Path, metavar="F", help="a checkpoint file instead of MODEL")
    export.add_argument("--model-config", type=Path, metavar="C", help="its MSST YAML (or JSON) config")
    export.add_argument("--no-fp16", dest="fp16", action="store_false", help="write the fp32 file only")
    export.add_argument(
        "--int8",
        action="store_true",
        help="also network.int8.onnx: the LSTMs and linear layers in 8 bits, faster in a browser's WASM and "
        "less faithful (the manifest says how far from fp32); a page runs it only when asked for",
    )
    add_weights_arguments(export)
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from freestems.export import ExportError, check_exportable, export_model, prepare_folder, require_exporter
    from freestems.models import ModelError

    try:
        require_exporter()
        if args.model_file is None and args.model:
            check_exportable(args.model)  # before any download
        prepare_folder(args.out)
        model = load_model_from_args(args)
        manifest = export_model(model, args.out, fp16=args.fp16, int8=args.int8)
    except (ModelError, ExportError) as error:
        return fail(error)
    for entry in manifest["onnx"]["files"]:
        size = entry["bytes"] / 1e6
        print(f"{args.out / entry['file']}: {entry['precision']}, {size:.1f} MB", file=sys.stderr)
    for precision, asked in (("fp16", args.fp16), ("int8", args.int8)):
        check = manifest["onnx"][precision]
        if asked and not check["written"]:
            print(f"freestems: no {precision} file: {check['reason']}", file=sys.stderr)
    print(f"{args.out / 'manifest.json'}: how to run it", file=sys.stderr)
    return 0


def fail(error: Exception | str) -> int:
    print(f"freestems: {error}", file=sys.stderr)
    return 1


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float], None]]:
    """A tqdm bar on stderr fed with fractions; silent when stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(total=100, desc=label, unit="%", file=sys.stderr, disable=None, leave=False) as shown:

        def update(fraction: float) -> None:
            shown.update(round(fraction * 100) - shown.n)

        yield update


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()


if __name__ == "__main__":
    sys.exit(main())
