"""Download checkpoints into the weights cache, with integrity checks and no half files.

The cache is a flat folder (``FREESTEMS_CACHE``, else ``$XDG_CACHE_HOME/freestems``, else
``~/.cache/freestems``) holding each catalog file under its release file name, so a file fetched by hand can
simply be copied there. :func:`download` streams into a private temp file beside the destination
(``.<name>.<random>.part``), resumes with HTTP ``Range`` requests if the connection drops mid-way, checks size
and sha256, optionally validates the content, and only then renames it into place: the destination is either
absent or complete. The temp file is removed on every failure, Ctrl-C included.

Integrity on every load: a catalog entry's sha256 is checked when the publisher shows one; otherwise the
digest of the first download is pinned beside the file (``<name>.sha256``, in ``sha256sum`` format) and every
later load checks the file against it (:func:`verify_cached`). A file copied into the cache by hand is pinned
the first time it is used. A mismatch names the file and both digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from freestems.errors import one_line
from freestems.files import atomic_path
from freestems.models.catalog import ModelInfo, get_model_info, member_names
from freestems.models.errors import CheckpointError, ModelNotAvailable

CHUNK = 1 << 20
"""Read size while streaming (1 MiB)."""
PIN_SUFFIX = ".sha256"
"""The pinned digest of a cached file sits beside it under this suffix."""
CACHE_VARIABLE = "FREESTEMS_CACHE"
"""The weights cache folder, where catalog checkpoints are downloaded and checked (``--cache-dir`` wins
over it). Unset: ``$XDG_CACHE_HOME/freestems``, else ``~/.cache/freestems``. Not the service's result
cache, which ``FREESTEMS_RESULT_CACHE`` switches."""


def default_cache_dir() -> Path:
    """The weights cache folder.

    ``FREESTEMS_CACHE``, else ``$XDG_CACHE_HOME/freestems``, else ``~/.cache/freestems``. An explicit
    ``cache_dir`` argument (from the ``Settings`` object or ``--cache-dir``) always wins.
    """
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "freestems"


def cache_path(
    info: ModelInfo, cache_dir: str | os.PathLike[str] | None = None, url: str | None = None
) -> Path:
    """Where a file of ``info`` (default: its weights, ``info.url``) lives in the cache, present or not."""
    return Path(cache_dir or default_cache_dir()).expanduser() / _filename(url or info.url)


def entry_urls(info: ModelInfo) -> list[str]:
    """Every file a catalog entry downloads: its weights (a bag's members too) and, for a RoFormer or MDX23C
    whose config is not embedded, the MSST YAML published beside them."""
    return [*info.urls, *([info.config_url] if info.config_filename else [])]


def cached_file(info: ModelInfo, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached weights of ``info`` when every file of the entry is present (the weights of the catalog
    size, when the size is known), else None."""
    paths = [_present(info, url, cache_dir) for url in entry_urls(info)]
    if not paths or any(path is None for path in paths):
        return None
    return paths[0]


def is_cached(info: ModelInfo, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether using ``info`` needs no download (a preset: none of its models needs one)."""
    if member_names(info):
        return all(is_cached(get_model_info(name), cache_dir) for name in member_names(info))
    return cached_file(info, cache_dir) is not None


def _present(info: ModelInfo, url: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    path = cache_path(info, cache_dir, url)
    try:
        stat = path.stat()
    except OSError:
        return None
    sized = url != info.url or info.size is None or stat.st_size == info.size
    return path if path.is_file() and stat.st_size > 0 and sized else None


FileCheck = Callable[[ModelInfo, str, Path], None]
"""Checks a freshly downloaded file of an entry (the entry, the URL it came from, where it lies) before it
enters the cache, raising :class:`CheckpointError` when it is not usable. The loader gives the check (it
knows how each family's files are built: :func:`freestems.models.loading.validate_file`), so this module
needs nothing above it."""


def ensure_weights(
    info: ModelInfo,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    check: FileCheck | None = None,
) -> Path:
    """The cached weights of ``info`` (every file of the entry), downloading the missing ones first; returns
    the path of the first weights file (:func:`ensure_files` returns them all)."""
    return ensure_files(info, cache_dir, progress=progress, check=check)[0]


def ensure_files(
    info: ModelInfo,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    download: bool = True,
    check: FileCheck | None = None,
) -> list[Path]:
    """Every file of ``info`` (:func:`entry_urls` order) in the cache, each checked against its sha256.

    A fresh download must pass the catalog size and sha256 (when known), the sha256 prefix a Demucs file
    name publishes, and ``check`` (the loader's: weights that fit the config, a Demucs model file, a YAML
    config) before it is moved into the cache, so a wrong or broken file never sits there looking valid.
    Its digest is then pinned beside it and checked on every later load.

    Raises:
        ModelNotAvailable: a file is missing and ``download`` is False, or the download failed.
        CheckpointError: a cached file changed since it was pinned, or a download is not usable.
    """
    if member_names(info):  # a preset: its models' files
        members = [get_model_info(name) for name in member_names(info)]
        return [
            path for member in members for path in ensure_files(member, cache_dir, progress, download, check)
        ]
    paths = []
    for url in entry_urls(info):
        path = _present(info, url, cache_dir)
        if path is not None:
            paths.append(verify_cached(info, path))
            continue
        dest = cache_path(info, cache_dir, url)
        if not download:
            raise ModelNotAvailable(
                f"model {info.name} is not in the cache; download {url} and save it as {dest}"
            )
        paths.append(_download_file(info, url, dest, progress, check))
    return paths


def _download_file(info: ModelInfo, url: str, dest: Path, progress: bool, check: FileCheck | None) -> Path:
    primary = url == info.url

    def validate(candidate: Path) -> None:
        if check is None:
            return
        try:
            check(info, url, candidate)
        except CheckpointError as error:
            raise CheckpointError(
                f"the file downloaded from {url} is not usable as model {info.name} and was discarded: "
                f"{str(error).replace(str(candidate), 'the file')}"
            ) from None

    sha256 = info.sha256 if primary else None
    path = download(
        url,
        dest,
        sha256=sha256,
        sha256_prefix=hash_prefix(url),
        size=info.size if primary else None,
        progress=progress,
        validate=validate,
    )
    if sha256 is None:  # a fresh, validated download replaces any older pin
        pin = path.with_name(path.name + PIN_SUFFIX)
        _write_pin(pin, file_sha256(path), path.name)
    return path


def hash_prefix(url: str) -> str | None:
    """The sha256 prefix a Demucs file name publishes (``<signature>-<8 hex>.th``), else None."""
    found = re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{8})\.th", _filename(url))
    return found.group(1) if found else None


def verify_cached(info: ModelInfo, path: Path) -> Path:
    """Check ``path`` (a cached file of ``info``) against the catalog's sha256, else against the digest
    pinned when it was downloaded (pinning it now if it has none yet, after checking the sha256 prefix its
    name publishes, if any); returns ``path``.

    Raises:
        CheckpointError: the digests differ; the message names the file and both digests.
    """
    actual = file_sha256(path)
    pin = path.with_name(path.name + PIN_SUFFIX)
    expected: str | None
    if info.sha256 is not None and path.name == info.filename:
        expected, source = info.sha256.lower(), f"the catalog's sha256 for model {info.name}"
    else:
        expected = _read_pin(pin)
        source = f"the sha256 pinned in {pin} when it was first downloaded"
        if expected is None:
            prefix = hash_prefix(path.name)
            if prefix is not None and not actual.startswith(prefix):
                raise CheckpointError(
                    f"{path} has sha256 {actual}, but its name says it starts with {prefix}: the file is "
                    "damaged or not the published one; delete it to download it again"
                )
            _write_pin(pin, actual, path.name)
            return path
    if actual != expected:
        raise CheckpointError(
            f"{path} has sha256 {actual}, but {source} is {expected}: the file changed or is damaged; "
            "delete it (and its .sha256 file) to download it again"
        )
    return path


def _filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _read_pin(pin: Path) -> str | None:
    try:
        text = pin.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def _write_pin(pin: Path, digest: str, name: str) -> None:
    """Write the pin atomically; a cache we cannot write to only loses the pin, not the model."""
    with contextlib.suppress(OSError), atomic_path(pin) as temp:
        temp.write_text(f"{digest}  {name}\n", encoding="ascii")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 30,
    retries: int = 3,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    Args:
        sha256: expected hex digest (checked when given).
        sha256_prefix: the first hex digits of the digest, as a Demucs file name publishes them (checked
            when given, as ``torch.hub``'s ``hash_prefix``).
        size: expected byte count (else the server's Content-Length, when sent, is checked).
        progress: show a progress bar on stderr.
        timeout: seconds without progress on the socket before giving up on a connection.
        retries: how many times a connection that drops mid-way is resumed (HTTP Range) before failing.
        validate: called with the complete temp file before it is moved into place; whatever it raises
            propagates (the temp file is removed).

    Raises:
        ModelNotAvailable: offline, HTTP error, size or checksum mismatch, cannot write the cache; the
            message names the URL and where to put the file by hand.
    """
    dest = Path(dest)

    def failed(reason: str) -> ModelNotAvailable:
        return ModelNotAvailable(
            f"could not download {url}: {reason}; "
            f"to install it by hand, download that URL and save it as {dest}"
        )

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise failed(f"cannot write to the cache folder {dest.parent} ({one_line(error)})") from None
    try:
        with atomic_path(dest) as temp:
            with open(temp, "xb") as out, _bar(dest.name, size, progress) as bar:
                digest, received, total = _fetch(url, out, bar, size, timeout, retries, failed)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and received != total:
                raise failed(f"size mismatch: expected {total} bytes, got {received} (truncated download)")
            if sha256 is not None and digest != sha256.lower():
                raise failed(f"checksum mismatch: expected sha256 {sha256.lower()}, got {digest}")
            if sha256_prefix is not None and not digest.startswith(sha256_prefix.lower()):
                raise failed(f"checksum mismatch: expected a sha256 starting {sha256_prefix}, got {digest}")
            if validate is not None:
                validate(temp)
    except OSError as error:  # writing the temp file or renaming it (disk full, permissions, ...)
        name = error.filename and Path(error.filename).name
        raise failed(f"cannot write {name or dest.name} ({one_line(error)})") from None
    return dest


def _fetch(
    url: str,
    out: BinaryIO,
    bar: tqdm,
    size: int | None,
    timeout: float,
    retries: int,
    failed: Callable[[str], ModelNotAvailable],
) -> tuple[str, int, int | None]:
    """Stream ``url`` into ``out``, resuming after dropped connections; return (sha256, bytes, total)."""
    hasher = hashlib.sha256()
    received = 0
    total = size
    attempt = 0
    while True:
        request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
        if received:
            request.add_header("Range", f"bytes={received}-")
        dropped: BaseException | None = None
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and total is not None and received >= total:
                break  # we already have everything
            raise failed(f"HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            if received and attempt < retries:
                dropped = error
            else:
                raise failed(_unreachable(url, error.reason, timeout)) from None
        except (http.client.HTTPException, TimeoutError, ConnectionError) as error:
            if received and attempt < retries:
                dropped = error
            else:
                raise failed(_unreachable(url, error, timeout)) from None
        if dropped is None:
            with response:
                start = _body_offset(response)
                if start is None or start not in (0, received):
                    raise failed(f"the server answered a request for bytes {received}- with another range")
                if start == 0 and received:  # the server ignored the Range header: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    received = 0
                    bar.reset(total=bar.total)
                announced = _announced_total(response, start)
                if announced is not None:
                    if total is not None and announced != total:
                        raise failed(f"size mismatch: expected {total} bytes, the server has {announced}")
                    total = announced
                    if bar.total != total:
                        bar.total = total
                        bar.refresh()
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        dropped = error
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is None or received >= total:
            if dropped is not None and total is None:
                raise failed(f"connection lost after {received} bytes ({one_line(dropped)})")
            break
        if attempt >= retries:
            break  # the caller reports the size mismatch
        attempt += 1
        time.sleep(min(0.25 * 2**attempt, 4.0))
    return hasher.hexdigest(), received, total


def _body_offset(response: http.client.HTTPResponse) -> int | None:
    """Where the body of ``response`` starts in the file: 0 for a 200, the range start for a 206."""
    if response.status != 206:
        return 0
    found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(found.group(1)) if found else None


def _announced_total(response: http.client.HTTPResponse, start: int) -> int | None:
    """The complete file size the server announces, if it does."""
    if response.status == 206:
        found = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(found.group(1)) if found else None
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and not response.headers.get("Content-Encoding"):
        return start + int(length)
    return None


def _unreachable(url: str, reason: BaseException | str, timeout: float) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer from {host} within {timeout:g} s (offline or slow network?)"
    return f"cannot reach {host} (offline?): {one_line(reason)}"


def _user_agent() -> str:
    from freestems.version import __version__

    return f"freestems/{__version__} (+python-urllib)"


def _bar(name: str, total: int | None, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=f"downloading {name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
